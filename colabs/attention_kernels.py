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
# # Attention kernels: Pallas flash attention against plain JAX
#
# `avsep_jax.kernels.flash_attention(q, k, v, *, key_lengths, causal, window,
# interpret)` is a Pallas kernel: an online-softmax forward that never stores the
# (T × T) scores, a backward that recomputes them blockwise, and key-padding, causal
# and sliding-window `(left, right)` masks whose fully masked blocks are skipped.
# `reference_attention` beside it computes the same thing the plain way.
#
# This notebook checks that both give the same outputs and gradients, shows which
# blocks each mask makes the kernel visit, and times both. On a CPU the kernel runs
# in the Pallas interpreter (`interpret=True`): right answers, but the times say
# nothing about the kernel's speed. On a GPU (Ampere or newer: Colab's A100 or L4,
# not the T4) it runs compiled through Triton.

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
# Sizes for a GPU and for a CPU; `AVSEP_NOTEBOOK_SMALL=1` in the environment picks
# sizes that run in seconds (the tests execute the notebook that way), and
# `AVSEP_NOTEBOOK_<NAME>` sets one value (a comma-separated list for a tuple).

# %%
import jax

SMALL = os.environ.get("AVSEP_NOTEBOOK_SMALL") == "1"
ON_GPU = jax.default_backend() == "gpu"
INTERPRET = not ON_GPU  # the Pallas interpreter: how the kernel runs on a CPU


def setting(name, default, small):
  """`default`, or `small` under AVSEP_NOTEBOOK_SMALL=1; $AVSEP_NOTEBOOK_<name> wins."""
  value = os.environ.get(f"AVSEP_NOTEBOOK_{name}")
  if value is None:
    return small if SMALL else default
  if isinstance(default, tuple):
    return tuple(type(default[0])(v) for v in value.split(","))
  return type(default)(value)


CHECK_LEN = setting("CHECK_LEN", 300, 100)         # sequence length of the checks
HEADS = setting("HEADS", 8 if ON_GPU else 4, 2)
HEAD_DIM = setting("HEAD_DIM", 64, 32)
# Timing: sequence lengths, and tokens per batch (batch = TOKENS // T).
# The reference and xla hold all B x H x T x T scores: 4096 keeps them in a 24 GB GPU.
SEQ_LENS = setting("SEQ_LENS", (1024, 2048, 4096) if ON_GPU else (128, 256, 512, 1024),
                   (64, 128))
TOKENS = setting("TOKENS", 16384 if ON_GPU else 1024, 128)
WINDOW = setting("WINDOW", 256 if ON_GPU else 64, 32)  # keys back in the timed window
DTYPE = setting("DTYPE", "bfloat16" if ON_GPU else "float32", "float32")  # timed dtype
REPEATS = setting("REPEATS", 10, 2)
print(f"{jax.devices()[0].device_kind} ({jax.default_backend()}), jax {jax.__version__}, "
      f"interpret={INTERPRET}")

# %% [markdown]
# ## Same outputs, same gradients
#
# Each case draws random `q, k, v` of shape (B, T, H, D) and an output cotangent, and
# compares the output and the gradients of q, k and v with the reference's. The
# reference computes in float32 at full precision; on a GPU the kernel's float32
# matmuls run in TF32 (a 10-bit mantissa), hence the looser bound there.

# %%
import jax.numpy as jnp
import numpy as np

from avsep_jax import kernels

TOLERANCE = 1e-4 if INTERPRET else 2e-2  # max abs error / max |reference|
T = CHECK_LEN
CASES = {
    "full": {},
    "causal": {"causal": True},
    "window (16, 4)": {"window": (16, 4)},
    "causal window (32, 0)": {"causal": True, "window": (32, 0)},
    "key_lengths": {"key_lengths": np.array([T, T // 3])},
    "key_lengths + window (8, 8)": {"key_lengths": np.array([T // 2, T]),
                                    "window": (8, 8)},
}


def output_and_grads(fn, q, k, v, d_out, masks):
  out, vjp = jax.vjp(lambda q, k, v: fn(q, k, v, **masks), q, k, v)
  return (out, *vjp(d_out))


rows = []
for i, (case, masks) in enumerate(CASES.items()):
  keys = jax.random.split(jax.random.key(i), 4)
  q, k, v, d_out = (jax.random.normal(key, (2, T, HEADS, HEAD_DIM)) for key in keys)
  flash = jax.jit(lambda *a, m=masks: output_and_grads(
      lambda q, k, v, **kw: kernels.flash_attention(q, k, v, interpret=INTERPRET, **kw),
      *a, m))
  reference = jax.jit(lambda *a, m=masks: output_and_grads(
      kernels.reference_attention, *a, m))
  got, want = flash(q, k, v, d_out), reference(q, k, v, d_out)
  errors = [float(jnp.abs(g - w).max()) for g, w in zip(got, want)]
  scales = [float(jnp.abs(w).max()) for w in want]
  rows.append((case, errors, scales))

print(f"{'case':<28}" + "".join(f"{n:>12}" for n in ("out", "dq", "dk", "dv"))
      + "   (max abs error)")
for case, errors, _ in rows:
  print(f"{case:<28}" + "".join(f"{e:12.2e}" for e in errors))
for case, errors, scales in rows:
  for name, error, scale in zip(("out", "dq", "dk", "dv"), errors, scales):
    assert error <= TOLERANCE * scale, (
        f"{case} {name}: {error:.2e} > {TOLERANCE} x {scale:.2f}")

# %% [markdown]
# ## What each mask lets through, and what the kernel skips
#
# Top: which keys each query sees (black), for T = 1024. Bottom: how many key blocks
# the forward kernel visits for each block of queries (`kernels.visited_key_blocks`,
# the kernel's own loop bounds). Blocks wholly outside the mask are never loaded, so a
# narrow window costs time in proportion to its width, not to T².

# %%
import matplotlib.pyplot as plt

from avsep_jax.kernels import reference as reference_lib

view = 1024
shown = {"full": {}, "causal": {"causal": True}, "window (64, 16)": {"window": (64, 16)},
         "key_lengths 600": {"key_lengths": np.array([600])}}
every_block = kernels.visited_key_blocks(view, view)[0].sum()
fig, axes = plt.subplots(2, len(shown), figsize=(3.2 * len(shown), 6),
                         gridspec_kw={"height_ratios": [3, 1]})
for (name, masks), top, bottom in zip(shown.items(), axes[0], axes[1]):
  visible = reference_lib.visible_mask(1, view, view, **masks)[0]
  top.imshow(visible, cmap="Greys", vmin=0, vmax=1, interpolation="nearest")
  top.set_title(name)
  top.set_xlabel("key")
  top.set_ylabel("query")
  blocks = kernels.visited_key_blocks(view, view, **masks)[0]
  assert masks == {} or blocks.sum() < every_block, name  # masked blocks are skipped
  bottom.bar(np.arange(len(blocks)), blocks)
  bottom.set_title(f"{blocks.sum() / every_block:.0%} of the blocks", fontsize=9)
  bottom.set_xlabel("query block")
  bottom.set_ylabel("key blocks")
fig.tight_layout()
plt.show()

# %% [markdown]
# ## Timing
#
# Median time of `REPEATS` calls of each separately compiled function, forward and
# forward + backward, for full attention and a causal sliding window of `WINDOW` keys.
# `xla` is `jax.nn.dot_product_attention` (and `cudnn` its cuDNN path on a GPU).
# `experiments/benchmarks/attention.py` is the full benchmark (TFLOP/s, memory).

# %%
import time

IMPLS = {
    "pallas": lambda q, k, v, **m: kernels.flash_attention(q, k, v, interpret=INTERPRET,
                                                           **m),
    "reference": kernels.reference_attention,
    "xla": lambda q, k, v, causal=False, window=None: jax.nn.dot_product_attention(
        q, k, v, is_causal=causal, local_window_size=window, implementation="xla"),
}
if ON_GPU:
  IMPLS["cudnn"] = lambda q, k, v, causal=False, window=None: (
      jax.nn.dot_product_attention(q, k, v, is_causal=causal, local_window_size=window,
                                   implementation="cudnn"))


def median_ms(fn, *args):
  compiled = jax.jit(fn).lower(*args).compile()
  jax.block_until_ready(compiled(*args))
  times = []
  for _ in range(REPEATS):
    start = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - start)
  return 1e3 * float(np.median(times))


timings = []  # (T, mask, impl, forward ms, forward + backward ms)
for t in SEQ_LENS:
  shape = (max(1, TOKENS // t), t, HEADS, HEAD_DIM)
  keys = jax.random.split(jax.random.key(t), 4)
  q, k, v, d_out = (jax.random.normal(key, shape).astype(DTYPE) for key in keys)
  for mask, masks in (("full", {}),
                      (f"window {WINDOW}", {"causal": True, "window": (WINDOW, 0)})):
    for impl, fn in IMPLS.items():
      forward = lambda q, k, v, fn=fn, m=masks: fn(q, k, v, **m)
      backward = lambda q, k, v, d, f=forward: jax.vjp(f, q, k, v)[1](d)
      timings.append((t, mask, impl, median_ms(forward, q, k, v),
                      median_ms(backward, q, k, v, d_out)))

print(f"{jax.devices()[0].device_kind}, {DTYPE}, {TOKENS} tokens per batch, "
      f"{HEADS} heads of {HEAD_DIM}"
      + (" (Pallas interpreted: not a speed measurement)" if INTERPRET else ""))
print(f"{'T':>6} {'mask':<11} {'impl':<10} {'fwd ms':>9} {'fwd+bwd ms':>11}")
for t, mask, impl, fwd, bwd in timings:
  print(f"{t:>6} {mask:<11} {impl:<10} {fwd:9.3f} {bwd:11.3f}")

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), sharey=True)
for ax, mask in zip(axes, ("full", f"window {WINDOW}")):
  for impl in IMPLS:
    points = [(t, bwd) for t, m, i, _, bwd in timings if m == mask and i == impl]
    ax.plot(*zip(*points), marker="o", label=impl)
  ax.set_xscale("log", base=2)
  ax.set_yscale("log")
  ax.set_xlabel("sequence length T")
  ax.set_title(f"{mask}: forward + backward")
  ax.legend()
axes[0].set_ylabel("ms (median)")
fig.tight_layout()
plt.show()
