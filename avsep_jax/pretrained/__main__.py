r"""Makes the shipped weights' file from a training workdir, scored and described.

  python -m avsep_jax.pretrained --checkpoint=WORKDIR_OR_FILE --data_dir=DIR \
      [--which=best] [--test_json=WORKDIR/eval/test_best_<step>.json] [--dtype=float32] \
      [--output=avsep_jax/pretrained/lite_6spk.safetensors] [--trained_by="COMMAND"] \
      [--storage=int8]

Restores the checkpoint's parameters (`loading.load_model`), or reads a weights file
(one that came back from a GPU, say, with --dtype=float32 for CPUs), scores them on the
reference mixtures (`pretrained.reference_mixtures`; SynthAV tiny is built under DIR
first if absent), and writes the file with a card holding the source, this command, the
reference figure and, with --test_json, the run's test-split table (from
`python -m avsep_jax.main --mode=evaluate`). The figure is of the float32 weights; the
file stores them as --storage says (`pretrained.STORAGES`), and for int8 the card also
holds the stored weights' figure and the largest change of one mixture's score
(tests/test_pretrained.py holds the shipped files to 0.05 dB). Prints the card.
"""

import argparse
import datetime
import json
import os
import shlex
import sys

import numpy as np
import scipy.stats
from absl import logging

from avsep_jax import loading
from avsep_jax import pretrained
from avsep_jax.data.synthav import builder


def main(argv=None):
  parser = argparse.ArgumentParser(prog="python -m avsep_jax.pretrained",
                                   description=__doc__.splitlines()[0])
  parser.add_argument("--checkpoint", required=True,
                      help="training workdir, or a weights file of this format (e.g. "
                           "a GPU sprint's), re-scored and re-written")
  parser.add_argument("--data_dir", required=True,
                      help="TFDS data dir holding (or to hold) SynthAV tiny")
  parser.add_argument("--which", choices=("best", "latest"), default="best")
  parser.add_argument("--test_json", default=None,
                      help="the run's eval/test_*.json, copied into the card")
  parser.add_argument("--output", default=pretrained.DEFAULT)
  parser.add_argument("--storage", choices=sorted(pretrained.STORAGES), default="int8",
                      help="int8 (compact, the shipped form) or float32 (exact)")
  parser.add_argument("--trained_by", default=None,
                      help="the command that trained the checkpoint, for the card")
  parser.add_argument("--dtype", default=None,
                      help="compute dtype written into the file's config (default: the "
                           "run's); float32 for weights trained in bfloat16 on an "
                           "accelerator and served on CPUs")
  args = parser.parse_args(argv)
  logging.set_verbosity(logging.ERROR)

  if os.path.isfile(args.checkpoint):
    loaded = loading.load_shipped(args.checkpoint)
    source = dict(pretrained.load(args.checkpoint)[2]["source"],
                  weights_file=os.path.basename(args.checkpoint))
  else:
    loaded = loading.load_model(args.checkpoint, args.which)
    source = {"workdir": os.path.basename(os.path.normpath(args.checkpoint)),
              "trained_by": args.trained_by, "step": loaded.step, "which": loaded.which}
  if args.dtype:
    loaded.config.model.dtype = args.dtype
  builder.build("tiny", args.data_dir)
  mixtures = pretrained.reference_mixtures(args.data_dir, loaded.num_slots)
  scores = pretrained.si_snri(loading.make_separate_fn(loaded), mixtures)
  n = len(scores)
  card = {
      "source": source,
      "step": loaded.step,
      "params_key": loaded.params_key,
      "made": datetime.date.today().isoformat(),
      "command": "python -m avsep_jax.pretrained " + shlex.join(argv or sys.argv[1:]),
      "reference": {
          "what": (f"mean SI-SNRi (dB) over {n} fixed {pretrained.REFERENCE_SPEAKERS}-"
                   f"speaker mixtures of {pretrained.REFERENCE_DATASET}'s test split, "
                   f"{pretrained.REFERENCE_SECONDS:g} s, seed "
                   f"{pretrained.REFERENCE_SEED}"),
          "si_snri": round(float(np.mean(scores)), 3),
          "ci95": round(float(scipy.stats.t.ppf(0.975, n - 1) * np.std(scores, ddof=1)
                              / np.sqrt(n)), 3),
          "per_mixture": [round(float(s), 3) for s in scores],
      },
      "storage": {"scheme": args.storage, "reference_scored_on": "float32 weights"},
  }
  if args.test_json:
    with open(args.test_json) as f:
      tested = json.load(f)
    card["test_split"] = {"file": os.path.basename(args.test_json),
                          "summary": tested["summary"]}
  os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
  pretrained.save(args.output, loaded.params, loaded.config, card, args.storage)
  if args.storage != "float32":  # what rounding the weights cost, scored from the file
    stored = pretrained.si_snri(
        loading.make_separate_fn(loading.load_shipped(args.output)), mixtures)
    card["storage"].update(
        stored_si_snri=round(float(np.mean(stored)), 3),
        stored_max_change_db=round(float(np.max(np.abs(stored - scores))), 3))
    pretrained.save(args.output, loaded.params, loaded.config, card, args.storage)
  shown = {k: v for k, v in card.items() if k != "test_split"}
  print(json.dumps(shown, indent=1))
  print(f"wrote {args.output} ({os.path.getsize(args.output) / 1e6:.1f} MB)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
