"""Flash attention in Pallas: online-softmax forward, recomputing backward, banded masks.

Layout (B, T, H, D). The forward keeps one query block in registers and streams key
blocks through an online softmax (Dao et al. 2022), saving only the row log-sum-exp;
the backward is a `jax.custom_vjp` with two kernels in the FlashAttention-2 style (one
over query blocks for dq, one over key blocks for dk and dv) that recompute the scores
instead of storing them. Masks are key padding (`key_lengths`, or a general per-key
`key_mask`), causal, and a sliding window (left, right). Each query block visits only
the key blocks its band can see (`block_ranges`), and only the blocks at the band's
edges pay for a mask, so a window costs time in proportion to the window.

Backends (facts from /work/shared/notes/pallas-gpu.md, sections 1-2):
  * CPU: `interpret=True` (the HLO interpreter; a sequential loop over the grid).
  * GPU: the Pallas **Triton** backend, chosen by passing
    `jax.experimental.pallas.triton.CompilerParams`. It is the only GPU backend that
    lowers a `lax.dot_general` kernel body; Mosaic GPU, the default GPU backend since
    jax 0.9, has no `dot_general` rule and needs its own body written with
    `plgpu.wgmma`. The Triton backend is deprecated from jax 0.11.0 (a warning, not an
    error) and still present; a Mosaic GPU body is the replacement when it goes.
    Triton wants power-of-two load shapes, hence the power-of-two block sizes and head
    dims, and sequences padded to whole blocks.
  * TPU: Mosaic, with the same body on a (B, H, T, D) copy of the inputs (Mosaic
    cannot squeeze the heads axis out of the second-minor place) and the lengths in
    SMEM. Each program holds one head's whole K/V (or Q and dO) in VMEM, which bounds
    T; a TPU-tuned version would add a key-block grid axis, as splash attention does.
Compiler parameters are chosen per platform because Triton's fail on TPU. The Triton
and Mosaic lowerings are checked from a CPU host by the tests
(`jit(...).trace(...).lower(lowering_platforms=...)`); the device compilers run only
on the device.

This module is the public wrapper: argument checks, padding, layout and the
custom_vjp. The kernels are in `flash_forward` (output and log-sum-exp) and
`flash_backward` (dq; dk and dv), which share their block specs and their masked
score computation through `flash_common`.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from avsep_jax.kernels import block_ranges
from avsep_jax.kernels import flash_backward
from avsep_jax.kernels import flash_forward

SUPPORTED_HEAD_DIMS = (32, 64, 128)
SUPPORTED_DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16),
                    jnp.dtype(jnp.float16))
PLATFORMS = ("interpret", "gpu", "tpu")

# Triton's dot needs every operand dimension >= 16; Mosaic TPU tiles arrays by
# (8, 128), and key blocks are the lane dimension of the score tiles and key mask.
_MIN_BLOCK = {"interpret": 16, "gpu": 16, "tpu": 128}
_MAX_BLOCK = 512


@dataclasses.dataclass(frozen=True)
class BlockSizes:
  """Tile sizes of the three kernels, and Triton's launch parameters.

  Each block size must be a power of two in [16, 512] (on TPU, a multiple of 128).
  Blocks longer than the (padded) sequence are shortened to it, so short inputs do
  not pay for a large tile of padding.

  Attributes:
    block_q, block_k: forward tile (queries x keys).
    block_q_dq, block_k_dq: dq kernel tile.
    block_q_dkv, block_k_dkv: dk/dv kernel tile.
    num_warps: Triton warps per program; default 4 for D <= 64, else 8.
    num_stages: Triton software-pipelining stages.
  """

  block_q: int = 128
  block_k: int = 64
  block_q_dq: int = 64
  block_k_dq: int = 64
  block_q_dkv: int = 64
  block_k_dkv: int = 64
  num_warps: int | None = None
  num_stages: int = 2

  _Q_FIELDS = ("block_q", "block_q_dq", "block_q_dkv")
  _K_FIELDS = ("block_k", "block_k_dq", "block_k_dkv")

  @classmethod
  def default(cls, platform):
    """The defaults for `platform` ('interpret', 'gpu' or 'tpu')."""
    if platform == "tpu":
      return cls(*(_MIN_BLOCK["tpu"],) * 6)
    return cls()

  def validate(self, platform):
    """Raises ValueError naming the first block size `platform` cannot lower."""
    low = _MIN_BLOCK[platform]
    for name in self._Q_FIELDS + self._K_FIELDS:
      size = getattr(self, name)
      if (not isinstance(size, (int, np.integer)) or size < 1 or size & (size - 1)
          or not low <= size <= _MAX_BLOCK or size % low):
        raise ValueError(
            f"BlockSizes.{name}={size!r} cannot be lowered on {platform}: block sizes "
            f"must be powers of two in [{low}, {_MAX_BLOCK}]")
    if self.num_warps is not None and (self.num_warps < 1
                                       or self.num_warps & (self.num_warps - 1)):
      raise ValueError(f"BlockSizes.num_warps={self.num_warps} must be a power of two")

  def fit(self, q_len, k_len, platform):
    """These sizes, each shortened to the next power of two above its sequence."""
    low = _MIN_BLOCK[platform]
    cap_q = max(low, _next_power_of_2(q_len))
    cap_k = max(low, _next_power_of_2(k_len))
    changes = {name: min(getattr(self, name), cap_q) for name in self._Q_FIELDS}
    changes.update({name: min(getattr(self, name), cap_k) for name in self._K_FIELDS})
    return dataclasses.replace(self, **changes)


@dataclasses.dataclass(frozen=True)
class _Static:
  """Everything the kernels specialise on (hashable: a custom_vjp static argument)."""

  band: block_ranges.Band
  q_len: int
  k_len: int
  scale: float
  blocks: BlockSizes
  platform: str
  interpret: bool
  has_key_mask: bool

  @property
  def heads_major(self):
    """True when the arrays are (B, H, T, D) (TPU), False for (B, T, H, D)."""
    return self.platform == "tpu"


def flash_attention(q, k, v, *, key_lengths=None, causal=False, window=None,
                    interpret=False, key_mask=None, scale=None, block_sizes=None,
                    platform=None):
  """Memory-efficient softmax attention; rows with no visible key return zeros.

  Differentiable in q, k and v (the backward recomputes the scores blockwise).

  Args:
    q: (B, Tq, H, D) queries; D in `SUPPORTED_HEAD_DIMS`, dtype in
      `SUPPORTED_DTYPES`.
    k, v: (B, Tk, H, D) keys and values, q's dtype.
    key_lengths: optional (B,) int; keys j >= key_lengths[b] are masked (and their
      blocks skipped).
    causal: key j visible to query i only when j <= i.
    window: optional (left, right), each in [0, max(Tq, Tk)); key j visible to query
      i when i - left <= j <= i + right.
    interpret: run the kernels in the Pallas interpreter (the way to run on CPU).
    key_mask: optional (B, Tk) bool, False masks that key (for masks that are not a
      prefix, such as absent speakers; every visited block then pays for the mask).
    scale: score scale; default 1 / sqrt(D).
    block_sizes: `BlockSizes`; default `BlockSizes.default(platform)`.
    platform: 'gpu' or 'tpu' to pick a lowering other than the default backend's
      (e.g. to lower for a GPU from a CPU host). With `interpret`, 'tpu' interprets
      the TPU variant (its layout and SMEM lengths); otherwise the GPU one.

  Returns:
    (B, Tq, H, D) in q's dtype.

  Raises:
    ValueError: on shapes, dtypes, head dims, windows or block sizes the kernel does
      not support, naming the problem.
  """
  _check_inputs(q, k, v, key_lengths, key_mask, window)
  platform = _resolve_platform(platform, interpret)
  blocks = BlockSizes.default(platform) if block_sizes is None else block_sizes
  blocks.validate(platform)
  b, tq, _, d = q.shape
  tk = k.shape[1]
  blocks = blocks.fit(tq, tk, platform)
  static = _Static(
      band=block_ranges.Band.from_args(causal, window), q_len=tq, k_len=tk,
      scale=float(d ** -0.5 if scale is None else scale), blocks=blocks,
      platform=platform, interpret=bool(interpret), has_key_mask=key_mask is not None)

  if key_lengths is None:
    lengths = jnp.full((b,), tk, jnp.int32)
  else:
    lengths = jnp.clip(jnp.asarray(key_lengths).astype(jnp.int32), 0, tk)
  # Whole blocks only: Triton loads must be power-of-two sized, and the interpreter
  # fills out-of-bounds reads with NaN. Padded keys sit beyond every length.
  tq_pad = _round_up(tq, max(getattr(blocks, f) for f in BlockSizes._Q_FIELDS))
  tk_pad = _round_up(tk, max(getattr(blocks, f) for f in BlockSizes._K_FIELDS))
  q = _pad_time(q, tq_pad)
  k, v = _pad_time(k, tk_pad), _pad_time(v, tk_pad)
  if key_mask is not None:
    key_mask = jnp.pad(jnp.asarray(key_mask, bool), ((0, 0), (0, tk_pad - tk)))
    key_mask = key_mask.astype(jnp.int32)[:, None, :]  # (B, 1, Tk): a row per example
  if static.heads_major:
    q, k, v = (x.transpose(0, 2, 1, 3) for x in (q, k, v))
  out = _flash(static, q, k, v, lengths, key_mask)
  if static.heads_major:
    out = out.transpose(0, 2, 1, 3)
  return out[:, :tq]


def visited_key_blocks(q_len, k_len, *, key_lengths=None, causal=False, window=None,
                       block_sizes=None, platform="interpret", kernel="forward"):
  """Key blocks each query block visits: the kernels' own loop bounds, evaluated.

  Args:
    q_len, k_len: sequence lengths.
    key_lengths, causal, window, block_sizes, platform: as for `flash_attention`.
    kernel: 'forward' or 'dq' (whose tiles are `block_*_dq`).

  Returns:
    (B, num_query_blocks) int numpy array (B = 1 without key_lengths).
  """
  blocks = (BlockSizes.default(platform) if block_sizes is None
            else block_sizes).fit(q_len, k_len, platform)
  bq, bk = ((blocks.block_q, blocks.block_k) if kernel == "forward"
            else (blocks.block_q_dq, blocks.block_k_dq))
  lengths = _lengths_for_count(key_lengths, k_len)
  q_blocks = jnp.arange(-(-q_len // bq), dtype=jnp.int32)[None, :]
  lo, _, _, hi = block_ranges.key_block_range(
      q_blocks, lengths, block_q=bq, block_k=bk, q_len=q_len, k_len=k_len,
      band=block_ranges.Band.from_args(causal, window))
  return np.asarray(hi - lo)


def visited_query_blocks(q_len, k_len, *, key_lengths=None, causal=False, window=None,
                         block_sizes=None, platform="interpret"):
  """Query blocks each key block visits in the dk/dv kernel: (B, num_key_blocks)."""
  blocks = (BlockSizes.default(platform) if block_sizes is None
            else block_sizes).fit(q_len, k_len, platform)
  bq, bk = blocks.block_q_dkv, blocks.block_k_dkv
  lengths = _lengths_for_count(key_lengths, k_len)
  k_blocks = jnp.arange(-(-k_len // bk), dtype=jnp.int32)[None, :]
  lo, _, _, hi = block_ranges.query_block_range(
      k_blocks, lengths, block_q=bq, block_k=bk, q_len=q_len, k_len=k_len,
      band=block_ranges.Band.from_args(causal, window))
  return np.asarray(hi - lo)


def _lengths_for_count(key_lengths, k_len):
  if key_lengths is None:
    return jnp.full((1, 1), k_len, jnp.int32)
  return jnp.clip(jnp.asarray(key_lengths, jnp.int32), 0, k_len)[:, None]


# ------------------------------------------------------------------------- checks


def _check_inputs(q, k, v, key_lengths, key_mask, window):
  for name, x in (("q", q), ("k", k), ("v", v)):
    if x.ndim != 4:
      raise ValueError(f"{name} must be (B, T, H, D), got shape {x.shape}")
  if k.shape != v.shape:
    raise ValueError(f"k and v shapes differ: {k.shape} vs {v.shape}")
  if (q.shape[0], q.shape[2], q.shape[3]) != (k.shape[0], k.shape[2], k.shape[3]):
    raise ValueError(
        f"q {q.shape} and k/v {k.shape} must agree on batch, heads and head dim "
        "(layout (B, T, H, D))")
  if not q.dtype == k.dtype == v.dtype:
    raise ValueError(f"q, k, v dtypes differ: {q.dtype}, {k.dtype}, {v.dtype}")
  if q.dtype not in SUPPORTED_DTYPES:
    raise ValueError(f"dtype {q.dtype} not supported; use one of "
                     f"{[str(t) for t in SUPPORTED_DTYPES]}")
  d = q.shape[-1]
  if d not in SUPPORTED_HEAD_DIMS:
    raise ValueError(f"head dim D={d} not supported; use one of {SUPPORTED_HEAD_DIMS} "
                     "(pad the heads, or use another attention implementation)")
  if q.shape[1] == 0 or k.shape[1] == 0:
    raise ValueError(f"empty sequence: q {q.shape}, k {k.shape}")
  b, tk = k.shape[0], k.shape[1]
  if key_lengths is not None:
    key_lengths = jnp.asarray(key_lengths)
    if key_lengths.shape != (b,) or not jnp.issubdtype(key_lengths.dtype, jnp.integer):
      raise ValueError(f"key_lengths must be ({b},) int, got {key_lengths.shape} "
                       f"{key_lengths.dtype}")
  if key_mask is not None and jnp.shape(key_mask) != (b, tk):
    raise ValueError(f"key_mask must be ({b}, {tk}) bool, got {jnp.shape(key_mask)}")
  if window is not None:
    t = max(q.shape[1], tk)
    if (len(window) != 2
        or not all(isinstance(s, (int, np.integer)) and 0 <= s < t for s in window)):
      raise ValueError(
          f"window={window!r} must be (left, right) ints in [0, T) with T={t}; a side "
          "of T or more is larger than the sequence (use None for that side's "
          "unbounded attention)")


def _resolve_platform(platform, interpret):
  if interpret:
    return "tpu" if platform == "tpu" else "interpret"
  if platform is None:
    backend = jax.default_backend()
    platform = "gpu" if backend in ("gpu", "cuda", "rocm") else backend
  if platform == "cpu":
    raise ValueError("Pallas kernels have no CPU lowering: pass interpret=True on CPU")
  if platform not in PLATFORMS:
    raise ValueError(f"platform {platform!r} not supported; choose from {PLATFORMS}")
  return platform


def _next_power_of_2(n):
  return 1 << max(0, int(n) - 1).bit_length()


def _round_up(n, multiple):
  return -(-n // multiple) * multiple


def _pad_time(x, length):
  return jnp.pad(x, ((0, 0), (0, length - x.shape[1]), (0, 0), (0, 0)))


# ------------------------------------------------------------------------- custom vjp


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _flash(static, q, k, v, lengths, key_mask):
  return flash_forward.forward(static, q, k, v, lengths, key_mask)[0]


def _flash_fwd(static, q, k, v, lengths, key_mask):
  out, lse = flash_forward.forward(static, q, k, v, lengths, key_mask)
  return out, (q, k, v, lengths, key_mask, out, lse)


def _flash_bwd(static, residuals, d_out):
  q, k, v, lengths, key_mask, out, lse = residuals
  # delta_i = sum_j P_ij dP_ij = o_i . do_i: one cheap elementwise pass, left to XLA.
  delta = jnp.sum(out.astype(jnp.float32) * d_out.astype(jnp.float32), axis=-1)
  if not static.heads_major:
    delta = delta.transpose(0, 2, 1)
  delta = delta[..., None]  # (B, H, Tq, 1) like the log-sum-exp
  args = (static, q, k, v, lengths, key_mask, d_out, lse, delta)
  dq = flash_backward.backward_dq(*args)
  dk, dv = flash_backward.backward_dkv(*args)
  return dq, dk, dv, None, None


_flash.defvjp(_flash_fwd, _flash_bwd)
