"""The input pipeline: mixtures made on the fly from single-speaker utterances (grain).

Each element is one mixture of S speakers (S fixed, or sampled in [min, max]) cut from
random utterances of distinct speakers, with random relative gains, optional background
noise, and padding up to the model's S_max slots:

    mixture (T,) float32, sources (S_max, T) float32, video (S_max, F, H, W) uint8,
    speaker_mask (S_max,) bool, av_offset (S_max,) int32, num_speakers () int32

or, given a frozen encoder's cached frame features (`avsep_jax.visual_cache`),
visual_features (S_max, F, d) float32 in place of video, cropped like it.

Batches stack these along a leading B axis: the model's input contract. The pipeline is
deterministic given its seed, and its iterator state can be saved and restored.
"""

import dataclasses

import grain
import jax
import numpy as np

from avsep_jax.data import augment
from avsep_jax.data import sources

SAMPLE_RATE = 16_000
FPS = 25
SAMPLES_PER_FRAME = SAMPLE_RATE // FPS


@dataclasses.dataclass(frozen=True)
class MixConfig:
  """How mixtures are made.

  Attributes:
    max_speakers: most speakers in a mixture.
    min_speakers: fewest speakers in a mixture; equal to max_speakers for fixed S.
    slots: S_max, the model's speaker slots that examples are padded to; None means
      max_speakers.
    segment_seconds: mixture length; rounded to whole video frames.
    gain_db: range of the per-speaker level, relative to a common loudness.
    noise_snr_db: range of mixture-to-noise ratio of background noise, or None.
    peak: mixtures louder than this are scaled down (sources with them).
    same_count_per: None, or how many consecutive mixtures (a global batch) share one
      speaker count, drawn per group: a batch then needs only that many slots, and a
      trainer can drop the rest (`train.compact_slots`) instead of computing padding.
  """

  max_speakers: int
  min_speakers: int
  slots: int | None = None
  segment_seconds: float = 3.0
  gain_db: tuple[float, float] = (-5.0, 5.0)
  noise_snr_db: tuple[float, float] | None = None
  peak: float = 0.9
  same_count_per: int | None = None

  @property
  def num_slots(self) -> int:
    return self.slots or self.max_speakers

  @property
  def segment_frames(self) -> int:
    return max(1, int(round(self.segment_seconds * FPS)))

  @property
  def segment_samples(self) -> int:
    return self.segment_frames * SAMPLES_PER_FRAME


class Mixer(grain.transforms.RandomMap):
  """Index -> one mixture example, drawn with the element's own rng."""

  def __init__(self, source, num_split_speakers: int, config: MixConfig, seed: int = 0,
               visual_features=None):
    """`visual_features`: None, or per-record (F_i, d) frame features indexed like
    `source`, which the examples then carry in place of video."""
    if not 1 <= config.min_speakers <= config.max_speakers:
      raise ValueError(f"need 1 <= min_speakers <= max_speakers, got "
                       f"{config.min_speakers}, {config.max_speakers}")
    if config.num_slots < config.max_speakers:
      raise ValueError(f"{config.max_speakers} speakers do not fit in "
                       f"{config.num_slots} slots")
    if config.max_speakers > num_split_speakers:
      raise ValueError(
          f"mixtures of up to {config.max_speakers} speakers need that many distinct "
          f"speakers, but this split has only {num_split_speakers}")
    if visual_features is not None and len(visual_features) != len(source):
      raise ValueError(f"the visual features hold {len(visual_features)} records, the "
                       f"split {len(source)}: they were made from another dataset")
    self.source = source
    self.visual_features = visual_features
    self.num_split_speakers = num_split_speakers
    self.config = config
    self.seed = seed

  def random_map(self, element, rng: np.random.Generator):
    """element: the mixture's position in the dataset (rng is seeded by it too)."""
    cfg = self.config
    if cfg.same_count_per:
      group = np.random.default_rng([self.seed, int(element) // cfg.same_count_per])
      n = int(group.integers(cfg.min_speakers, cfg.max_speakers + 1))
    else:
      n = int(rng.integers(cfg.min_speakers, cfg.max_speakers + 1))
    utterances = self._distinct_speakers(n, rng)
    frames, samples = cfg.segment_frames, cfg.segment_samples
    sources = np.zeros((cfg.num_slots, samples), np.float32)
    video = None
    offsets = np.zeros(cfg.num_slots, np.int32)
    for i, (index, utt) in enumerate(utterances):
      visual = (utt["video"] if self.visual_features is None
                else self.visual_features[index])
      audio, frames_i = _crop(utt["audio"], visual, frames, rng)
      if video is None:
        video = np.zeros((cfg.num_slots, frames) + frames_i.shape[1:], frames_i.dtype)
      rms = np.sqrt(np.mean(audio ** 2)) + 1e-4
      gain = 10 ** (rng.uniform(*cfg.gain_db) / 20) * 0.05 / rms
      sources[i] = audio * gain
      video[i] = frames_i
      offsets[i] = utt["av_offset"]
    mixture = sources.sum(axis=0)
    if cfg.noise_snr_db is not None:
      noise = rng.standard_normal(samples).astype(np.float32)
      snr = rng.uniform(*cfg.noise_snr_db)
      noise *= np.sqrt(np.mean(mixture ** 2) / np.mean(noise ** 2) / 10 ** (snr / 10))
      mixture = mixture + noise
    scale = min(1.0, cfg.peak / (np.abs(mixture).max() + 1e-9))
    return {
        "mixture": (mixture * scale).astype(np.float32),
        "sources": sources * np.float32(scale),
        "video" if self.visual_features is None else "visual_features": video,
        "speaker_mask": np.arange(cfg.num_slots) < n,
        "av_offset": offsets,
        "num_speakers": np.int32(n),
    }

  def _distinct_speakers(self, n, rng):
    """n (record index, utterance) of n different speakers, by rejection: no index of
    all records needed."""
    chosen, speakers = [], set()
    for _ in range(200 * n):
      index = int(rng.integers(len(self.source)))
      utt = self.source[index]
      if utt["speaker_index"] not in speakers:
        speakers.add(utt["speaker_index"])
        chosen.append((index, utt))
        if len(chosen) == n:
          return chosen
    raise RuntimeError(f"could not draw {n} distinct speakers from "
                       f"{self.num_split_speakers}; is the split's metadata right?")


def _crop(audio, video, frames, rng):
  """A random `frames`-long window of an utterance, padded with silence if short.

  Args:
    audio: (T,) int16 at 16 kHz.
    video: (F, ...) per video frame: mouth ROIs (F, H, W), or their frame features.

  Returns audio (frames * 640,) float32 in [-1, 1] and video (frames, ...). The
  window starts on a video frame boundary so both streams stay in step; a short
  utterance is placed at a random position, its video edge-padded (mouth at rest).
  """
  audio = audio.astype(np.float32) / 32768.0
  have = video.shape[0]
  if have >= frames:
    start = int(rng.integers(have - frames + 1))
    a = audio[start * SAMPLES_PER_FRAME:(start + frames) * SAMPLES_PER_FRAME]
    return a, video[start:start + frames]
  pad = int(rng.integers(frames - have + 1))
  a = np.zeros(frames * SAMPLES_PER_FRAME, np.float32)
  a[pad * SAMPLES_PER_FRAME:pad * SAMPLES_PER_FRAME + len(audio)] = audio
  v = np.pad(video, ((pad, frames - have - pad),) + ((0, 0),) * (video.ndim - 1),
             mode="edge")
  return a, v


def make_dataset(dataset: str, split: str, data_dir: str, config: MixConfig, *,
                 batch_size: int, seed: int, num_examples: int | None = None,
                 augment_video: bool = False, shard_index: int = 0,
                 shard_count: int = 1, visual_features=None) -> grain.IterDataset:
  """Batches of mixtures from one split.

  Args:
    dataset: e.g. 'synthav/small'.
    split: 'train' | 'validation' | 'test'.
    data_dir: the TFDS data directory.
    config: how mixtures are made.
    batch_size: examples per batch on this process (the remainder is dropped).
    seed: fixes every random choice.
    num_examples: a finite, fixed set of mixtures (evaluation); None = endless.
    augment_video: random flip/brightness/contrast/noise per clip (training only).
    shard_index, shard_count: this process's share (multi-host): batch k of shard i is
      rows [i * batch_size, (i + 1) * batch_size) of global batch k, the batch that one
      process with `shard_count * batch_size` would read, so any process count trains
      on the same data.
    visual_features: None, or this split's cached frame features
      (`visual_cache.SplitFeatures`): examples carry them in place of video (and are
      not augmented: the features are of the plain video).

  Returns:
    A grain IterDataset; `iter()` gives an iterator with get_state()/set_state().
  """
  source, metadata = sources.open_split(dataset, split, data_dir)
  if split not in metadata.get("speakers", {}):
    raise ValueError(f"{dataset} metadata does not say how many speakers split "
                     f"{split!r} has")
  mixer = Mixer(source, int(metadata["speakers"][split]), config, seed, visual_features)
  if num_examples is None:
    ds = grain.MapDataset.range(len(source)).repeat()
  else:
    ds = grain.MapDataset.range(num_examples)
  # Mixed before sharding: random_map seeds each element by its index, which must be
  # the global one (sharded first, every shard would draw the same mixtures). The
  # mixer also reads the index itself (groups that share a speaker count).
  ds = ds.map_with_index(lambda index, _: index).random_map(mixer, seed=seed)
  augment = augment_video and visual_features is None
  return batch_and_shard(ds, batch_size, seed=seed,
                         augment=_augment_batch if augment else None,
                         shard_index=shard_index, shard_count=shard_count)


def batch_and_shard(ds: grain.MapDataset, batch_size: int, *, seed: int, augment=None,
                    shard_index: int = 0, shard_count: int = 1) -> grain.IterDataset:
  """Examples -> this process's batches: batched, then `augment(batch, rng)` when
  given, then every `shard_count`-th global batch from `shard_index`; an iterable
  whose iterator has get_state()/set_state()."""
  ds = ds.batch(batch_size, drop_remainder=True)
  if augment is not None:
    ds = ds.random_map(augment, seed=seed + 1)
  # Whole global batches only, so every process gets as many batches as the others.
  ds = ds[:len(ds) - len(ds) % shard_count][shard_index::shard_count]
  return ds.to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=4))


def augment_on_host(video, rng: np.random.Generator):
  """`augment.augment_video` of (B, S, F, H, W) uint8 clips on this process's CPU,
  one draw from `rng`."""
  # On the host CPU: the pipeline must not occupy the accelerator the model trains on.
  # This process's own CPU device: jax.devices() lists every process's devices.
  with jax.default_device(jax.local_devices(backend="cpu")[0]):
    key = jax.random.key(int(rng.integers(2**31)))
    return np.asarray(augment.augment_video(video, key))


def _augment_batch(batch, rng: np.random.Generator):
  video = augment_on_host(batch["video"], rng)
  # Padded slots stay black: augmentation must not turn silence into a face.
  return dict(batch, video=video * batch["speaker_mask"][:, :, None, None, None])

