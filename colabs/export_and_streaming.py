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
# # Export and streaming
#
# The streaming model (`configs/*.py:stream`) is the lite model made causal: nothing it
# computes looks ahead, so it can separate a live recording in small steps, each
# 20 ms of audio, with a mouth frame per speaker every 40 ms. This notebook
# 1. streams a mixture step by step with the JAX engine and checks that the stream is
#    the offline model's output, a fixed delay later,
# 2. exports the model to PyTorch (safetensors), ONNX step graphs and INT8 ONNX,
# 3. streams the same mixture on onnxruntime and compares latencies.
#
# The model is freshly initialised: agreement and latency do not depend on training.
# For a trained workdir the command line does the same:
#
# ```bash
# python -m avsep_jax.export --checkpoint WORKDIR --format stream [--quantize int8] --output DIR
# python -m avsep_jax.stream --model DIR --input talk.mp4 --output voices/
# ```

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
# `AVSEP_NOTEBOOK_SMALL=1` in the environment picks sizes that run in seconds (the tests
# execute the notebook that way: the `smoke` model made causal), and
# `AVSEP_NOTEBOOK_<NAME>` sets one value.

# %%
SMALL = os.environ.get("AVSEP_NOTEBOOK_SMALL") == "1"


def setting(name, default, small):
  """`default`, or `small` under AVSEP_NOTEBOOK_SMALL=1; $AVSEP_NOTEBOOK_<name> wins."""
  value = os.environ.get(f"AVSEP_NOTEBOOK_{name}")
  if value is None:
    return small if SMALL else default
  return type(default)(value)


SIZE = setting("SIZE", "lite", "smoke")        # made causal = the `stream` variant
WINDOW = setting("WINDOW", 100, 20)            # attention window, audio frames (10 ms)
SPEAKERS = setting("SPEAKERS", 2, 2)
SECONDS = setting("SECONDS", 4.0, 1.0)         # length of the streamed mixture
STEP_MS = setting("STEP_MS", 20.0, 20.0)       # audio per step: 10 to 40 ms
SYNTHAV = setting("SYNTHAV", "tiny", "tiny")
DATA_DIR = setting("DATA_DIR", os.path.expanduser("~/tensorflow_datasets"),
                   os.path.expanduser("~/tensorflow_datasets"))
EXPORT_DIR = setting("EXPORT_DIR", "exports", "exports")

# %% [markdown]
# ## The model and a mixture
#
# `variants.make_causal` turns a model config into its streaming form: causal
# convolutions and STFT frames, attention over the last `WINDOW` frames only, each
# audio frame paired with the newest mouth frame, no absolute positions. The input is
# a SynthAV test mixture of `SPEAKERS` voices with their mouth crops.

# %%
import flax.linen as nn
import jax
import numpy as np

from avsep_jax import model as model_lib
from avsep_jax.data import pipeline
from avsep_jax.data.synthav import builder as synthav_builder
from avsep_jax.model import variants

config = variants.make_causal(variants.model_config(SIZE, SPEAKERS), window=WINDOW)
net = model_lib.AVSeparator(config)

synthav_builder.build(SYNTHAV, DATA_DIR)
example = next(iter(pipeline.make_dataset(
    f"synthav/{SYNTHAV}", "test", DATA_DIR,
    pipeline.MixConfig(max_speakers=SPEAKERS, min_speakers=SPEAKERS,
                       segment_seconds=SECONDS),
    batch_size=1, seed=0, num_examples=1)))
mixture, video, mask = example["mixture"], example["video"], example["speaker_mask"]
print(f"mixture {mixture.shape}, video {video.shape}, speaker_mask {mask.shape}")

# Initialised on 0.2 s of the input: the parameters do not depend on its length.
params = nn.unbox(jax.jit(net.init)(jax.random.key(0), mixture[:, :3200],
                                    video[:, :, :5], mask))["params"]
print(f"{sum(p.size for p in jax.tree.leaves(params)) / 1e6:.2f} M parameters")

# %% [markdown]
# ## Offline, and streamed step by step in JAX
#
# `Streamer` holds jitted step functions over an explicit state (attention caches of
# the window, convolution, STFT and overlap-add buffers). A mouth frame is pushed when
# the audio step that first needs it comes (`driver.frames_needed`), then the step's
# audio. The output of the step ending at sample E covers samples up to E - `delay`:
# the overlap-add of the last STFT window (win - hop = 240 samples, 15 ms) is not
# complete before that.

# %%
from avsep_jax.stream import Streamer
from avsep_jax.stream import driver

offline, _ = jax.jit(net.apply)({"params": params}, mixture, video, mask)
offline = np.asarray(offline)

streamer = Streamer(config, params, step_ms=STEP_MS)
step, delay = streamer.step_samples, streamer.delay
state = streamer.init(mask)
pushed, chunks = 0, []
for k in range(mixture.shape[1] // step):
  end = (k + 1) * step
  while pushed < min(driver.frames_needed(config, end), video.shape[2]):
    state = streamer.push_video(state, video[:, :, pushed])
    pushed += 1
  state, out = streamer.push_audio(state, mixture[:, k * step:end])
  chunks.append(np.asarray(out))
streamed = np.concatenate(chunks, axis=-1)

difference = np.abs(streamed[..., delay:] - offline[..., :-delay]).max()
print(f"{len(chunks)} steps of {step} samples; delay {delay} samples "
      f"({1000 * delay / config.sample_rate:g} ms)")
print(f"max |stream - offline| = {difference:.2e} (offline output peak "
      f"{np.abs(offline).max():.3f})")
assert np.abs(offline).max() > 1e-3  # not comparing silence
assert difference < 1e-4, difference

# %%
import matplotlib.pyplot as plt

t = np.arange(offline.shape[-1]) / config.sample_rate
loudest = int(np.argmax(np.abs(offline[0, 0, :-delay])))
span = slice(max(0, loudest - 400), loudest + 400)  # 50 ms around the loudest sample
fig, ax = plt.subplots(figsize=(10, 3))
ax.plot(t[span], offline[0, 0, span], label="offline", lw=2)
ax.plot(t[span], streamed[0, 0, delay:][span], "--", label="stream, delay removed")
ax.set_xlabel("seconds")
ax.set_title("slot 0")
ax.legend()
plt.show()

# %% [markdown]
# ## Export
#
# * PyTorch: the mirror of the model (`export.torch_model`) with the weights converted,
#   saved as safetensors with the config in its metadata (`--format torch`).
# * ONNX: the two step graphs of the stream, `video_step.onnx` and `audio_step.onnx`,
#   with `stream.json` (`--format stream`).
# * INT8: the same graphs with every MatMul quantized dynamically (`--quantize int8`).

# %%
import torch

from avsep_jax.export import convert
from avsep_jax.export import onnx_export

os.makedirs(EXPORT_DIR, exist_ok=True)
torch_path = os.path.join(EXPORT_DIR, "stream.safetensors")
convert.save_safetensors(torch_path, convert.build_mirror(config, params), config)
mirror, _ = convert.load_safetensors(torch_path, expected_config=config)
with torch.no_grad():
  torch_out = mirror(torch.from_numpy(mixture), torch.from_numpy(video),
                     torch.from_numpy(mask)).numpy()
torch_difference = np.abs(torch_out - offline).max()
print(f"PyTorch mirror: max |torch - JAX| offline = {torch_difference:.2e}")
assert torch_difference < 1e-4, torch_difference

onnx_dirs = {"onnx f32": os.path.join(EXPORT_DIR, "stream_f32"),
             "onnx int8": os.path.join(EXPORT_DIR, "stream_int8")}
onnx_export.export_stream(config, params, onnx_dirs["onnx f32"], step_ms=STEP_MS)
onnx_export.export_stream(config, params, onnx_dirs["onnx int8"], step_ms=STEP_MS,
                          quantize="dynamic")
for root, _, files in sorted(os.walk(EXPORT_DIR)):
  for name in sorted(files):
    path = os.path.join(root, name)
    print(f"{path:<40} {os.path.getsize(path) / 1e6:8.2f} MB")

# %% [markdown]
# ## Stream on onnxruntime, and latency
#
# `driver.drive` feeds a recording to any engine in arrival order and times every
# audio step. End-to-end latency of a step's output = the step (its first sample waits
# for the last) + the overlap-add delay + the step's compute; mouth frames are encoded
# when they arrive, off this path. (`python -m avsep_jax.stream` also paces the input
# in real time.)

# %%
from avsep_jax.stream.onnx_engine import OnnxStreamer

engines = {"jax": streamer}
engines.update({name: OnnxStreamer(path) for name, path in onnx_dirs.items()})
results = {}
for name, engine in engines.items():
  driver.drive(engine, mixture[:, :step * 5], video, mask)  # warm-up (JAX compiles)
  results[name] = driver.drive(engine, mixture, video, mask)

out = {name: r[0] for name, r in results.items()}
np.testing.assert_allclose(out["jax"], streamed, rtol=0, atol=1e-6)
f32_difference = np.abs(out["onnx f32"] - out["jax"]).max()
print(f"max |onnx f32 - jax| = {f32_difference:.2e}")
assert f32_difference < 1e-4, f32_difference
int8_snr = 10 * np.log10(np.sum(out["jax"] ** 2)
                         / np.sum((out["onnx int8"] - out["jax"]) ** 2))
print(f"onnx int8 agrees with f32 to {int8_snr:.1f} dB SNR")
assert int8_snr > 20, int8_snr  # INT8 weights, not another model

print(f"\n{'engine':<10} {'compute ms p50/p95/p99':>24} "
      f"{'end-to-end ms p50/p95/p99':>27} {'video frame ms p50':>19}")
for name, (_, compute, latency, video_s) in results.items():
  c, e = (np.percentile(1e3 * x, [50, 95, 99]) for x in (compute, latency))
  print(f"{name:<10} {'/'.join(f'{v:.2f}' for v in c):>24} "
        f"{'/'.join(f'{v:.1f}' for v in e):>27} {1e3 * np.median(video_s):19.2f}")

fig, ax = plt.subplots(figsize=(8, 3))
for name, (_, compute, _, _) in results.items():
  ax.hist(1e3 * compute, bins=40, histtype="step", label=name)
ax.set_xlabel("compute per audio step (ms)")
ax.set_ylabel("steps")
ax.legend()
plt.show()
