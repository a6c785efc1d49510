"""Apache Beam for dataset generation: pipeline options and the transforms builders return.

TFDS runs a builder on Beam when its `_generate_examples` returns a `beam.PTransform`
of (key, example) pairs; the transforms here call the same per-example functions as
the builders' plain generators, so both give the same keys and records. Imported only
when a builder generates through Beam (the `beam` extra: `pip install -e ".[beam]"`).

The pipeline graph travels to the runner's service (Dataflow caps its size), so it
holds only small work lists: SynthAV's speakers, or the path of a corpus's job file.
Each worker expands them into jobs, which a reshuffle spreads over all workers.
"""

import json

try:
  import apache_beam as beam
except ImportError as e:
  raise ImportError(
      "Generating this dataset on Apache Beam needs the `beam` extra: "
      "pip install -e '.[beam]' (or generate without Beam: use_beam=False, "
      "--nobeam).") from e
from apache_beam.options import pipeline_options as options_lib
from etils import epath
import tensorflow_datasets as tfds

from avsep_jax.data.corpora import common


def pipeline_options(flags: str | None = None, num_workers: int = 0):
  """`PipelineOptions` from `tfds build`-style flags over local defaults.

  Args:
    flags: 'key=value,key=value', as `tfds build --beam_pipeline_options` takes them,
      e.g. 'runner=DataflowRunner,project=P,region=R,temp_location=gs://B/tmp'. They
      override the defaults.
    num_workers: the default DirectRunner's worker processes (0: this process).

  Returns:
    `PipelineOptions`: DirectRunner with `num_workers` processes unless `flags` say
    otherwise.
  """
  defaults = ["--runner=DirectRunner"]
  if num_workers:
    defaults += [f"--direct_num_workers={num_workers}",
                 "--direct_running_mode=multi_processing"]
  given = [f"--{flag}" for flag in flags.split(",")] if flags else []
  return options_lib.PipelineOptions(flags=defaults + given)


def download_config(flags: str | None = None, num_workers: int = 0, **kwargs):
  """A `tfds.download.DownloadConfig` running Beam with `pipeline_options(...)`."""
  return tfds.download.DownloadConfig(
      beam_options=pipeline_options(flags, num_workers), **kwargs)


@beam.ptransform_fn
def ExpandAndMap(pbegin, groups, expand, make):  # pylint: disable=invalid-name
  """(key, example) pairs: `make(job)` for every job of `expand(group)`.

  Args:
    pbegin: the pipeline (TFDS applies the transform to it).
    groups: a short list of picklable work groups (e.g. one per speaker).
    expand: group -> iterable of jobs, run on a worker.
    make: job -> (key, example), the per-example function of the plain path.
  """
  return (pbegin
          | "Groups" >> beam.Create(groups, reshuffle=False)
          | "Jobs" >> beam.FlatMap(expand)
          | "Spread" >> beam.Reshuffle()
          | "Examples" >> beam.Map(make))


class PreprocessClips(beam.DoFn):
  """The face pipeline over (speaker index, clip) jobs -> (clip, example, skip reason).

  RetinaFace is loaded in `setup`, through the per-process cache of
  `common.detector`: once per worker process, however many clips and splits (each
  split's ParDo has its own DoFn instance) the worker runs.
  """

  def setup(self):
    self._detector = common.detector()

  def process(self, job):
    yield common.preprocess_job(job, self._detector)


class _SplitStatsFn(beam.CombineFn):
  """Folds (clip, example, reason) results into a `common.SplitStats` summary."""

  def create_accumulator(self):
    return common.SplitStats()

  def add_input(self, mutable_accumulator, element):
    clip, _, reason = element
    mutable_accumulator.add(clip, reason)
    return mutable_accumulator

  def merge_accumulators(self, accumulators):
    merged = common.SplitStats()
    for stats in accumulators:
      merged.merge(stats)
    return merged

  def extract_output(self, accumulator):
    return accumulator.summary()


def _write_json(value, path):
  epath.Path(path).write_text(json.dumps(value))


def _kept_example(result):
  clip, example, _ = result
  if example is not None:
    yield clip.clip_id, example


@beam.ptransform_fn
def CorpusExamples(pbegin, jobs_path, stats_path):  # pylint: disable=invalid-name
  """(clip id, example) pairs of one corpus split, its `SplitStats` summary to a file.

  Args:
    pbegin: the pipeline.
    jobs_path: text file of `common.encode_job` lines, where every worker reads it
      (the dataset's directory: TFDS on Beam needs one that all workers share).
    stats_path: where the split's summary is written as JSON, read back by the
      builder once the pipeline has run.
  """
  results = (pbegin
             | "ReadJobs" >> beam.io.ReadFromText(jobs_path)
             | "DecodeJobs" >> beam.Map(common.decode_job)
             | "Spread" >> beam.Reshuffle()
             | "Faces" >> beam.ParDo(PreprocessClips()))
  _ = (results
       | "Stats" >> beam.CombineGlobally(_SplitStatsFn())
       | "WriteStats" >> beam.Map(_write_json, path=stats_path))
  return results | "Kept" >> beam.FlatMap(_kept_example)
