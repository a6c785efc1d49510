"""The SynthAV TFDS builder: synthesized utterances with mouth video rendered from phones.

Each example is one utterance of one speaker: 16 kHz audio (int16), an 88x88 grayscale
mouth ROI per 25 fps frame rendered from the phone timeline (never from the audio),
the transcript, the phone timeline, the speaker and the audio-video offset that the
video was rendered with. Splits have disjoint voices.

Generation is deterministic: every utterance's text, voice, appearance and offsets come
from a seed derived from (config seed, split, speaker, utterance), and `tts.synthesize`
runs each eSpeak utterance in a process of its own (eSpeak keeps state between calls).
`keyed_example` makes one example; a local worker pool runs it for `tiny` and `small`,
Apache Beam for `large` (see `avsep_jax.data.generation`), with identical records.
"""

import dataclasses
import functools
import hashlib
import multiprocessing
import os

import numpy as np
import tensorflow_datasets as tfds
import tqdm

from avsep_jax.data import features
from avsep_jax.data import generation
from avsep_jax.data.synthav import render
from avsep_jax.data.synthav import text as text_lib
from avsep_jax.data.synthav import tts
from avsep_jax.data.synthav import voices

SAMPLE_RATE, FPS, ROI_SIZE = features.SAMPLE_RATE, features.FPS, features.ROI_SIZE
SAMPLES_PER_FRAME = SAMPLE_RATE // FPS  # 640
MAX_AV_OFFSET = 2  # video frames, either direction
SPLITS = features.SPLITS
# Held-out voices from another synthesizer; written only where Debian's flite is installed.
FLITE_SPLIT = "test_flite"


@dataclasses.dataclass
class SynthAVConfig(tfds.core.BuilderConfig):
  """Sizes of one SynthAV build.

  Attributes:
    speakers: number of distinct speakers per split.
    utterances_per_speaker: utterances each speaker says, per split.
    seed: the root of every random choice.
    beam: generate through Apache Beam unless the builder is told otherwise.
  """

  speakers: dict = dataclasses.field(default_factory=dict)
  utterances_per_speaker: dict = dataclasses.field(default_factory=dict)
  seed: int = 0
  beam: bool = False


def make_config(name, description, speakers, utterances, beam=False):
  """Sizes per split, in the order train, validation, test, test_flite."""
  splits = SPLITS + (FLITE_SPLIT,)
  return SynthAVConfig(
      name=name, description=description,
      speakers=dict(zip(splits, speakers)),
      utterances_per_speaker=dict(zip(splits, utterances)), beam=beam)


BUILDER_CONFIGS = [
    make_config("tiny", "Tests: a minute to make.", (8, 6, 6, 3), (4, 2, 2, 2)),
    make_config("small", "Default for main.py: ~3k utterances, minutes on 2 cores.",
                (64, 12, 12, 12), (40, 20, 20, 20)),
    make_config("large", "GPU training: ~38k utterances, generated on Apache Beam.",
                (400, 40, 40, 12), (90, 30, 30, 30), beam=True),
]


def utterance_seed(root, split, speaker_index, utterance_index):
  """A 32-bit seed from the utterance's coordinates (stable across runs and machines)."""
  key = f"{root}/{split}/{speaker_index}/{utterance_index}".encode()
  return int.from_bytes(hashlib.sha256(key).digest()[:4], "little")


def speaker_seed(speaker_id):
  """Seed of a speaker's appearance: the same face for every utterance of a voice."""
  return int.from_bytes(hashlib.sha256(speaker_id.encode()).digest()[:4], "little")


@dataclasses.dataclass(frozen=True)
class Job:
  """One utterance to make: where it sits in the split, who says it, its seed."""

  split: str
  speaker_index: int
  utterance_index: int
  voice: tts.Voice
  seed: int


def speaker_jobs(speaker, *, split, utterances, root_seed):
  """The `utterances` jobs of one (speaker index, voice) of `split`, in order."""
  speaker_index, voice = speaker
  return [Job(split, speaker_index, u, voice,
              utterance_seed(root_seed, split, speaker_index, u))
          for u in range(utterances)]


def example_key(job: Job) -> str:
  """'<speaker index>_<utterance index>', zero-padded: unique within a split."""
  return f"{job.speaker_index:05d}_{job.utterance_index:04d}"


def keyed_example(job: Job):
  """(key, example) of one job: the per-example function of both generation paths."""
  return example_key(job), make_example(job)


def make_example(job: Job) -> dict:
  """Synthesizes and renders one utterance: the feature dict of one example."""
  rng = np.random.default_rng(job.seed)
  sentence = text_lib.sentence(rng)
  utt = tts.synthesize(sentence, job.voice, job.seed)
  # Pad to whole video frames so the audio and video spans match exactly.
  num_frames = -(-len(utt.audio) // SAMPLES_PER_FRAME)
  audio = np.zeros(num_frames * SAMPLES_PER_FRAME, np.float32)
  audio[:len(utt.audio)] = utt.audio
  offset = int(rng.integers(-MAX_AV_OFFSET, MAX_AV_OFFSET + 1))
  appearance = render.sample_appearance(np.random.default_rng(speaker_seed(job.voice.speaker_id)))
  video = render.render_mouth(utt.phones, num_frames, appearance, rng, fps=FPS,
                              size=ROI_SIZE, offset_frames=offset)
  return {
      "audio": np.round(np.clip(audio, -1, 1) * 32767).astype(np.int16),
      "video": video,
      "text": sentence,
      "speaker_id": job.voice.speaker_id,
      "speaker_index": job.speaker_index,
      "phones": {
          "phone": [p for p, _, _ in utt.phones],
          "start": np.asarray([s for _, s, _ in utt.phones], np.float32),
          "end": np.asarray([e for _, _, e in utt.phones], np.float32),
      },
      "av_offset": offset,
  }


class SynthAV(generation.BeamOptionalBuilder):
  """SynthAV: eSpeak NG speech with mouth video rendered from the phone timeline.

  Splits: train / validation / test (disjoint eSpeak voice families), plus test_flite
  (flite's slt, rms and awb voices) where the `flite` command is installed.
  `num_workers` processes generate examples on the plain path (`use_beam`: see
  `avsep_jax.data.generation`); the bytes depend on neither.
  """

  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {
      "1.0.0": "First release.",
      "1.1.0": "Reproducible eSpeak audio: a fresh interpreter per utterance (voices that "
               "draw from libc rand()) and float64 resampling; up to 1 LSB from 1.0.0.",
  }
  BUILDER_CONFIGS = BUILDER_CONFIGS
  DEFAULT_CONFIG_NAME = "small"

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            **features.utterance_features(),
            "phones": tfds.features.Sequence({
                "phone": tfds.features.Text(),
                "start": np.float32,
                "end": np.float32,
            }),
            "av_offset": tfds.features.Scalar(
                dtype=np.int32, doc="video lags audio by this many frames"),
        }),
        metadata=tfds.core.MetadataDict(
            speakers=dict(self.builder_config.speakers),
            utterances_per_speaker=dict(self.builder_config.utterances_per_speaker)),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # everything is made here, nothing is downloaded
    splits = SPLITS + ((FLITE_SPLIT,) if tts.flite_available() else ())
    return {split: self._generate_examples(split) for split in splits}

  def _generate_examples(self, split):
    """(key, example) pairs of `split`: a generator, or a Beam transform (`uses_beam`)."""
    cfg = self.builder_config
    speakers = list(enumerate(voices.speakers(split, cfg.speakers[split], cfg.seed)))
    expand = functools.partial(speaker_jobs, split=split,
                               utterances=cfg.utterances_per_speaker[split],
                               root_seed=cfg.seed)
    if self.uses_beam:
      # Imported here: Beam is an optional extra, needed only on this path.
      from avsep_jax.data import beam as beam_lib  # pylint: disable=import-outside-toplevel
      return beam_lib.ExpandAndMap(speakers, expand, keyed_example)  # pylint: disable=no-value-for-parameter
    return self._generate_locally(split, [job for s in speakers for job in expand(s)])

  def _generate_locally(self, split, jobs):
    # Spawned, not forked, workers: the caller may hold JAX's threads, which a fork
    # would copy mid-flight; the workers themselves never import JAX.
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(self.num_workers) as pool:
      yield from tqdm.tqdm(pool.imap(keyed_example, jobs), total=len(jobs),
                           desc=f"SynthAV {self.builder_config.name}/{split}", unit="utt")


def build(config_name: str, data_dir: str, num_workers: int | None = None,
          use_beam: bool | None = None, beam_pipeline_options: str | None = None):
  """Builds (or finds already built) SynthAV `config_name` under `data_dir`.

  Args:
    config_name: 'tiny', 'small' or 'large'.
    data_dir: the TFDS data directory.
    num_workers: processes making utterances (default: one per CPU), in a pool or as
      the local Beam DirectRunner's workers.
    use_beam: force Beam (True) or the worker pool (False); None: the config's
      default (Beam for `large`), or Beam whenever `beam_pipeline_options` are given.
    beam_pipeline_options: 'key=value,...' Beam options as `tfds build` takes them,
      e.g. 'runner=DataflowRunner,project=P,region=R,temp_location=gs://B/tmp'
      (default: DirectRunner with `num_workers` processes).

  Returns:
    The prepared builder; `builder.data_dir` is where the files are.
  """
  names = [c.name for c in BUILDER_CONFIGS]
  if config_name not in names:
    raise ValueError(f"unknown SynthAV config {config_name!r}; choose from {names}")
  num_workers = num_workers or os.cpu_count() or 2
  if use_beam is None and beam_pipeline_options:
    use_beam = True
  builder = SynthAV(config=config_name, data_dir=data_dir, file_format="array_record",
                    num_workers=num_workers, use_beam=use_beam)
  download_config = None
  if builder.uses_beam:
    from avsep_jax.data import beam as beam_lib  # pylint: disable=import-outside-toplevel
    download_config = beam_lib.download_config(beam_pipeline_options, num_workers)
  builder.download_and_prepare(download_config=download_config)
  return builder
