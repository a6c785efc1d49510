r"""The quality campaign: train, test and compare the configs that say what the model is
worth, on SynthAV, resumably across as many invocations as the CPU hours need.

  python experiments/quality_campaign.py --root=/work/runs/campaign --data_dir=/tmp/tfds \
      --steps=3000 --hours=2 [--runs=lite,audio_only] [--test_examples=100] \
      [--report=campaign.md] [--plot=docs/quality.png]

Runs (`RUNS`; all with the same CPU recipe, `RECIPE`, and step budget):
  lite, stream, audio_only   2..6 speakers (configs/6spk.py): the model, its causal
                             form, and the same model without video (PIT), so the value
                             of the lips is a measured difference;
  lite_griffin_lim           lite's weights with Griffin-Lim instead of the mixture
                             phase (evaluated only);
  lite_interpolate           lite with linear interpolation instead of soft-DTW as the
                             video-to-audio alignment (SynthAV stores audio-video
                             offsets of up to +-2 frames in its data).

Each invocation trains the runs in order, each up to `--steps` (the trainer resumes a
run from its latest checkpoint), until `--hours` are spent: then the running trainer gets
SIGTERM, saves, and the next invocation continues. A run that reached `--steps` is
tested once (`--mode=evaluate`, best validation checkpoint, every speaker count) and its
JSON kept in `<root>/<run>/eval/`. Every invocation ends with the table of what is
tested so far (SI-SNRi, SI-SNRi under the best slot assignment and SDRi per speaker
count, mean ± 95 % interval) and, with `--plot`, a bar chart.
"""

import glob
import json
import os
import re
import subprocess
import sys
import time

from absl import app
from absl import flags

_ROOT = flags.DEFINE_string("root", None, "Directory holding one workdir per run.")
_DATA_DIR = flags.DEFINE_string("data_dir", "/tmp/tfds", "TFDS data directory.")
_STEPS = flags.DEFINE_integer("steps", 3000, "Training steps per run.")
_HOURS = flags.DEFINE_float("hours", 2.0, "Wall-clock budget of this invocation.")
_RUNS = flags.DEFINE_list("runs", None, "Runs to advance (default: all, in order).")
_TEST_EXAMPLES = flags.DEFINE_integer("test_examples", 100,
                                      "Test mixtures per speaker count.")
_REPORT = flags.DEFINE_string("report", None, "Also write the table (Markdown) here.")
_PLOT = flags.DEFINE_string("plot", None, "Bar chart PNG of SI-SNRi per speaker count.")

# The recipe of BENCHMARKS.md's "Does it learn?" run: what a 2-core CPU trains.
RECIPE = ("--config.batch_size=4", "--config.segment_seconds=2.0",
          "--config.warmup_steps=20", "--config.learning_rate=1e-3",
          "--config.eval_every_steps=100", "--config.checkpoint_every_steps=50",
          "--config.eval_examples=16", "--config.eval_pesq_stoi=False")

# name: (config, overrides, trained weights of another run to evaluate instead, label)
RUNS = {
    "lite": ("configs/6spk.py:lite", (), None, "lite, 2..6 speakers"),
    "stream": ("configs/6spk.py:stream", (), None, "stream (causal), 2..6 speakers"),
    "audio_only": ("configs/6spk.py:audio_only", (), None,
                   "audio only (PIT), 2..6 speakers"),
    "lite_griffin_lim": ("configs/6spk.py:lite", ("--config.model.phase=griffin_lim",),
                         "lite", "lite's weights, Griffin-Lim phase"),
    "lite_interpolate": ("configs/6spk.py:lite",
                         ("--config.model.fusion.alignment=interpolate",), None,
                         "lite, interpolation alignment, 2..6 speakers"),
}


def latest_step(workdir):
  steps = [int(p) for p in os.listdir(os.path.join(workdir, "checkpoints"))
           if p.isdigit()] if os.path.isdir(os.path.join(workdir, "checkpoints")) else []
  return max(steps, default=0)


def main_command(config, workdir, overrides, *extra):
  return [sys.executable, "-m", "avsep_jax.main", f"--config={config}",
          f"--workdir={workdir}", f"--config.data_dir={_DATA_DIR.value}", *RECIPE,
          f"--config.total_steps={_STEPS.value}", *overrides, *extra]


def run_until(command, deadline):
  """Runs `command`; SIGTERM at `deadline` (the trainer saves and exits). True if it
  finished on its own."""
  proc = subprocess.Popen(command)
  while proc.poll() is None:
    if time.time() > deadline:
      proc.terminate()
      proc.wait()
      return False
    time.sleep(2)
  if proc.returncode:
    raise RuntimeError(f"{' '.join(command)} exited with {proc.returncode}")
  return True


def test_json(workdir):
  """The newest eval/test_*.json of a run, or None."""
  paths = glob.glob(os.path.join(workdir, "eval", "test_*.json"))
  if not paths:
    return None
  newest = max(paths, key=lambda p: int(re.search(r"_(\d+)\.json$", p).group(1)))
  with open(newest) as f:
    return json.load(f)


def advance(name, deadline):
  """Trains and tests run `name` as far as the deadline allows; True when done."""
  config, overrides, weights_of, _ = RUNS[name]
  workdir = os.path.join(_ROOT.value, name)
  if weights_of:  # evaluation only: the other run's checkpoints, our own eval/
    source = os.path.join(_ROOT.value, weights_of)
    if latest_step(source) < _STEPS.value:
      print(f"[{name}] waits for {weights_of} to reach step {_STEPS.value}")
      return False
    os.makedirs(workdir, exist_ok=True)
    link = os.path.join(workdir, "checkpoints")
    if not os.path.lexists(link):
      os.symlink(os.path.join(source, "checkpoints"), link)
  elif latest_step(workdir) < _STEPS.value:
    print(f"[{name}] training from step {latest_step(workdir)} to {_STEPS.value}")
    if not run_until(main_command(config, workdir, overrides), deadline):
      print(f"[{name}] stopped at step {latest_step(workdir)}: out of time")
      return False
  # Test once per training budget: the marker says which latest step was tested.
  marker = os.path.join(workdir, "eval", "campaign_tested.json")
  trained = latest_step(workdir)
  if os.path.exists(marker):
    with open(marker) as f:
      if json.load(f)["latest_step"] >= trained:
        return True
  print(f"[{name}] testing")
  if not run_until(main_command(config, workdir, overrides, "--mode=evaluate",
                                f"--config.test_examples={_TEST_EXAMPLES.value}"),
                   deadline):
    return False
  with open(marker, "w") as f:
    json.dump({"latest_step": trained}, f)
  return True


# Rows of the table per run: (summary key, label).
METRICS = (("si_snri", "SI-SNRi"), ("si_snri_pit", "SI-SNRi, best assignment"),
           ("sdri", "SDRi"))


def table(names):
  """Markdown rows of every tested run: each metric's mean ± 95 % interval per speaker
  count, and the results by run."""
  counts = [str(n) for n in range(2, 7)]
  lines = ["| run | step | metric (dB) | " + " | ".join(f"{n} spk" for n in counts)
           + " |", "| --- | ---: | --- | " + " | ".join("---:" for _ in counts) + " |"]
  results = {}
  for name in names:
    tested = test_json(os.path.join(_ROOT.value, name))
    if tested is None:
      continue
    results[name] = tested
    for key, label in METRICS:
      cells = []
      for n in counts:
        stats = tested["summary"].get(n, {}).get(key)
        cells.append(f"{stats['mean']:.2f} ± {stats['ci95']:.2f}" if stats else "–")
      lines.append(f"| {RUNS[name][3]} | {tested['step']} | {label} | "
                   + " | ".join(cells) + " |")
  return "\n".join(lines), results


def plot(results, path):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  counts = [str(n) for n in range(2, 7)]
  fig, ax = plt.subplots(figsize=(7, 3.5))
  width = 0.8 / max(len(results), 1)
  for i, (name, tested) in enumerate(results.items()):
    # Audio-only slots are in arbitrary order: its fair figure is the best assignment.
    metric = "si_snri_pit" if "audio_only" in name else "si_snri"
    x, y, e = [], [], []
    for k, n in enumerate(counts):
      stats = tested["summary"].get(n)
      if stats and metric in stats:
        x.append(k + i * width)
        y.append(stats[metric]["mean"])
        e.append(stats[metric]["ci95"] or 0.0)
    ax.bar(x, y, width, yerr=e, label=RUNS[name][3], capsize=2)
  ax.axhline(0, color="k", lw=0.5)
  ax.set_xticks(np.arange(len(counts)) + 0.4 - width / 2, [f"{n} speakers" for n in counts])
  ax.set_ylabel("test SI-SNRi (dB)")
  ax.set_title("SynthAV test split, mean ± 95 % interval (audio only: best slot "
               "assignment)", fontsize=8)
  ax.legend(fontsize=7)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=120)
  print(f"wrote {path}")


def main(argv):
  del argv
  names = _RUNS.value or list(RUNS)
  unknown = sorted(set(names) - set(RUNS))
  if unknown:
    raise app.UsageError(f"unknown runs {unknown}; choose from {list(RUNS)}")
  deadline = time.time() + 3600 * _HOURS.value
  for name in names:
    if time.time() > deadline:
      break
    advance(name, deadline)
  text, results = table(names)
  print(text)
  if _REPORT.value:
    with open(_REPORT.value, "w") as f:
      f.write(text + "\n")
  if _PLOT.value and results:
    plot(results, _PLOT.value)


if __name__ == "__main__":
  flags.mark_flag_as_required("root")
  app.run(main)
