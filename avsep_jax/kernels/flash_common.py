"""Pieces the flash attention forward and backward kernels share.

`flash_forward` and `flash_backward` build their `pallas_call`s from the block specs
here and compute each tile's scores with one helper, `masked_scores`, so the three
kernels cannot drift apart in how they scale and mask. `static` throughout is the
`_Static` of `flash`: the band, sequence lengths, scale, block sizes and platform the
kernels specialise on. The grid is (sequence block, batch, head) in every kernel.
"""

import functools

import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu
from jax.experimental.pallas import triton as pltriton

# Scores are kept in base 2 (exp2 is the cheap exponential on GPUs): the log-sum-exp
# residual is log2-sum-exp2 of scale * log2(e) * q.k, and softmax probabilities are
# unchanged.
LOG2_E = 1.4426950408889634
# Finite, so a block whose keys are all masked gives exp(mask - mask) = 1 instead of
# exp(-inf + inf) = NaN; the kernels then zero those entries explicitly.
MASK_VALUE = -1e30


# ------------------------------------------------------------------------- pallas calls


def dims(static, q, k):
  """(B, H, Tq_pad, Tk_pad, D) whatever the layout."""
  if static.heads_major:
    b, h, tq, d = q.shape
    return b, h, tq, k.shape[2], d
  b, tq, h, d = q.shape
  return b, h, tq, k.shape[1], d


def tile_spec(static, block, d):
  """One (block, D) tile of a (B, T, H, D) or (B, H, T, D) array."""
  if static.heads_major:
    return pl.BlockSpec((None, None, block, d), lambda i, b, h: (b, h, i, 0))
  return pl.BlockSpec((None, block, None, d), lambda i, b, h: (b, i, h, 0))


def whole_spec(static, length, d):
  """The whole (T, D) sequence of one batch element and head; the kernel slices it."""
  if static.heads_major:
    return pl.BlockSpec((None, None, length, d), lambda i, b, h: (b, h, 0, 0))
  return pl.BlockSpec((None, length, None, d), lambda i, b, h: (b, 0, h, 0))


# Per-row statistics are (B, H, T, 1) columns and the key mask is (B, 1, Tk) rows: the
# shapes they broadcast in, and ones Mosaic TPU can tile (a squeezed second-minor
# dimension would count as 1, which is not a multiple of 8).


def row_spec(block):
  """One (block, 1) block of a (B, H, T, 1) per-row statistic."""
  return pl.BlockSpec((None, None, block, 1), lambda i, b, h: (b, h, i, 0))


def whole_row_spec(length):
  return pl.BlockSpec((None, None, length, 1), lambda i, b, h: (b, h, 0, 0))


def key_mask_spec(length):
  return pl.BlockSpec((None, 1, length), lambda i, b, h: (b, 0, 0))


def length_spec(static):
  """This example's key length: a scalar block, or on TPU the whole (B,) in SMEM."""
  if static.platform == "tpu":
    return pl.BlockSpec(memory_space=pltpu.SMEM)
  return pl.BlockSpec((None,), lambda i, b, h: (b,))


def load_length(length_ref):
  if length_ref.shape == ():
    return length_ref[()]
  return length_ref[pl.program_id(1)]


def compiler_params(static, d):
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


def dot(a, b, contract_a, contract_b):
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


def masked_scores(static, q, k, q_start, k_start, key_length, key_mask_ref, masked):
  """One tile's base-2 scores, `MASK_VALUE` where the query does not see the key.

  Args:
    static: the kernels' `_Static`.
    q: (block_q, D) queries starting at row `q_start`.
    k: (block_k, D) keys starting at column `k_start`.
    key_length: this example's key length (keys at or beyond it are masked).
    key_mask_ref: (1, Tk_pad) int key mask ref, or None.
    masked: False on tiles `block_ranges` knows to be fully visible, which then skip
      building the mask (a static Python bool: the loops are split on it).

  Returns:
    (s, visible): s (block_q, block_k) f32 = scale * log2(e) * q.k with masked
    entries set to `MASK_VALUE`; visible the (block_q, block_k) bool mask, or None
    when not `masked`. Masked scores are finite, so where a whole row is masked
    exp2(s - max(s)) is 1, not 0: a softmax over the tile zeroes them with `visible`.
  """
  s = dot(q, k, 1, 1) * (static.scale * LOG2_E)
  if not masked:
    return s, None
  visible = _visible(static, q_start, k_start, q.shape[0], k.shape[0], key_length,
                     key_mask_ref)
  return jnp.where(visible, s, MASK_VALUE), visible


def loop(static, ranges, body, carry):
  """Runs `body(j, carry, masked)` over [lo, hi), unmasked over [full_lo, full_hi)."""
  lo, full_lo, full_hi, hi = ranges
  if static.has_key_mask:  # no block is known to be fully visible
    return lax.fori_loop(lo, hi, functools.partial(body, masked=True), carry)
  carry = lax.fori_loop(lo, full_lo, functools.partial(body, masked=True), carry)
  carry = lax.fori_loop(full_lo, full_hi, functools.partial(body, masked=False), carry)
  return lax.fori_loop(full_hi, hi, functools.partial(body, masked=True), carry)


def leading_inputs(static, qkv_specs, tk_pad, lengths, q, k, v, key_mask):
  """(in_specs, args) of the inputs every kernel reads first: lengths, q, k, v (with
  `qkv_specs`, tiled or whole by kernel) and the (B, 1, Tk_pad) key mask when there is
  one; `split_refs` takes them apart again inside the kernel."""
  in_specs = [length_spec(static), *qkv_specs]
  args = [lengths, q, k, v]
  if static.has_key_mask:
    in_specs.append(key_mask_spec(tk_pad))
    args.append(key_mask)
  return in_specs, args


def split_refs(static, refs):
  """(key_mask_ref or None, remaining refs) from the refs after lengths, q, k, v."""
  if static.has_key_mask:
    return refs[0], refs[1:]
  return None, refs
