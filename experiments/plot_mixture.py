r"""Draws one SynthAV mixture: each speaker's mouth frames beside its spectrogram.

  python experiments/plot_mixture.py --data_dir=/tmp/tfds --output=docs/mixture.png

Needs the `experiments` extra (matplotlib).
"""

import itertools

from absl import app
from absl import flags
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np

from avsep_jax import signal
from avsep_jax.data import pipeline
from avsep_jax.data.synthav import builder as builder_lib

_DATA_DIR = flags.DEFINE_string("data_dir", "/tmp/tfds", "TFDS data dir.")
_DATASET = flags.DEFINE_string("dataset", "synthav/tiny", "Dataset to mix from.")
_SPEAKERS = flags.DEFINE_integer("speakers", 3, "Speakers in the mixture.")
_SEED = flags.DEFINE_integer("seed", 0, "Which mixture.")
_OUTPUT = flags.DEFINE_string("output", "docs/mixture.png", "PNG to write.")
_FRAMES_SHOWN = 8


def log_spec(x):
  """(T,) -> (bins, frames) dB for display."""
  mag = np.abs(np.asarray(signal.stft(x)))
  return 20 * np.log10(mag.T + 1e-4)


def main(argv):
  del argv
  builder_lib.build(_DATASET.value.split("/")[1], _DATA_DIR.value)
  config = pipeline.MixConfig(max_speakers=_SPEAKERS.value, min_speakers=_SPEAKERS.value,
                              segment_seconds=2.0)
  ds = pipeline.make_dataset(_DATASET.value, "validation", _DATA_DIR.value, config,
                             batch_size=1, seed=_SEED.value)
  batch = next(itertools.islice(iter(ds), 1))
  mixture, sources, video = batch["mixture"][0], batch["sources"][0], batch["video"][0]
  rows = 1 + _SPEAKERS.value
  fig = plt.figure(figsize=(14, 2.0 * rows))
  grid = fig.add_gridspec(rows, _FRAMES_SHOWN + 6)
  extent = (0, len(mixture) / 16000, 0, 8)
  ax = fig.add_subplot(grid[0, _FRAMES_SHOWN:])
  ax.imshow(log_spec(mixture), origin="lower", aspect="auto", cmap="magma",
            extent=extent, vmin=-80, vmax=20)
  ax.set_title("mixture", fontsize=9)
  ax.set_ylabel("kHz")
  frame_ids = np.linspace(0, video.shape[1] - 1, _FRAMES_SHOWN).astype(int)
  for s in range(_SPEAKERS.value):
    for j, f in enumerate(frame_ids):
      ax = fig.add_subplot(grid[s + 1, j])
      ax.imshow(video[s, f], cmap="gray", vmin=0, vmax=255)
      ax.set_xticks([]), ax.set_yticks([])
      if s == 0:
        ax.set_title(f"{f / 25:.2f} s", fontsize=8)
    ax = fig.add_subplot(grid[s + 1, _FRAMES_SHOWN:])
    ax.imshow(log_spec(sources[s]), origin="lower", aspect="auto", cmap="magma",
              extent=extent, vmin=-80, vmax=20)
    ax.set_title(f"speaker {s + 1} (av offset {batch['av_offset'][0, s]:+d} frames)",
                 fontsize=9)
    ax.set_ylabel("kHz")
  ax.set_xlabel("seconds")
  fig.suptitle("SynthAV validation mixture: mouth ROIs (25 fps) and each speaker's "
               "spectrogram", fontsize=10)
  fig.tight_layout()
  fig.savefig(_OUTPUT.value, dpi=80)
  print(f"wrote {_OUTPUT.value}")


if __name__ == "__main__":
  app.run(main)
