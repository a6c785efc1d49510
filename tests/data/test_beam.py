"""Generation on Apache Beam (DirectRunner) gives what the plain generators give.

Each builder is built twice into separate directories, once through its Python
generator and once through Beam, and the two directories must hold byte-identical
files: the records (so the same keys, which order them, and the same features), the
split sizes and metadata in dataset_info.json. The corpus build uses the fake LRS3
tree of test_corpora (one clip without a face, skipped on both paths).
"""

import pathlib

import apache_beam as beam
from apache_beam.options import pipeline_options as options_lib
from apache_beam.testing import util as beam_testing
from etils import epath
from etils.epath import testing as epath_testing
import pytest
from tensorflow_datasets.core import file_adapters

from avsep_jax.data import beam as beam_lib
from avsep_jax.data import generation
from avsep_jax.data.corpora import common, lrs3
from avsep_jax.data.synthav import builder as synthav
from avsep_jax.data.synthav import tts
from avsep_jax.vision import retinaface

import test_corpora  # the fake corpus layouts (tests/data is on sys.path)

# Speakers and utterances per split (train, validation, test, test_flite): 9 utterances.
SYNTHAV_MICRO = synthav.make_config("beam_micro", "Beam tests.", (2, 2, 2, 1),
                                    (2, 1, 1, 1))


def _files(root):
  """{path relative to the dataset version directory: bytes} of one build."""
  [version_dir] = [p.parent for p in pathlib.Path(root).rglob("dataset_info.json")]
  return {str(p.relative_to(version_dir)): p.read_bytes()
          for p in version_dir.iterdir() if p.is_file()}


def _assert_same_builds(plain, on_beam):
  plain_files, beam_files = _files(plain.data_dir), _files(on_beam.data_dir)
  assert sorted(plain_files) == sorted(beam_files)
  assert sum(".array_record-" in name for name in plain_files) == len(plain.info.splits)
  for name, content in plain_files.items():
    assert content == beam_files[name], name
  assert ({k: v.num_examples for k, v in plain.info.splits.items()}
          == {k: v.num_examples for k, v in on_beam.info.splits.items()})


@pytest.mark.slow
def test_synthav_beam_build_equals_the_generator_build(tmp_path):
  def build(use_beam):
    builder = synthav.SynthAV(config=SYNTHAV_MICRO, data_dir=str(tmp_path / str(use_beam)),
                              file_format="array_record", num_workers=2,
                              use_beam=use_beam)
    builder.download_and_prepare(
        download_config=beam_lib.download_config(num_workers=0) if use_beam else None)
    return builder

  plain, on_beam = build(False), build(True)
  _assert_same_builds(plain, on_beam)
  sizes = {k: v.num_examples for k, v in on_beam.info.splits.items()}
  splits = synthav.SPLITS + ((synthav.FLITE_SPLIT,) if tts.flite_available() else ())
  assert sizes == {s: SYNTHAV_MICRO.speakers[s] * SYNTHAV_MICRO.utterances_per_speaker[s]
                   for s in splits}

  # The keys themselves, from both paths' generators of one split.
  plain_keys = [key for key, _ in plain._generate_examples("validation")]  # pylint: disable=protected-access
  assert plain_keys == ["00000_0000", "00001_0000"]
  with beam.Pipeline(options=beam_lib.pipeline_options()) as pipeline:
    keys = (pipeline | on_beam._generate_examples("validation")  # pylint: disable=protected-access
            | beam.Map(lambda key_example: key_example[0]))
    beam_testing.assert_that(keys, beam_testing.equal_to(plain_keys))


@pytest.mark.slow
def test_corpus_beam_build_equals_the_generator_build(tmp_path, monkeypatch):
  manual_dir = tmp_path / "manual"
  test_corpora.make_lrs3(manual_dir)
  plain = common.build(lrs3.LRS3, str(manual_dir), str(tmp_path / "plain"), num_workers=0,
                       use_beam=False)

  # Count detector loads and DoFn setups of the Beam build (DirectRunner in this
  # process), starting from no loaded detector.
  loads, setups = [], []

  class CountingDetector(retinaface.FaceDetector):
    def __init__(self, *args, **kwargs):
      loads.append(1)
      super().__init__(*args, **kwargs)

  original_setup = beam_lib.PreprocessClips.setup

  def counting_setup(self):
    setups.append(1)
    original_setup(self)

  monkeypatch.setattr(common, "_DETECTOR", None)
  monkeypatch.setattr(retinaface, "FaceDetector", CountingDetector)
  monkeypatch.setattr(beam_lib.PreprocessClips, "setup", counting_setup)
  on_beam = common.build(lrs3.LRS3, str(manual_dir), str(tmp_path / "beam"),
                         num_workers=0, use_beam=True)

  # Same clips kept and skipped, same ROIs, audio and metadata, byte for byte.
  _assert_same_builds(plain, on_beam)
  assert on_beam.info.metadata["skipped"]["test"] == {"no_face": 1}
  assert on_beam.info.metadata["speakers"] == plain.info.metadata["speakers"]
  # One detector for this worker process, shared by every split's DoFn instance.
  clips = sum(on_beam.info.metadata["clips_listed"].values())
  assert len(loads) == 1 and len(setups) >= len(on_beam.info.splits)
  assert clips > len(loads)
  # The job and stats files are gone.
  assert not list(pathlib.Path(on_beam.data_dir).glob("*.beam_*"))


@pytest.mark.parametrize("flags, workers, expected", [
    (None, 0, {"runner": "DirectRunner", "direct_running_mode": "in_memory"}),
    (None, 2, {"runner": "DirectRunner", "direct_num_workers": 2,
               "direct_running_mode": "multi_processing"}),
    ("runner=DataflowRunner,project=p,region=europe-west4", 2,
     {"runner": "DataflowRunner", "project": "p", "region": "europe-west4"}),
])
def test_pipeline_options_take_tfds_style_flags_over_local_defaults(flags, workers,
                                                                      expected):
  options = beam_lib.pipeline_options(flags, workers).get_all_options()
  assert {k: options[k] for k in expected} == expected
  assert isinstance(beam_lib.download_config(flags, workers).beam_options,
                    options_lib.PipelineOptions)


def test_shards_for_a_bucket_are_written_locally_then_copied(tmp_path):
  # ArrayRecord's writer opens local files only; gs:// paths here map to `bucket/`.
  bucket = tmp_path / "bucket"

  def open_in_bucket(original_open, path, mode):
    target = bucket / str(path).removeprefix("gs://b/")
    target.parent.mkdir(parents=True, exist_ok=True)
    return original_open(target, mode)

  records = [(i, f"record {i}".encode() * (i + 1)) for i in range(5)]
  writer = generation.StagingExampleWriter(file_adapters.FileFormat.ARRAY_RECORD)
  writer.write(str(tmp_path / "direct.array_record-00000-of-00001"), records)
  with epath_testing.mock_epath(open=open_in_bucket):
    writer.write(epath.Path("gs://b/ds/x.array_record-00000-of-00001"), records)
  assert ((bucket / "ds" / "x.array_record-00000-of-00001").read_bytes()
          == (tmp_path / "direct.array_record-00000-of-00001").read_bytes())
