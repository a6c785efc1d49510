r"""Validation curves of a run from its eval JSON files.

  python experiments/plot_training.py --workdir=workdirs/2spk_lite --output=docs/curve.png

Plots validation SI-SNRi and SDRi (and SI-SNRi under the best slot assignment, when
the run has it; mean and 95 % interval) against the training step
and prints them as a table. Needs the `experiments` extra (matplotlib).
"""

import glob
import json
import os
import re

from absl import app
from absl import flags
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory.")
_OUTPUT = flags.DEFINE_string("output", "docs/curve.png", "PNG to write.")
_TITLE = flags.DEFINE_string("title", "", "Figure title.")


def load(workdir):
  """[(step, summary['all'])] sorted by step."""
  points = []
  for path in glob.glob(os.path.join(workdir, "eval", "validation_*.json")):
    step = int(re.search(r"validation_(\d+)\.json$", path).group(1))
    with open(path) as f:
      points.append((step, json.load(f)["summary"]["all"]))
  return sorted(points)


def main(argv):
  del argv
  points = load(_WORKDIR.value)
  if not points:
    raise app.UsageError(f"no eval/validation_*.json in {_WORKDIR.value}")
  steps = [p for p, _ in points]
  fig, ax = plt.subplots(figsize=(6, 3.5))
  print(f"{'step':>6} {'SI-SNRi':>15} {'SDRi':>15}")
  metrics = [("si_snri", "SI-SNRi"), ("sdri", "SDRi")]
  if all("si_snri_pit" in s for _, s in points):  # runs evaluated since it exists
    metrics.append(("si_snri_pit", "SI-SNRi, best slot assignment"))
  for metric, label in metrics:
    mean = [s[metric]["mean"] for _, s in points]
    ci = [s[metric]["ci95"] or 0.0 for _, s in points]
    ax.plot(steps, mean, marker="o", label=label)
    ax.fill_between(steps, [m - c for m, c in zip(mean, ci)],
                    [m + c for m, c in zip(mean, ci)], alpha=0.2)
  for step, s in points:
    print(f"{step:>6} {s['si_snri']['mean']:>8.2f} ± {s['si_snri']['ci95'] or 0:<5.2f}"
          f"{s['sdri']['mean']:>8.2f} ± {s['sdri']['ci95'] or 0:.2f}")
  ax.axhline(0, color="gray", lw=0.5)
  ax.set_xlabel("training step")
  ax.set_ylabel("dB (validation)")
  ax.set_title(_TITLE.value or _WORKDIR.value, fontsize=9)
  ax.legend()
  fig.tight_layout()
  fig.savefig(_OUTPUT.value, dpi=90)
  print(f"wrote {_OUTPUT.value}")


if __name__ == "__main__":
  flags.mark_flag_as_required("workdir")
  app.run(main)
