r"""Writes one SynthAV test mixture as the .npz that `python -m avsep_jax.stream` reads.

  python experiments/write_mixture.py --data_dir=/tmp/tfds --speakers=2 --seconds=6 \
      --output=/tmp/test_mix.npz

The file holds `mixture` (T,) float32 at 16 kHz, `video` (S, F, 88, 88) uint8 mouth
ROIs at 25 fps, `speaker_mask` (S,) bool and the reference `sources` (S, T) float32, so
a streamed (or separated) result can be scored against them. The same flags give the
same mixture: it is the `--seed`-th draw of the trainer's mixing pipeline on the
test split (voices no training run has seen).
"""

from absl import app
from absl import flags
import numpy as np

from avsep_jax.data import pipeline

_DATA_DIR = flags.DEFINE_string("data_dir", "/tmp/tfds", "TFDS data dir.")
_DATASET = flags.DEFINE_string("dataset", "synthav/small", "Dataset to mix from.")
_SPEAKERS = flags.DEFINE_integer("speakers", 2, "Speakers in the mixture (= slots).")
_SECONDS = flags.DEFINE_float("seconds", 6.0, "Mixture length.")
_SEED = flags.DEFINE_integer("seed", 0, "Which mixture.")
_OUTPUT = flags.DEFINE_string("output", None, "The .npz to write.", required=True)


def main(argv):
  del argv
  config = pipeline.MixConfig(max_speakers=_SPEAKERS.value, min_speakers=_SPEAKERS.value,
                              segment_seconds=_SECONDS.value)
  ds = pipeline.make_dataset(_DATASET.value, "test", _DATA_DIR.value, config,
                             batch_size=1, seed=_SEED.value, num_examples=1)
  batch = next(iter(ds))
  np.savez(_OUTPUT.value, mixture=batch["mixture"][0], video=batch["video"][0],
           speaker_mask=batch["speaker_mask"][0], sources=batch["sources"][0])
  print(f"{_OUTPUT.value}: {_SPEAKERS.value} speakers, {_SECONDS.value:g} s, "
        f"video {batch['video'][0].shape}")


if __name__ == "__main__":
  app.run(main)
