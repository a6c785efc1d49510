"""TensorBoard events for a run: scalars, separated audio, mask and spectrogram images.

tensorboardX writes the event files without TensorFlow.
"""

import os

import numpy as np
import tensorboardX

from avsep_jax import signal


def _to_image(x):
  """(rows, cols) float -> (rows, cols, 1) uint8, low values dark, frequency up."""
  lo, hi = np.percentile(x, 1), np.percentile(x, 99.5)
  img = np.clip((x - lo) / max(hi - lo, 1e-9), 0, 1)
  return (img[::-1, :, None] * 255).astype(np.uint8)


class Writer:
  """One events file in `workdir/tensorboard`."""

  def __init__(self, workdir):
    self._writer = tensorboardX.SummaryWriter(os.path.join(workdir, "tensorboard"))

  def scalars(self, step, values):
    for name, value in values.items():
      self._writer.add_scalar(name, float(value), step)
    self._writer.flush()

  def examples(self, step, batch, separated, masks, *, sample_rate, count=2):
    """Audio and images of the first `count` examples of an evaluation batch.

    Args:
      batch: host batch (mixture (B, T), sources (B, S, T), speaker_mask (B, S)).
      separated: (B, S, T) model output.
      masks: (B, S, frames, bins) main-scale masks.
    """
    for b in range(min(count, separated.shape[0])):
      mixture = batch["mixture"][b]
      self._writer.add_audio(f"example{b}/mixture", mixture, step, sample_rate)
      spec = 20 * np.log10(np.abs(np.asarray(signal.stft(mixture))).T + 1e-4)
      self._writer.add_image(f"example{b}/mixture_spectrogram", _to_image(spec), step,
                             dataformats="HWC")
      for s in np.flatnonzero(batch["speaker_mask"][b]):
        self._writer.add_audio(f"example{b}/speaker{s}_separated", separated[b, s],
                               step, sample_rate)
        self._writer.add_image(f"example{b}/speaker{s}_mask", _to_image(masks[b, s].T),
                               step, dataformats="HWC")
    self._writer.flush()

  def close(self):
    self._writer.close()
