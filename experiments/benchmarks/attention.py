r"""Attention kernels: forward and forward+backward TFLOP/s and peak memory, one table.

  # The full table (on a GPU; about 5 minutes on an H100):
  python experiments/benchmarks/attention.py --json=/tmp/attention.json
  # CPU smoke check of the script (Pallas interpret mode; not a performance number):
  python experiments/benchmarks/attention.py --seq_lens=128 --head_dims=64 \
      --tokens=256 --model_dim=128 --interpret --repeats=2

Implementations: `pallas` (avsep_jax.kernels.flash_attention), `xla` and `cudnn`
(`jax.nn.dot_product_attention(implementation=...)`; cudnn only on a GPU), and
`tokamax` (its dot_product_attention) when that package is installed. Masks: `full`
(no mask) and `window` = causal sliding window of --window keys back (key j visible to
query i when i - window <= j <= i). The window is causal because cuDNN accepts a window
only with causal masking (a non-causal (L, 0) window silently attends to the future;
/work/shared/notes/pallas-gpu.md section 4).

Shapes: batch = max(1, --tokens // T) and heads = --model_dim // D, bf16, q/k/v
(B, T, H, D). TFLOP/s count only the visible (query, key) pairs: 4 * B * H * D * pairs
for the forward and 3.5x that for forward+backward (two matmuls forward, five backward,
the FlashAttention-2 convention), so a path that computes masked scores anyway (xla)
gets no credit for them. Times are the median of --repeats calls after a warm-up call
of a separately compiled executable. Before timing, every implementation is checked
against `kernels.reference_attention` (float32 math on the same inputs) for T up to
--check_max_t: the output and the three input gradients, each as the largest error
relative to the reference's largest magnitude; a cell above --check_tolerance reads
`wrong` and is not timed. Memory: XLA's memory analysis of that executable
(arguments + outputs + temporaries - aliased), which is per cell and deterministic; the
device's peak_bytes_in_use is also recorded in the JSON, but it is a high-water mark of
the whole process. A cell that runs out of memory (at compile or run time) reads OOM;
any other failure reads `error` with the message in the JSON; no cell stops the run.
"""

import datetime
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from avsep_jax import kernels

_SEQ_LENS = flags.DEFINE_list("seq_lens", ["1024", "4096", "16384", "32768"],
                              "Sequence lengths T.")
_HEAD_DIMS = flags.DEFINE_list("head_dims", ["64", "128"], "Head dims D.")
_MASKS = flags.DEFINE_list("masks", ["full", "window"], "full and/or window.")
_WINDOW = flags.DEFINE_integer("window", 256, "Keys back in the causal window.")
_IMPLS = flags.DEFINE_list("impls", ["pallas", "xla", "cudnn", "tokamax"],
                           "Implementations; unavailable ones print n/a.")
_TOKENS = flags.DEFINE_integer("tokens", 16384, "Batch = max(1, tokens // T).")
_MODEL_DIM = flags.DEFINE_integer("model_dim", 2048, "Heads = model_dim // D.")
_DTYPE = flags.DEFINE_enum("dtype", "bfloat16", ["bfloat16", "float16", "float32"],
                           "Input dtype.")
_REPEATS = flags.DEFINE_integer("repeats", 10, "Timed calls per cell (median).")
_INTERPRET = flags.DEFINE_bool("interpret", False,
                               "Run the Pallas kernel in interpret mode (CPU).")
_BLOCK_SIZES = flags.DEFINE_list(
    "block_sizes", None,
    "Pallas BlockSizes fields in order (block_q, block_k, block_q_dq, block_k_dq, "
    "block_q_dkv, block_k_dkv[, num_warps, num_stages]); default: the kernel's.")
_CHECK_MAX_T = flags.DEFINE_integer(
    "check_max_t", 4096, "Check against reference_attention up to this T (the float32 "
    "reference holds B*H*T*T scores).")
_CHECK_TOLERANCE = flags.DEFINE_float(
    "check_tolerance", 2e-2, "Largest error relative to the reference's scale "
    "(bf16 keeps 8 bits of mantissa: ~4e-3 per rounding).")
_JSON = flags.DEFINE_string("json", "/tmp/attention_benchmark.json",
                            "Where to write every cell as JSON.")


def attention_fn(impl, mask, window, block_sizes, interpret):
  """(q, k, v) -> out for one implementation and mask, or None where unavailable."""
  causal = mask == "window"
  sides = (window, 0) if causal else None
  if impl == "pallas":
    return lambda q, k, v: kernels.flash_attention(
        q, k, v, causal=causal, window=sides, block_sizes=block_sizes,
        interpret=interpret)
  if impl in ("xla", "cudnn"):
    if impl == "cudnn" and jax.default_backend() != "gpu":
      return None
    return lambda q, k, v: jax.nn.dot_product_attention(
        q, k, v, is_causal=causal, local_window_size=sides, implementation=impl)
  if impl == "tokamax":
    try:
      import tokamax  # optional: needs jax >= 0.11 and Python >= 3.12
    except ImportError:
      return None
    return lambda q, k, v: tokamax.dot_product_attention(
        q, k, v, is_causal=causal, local_window_size=sides)
  raise ValueError(f"unknown implementation {impl!r}")


def visible_pairs(t, mask, window):
  """Number of (query, key) pairs the mask lets through."""
  if mask == "full":
    return t * t
  i = np.arange(t)
  return int(np.sum(np.minimum(i, window) + 1))


def run_cell(fn, args, repeats):
  """(median seconds, compiled bytes) of fn(*args), compiled once on its own."""
  compiled = jax.jit(fn).lower(*args).compile()
  memory = compiled.memory_analysis()
  nbytes = None
  if memory is not None:
    nbytes = (memory.argument_size_in_bytes + memory.output_size_in_bytes
              + memory.temp_size_in_bytes - memory.alias_size_in_bytes)
  jax.block_until_ready(compiled(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - start)
  return float(np.median(times)), nbytes


def relative_errors(fn, mask, window, args):
  """{'out', 'dq', 'dk', 'dv'}: max |fn - reference| / max |reference| per output."""
  causal = mask == "window"
  sides = (window, 0) if causal else None

  def reference(q, k, v):
    return kernels.reference_attention(q, k, v, causal=causal, window=sides)

  def both(f):
    # The arrays are arguments, not closed-over constants: XLA would constant-fold
    # them (minutes of compile at T = 4096, seen on an H200).
    def run(q, k, v, d_out):
      out, vjp = jax.vjp(f, q, k, v)
      return (out, *vjp(d_out))
    return jax.jit(run)(*args)

  got, want = both(fn), both(reference)
  return {name: float(jnp.max(jnp.abs(g.astype(jnp.float32) - w.astype(jnp.float32)))
                      / jnp.maximum(jnp.max(jnp.abs(w.astype(jnp.float32))), 1e-30))
          for name, g, w in zip(("out", "dq", "dk", "dv"), got, want)}


def failure(error):
  text = f"{type(error).__name__}: {error}"
  oom = any(s in text for s in ("RESOURCE_EXHAUSTED", "Out of memory", "out of memory",
                                "OOM"))
  return ("OOM" if oom else "error"), text[:2000]


def measure(impl, t, d, mask):
  """One row of the table as a dict."""
  b, h = max(1, _TOKENS.value // t), _MODEL_DIM.value // d
  row = {"impl": impl, "T": t, "D": d, "mask": mask, "batch": b, "heads": h,
         "dtype": _DTYPE.value}
  block_sizes = None
  if _BLOCK_SIZES.value:
    block_sizes = kernels.BlockSizes(*(int(x) for x in _BLOCK_SIZES.value))
  # A window reaching past the sequence is no limit (and the kernel rejects it).
  window = min(_WINDOW.value, t - 1)
  row["window"] = window if mask == "window" else None
  fn = attention_fn(impl, mask, window, block_sizes, _INTERPRET.value)
  if fn is None:
    row["status"] = "n/a"
    return row
  keys = jax.random.split(jax.random.key(t * 1000 + d), 4)
  shape, dtype = (b, t, h, d), jnp.dtype(_DTYPE.value)
  q, k, v, d_out = (jax.random.normal(key, shape, jnp.float32).astype(dtype)
                    for key in keys)
  fwd_flops = 4.0 * b * h * d * visible_pairs(t, mask, window)
  row["status"] = "ok"
  if t <= _CHECK_MAX_T.value:
    try:
      row["relative_error"] = relative_errors(fn, mask, window, (q, k, v, d_out))
    except Exception as error:  # noqa: BLE001 (recorded; the timing may still run)
      row["check_status"], row["check_error"] = failure(error)
    else:
      worst = max(row["relative_error"].values())
      row["check_status"] = "ok" if worst <= _CHECK_TOLERANCE.value else "wrong"
      if row["check_status"] == "wrong":
        row["status"] = "wrong"
        return row

  def forward_backward(q, k, v, d_out):
    _, vjp = jax.vjp(fn, q, k, v)
    return vjp(d_out)

  for name, f, args, flops in (("fwd", fn, (q, k, v), fwd_flops),
                               ("fwd_bwd", forward_backward, (q, k, v, d_out),
                                3.5 * fwd_flops)):
    try:
      seconds, nbytes = run_cell(f, args, _REPEATS.value)
    except Exception as error:  # noqa: BLE001 (one failed cell must not stop the run)
      row[f"{name}_status"], row[f"{name}_error"] = failure(error)
      continue
    row[f"{name}_status"] = "ok"
    row[f"{name}_ms"] = 1e3 * seconds
    row[f"{name}_tflops"] = flops / seconds / 1e12
    row[f"{name}_compiled_bytes"] = nbytes
  stats = jax.devices()[0].memory_stats() or {}
  row["process_peak_bytes"] = stats.get("peak_bytes_in_use")
  return row


def cell(row, name):
  status = row.get(f"{name}_status", row["status"])
  if status != "ok":
    return [status, ""]
  return [f"{row[f'{name}_ms']:.3f}", f"{row[f'{name}_tflops']:.2f}"]


def memory(row):
  nbytes = row.get("fwd_bwd_compiled_bytes")
  return "" if nbytes is None else f"{nbytes / 2**20:,.0f}"


def markdown(rows):
  lines = [("| T | D | mask | impl | fwd ms | fwd TFLOP/s | fwd+bwd ms | "
            "fwd+bwd TFLOP/s | fwd+bwd memory MiB |"),
           "| ---: | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: |"]
  for r in rows:
    mask = "full" if r["mask"] == "full" else f"window {r['window']}"
    lines.append("| " + " | ".join(
        [str(r["T"]), str(r["D"]), mask, r["impl"], *cell(r, "fwd"),
         *cell(r, "fwd_bwd"), memory(r)]) + " |")
  return "\n".join(lines)


def goals(rows):
  """The issue's three H100 goals, checked on whatever cells ran."""
  def get(impl, t, d, mask):
    return next((r for r in rows if (r["impl"], r["T"], r["D"], r["mask"])
                 == (impl, t, d, mask)), None)

  lines = []
  for r in rows:
    if r["impl"] != "pallas" or r["mask"] != "full" or r["T"] < 4096:
      continue
    c = get("cudnn", r["T"], r["D"], "full")
    if c and "fwd_bwd_ms" in c and "fwd_bwd_ms" in r:
      lines.append(f"T={r['T']} D={r['D']}: pallas fwd+bwd at "
                   f"{c['fwd_bwd_ms'] / r['fwd_bwd_ms']:.2f}x cuDNN's throughput "
                   "(goal >= 0.8)")
  for d in sorted({r["D"] for r in rows}):
    full, win = get("pallas", 16384, d, "full"), get("pallas", 16384, d, "window")
    if full and win and "fwd_bwd_ms" in full and "fwd_bwd_ms" in win:
      lines.append(f"T=16384 D={d}: window {_WINDOW.value} fwd+bwd "
                   f"{full['fwd_bwd_ms'] / win['fwd_bwd_ms']:.1f}x faster than full "
                   "(goal >= 10)")
    p, x = get("pallas", 32768, d, "full"), get("xla", 32768, d, "full")
    if p and x:
      lines.append(f"T=32768 D={d}: pallas fwd+bwd {p.get('fwd_bwd_status')}, xla "
                   f"{x.get('fwd_bwd_status')} (goal: pallas ok where xla OOM)")
  return lines


def main(argv):
  del argv
  device = jax.devices()[0]
  header = (f"{device.device_kind} ({jax.default_backend()}), jax {jax.__version__}, "
            f"{datetime.date.today().isoformat()}, {_DTYPE.value}, tokens "
            f"{_TOKENS.value}, model dim {_MODEL_DIM.value}, median of {_REPEATS.value}"
            + (", Pallas in interpret mode" if _INTERPRET.value else ""))
  print(header, flush=True)
  rows = []

  def write():
    # After every cell: a run stopped at its time limit keeps what it measured.
    with open(_JSON.value + ".partial", "w") as f:
      json.dump({"device": device.device_kind, "backend": jax.default_backend(),
                 "jax": jax.__version__, "date": datetime.date.today().isoformat(),
                 "header": header, "rows": rows, "goals": goals(rows)}, f, indent=1)
    os.replace(_JSON.value + ".partial", _JSON.value)

  for t in (int(x) for x in _SEQ_LENS.value):
    for d in (int(x) for x in _HEAD_DIMS.value):
      for mask in _MASKS.value:
        if mask not in ("full", "window"):
          raise ValueError(f"--masks: unknown mask {mask!r}")
        for impl in _IMPLS.value:
          row = measure(impl, t, d, mask)
          rows.append(row)
          write()
          print(f"  {impl} T={t} D={d} {mask}: fwd {cell(row, 'fwd')} "
                f"fwd+bwd {cell(row, 'fwd_bwd')}", flush=True)
  print()
  print(markdown(rows))
  for line in goals(rows):
    print(line)
  print(f"wrote {_JSON.value}")


if __name__ == "__main__":
  app.run(main)
