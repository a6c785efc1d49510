"""TensorBoard events for a run: scalars, separated audio, mask and spectrogram images.

tensorboardX makes the summaries and writes the event file without TensorFlow. Its
SummaryWriter hands events to a background thread whose `flush()` does not wait for the
queue, so a killed process lost its last scalars; events are written here synchronously
instead, and are in the file when a call returns.
"""

import os
import time

import numpy as np
from tensorboardX import event_file_writer
from tensorboardX import summary as tb_summary
from tensorboardX.proto import event_pb2

from avsep_jax import signal


def _to_image(x):
  """(rows, cols) float -> (rows, cols, 1) uint8, low values dark, frequency up."""
  lo, hi = np.percentile(x, 1), np.percentile(x, 99.5)
  img = np.clip((x - lo) / max(hi - lo, 1e-9), 0, 1)
  return (img[::-1, :, None] * 255).astype(np.uint8)


class Writer:
  """One events file in `workdir/tensorboard`."""

  def __init__(self, workdir):
    logdir = os.path.join(workdir, "tensorboard")
    os.makedirs(logdir, exist_ok=True)
    self._writer = event_file_writer.EventsWriter(os.path.join(logdir, "events"))

  def _write(self, step, summaries):
    for summary in summaries:
      self._writer.write_event(
          event_pb2.Event(wall_time=time.time(), step=int(step), summary=summary))
    self._writer.flush()

  def scalars(self, step, values):
    self._write(step, [tb_summary.scalar(name, float(value))
                       for name, value in values.items()])

  def examples(self, step, batch, separated, masks, *, sample_rate, count=2):
    """Audio and images of the first `count` examples of an evaluation batch.

    Args:
      batch: host batch (mixture (B, T), sources (B, S, T), speaker_mask (B, S)).
      separated: (B, S, T) model output.
      masks: (B, S, frames, bins) main-scale masks; complex masks are drawn by their
        magnitude.
    """
    out = []
    for b in range(min(count, separated.shape[0])):
      mixture = np.asarray(batch["mixture"][b])
      out.append(tb_summary.audio(f"example{b}/mixture", mixture, sample_rate))
      spec = 20 * np.log10(np.abs(np.asarray(signal.stft(mixture))).T + 1e-4)
      out.append(tb_summary.image(f"example{b}/mixture_spectrogram", _to_image(spec),
                                  dataformats="HWC"))
      for s in np.flatnonzero(batch["speaker_mask"][b]):
        out.append(tb_summary.audio(f"example{b}/speaker{s}_separated",
                                    np.asarray(separated[b, s]), sample_rate))
        out.append(tb_summary.image(f"example{b}/speaker{s}_mask",
                                    _to_image(np.abs(masks[b, s]).T), dataformats="HWC"))
    self._write(step, out)

  def close(self):
    self._writer.close()
