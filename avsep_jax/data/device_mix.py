"""On-device mixing: a split loaded once into device memory, mixtures made inside jit.

A host pipeline cannot feed an accelerator thousands of mixtures per second; when a
split fits in device memory (SynthAV small: ~1 GB) it is loaded once as padded arrays
and each global batch is drawn by one jitted function of (key, arrays), with the same
fields, shapes, dtypes and distributions as `pipeline.Mixer` (grain):

    mixture (B, T) float32, sources (B, S, T) float32, video (B, S, F, H, W) uint8,
    speaker_mask (B, S) bool, av_offset (B, S) int32, num_speakers (B,) int32

Batch k is a function of (seed, k) alone, so a resumed run needs only its step.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from avsep_jax.data import augment
from avsep_jax.data import pipeline
from avsep_jax.data import sources

SAMPLES_PER_FRAME = pipeline.SAMPLES_PER_FRAME
# Records decoded per read: bulk reads are much faster than one record at a time.
_READ_CHUNK = 256
# fold_in constant separating the mixtures' random stream from the trainer's dropout
# stream, which is fold_in(key(seed), step) too.
_DATA_STREAM = 0x6D6978


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class DeviceData:
  """One split as padded arrays (N utterances, K speakers).

  Attributes:
    audio: (N, F_max * 640) int16, zero after each utterance's end.
    video: (N, F_max, H, W) uint8, zero after each utterance's last frame.
    frames: (N,) int32 video frames per utterance (its audio is frames * 640 samples).
    av_offset: (N,) int32.
    speaker_utterances: (K, U_max) int32 utterance indices of each speaker (row k
      valid up to speaker_counts[k]); distinct speakers are drawn from here without
      rejection.
    speaker_counts: (K,) int32 utterances per speaker.
  """

  audio: jax.Array
  video: jax.Array
  frames: jax.Array
  av_offset: jax.Array
  speaker_utterances: jax.Array
  speaker_counts: jax.Array


def default_max_bytes(device=None) -> int:
  """Half the device's memory when it reports it (the model needs the rest), else
  4 GiB (CPU devices report none)."""
  device = device or jax.local_devices()[0]
  stats = device.memory_stats() or {}
  return stats.get("bytes_limit", 8 << 30) // 2


def read_split(dataset: str, split: str, data_dir: str, *,
               max_bytes: int | None = None) -> DeviceData:
  """Reads a whole split into padded host (numpy) arrays.

  Args:
    dataset: e.g. 'synthav/small'.
    split: 'train' | 'validation' | 'test'.
    data_dir: the TFDS data directory.
    max_bytes: the most the padded arrays may take on one device; None:
      `default_max_bytes()`.

  Returns:
    DeviceData holding numpy arrays.

  Raises:
    ValueError: the padded split would not fit `max_bytes` (checked before the
      padded arrays are allocated).
  """
  max_bytes = default_max_bytes() if max_bytes is None else max_bytes
  source, _ = sources.open_split(dataset, split, data_dir)
  records = []
  for start in range(0, len(source), _READ_CHUNK):
    records += source.__getitems__(range(start, min(start + _READ_CHUNK, len(source))))
  frames = np.array([r["video"].shape[0] for r in records], np.int32)
  f_max, roi = int(frames.max()), records[0]["video"].shape[1:]
  need = len(records) * f_max * (SAMPLES_PER_FRAME * 2 + int(np.prod(roi)))
  if need > max_bytes:
    raise ValueError(
        f"{dataset} split {split!r} needs {need / 2**30:.2f} GiB on the device padded to "
        f"its longest utterance ({len(records)} x {f_max} frames), more than the "
        f"{max_bytes / 2**30:.2f} GiB allowed; use config.input='grain'")
  audio = np.zeros((len(records), f_max * SAMPLES_PER_FRAME), np.int16)
  video = np.zeros((len(records), f_max) + roi, np.uint8)
  for i, r in enumerate(records):
    # Builders pad audio to whole video frames; a longer tail would have no video.
    a = r["audio"][:frames[i] * SAMPLES_PER_FRAME]
    audio[i, :len(a)] = a
    video[i, :frames[i]] = r["video"]
  # Speaker indices may be sparse: compact ids 0..K-1 index the table.
  _, speaker = np.unique([int(r["speaker_index"]) for r in records], return_inverse=True)
  counts = np.bincount(speaker).astype(np.int32)
  table = np.zeros((len(counts), counts.max()), np.int32)
  for k in range(len(counts)):
    members = np.flatnonzero(speaker == k)
    table[k] = np.resize(members, counts.max())
  return DeviceData(
      audio=audio, video=video, frames=frames,
      av_offset=np.array([int(r["av_offset"]) for r in records], np.int32),
      speaker_utterances=table, speaker_counts=counts)


def load_split(dataset: str, split: str, data_dir: str, sharding=None, *,
               max_bytes: int | None = None) -> DeviceData:
  """A whole split on the devices, replicated on each (see `read_split`).

  Args:
    sharding: where the arrays go: a NamedSharding (replicated over its mesh; its
      spec is ignored) or None for the default device.
  """
  data = read_split(dataset, split, data_dir, max_bytes=max_bytes)
  if sharding is not None:
    sharding = NamedSharding(sharding.mesh, P())
  return jax.device_put(data, sharding)


def _draw_utterances(key, data: DeviceData, num_slots):
  """(num_slots,) utterance indices of distinct speakers (while the split has enough).

  Every slot is drawn, used or not, so shapes stay static; a mixture of n speakers
  keeps the first n. Gumbel top-k over log(utterances per speaker) is successive
  sampling without replacement with those weights: the distribution of the grain
  path's rejection sampler, which draws utterances uniformly and rejects repeated
  speakers.
  """
  k_speakers, k_utterance = jax.random.split(key)
  num_speakers = data.speaker_counts.shape[0]
  scores = (jnp.log(data.speaker_counts.astype(jnp.float32))
            + jax.random.gumbel(k_speakers, (num_speakers,)))
  _, speakers = jax.lax.top_k(scores, min(num_slots, num_speakers))
  speakers = jnp.pad(speakers, (0, num_slots - speakers.shape[0]))
  counts = data.speaker_counts[speakers]
  pick = jnp.floor(jax.random.uniform(k_utterance, (num_slots,)) * counts)
  pick = jnp.minimum(pick.astype(jnp.int32), counts - 1)
  return data.speaker_utterances[speakers, pick]


def _crop(key, data: DeviceData, utterance, frames):
  """A random `frames`-long window of one utterance, as `pipeline._crop` makes it.

  Returns audio (frames * 640,) float32 and video (frames, H, W) uint8. Long
  utterances start on a random video frame; short ones sit at a random position in
  silence, their video edge-padded. Both are gathers of whole frames: frame j of the
  window is frame start + j of the utterance (negative start: the short case).
  """
  have = data.frames[utterance]
  start = jnp.where(have >= frames,
                    jax.random.randint(key, (), 0, jnp.maximum(have - frames, 0) + 1),
                    -jax.random.randint(key, (), 0, jnp.maximum(frames - have, 0) + 1))
  index = start + jnp.arange(frames)
  inside = (index >= 0) & (index < have)
  # One gather of the window's frames each: indexing the utterance first would copy
  # its whole row (up to F_max frames) per source.
  audio = data.audio.reshape(data.audio.shape[0], -1, SAMPLES_PER_FRAME)
  audio = audio[utterance, jnp.clip(index, 0, audio.shape[1] - 1)]
  audio = jnp.where(inside[:, None], audio, 0)
  video = data.video[utterance, jnp.clip(index, 0, have - 1)]
  return audio.reshape(-1).astype(jnp.float32) / 32768.0, video


def mix_example(key, data: DeviceData, config: pipeline.MixConfig):
  """One mixture from `data`: the fields of `pipeline.Mixer.random_map`, unbatched."""
  slots, frames = config.num_slots, config.segment_frames
  k_count, k_draw, k_crop, k_gain, k_noise, k_snr = jax.random.split(key, 6)
  n = jax.random.randint(k_count, (), config.min_speakers, config.max_speakers + 1)
  mask = jnp.arange(slots) < n
  utterances = _draw_utterances(k_draw, data, slots)
  audio, video = jax.vmap(_crop, in_axes=(0, None, 0, None))(
      jax.random.split(k_crop, slots), data, utterances, frames)
  rms = jnp.sqrt(jnp.mean(audio ** 2, axis=-1)) + 1e-4
  gain_db = jax.random.uniform(k_gain, (slots,), minval=config.gain_db[0],
                               maxval=config.gain_db[1])
  gain = 10 ** (gain_db / 20) * 0.05 / rms
  # Padded slots: silent audio and black video, as the model's contract wants.
  sources = jnp.where(mask[:, None], audio * gain[:, None], 0.0)
  video = jnp.where(mask[:, None, None, None], video, 0).astype(jnp.uint8)
  mixture = sources.sum(axis=0)
  if config.noise_snr_db is not None:
    noise = jax.random.normal(k_noise, mixture.shape)
    snr = jax.random.uniform(k_snr, (), minval=config.noise_snr_db[0],
                             maxval=config.noise_snr_db[1])
    noise *= jnp.sqrt(jnp.mean(mixture ** 2) / jnp.mean(noise ** 2) / 10 ** (snr / 10))
    mixture = mixture + noise
  scale = jnp.minimum(1.0, config.peak / (jnp.max(jnp.abs(mixture)) + 1e-9))
  return {
      "mixture": mixture * scale,
      "sources": sources * scale,
      "video": video,
      "speaker_mask": mask,
      "av_offset": jnp.where(mask, data.av_offset[utterances], 0),
      "num_speakers": n.astype(jnp.int32),
  }


def check_config(config: pipeline.MixConfig, num_split_speakers: int):
  """Raises ValueError for the settings `pipeline.Mixer` refuses."""
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


@functools.cache  # one jitted function, so one compile, per setting
def make_mix_batch(config: pipeline.MixConfig, batch_size: int, *,
                   augment_video: bool = False, sharding=None):
  """The jitted (key, DeviceData) -> global batch of `batch_size` mixtures.

  Args:
    config: how mixtures are made (as for the grain path).
    batch_size: B, the global batch.
    augment_video: random flip/brightness/contrast/noise per clip, padded slots kept
      black (the grain path's `augment_video`).
    sharding: the batch's NamedSharding (leading axis); None: the default device.

  Returns:
    fn(key, data) -> {mixture (B, T) f32, sources (B, S, T) f32, video (B, S, F, H, W)
    uint8, speaker_mask (B, S) bool, av_offset (B, S) int32, num_speakers (B,) int32}.
  """

  @functools.partial(jax.jit, out_shardings=sharding)
  def mix_batch(key, data):
    k_mix, k_augment = jax.random.split(key)
    batch = jax.vmap(mix_example, in_axes=(0, None, None))(
        jax.random.split(k_mix, batch_size), data, config)
    if augment_video:
      video = augment.augment_video(batch["video"], k_augment)
      batch["video"] = jnp.where(batch["speaker_mask"][:, :, None, None, None], video, 0)
    return batch

  return mix_batch


@functools.partial(jax.jit, static_argnums=0)
def step_key(seed: int, step):
  """The key of batch `step` of a run seeded `seed` (one dispatch, not three)."""
  return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), _DATA_STREAM), step)


class DeviceIterator:
  """Endless global batches mixed on the device; batch k depends on (seed, k) only.

  `get_state()` / `set_state()` hold just the step, so checkpoints store it as JSON
  and a resumed run continues with the batch it would have drawn next.
  """

  def __init__(self, data: DeviceData, mix_batch, seed: int, step: int = 0):
    self.data, self.mix_batch, self.seed, self.step = data, mix_batch, seed, step

  def __iter__(self):
    return self

  def __next__(self):
    batch = self.mix_batch(step_key(self.seed, self.step), self.data)
    self.step += 1
    return batch

  def get_state(self) -> dict:
    return {"step": self.step}

  def set_state(self, state: dict):
    self.step = int(state["step"])


def make_iterator_factory(dataset: str, data_dir: str, config: pipeline.MixConfig, *,
                          batch_size: int, seed: int, augment_video: bool = False,
                          sharding=None, max_bytes: int | None = None):
  """Loads the train split once; returns () -> a fresh DeviceIterator at step 0.

  A factory because resuming may build several iterators (one per checkpoint tried),
  and each must not load the split again.
  """
  data = load_split(dataset, "train", data_dir, sharding, max_bytes=max_bytes)
  check_config(config, data.speaker_counts.shape[0])
  mix_batch = make_mix_batch(config, batch_size, augment_video=augment_video,
                             sharding=sharding)
  return lambda: DeviceIterator(data, mix_batch, seed)
