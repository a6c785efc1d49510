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
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu
from jax.experimental.pallas import triton as pltriton

from avsep_jax.kernels import block_ranges

SUPPORTED_HEAD_DIMS = (32, 64, 128)
SUPPORTED_DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16),
                    jnp.dtype(jnp.float16))
PLATFORMS = ("interpret", "gpu", "tpu")

# Scores are kept in base 2 (exp2 is the cheap exponential on GPUs): the log-sum-exp
# residual is log2-sum-exp2 of scale * log2(e) * q.k, and softmax probabilities are
# unchanged.
_LOG2_E = 1.4426950408889634
# Finite, so a block whose keys are all masked gives exp(mask - mask) = 1 instead of
# exp(-inf + inf) = NaN; the kernels then zero those entries explicitly.
_MASK_VALUE = -1e30
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
  return _forward(static, q, k, v, lengths, key_mask)[0]


def _flash_fwd(static, q, k, v, lengths, key_mask):
  out, lse = _forward(static, q, k, v, lengths, key_mask)
  return out, (q, k, v, lengths, key_mask, out, lse)


def _flash_bwd(static, residuals, d_out):
  q, k, v, lengths, key_mask, out, lse = residuals
  # delta_i = sum_j P_ij dP_ij = o_i . do_i: one cheap elementwise pass, left to XLA.
  delta = jnp.sum(out.astype(jnp.float32) * d_out.astype(jnp.float32), axis=-1)
  if not static.heads_major:
    delta = delta.transpose(0, 2, 1)
  delta = delta[..., None]  # (B, H, Tq, 1) like the log-sum-exp
  dq = _backward_dq(static, q, k, v, lengths, key_mask, d_out, lse, delta)
  dk, dv = _backward_dkv(static, q, k, v, lengths, key_mask, d_out, lse, delta)
  return dq, dk, dv, None, None


_flash.defvjp(_flash_fwd, _flash_bwd)


# ------------------------------------------------------------------------- pallas calls


def _forward(static, q, k, v, lengths, key_mask):
  """(out like q, lse (B, H, Tq_pad, 1) f32, base 2); +inf marks rows that see nothing."""
  blocks = static.blocks
  b, h, tq_pad, tk_pad, d = _dims(static, q, k)
  grid = (tq_pad // blocks.block_q, b, h)
  in_specs = [_length_spec(static), _tile_spec(static, blocks.block_q, d),
              _whole_spec(static, tk_pad, d), _whole_spec(static, tk_pad, d)]
  args = [lengths, q, k, v]
  if static.has_key_mask:
    in_specs.append(_key_mask_spec(tk_pad))
    args.append(key_mask)
  return pl.pallas_call(
      functools.partial(_forward_kernel, static=static),
      grid=grid, in_specs=in_specs,
      out_specs=[_tile_spec(static, blocks.block_q, d), _row_spec(blocks.block_q)],
      out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype),
                 jax.ShapeDtypeStruct((b, h, tq_pad, 1), jnp.float32)],
      interpret=static.interpret, compiler_params=_compiler_params(static, d),
      name="flash_attention_forward")(*args)


def _backward_dq(static, q, k, v, lengths, key_mask, d_out, lse, delta):
  blocks = static.blocks
  b, h, tq_pad, tk_pad, d = _dims(static, q, k)
  bq = blocks.block_q_dq
  in_specs = [_length_spec(static), _tile_spec(static, bq, d),
              _whole_spec(static, tk_pad, d), _whole_spec(static, tk_pad, d)]
  args = [lengths, q, k, v]
  if static.has_key_mask:
    in_specs.append(_key_mask_spec(tk_pad))
    args.append(key_mask)
  in_specs += [_tile_spec(static, bq, d), _row_spec(bq), _row_spec(bq)]
  args += [d_out, lse, delta]
  return pl.pallas_call(
      functools.partial(_dq_kernel, static=static),
      grid=(tq_pad // bq, b, h), in_specs=in_specs,
      out_specs=_tile_spec(static, bq, d),
      out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
      interpret=static.interpret, compiler_params=_compiler_params(static, d),
      name="flash_attention_dq")(*args)


def _backward_dkv(static, q, k, v, lengths, key_mask, d_out, lse, delta):
  blocks = static.blocks
  b, h, tq_pad, tk_pad, d = _dims(static, q, k)
  bk = blocks.block_k_dkv
  in_specs = [_length_spec(static), _whole_spec(static, tq_pad, d),
              _tile_spec(static, bk, d), _tile_spec(static, bk, d)]
  args = [lengths, q, k, v]
  if static.has_key_mask:
    in_specs.append(_key_mask_spec(tk_pad))
    args.append(key_mask)
  in_specs += [_whole_spec(static, tq_pad, d), _whole_row_spec(tq_pad),
               _whole_row_spec(tq_pad)]
  args += [d_out, lse, delta]
  return pl.pallas_call(
      functools.partial(_dkv_kernel, static=static),
      grid=(tk_pad // bk, b, h), in_specs=in_specs,
      out_specs=[_tile_spec(static, bk, d), _tile_spec(static, bk, d)],
      out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype),
                 jax.ShapeDtypeStruct(v.shape, v.dtype)],
      interpret=static.interpret, compiler_params=_compiler_params(static, d),
      name="flash_attention_dkv")(*args)


def _dims(static, q, k):
  """(B, H, Tq_pad, Tk_pad, D) whatever the layout."""
  if static.heads_major:
    b, h, tq, d = q.shape
    return b, h, tq, k.shape[2], d
  b, tq, h, d = q.shape
  return b, h, tq, k.shape[1], d


# The grid is (sequence block, batch, head) in every kernel.


def _tile_spec(static, block, d):
  """One (block, D) tile of a (B, T, H, D) or (B, H, T, D) array."""
  if static.heads_major:
    return pl.BlockSpec((None, None, block, d), lambda i, b, h: (b, h, i, 0))
  return pl.BlockSpec((None, block, None, d), lambda i, b, h: (b, i, h, 0))


def _whole_spec(static, length, d):
  """The whole (T, D) sequence of one batch element and head; the kernel slices it."""
  if static.heads_major:
    return pl.BlockSpec((None, None, length, d), lambda i, b, h: (b, h, 0, 0))
  return pl.BlockSpec((None, length, None, d), lambda i, b, h: (b, 0, h, 0))


# Per-row statistics are (B, H, T, 1) columns and the key mask is (B, 1, Tk) rows: the
# shapes they broadcast in, and ones Mosaic TPU can tile (a squeezed second-minor
# dimension would count as 1, which is not a multiple of 8).


def _row_spec(block):
  """One (block, 1) block of a (B, H, T, 1) per-row statistic."""
  return pl.BlockSpec((None, None, block, 1), lambda i, b, h: (b, h, i, 0))


def _whole_row_spec(length):
  return pl.BlockSpec((None, None, length, 1), lambda i, b, h: (b, h, 0, 0))


def _key_mask_spec(length):
  return pl.BlockSpec((None, 1, length), lambda i, b, h: (b, 0, 0))


def _length_spec(static):
  """This example's key length: a scalar block, or on TPU the whole (B,) in SMEM."""
  if static.platform == "tpu":
    return pl.BlockSpec(memory_space=pltpu.SMEM)
  return pl.BlockSpec((None,), lambda i, b, h: (b,))


def _load_length(length_ref):
  if length_ref.shape == ():
    return length_ref[()]
  return length_ref[pl.program_id(1)]


def _compiler_params(static, d):
  if static.interpret:
    return None
  if static.platform == "gpu":
    warps = static.blocks.num_warps or (4 if d <= 64 else 8)
    return pltriton.CompilerParams(num_warps=warps,
                                   num_stages=static.blocks.num_stages)
  if static.platform == "tpu":
    return pltpu.CompilerParams(dimension_semantics=("parallel",) * 3)
  return None


# ------------------------------------------------------------------------- kernel bodies


def _dot(a, b, contract_a, contract_b):
  """2-D matmul with float32 accumulation; float32 inputs get full (not TF32) precision."""
  precision = lax.Precision.HIGHEST if a.dtype == jnp.float32 else None
  return lax.dot_general(a, b, (((contract_a,), (contract_b,)), ((), ())),
                         precision=precision, preferred_element_type=jnp.float32)


def _visible(static, q_start, k_start, block_q, block_k, key_length, key_mask_ref):
  """(block_q, block_k) bool: which keys of a tile each query row sees."""
  rows = q_start + lax.broadcasted_iota(jnp.int32, (block_q, block_k), 0)
  cols = k_start + lax.broadcasted_iota(jnp.int32, (block_q, block_k), 1)
  ok = cols < key_length
  if static.band.left is not None:
    ok &= cols >= rows - static.band.left
  if static.band.right is not None:
    ok &= cols <= rows + static.band.right
  if key_mask_ref is not None:
    ok &= key_mask_ref[:, pl.ds(k_start, block_k)] != 0
  return ok


def _loop(static, ranges, body, carry):
  """Runs `body(j, carry, masked)` over [lo, hi), unmasked over [full_lo, full_hi)."""
  lo, full_lo, full_hi, hi = ranges
  if static.has_key_mask:  # no block is known to be fully visible
    return lax.fori_loop(lo, hi, functools.partial(body, masked=True), carry)
  carry = lax.fori_loop(lo, full_lo, functools.partial(body, masked=True), carry)
  carry = lax.fori_loop(full_lo, full_hi, functools.partial(body, masked=False), carry)
  return lax.fori_loop(full_hi, hi, functools.partial(body, masked=True), carry)


def _split_refs(static, refs):
  """(key_mask_ref or None, remaining refs) from the refs after lengths, q, k, v."""
  if static.has_key_mask:
    return refs[0], refs[1:]
  return None, refs


def _forward_kernel(length_ref, q_ref, k_ref, v_ref, *refs, static):
  key_mask_ref, (out_ref, lse_ref) = _split_refs(static, refs)
  bq, bk = static.blocks.block_q, static.blocks.block_k
  q_block = pl.program_id(0)
  q_start = q_block * bq
  key_length = _load_length(length_ref)
  q = q_ref[...]
  ranges = block_ranges.key_block_range(
      q_block, key_length, block_q=bq, block_k=bk, q_len=static.q_len,
      k_len=static.k_len, band=static.band)

  def body(j, carry, masked):
    acc, row_max, row_sum = carry
    k_start = pl.multiple_of(j * bk, bk)
    k = k_ref[pl.ds(k_start, bk), :]
    v = v_ref[pl.ds(k_start, bk), :]
    s = _dot(q, k, 1, 1) * (static.scale * _LOG2_E)
    if masked:
      visible = _visible(static, q_start, k_start, bq, bk, key_length, key_mask_ref)
      s = jnp.where(visible, s, _MASK_VALUE)
    new_max = jnp.maximum(row_max, jnp.max(s, axis=1))
    p = jnp.exp2(s - new_max[:, None])
    if masked:  # a row masked so far has new_max == _MASK_VALUE and p == 1
      p = jnp.where(visible, p, 0.0)
    correction = jnp.exp2(row_max - new_max)
    row_sum = correction * row_sum + jnp.sum(p, axis=1)
    acc = acc * correction[:, None] + _dot(p.astype(v.dtype), v, 1, 0)
    return acc, new_max, row_sum

  d = q.shape[-1]
  carry = (jnp.zeros((bq, d), jnp.float32), jnp.full((bq,), -jnp.inf, jnp.float32),
           jnp.zeros((bq,), jnp.float32))
  acc, row_max, row_sum = _loop(static, ranges, body, carry)
  seen = row_sum > 0
  inverse = jnp.where(seen, 1.0 / jnp.where(seen, row_sum, 1.0), 0.0)
  out_ref[...] = (acc * inverse[:, None]).astype(out_ref.dtype)
  # +inf makes the backward's exp2(s - lse) exactly 0 on rows that see nothing.
  lse = jnp.where(seen, row_max + jnp.log2(jnp.where(seen, row_sum, 1.0)), jnp.inf)
  lse_ref[...] = lse[:, None]


def _dq_kernel(length_ref, q_ref, k_ref, v_ref, *refs, static):
  key_mask_ref, (do_ref, lse_ref, delta_ref, dq_ref) = _split_refs(static, refs)
  bq, bk = static.blocks.block_q_dq, static.blocks.block_k_dq
  q_block = pl.program_id(0)
  q_start = q_block * bq
  key_length = _load_length(length_ref)
  q, d_out = q_ref[...], do_ref[...]
  lse, delta = lse_ref[...], delta_ref[...]
  ranges = block_ranges.key_block_range(
      q_block, key_length, block_q=bq, block_k=bk, q_len=static.q_len,
      k_len=static.k_len, band=static.band)

  def body(j, dq, masked):
    k_start = pl.multiple_of(j * bk, bk)
    k = k_ref[pl.ds(k_start, bk), :]
    v = v_ref[pl.ds(k_start, bk), :]
    s = _dot(q, k, 1, 1) * (static.scale * _LOG2_E)
    if masked:  # exp2(_MASK_VALUE - lse) == 0, since lse >= every visible score
      s = jnp.where(
          _visible(static, q_start, k_start, bq, bk, key_length, key_mask_ref),
          s, _MASK_VALUE)
    p = jnp.exp2(s - lse)
    dp = _dot(d_out, v, 1, 1)
    ds = p * (dp - delta)
    return dq + _dot(ds.astype(k.dtype), k, 1, 0)

  dq = _loop(static, ranges, body, jnp.zeros(q.shape, jnp.float32))
  dq_ref[...] = (dq * static.scale).astype(dq_ref.dtype)


def _dkv_kernel(length_ref, q_ref, k_ref, v_ref, *refs, static):
  key_mask_ref, (do_ref, lse_ref, delta_ref, dk_ref, dv_ref) = _split_refs(static, refs)
  bq, bk = static.blocks.block_q_dkv, static.blocks.block_k_dkv
  k_block = pl.program_id(0)
  k_start = k_block * bk
  key_length = _load_length(length_ref)
  k, v = k_ref[...], v_ref[...]
  ranges = block_ranges.query_block_range(
      k_block, key_length, block_q=bq, block_k=bk, q_len=static.q_len,
      k_len=static.k_len, band=static.band)

  def body(i, carry, masked):
    dk, dv = carry
    q_start = pl.multiple_of(i * bq, bq)
    q = q_ref[pl.ds(q_start, bq), :]
    d_out = do_ref[pl.ds(q_start, bq), :]
    lse = lse_ref[pl.ds(q_start, bq), :]
    delta = delta_ref[pl.ds(q_start, bq), :]
    s = _dot(q, k, 1, 1) * (static.scale * _LOG2_E)
    if masked:
      s = jnp.where(
          _visible(static, q_start, k_start, bq, bk, key_length, key_mask_ref),
          s, _MASK_VALUE)
    p = jnp.exp2(s - lse)
    dv = dv + _dot(p.astype(d_out.dtype), d_out, 0, 0)
    dp = _dot(d_out, v, 1, 1)
    ds = p * (dp - delta)
    dk = dk + _dot(ds.astype(q.dtype), q, 0, 0)
    return dk, dv

  zeros = jnp.zeros(k.shape, jnp.float32)
  dk, dv = _loop(static, ranges, body, (zeros, zeros))
  dk_ref[...] = (dk * static.scale).astype(dk_ref.dtype)
  dv_ref[...] = dv.astype(dv_ref.dtype)
