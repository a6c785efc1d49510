r"""What a lip reader has to beat: chance, and the mouth opening alone.

  python experiments/lipread_baselines.py --data_dir=/tmp/tfds_small

Per-frame viseme accuracy (the labels of `avsep_jax.data.lipread`) on the validation
and test utterances of SynthAV (voices and faces never seen in training), for:

- chance: always the most frequent viseme of the training frames;
- mouth opening only: the opening measured from the pixels
  (`render.mouth_opening`), its value and its change from the previous frame, each
  cut into quantile bins on the training frames; each (value, change) cell answers
  the viseme most frequent in it on training frames: the best any classifier of those
  two numbers does on the training frames.

The lip reader's own accuracy on the same test utterances:
`python -m avsep_jax.main --config=configs/lipread.py:lite --workdir=DIR --mode=evaluate`.
"""

from absl import app
from absl import flags
import numpy as np
import tqdm

from avsep_jax.data import lipread
from avsep_jax.data import sources
from avsep_jax.data.synthav import render

_DATA_DIR = flags.DEFINE_string("data_dir", "/tmp/tfds", "TFDS data directory.")
_DATASET = flags.DEFINE_string("dataset", "synthav/small", "Dataset name.")
_BINS = flags.DEFINE_list("bins", ["12", "5"], "Quantile bins of opening, change.")


def frames(split):
  """(opening (N,), change (N,), labels (N,)) over every frame of every utterance."""
  source, _ = sources.open_split(_DATASET.value, split, _DATA_DIR.value)
  opening, change, labels = [], [], []
  for i in tqdm.tqdm(range(len(source)), desc=split, unit="utt"):
    utt = source[i]
    o = render.mouth_opening(utt["video"])
    opening.append(o)
    change.append(np.diff(o, prepend=o[:1]))
    labels.append(lipread.utterance_visemes(utt))
  return np.concatenate(opening), np.concatenate(change), np.concatenate(labels)


def main(argv):
  del argv
  n_open, n_change = map(int, _BINS.value)
  o, d, y = frames("train")
  edges_o = np.quantile(o, np.linspace(0, 1, n_open + 1)[1:-1])
  edges_d = np.quantile(d, np.linspace(0, 1, n_change + 1)[1:-1])

  def cell(o, d):
    return np.digitize(o, edges_o) * n_change + np.digitize(d, edges_d)

  counts = np.zeros((n_open * n_change, lipread.NUM_CLASSES), np.int64)
  np.add.at(counts, (cell(o, d), y), 1)
  table = counts.argmax(axis=1)
  majority = np.bincount(y, minlength=lipread.NUM_CLASSES).argmax()
  print(f"train: {len(y)} frames; most frequent viseme {majority}")
  print("| split | frames | chance | mouth opening only |")
  print("| --- | ---: | ---: | ---: |")
  for split in ("validation", "test"):
    o, d, y = frames(split)
    print(f"| {split} | {len(y)} | {np.mean(y == majority):.3f} | "
          f"{np.mean(table[cell(o, d)] == y):.3f} |")


if __name__ == "__main__":
  app.run(main)
