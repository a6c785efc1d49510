"""Flash attention forward kernel: one query block, an online softmax over key blocks.

Each program keeps one (block_q, D) query tile and streams the key blocks its band
can see through an online softmax (Dao et al. 2022), writing the output tile and the
row log-sum-exp (base 2) that the backward kernels in `flash_backward` recompute the
probabilities from. The public entry point is `flash.flash_attention`.
"""

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from avsep_jax.kernels import block_ranges
from avsep_jax.kernels import flash_common as common


def forward(static, q, k, v, lengths, key_mask):
  """(out like q, lse (B, H, Tq_pad, 1) f32, base 2); +inf marks rows that see nothing."""
  blocks = static.blocks
  b, h, tq_pad, tk_pad, d = common.dims(static, q, k)
  grid = (tq_pad // blocks.block_q, b, h)
  in_specs, args = common.leading_inputs(
      static, (common.tile_spec(static, blocks.block_q, d),
               common.whole_spec(static, tk_pad, d), common.whole_spec(static, tk_pad, d)),
      tk_pad, lengths, q, k, v, key_mask)
  return pl.pallas_call(
      functools.partial(_forward_kernel, static=static),
      grid=grid, in_specs=in_specs,
      out_specs=[common.tile_spec(static, blocks.block_q, d),
                 common.row_spec(blocks.block_q)],
      out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype),
                 jax.ShapeDtypeStruct((b, h, tq_pad, 1), jnp.float32)],
      interpret=static.interpret, compiler_params=common.compiler_params(static, d),
      name="flash_attention_forward")(*args)


def _forward_kernel(length_ref, q_ref, k_ref, v_ref, *refs, static):
  key_mask_ref, (out_ref, lse_ref) = common.split_refs(static, refs)
  bq, bk = static.blocks.block_q, static.blocks.block_k
  q_block = pl.program_id(0)
  q_start = q_block * bq
  key_length = common.load_length(length_ref)
  q = q_ref[...]
  ranges = block_ranges.key_block_range(
      q_block, key_length, block_q=bq, block_k=bk, q_len=static.q_len,
      k_len=static.k_len, band=static.band)

  def body(j, carry, masked):
    acc, row_max, row_sum = carry
    k_start = pl.multiple_of(j * bk, bk)
    k = k_ref[pl.ds(k_start, bk), :]
    v = v_ref[pl.ds(k_start, bk), :]
    s, visible = common.masked_scores(static, q, k, q_start, k_start, key_length,
                                      key_mask_ref, masked)
    new_max = jnp.maximum(row_max, jnp.max(s, axis=1))
    p = jnp.exp2(s - new_max[:, None])
    if masked:  # a row masked so far has new_max == MASK_VALUE and p == 1
      p = jnp.where(visible, p, 0.0)
    correction = jnp.exp2(row_max - new_max)
    row_sum = correction * row_sum + jnp.sum(p, axis=1)
    acc = acc * correction[:, None] + common.dot(p.astype(v.dtype), v, 1, 0)
    return acc, new_max, row_sum

  d = q.shape[-1]
  carry = (jnp.zeros((bq, d), jnp.float32), jnp.full((bq,), -jnp.inf, jnp.float32),
           jnp.zeros((bq,), jnp.float32))
  acc, row_max, row_sum = common.loop(static, ranges, body, carry)
  seen = row_sum > 0
  inverse = jnp.where(seen, 1.0 / jnp.where(seen, row_sum, 1.0), 0.0)
  out_ref[...] = (acc * inverse[:, None]).astype(out_ref.dtype)
  # +inf makes the backward's exp2(s - lse) exactly 0 on rows that see nothing.
  lse = jnp.where(seen, row_max + jnp.log2(jnp.where(seen, row_sum, 1.0)), jnp.inf)
  lse_ref[...] = lse[:, None]
