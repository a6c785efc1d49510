"""Mouth clips with per-frame viseme labels: the input of lip-reading pretraining (grain).

Each element is a random `frames`-long window of one utterance:

    video (F, H, W) uint8, visemes (F,) int32, speaker_index () int32

`visemes` are the SAPI viseme ids (`synthav.visemes.PHONE_TO_VISEME`, 0 = silence) of
the phones the frames show: the stored phone timeline with the stored audio-video
offset applied, so a label is what the mouth does in that frame, not what the audio
says. Batches stack these along a leading B axis. Splits have disjoint voices, so
validation accuracy is accuracy on voices (and faces) never seen in training.
"""

import grain
import numpy as np

from avsep_jax.data import pipeline
from avsep_jax.data import sources
from avsep_jax.data.synthav import visemes

FPS = pipeline.FPS
NUM_CLASSES = visemes.NUM_VISEMES


def utterance_visemes(utt) -> np.ndarray:
  """(F,) int32 viseme per video frame of a whole stored utterance."""
  phones = utt["phones"]
  timeline = list(zip(phones["phone"], phones["start"], phones["end"]))
  return visemes.frame_visemes(timeline, utt["video"].shape[0], FPS,
                               int(utt["av_offset"]))


def window(video, labels, frames, rng):
  """A random `frames`-long window of (F, H, W) video and its (F,) labels; a short
  utterance is placed at a random position and edge-padded (the mouth at rest)."""
  have = video.shape[0]
  if have >= frames:
    start = int(rng.integers(have - frames + 1))
    return video[start:start + frames], labels[start:start + frames]
  pad = int(rng.integers(frames - have + 1))
  widths = (pad, frames - have - pad)
  return (np.pad(video, (widths, (0, 0), (0, 0)), mode="edge"),
          np.pad(labels, widths, mode="edge"))


class Clipper(grain.transforms.RandomMap):
  """Index -> one labelled clip of the utterance at that index (modulo the split)."""

  def __init__(self, source, frames: int):
    if frames < 1:
      raise ValueError(f"clips need at least one frame, got {frames}")
    self.source = source
    self.frames = frames

  def random_map(self, element, rng: np.random.Generator):
    utt = self.source[int(element) % len(self.source)]
    video, labels = window(utt["video"], utterance_visemes(utt), self.frames, rng)
    return {"video": video, "visemes": labels,
            "speaker_index": np.int32(utt["speaker_index"])}


def make_dataset(dataset: str, split: str, data_dir: str, *, frames: int,
                 batch_size: int, seed: int, num_examples: int | None = None,
                 augment_video: bool = False, shard_index: int = 0,
                 shard_count: int = 1) -> grain.IterDataset:
  """Batches of labelled clips from one split, batched, augmented and sharded as
  `pipeline.make_dataset` does it (`pipeline.batch_and_shard`).

  Args:
    dataset: a dataset with phone timelines ('synthav/<config>').
    split: 'train' | 'validation' | 'test'.
    frames: clip length in video frames.
    num_examples: a fixed set of clips (evaluation); None = endless, shuffled.
    augment_video: the separation pipeline's random flip/brightness/contrast/noise.

  Raises:
    ValueError: the dataset has no phone timelines to label frames with.
  """
  source, _ = sources.open_split(dataset, split, data_dir)
  if "phones" not in source[0]:
    raise ValueError(
        f"{dataset} has no phone timelines: lip-reading pretraining labels frames "
        f"from them (SynthAV has them; CTC over LRS2/LRS3 transcripts is not built)")
  if num_examples is None:
    ds = grain.MapDataset.range(len(source)).shuffle(seed=seed).repeat()
  else:
    ds = grain.MapDataset.range(num_examples)
  ds = ds.random_map(Clipper(source, frames), seed=seed)
  return pipeline.batch_and_shard(ds, batch_size, seed=seed,
                                  augment=_augment_batch if augment_video else None,
                                  shard_index=shard_index, shard_count=shard_count)


def _augment_batch(batch, rng: np.random.Generator):
  """The separation pipeline's augmentation, each clip a one-slot example."""
  return dict(batch, video=pipeline.augment_on_host(batch["video"][:, None], rng)[:, 0])
