# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # avsep_jax quickstart
#
# Audio-visual speech separation: given a recording of several people talking and a
# video of each speaker's mouth, the model returns one clean voice per speaker.
#
# This notebook
# 1. builds SynthAV, the project's synthetic audio-visual corpus (eSpeak NG speech and
#    mouth video rendered from the same phone timeline, made offline),
# 2. shows one mixture: each speaker's mouth crops and spectrogram,
# 3. trains the two-speaker model with the project's trainer (`avsep_jax.train`, the
#    same code as `python -m avsep_jax.main`),
# 4. separates unseen test mixtures, scores them and plays the voices.
#
# With the default settings (the `lite` model, 600 steps) it takes about 30 minutes on
# a 2-core CPU runtime; a GPU runtime is faster. The same recipe, recorded in
# BENCHMARKS.md ("Does it learn?"), reached +1.48 dB SI-SNRi from the lips at step 600:
# a start, far from clean voices. The next cell installs the package when it runs on
# Colab and does nothing elsewhere.

# %%
import os
import shutil
import subprocess
import sys

# This repository on GitHub: the install cell clones it.
REPO_URL = "https://github.com/OWNER/avsep_jax.git"
if "google.colab" in sys.modules:
  if not os.path.isdir("avsep_jax"):
    subprocess.run(["git", "clone", "--depth=1", REPO_URL, "avsep_jax"], check=True)
  # pip's default jax runs on the CPU only; a GPU runtime needs its CUDA build.
  cuda = ["jax[cuda12]"] if shutil.which("nvidia-smi") else []
  subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "-e",
                  "avsep_jax[dev,experiments,serve]", *cuda], check=True)
  # An editable install is found through a .pth file read at start-up, which this
  # running kernel has already passed.
  sys.path.insert(0, os.path.abspath("avsep_jax"))

# %% [markdown]
# ## Settings
#
# Every size that costs time is here. The defaults are the meaningful ones;
# `AVSEP_NOTEBOOK_SMALL=1` in the environment picks sizes that run in seconds (the
# tests execute the notebook that way), and `AVSEP_NOTEBOOK_<NAME>` sets one value,
# e.g. `AVSEP_NOTEBOOK_TRAIN_STEPS=50`.

# %%
import pathlib

SMALL = os.environ.get("AVSEP_NOTEBOOK_SMALL") == "1"


def setting(name, default, small):
  """`default`, or `small` under AVSEP_NOTEBOOK_SMALL=1; $AVSEP_NOTEBOOK_<name> wins."""
  value = os.environ.get(f"AVSEP_NOTEBOOK_{name}")
  if value is None:
    return small if SMALL else default
  return type(default)(value)


SYNTHAV = setting("SYNTHAV", "small", "tiny")      # tiny: seconds; small: ~2 min to build
DATA_DIR = setting("DATA_DIR", os.path.expanduser("~/tensorflow_datasets"),
                   os.path.expanduser("~/tensorflow_datasets"))
VARIANT = setting("VARIANT", "lite", "smoke")      # configs/2spk.py:<VARIANT>
TRAIN_STEPS = setting("TRAIN_STEPS", 600, 3)
BATCH_SIZE = setting("BATCH_SIZE", 4, 2)
SEGMENT_SECONDS = setting("SEGMENT_SECONDS", 2.0, 1.0)
EVAL_EVERY = setting("EVAL_EVERY", 100, 3)         # validation (and checkpoint) interval
EVAL_EXAMPLES = setting("EVAL_EXAMPLES", 16, 2)    # validation mixtures per evaluation
LISTEN_EXAMPLES = setting("LISTEN_EXAMPLES", 8, 2)  # test mixtures separated at the end
WORKDIR = setting("WORKDIR", "workdirs/quickstart", "workdirs/quickstart")

import avsep_jax  # pylint: disable=g-import-not-at-top

REPO = pathlib.Path(avsep_jax.__file__).resolve().parents[1]  # where configs/ is

# %% [markdown]
# ## SynthAV
#
# `build` makes the dataset under `DATA_DIR` in the TFDS layout, or finds it already
# built (the same as `python -m avsep_jax.data.synthav --config=tiny --data_dir=...`).
# Train, validation and test use disjoint voices.

# %%
from avsep_jax.data.synthav import builder as synthav_builder

builder = synthav_builder.build(SYNTHAV, DATA_DIR)
print(builder.data_dir)
print({split: info.num_examples for split, info in builder.info.splits.items()})

# %% [markdown]
# Training examples are mixtures made on the fly (`avsep_jax.data.pipeline`): two
# utterances of different speakers, cut to the same length, at random relative levels.
# The model sees the mixture and each speaker's 88×88 mouth crops at 25 fps; the
# sources are the targets.

# %%
import matplotlib.pyplot as plt
import numpy as np

from avsep_jax import signal
from avsep_jax.data import pipeline

SAMPLE_RATE = 16_000
mix_config = pipeline.MixConfig(max_speakers=2, min_speakers=2, segment_seconds=2.0)
example = next(iter(pipeline.make_dataset(f"synthav/{SYNTHAV}", "validation", DATA_DIR,
                                          mix_config, batch_size=1, seed=0,
                                          num_examples=1)))
mixture, sources = example["mixture"][0], example["sources"][0]
video = example["video"][0]
print(f"mixture {mixture.shape}, sources {sources.shape}, video {video.shape} "
      f"{video.dtype}")
# Without background noise the mixture is exactly the sum of its sources.
np.testing.assert_allclose(mixture, sources.sum(axis=0), atol=1e-6)


def log_spectrogram(x):
  """(T,) -> (bins, frames) in dB, for display."""
  return 20 * np.log10(np.abs(np.asarray(signal.stft(x))).T + 1e-4)


def show_spectrogram(ax, x, title):
  ax.imshow(log_spectrogram(x), origin="lower", aspect="auto", cmap="magma",
            vmin=-80, vmax=20, extent=(0, len(x) / SAMPLE_RATE, 0, SAMPLE_RATE / 2000))
  ax.set_title(title, fontsize=9)
  ax.set_ylabel("kHz")


frames_shown = 8
fig = plt.figure(figsize=(14, 7))
# One column between the frames and the spectrograms keeps the axis labels apart.
grid = fig.add_gridspec(3, frames_shown + 7, wspace=0.1, hspace=0.6)
show_spectrogram(fig.add_subplot(grid[0, :]), mixture, "mixture")
for s in range(2):
  for j, f in enumerate(np.linspace(0, video.shape[1] - 1, frames_shown).astype(int)):
    ax = fig.add_subplot(grid[s + 1, j])
    ax.imshow(video[s, f], cmap="gray", vmin=0, vmax=255)
    ax.set_xticks([])
    ax.set_yticks([])
    if s == 0:
      ax.set_title(f"{f / 25:.2f} s", fontsize=8)
  show_spectrogram(fig.add_subplot(grid[s + 1, frames_shown + 1:]), sources[s],
                   f"speaker {s + 1} (audio-video offset "
                   f"{example['av_offset'][0, s]:+d} frames)")
plt.show()

# %% [markdown]
# ## Train
#
# The two-speaker config (`configs/2spk.py`) with a few keys changed, trained by
# `train.train_and_evaluate`: the trainer `python -m avsep_jax.main` runs. It validates
# every `EVAL_EVERY` steps, keeps Orbax checkpoints and TensorBoard events in
# `WORKDIR`, and resumes from the newest checkpoint when run again. `config.json`
# in the workdir tells `separate` and `export` which model the checkpoint holds.

# %%
from avsep_jax import main as main_lib
from avsep_jax import separate
from avsep_jax import train

config, _ = separate.load_config(None, f"{REPO}/configs/2spk.py:{VARIANT}")
overrides = {
    "dataset": f"synthav/{SYNTHAV}", "data_dir": DATA_DIR, "total_steps": TRAIN_STEPS,
    "batch_size": BATCH_SIZE, "segment_seconds": SEGMENT_SECONDS,
    "eval_every_steps": EVAL_EVERY, "checkpoint_every_steps": EVAL_EVERY,
    "eval_examples": EVAL_EXAMPLES, "eval_pesq_stoi": False,
    # The CPU recipe of BENCHMARKS.md ("Does it learn?"): a short warm-up, a higher rate.
    "warmup_steps": 20, "learning_rate": 1e-3,
}
config.update(overrides)
print(f"python -m avsep_jax.main --config=configs/2spk.py:{VARIANT} --workdir={WORKDIR} "
      + " ".join(f"--config.{k}={v}" for k, v in overrides.items()))
os.makedirs(WORKDIR, exist_ok=True)
main_lib.save_config(config, WORKDIR)
train.train_and_evaluate(config, WORKDIR)

# %% [markdown]
# Validation SI-SNRi (how many dB the separated voice gains over the mixture; 0 dB
# means "no better than the mixture") at each evaluation, read from the JSON files the
# trainer writes in `WORKDIR/eval/`.

# %%
import glob
import json
import re

points = []
for path in glob.glob(os.path.join(WORKDIR, "eval", "validation_*.json")):
  with open(path) as f:
    summary = json.load(f)["summary"]["all"]
  points.append((int(re.search(r"_(\d+)\.json$", path).group(1)), summary))
points.sort(key=lambda p: p[0])
assert points and points[-1][0] == TRAIN_STEPS, [p[0] for p in points]
steps = [p[0] for p in points]
means = np.array([p[1]["si_snri"]["mean"] for p in points])
halfwidths = np.array([p[1]["si_snri"]["ci95"] or 0.0 for p in points])
fig, ax = plt.subplots(figsize=(6, 3))
ax.errorbar(steps, means, yerr=halfwidths, marker="o", capsize=3)
ax.axhline(0.0, color="gray", lw=0.8)
ax.set_xlabel("step")
ax.set_ylabel("validation SI-SNRi (dB)")
plt.show()
print(f"step {steps[-1]}: {means[-1]:+.2f} dB")

# %% [markdown]
# ## Separate and listen
#
# `separate.load_model` restores a checkpoint of the workdir (the best by validation
# SI-SNRi) and `make_separate_fn` jits the model: `(mixture (B, T), video (B, S, F, H,
# W), speaker_mask (B, S)) -> voices (B, S, T)`. The mixtures come from the test split,
# whose voices the model has never heard.

# %%
from IPython.display import Audio, display

from avsep_jax import evaluation

loaded = separate.load_model(WORKDIR)
print(f"checkpoint step {loaded.step} ({loaded.which})")
separate_fn = separate.make_separate_fn(loaded)
test = next(iter(pipeline.make_dataset(
    f"synthav/{SYNTHAV}", "test", DATA_DIR, train.mix_config(config),
    batch_size=LISTEN_EXAMPLES, seed=1, num_examples=LISTEN_EXAMPLES)))
voices = separate_fn(test["mixture"], test["video"], test["speaker_mask"])
assert voices.shape == test["sources"].shape and np.isfinite(voices).all()
records = evaluation.score_batch(voices, test["sources"], test["mixture"],
                                 test["speaker_mask"], pesq_stoi=False)
print(evaluation.format_table(evaluation.summarize(records)))

print("mixture")
display(Audio(test["mixture"][0], rate=SAMPLE_RATE))
for s in range(voices.shape[1]):
  print(f"slot {s}: separated, then the true voice")
  display(Audio(voices[0, s], rate=SAMPLE_RATE))
  display(Audio(test["sources"][0, s], rate=SAMPLE_RATE))

fig, axes = plt.subplots(2, 2, figsize=(12, 5), sharex=True)
for s in range(2):
  show_spectrogram(axes[s, 0], test["sources"][0, s], f"slot {s}: true voice")
  show_spectrogram(axes[s, 1], voices[0, s], f"slot {s}: separated")
fig.tight_layout()
plt.show()

# %% [markdown]
# Next: `separate_your_video.ipynb` runs the whole pipeline (faces, mouth crops, the
# model) on a video file; `export_and_streaming.ipynb` serves the streaming model on
# CPU; `attention_kernels.ipynb` looks at the Pallas attention kernel.
