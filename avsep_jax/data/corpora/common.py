"""What the LRS2, LRS3 and VoxCeleb2 builders share: clips, face preprocessing, the builder.

A corpus module lists its clips from the official layout (`list_clips(manual_dir, config)
-> {split: [Clip]}`); everything else is here. Each clip goes through
`vision.pipeline.face_tracks(max_tracks=1)` (RetinaFace loaded once per worker
process), on Apache Beam or in a local pool of worker processes, and becomes one
example with SynthAV's features:

    audio (T,) int16 16 kHz mono, video (F, 88, 88) uint8 25 fps mouth ROI,
    text, speaker_id, speaker_index, av_offset (0: unknown, the corpora are in sync),

plus `clip_id` and `face_visibility` (fraction of frames where the face was detected).
The dataset metadata holds `speakers` per split (what `pipeline.make_dataset` needs to
mix distinct speakers) and `skipped` per split and reason: clips without a face, listed
but missing, or that FFmpeg cannot read are left out and counted.
"""

import abc
import dataclasses
import hashlib
import json
import multiprocessing
import os
import threading

from etils import epath
import numpy as np
import tensorflow_datasets as tfds
import tqdm

from avsep_jax.data import features
from avsep_jax.data import generation
from avsep_jax.vision import avio, pipeline, retinaface

SAMPLE_RATE, FPS, ROI_SIZE = features.SAMPLE_RATE, features.FPS, features.ROI_SIZE
SPLITS = features.SPLITS


@dataclasses.dataclass(frozen=True)
class Clip:
  """One utterance video of the corpus.

  Attributes:
    clip_id: unique within the corpus, e.g. 'main/6330311066473698535/00011'.
    speaker_id: who speaks (for LRS2 the programme, for LRS3 the talk: the corpora
      have no speaker labels, and these are the closest units).
    video: path of the mp4.
    audio: path of a separate audio file (VoxCeleb2's m4a), or None for the mp4's own.
    transcript: path of the LRS `.txt`, or None.
  """

  clip_id: str
  speaker_id: str
  video: str
  audio: str | None = None
  transcript: str | None = None


@dataclasses.dataclass
class CorpusConfig(tfds.core.BuilderConfig):
  """Which parts of a corpus become which split.

  Attributes:
    with_pretrain: add the corpus's `pretrain` part to the train split.
    validation_fraction: for corpora without an official validation list, the share
      of training speakers held out (chosen by a hash of their id: stable across builds
      and machines), at least `min_validation_speakers`.
    min_validation_speakers: enough for mixtures of that many speakers.
    beam: generate through Apache Beam unless the builder is told otherwise (see
      `avsep_jax.data.generation`).
  """

  with_pretrain: bool = False
  validation_fraction: float = 0.02
  min_validation_speakers: int = 2
  beam: bool = True


def read_transcript(path):
  """The `Text:` line of an LRS2/LRS3 `.txt` ('' if there is none)."""
  if path is None or not os.path.isfile(path):
    return ""
  with open(path, encoding="utf-8", errors="replace") as f:
    for line in f:
      if line.startswith("Text:"):
        return line[len("Text:"):].strip().replace("{", "").replace("}", "")
  return ""


def held_out(ids, fraction, minimum):
  """A stable subset of `ids` (by sha256 order): max(minimum, round(fraction * n)),
  leaving at least `minimum` ids out of it when there are enough."""
  ids = sorted(set(ids), key=lambda s: hashlib.sha256(s.encode()).hexdigest())
  n = max(minimum, round(fraction * len(ids)))
  n = min(n, max(0, len(ids) - minimum))
  return set(ids[:n])


def split_by_speaker(clips, fraction, minimum):
  """(train, validation) clips, validation holding `held_out` speakers."""
  val = held_out([c.speaker_id for c in clips], fraction, minimum)
  return ([c for c in clips if c.speaker_id not in val],
          [c for c in clips if c.speaker_id in val])


# --------------------------------------------------------------- Preprocessing

_DETECTOR = None
_DETECTOR_LOCK = threading.Lock()  # Beam may set up DoFns on several threads


def detector():
  """This process's RetinaFace, loaded on first use (once per process)."""
  global _DETECTOR  # pylint: disable=global-statement
  with _DETECTOR_LOCK:
    if _DETECTOR is None:
      _DETECTOR = retinaface.FaceDetector(
          config=retinaface.DetectorConfig(max_size=640))
  return _DETECTOR


def preprocess(clip, face_detector=None):
  """One clip -> (example dict, None) or (None, why it was skipped).

  `face_detector` defaults to this process's `detector()`.
  """
  if not os.path.isfile(clip.video):
    return None, "missing"
  try:
    faces = pipeline.face_tracks(clip.video, max_tracks=1,
                                 detector=face_detector or detector(),
                                 roi_size=ROI_SIZE, fps=FPS, sample_rate=SAMPLE_RATE,
                                 with_audio=clip.audio is None)
    audio = faces.audio
    if audio is None:
      audio = avio.fit_audio_to_frames(
          avio.read_audio(clip.audio, SAMPLE_RATE, align_to_video=False),
          faces.num_frames, fps=FPS, sample_rate=SAMPLE_RATE)
  except pipeline.NoFaceError:
    return None, "no_face"
  except avio.MediaError:
    return None, "unreadable"
  track = faces.tracks[0]
  return {
      "audio": np.round(np.clip(audio, -1, 1) * 32767).astype(np.int16),
      "video": faces.rois[0],
      "text": read_transcript(clip.transcript),
      "speaker_id": clip.speaker_id,
      "clip_id": clip.clip_id,
      "av_offset": 0,
      "face_visibility": np.float32(track.visibility),
  }, None


def preprocess_job(job, face_detector=None):
  """(speaker index, clip) -> (clip, example or None, skip reason or None): the
  per-clip function of both generation paths (the worker pool and Beam)."""
  speaker_index, clip = job
  example, reason = preprocess(clip, face_detector)
  if example is not None:
    example["speaker_index"] = speaker_index
  return clip, example, reason


def encode_job(job):
  """(speaker index, clip) -> one line of JSON (Beam reads jobs from a text file)."""
  speaker_index, clip = job
  return json.dumps({"speaker_index": speaker_index, **dataclasses.asdict(clip)})


def decode_job(line):
  """Inverse of `encode_job`."""
  fields = json.loads(line)
  return fields.pop("speaker_index"), Clip(**fields)


@dataclasses.dataclass
class SplitStats:
  """What became of a split's clips: the speakers kept, the clips skipped by reason."""

  speakers: set = dataclasses.field(default_factory=set)
  skipped: dict = dataclasses.field(default_factory=dict)

  def add(self, clip, reason):
    """Counts one clip: kept when `reason` is None."""
    if reason is None:
      self.speakers.add(clip.speaker_id)
    else:
      self.skipped[reason] = self.skipped.get(reason, 0) + 1

  def merge(self, other):
    self.speakers |= other.speakers
    for reason, count in other.skipped.items():
      self.skipped[reason] = self.skipped.get(reason, 0) + count

  def summary(self):
    """JSON-ready: {'speakers': number kept, 'skipped': {reason: clips}}."""
    return {"speakers": len(self.speakers), "skipped": dict(sorted(self.skipped.items()))}


# --------------------------------------------------------------------- Builder


class CorpusBuilder(generation.BeamOptionalBuilder, skip_registration=True):
  """A real AV corpus from its manual download directory, through our face pipeline.

  Subclasses set VERSION, BUILDER_CONFIGS, MANUAL_DOWNLOAD_INSTRUCTIONS and implement
  `list_clips`. Builders are not registered by name in TFDS: build them with
  `avsep_jax.data.corpora.build` (or `python -m avsep_jax.data.corpora`) and read them
  with `tfds.builder_from_directory` (what `data.sources.open_split` does).

  Every config generates through Beam unless `use_beam=False` (the corpora hold up to
  a million clips); the plain path runs the face pipeline in `num_workers` processes
  (0: in this one). See `avsep_jax.data.generation`.
  """

  def __init__(self, **kwargs):
    super().__init__(**kwargs)
    self._pool = None
    self._beam_files = {}  # split -> (jobs file, stats file), while generating

  def download_and_prepare(self, *args, **kwargs):
    """TFDS's, with one worker pool for all splits (each worker compiles RetinaFace
    once), shut down at the end."""
    try:
      return super().download_and_prepare(*args, **kwargs)
    finally:
      if self._pool is not None:
        self._pool.terminate()
        self._pool.join()
        self._pool = None

  @abc.abstractmethod
  def list_clips(self, manual_dir: str) -> dict:
    """{split: [Clip]} from the official layout under `manual_dir`."""

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        description=self.__doc__,
        features=tfds.features.FeaturesDict({
            **features.utterance_features(),
            "clip_id": tfds.features.Text(),
            "av_offset": tfds.features.Scalar(
                dtype=np.int32, doc="video lags audio by this many frames (0: unknown)"),
            "face_visibility": tfds.features.Scalar(
                dtype=np.float32, doc="fraction of frames where the face was detected"),
        }),
        metadata=tfds.core.MetadataDict(),
        homepage=getattr(self, "HOMEPAGE", None),
    )

  def _split_generators(self, dl_manager):
    manual_dir = os.fspath(dl_manager.manual_dir)
    clips = self.list_clips(manual_dir)
    empty = [s for s in SPLITS if not clips.get(s)]
    if empty:
      raise ValueError(f"{self.name}: no clips for split(s) {empty} under {manual_dir}; "
                       f"is it the corpus's official layout?\n"
                       f"{self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
    metadata = self.info.metadata
    metadata["speakers"] = {}
    metadata["skipped"] = {}
    metadata["clips_listed"] = {s: len(c) for s, c in clips.items()}
    return {split: self._generate_examples(split, clips[split]) for split in clips}

  def _generate_examples(self, split, clips):
    """(clip id, example) pairs: a generator, or a Beam transform (`uses_beam`)."""
    speakers = sorted({c.speaker_id for c in clips})
    index = {s: i for i, s in enumerate(speakers)}
    jobs = [(index[c.speaker_id], c) for c in clips]
    if not self.uses_beam:
      return self._generate_locally(split, jobs)
    # Imported here: Beam is an optional extra, needed only on this path.
    from avsep_jax.data import beam as beam_lib  # pylint: disable=import-outside-toplevel
    # The jobs go through a file in the dataset's (temporary) directory, which every
    # worker sees, rather than through the pipeline graph, which runners cap in size.
    jobs_path = epath.Path(self.data_dir) / f"{split}.beam_jobs.jsonl"
    stats_path = epath.Path(self.data_dir) / f"{split}.beam_stats.json"
    jobs_path.write_text("".join(encode_job(job) + "\n" for job in jobs))
    self._beam_files[split] = (jobs_path, stats_path)
    return beam_lib.CorpusExamples(os.fspath(jobs_path), os.fspath(stats_path))  # pylint: disable=no-value-for-parameter

  def _generate_locally(self, split, jobs):
    stats = SplitStats()
    for clip, example, reason in self._run(jobs, f"{self.name}/{split}"):
      stats.add(clip, reason)
      if example is not None:
        yield clip.clip_id, example
    self._record_stats(split, stats.summary(), len(jobs))

  def _download_and_prepare(self, dl_manager, download_config):
    super()._download_and_prepare(dl_manager, download_config)
    # Beam has run: its workers left each split's summary beside the records.
    for split, (jobs_path, stats_path) in self._beam_files.items():
      self._record_stats(split, json.loads(stats_path.read_text()),
                         self.info.metadata["clips_listed"][split])
      jobs_path.unlink()
      stats_path.unlink()
    self._beam_files = {}

  def _record_stats(self, split, summary, num_clips):
    """Puts a `SplitStats.summary()` into the dataset metadata."""
    # Speaker indices stay those of the listing (the mixer only compares them); the
    # count is of speakers with at least one kept clip.
    self.info.metadata["speakers"][split] = summary["speakers"]
    self.info.metadata["skipped"][split] = skipped = summary["skipped"]
    if skipped:
      print(f"{self.name}/{split}: skipped {sum(skipped.values())} of {num_clips} "
            f"clips ({', '.join(f'{k}: {v}' for k, v in sorted(skipped.items()))})")

  def _run(self, jobs, desc):
    bar = tqdm.tqdm(total=len(jobs), desc=desc, unit="clip")
    if self.num_workers == 0:
      for job in jobs:
        yield preprocess_job(job)
        bar.update(1)
      bar.close()
      return
    if self._pool is None:
      # Spawned, not forked, workers: this process may hold JAX's threads.
      self._pool = multiprocessing.get_context("spawn").Pool(self.num_workers)
    for result in self._pool.imap(preprocess_job, jobs, chunksize=4):
      yield result
      bar.update(1)
    bar.close()


def build(builder_cls, manual_dir, data_dir, config=None, num_workers=None,
          use_beam=None, beam_pipeline_options=None):
  """Builds (or finds already built) one corpus under `data_dir`.

  Args:
    builder_cls: e.g. `lrs3.LRS3`.
    manual_dir: where the corpus was downloaded and extracted (its official layout).
    data_dir: the TFDS data directory to build into.
    config: a config name (default: the builder's default) or a `CorpusConfig`.
    num_workers: face-pipeline processes (default: one per CPU; 0: in this process),
      in a pool or as the local Beam DirectRunner's workers.
    use_beam: force Beam (True) or the worker pool (False); None: the config's
      default (Beam), or Beam whenever `beam_pipeline_options` are given.
    beam_pipeline_options: 'key=value,...' Beam options as `tfds build` takes them,
      e.g. 'runner=FlinkRunner,flink_master=HOST:8081' (default: DirectRunner with
      `num_workers` processes).

  Returns:
    The prepared builder; `builder.data_dir` is where the files are.
  """
  names = [c.name for c in builder_cls.BUILDER_CONFIGS]
  config = config or builder_cls.DEFAULT_CONFIG_NAME
  if isinstance(config, str) and config not in names:
    raise ValueError(f"unknown {builder_cls.name} config {config!r}; choose from {names}")
  if not os.path.isdir(manual_dir):
    raise FileNotFoundError(f"manual_dir {manual_dir} does not exist.\n"
                            f"{builder_cls.MANUAL_DOWNLOAD_INSTRUCTIONS}")
  if num_workers is None:
    num_workers = os.cpu_count() or 2
  if use_beam is None and beam_pipeline_options:
    use_beam = True
  builder = builder_cls(config=config, data_dir=data_dir, file_format="array_record",
                        num_workers=num_workers, use_beam=use_beam)
  if builder.uses_beam:
    from avsep_jax.data import beam as beam_lib  # pylint: disable=import-outside-toplevel
    download_config = beam_lib.download_config(beam_pipeline_options, num_workers,
                                               manual_dir=manual_dir)
  else:
    download_config = tfds.download.DownloadConfig(manual_dir=manual_dir)
  builder.download_and_prepare(download_config=download_config)
  return builder
