"""Flash attention backward kernels: dq over query blocks, dk and dv over key blocks.

FlashAttention-2 style: neither kernel reads stored probabilities. Both recompute each
tile's scores (`flash_common.masked_scores`, as the forward does) and turn them into
probabilities with the forward's row log-sum-exp, P = exp2(s - lse); with
delta_i = o_i . do_i, dS = P * (dO V^T - delta). Each kernel's grid runs over the
blocks of its own output (query blocks for dq, key blocks for dk and dv), so every
program writes only its own tiles. The public entry point is `flash.flash_attention`,
whose custom_vjp calls `backward_dq` and `backward_dkv`.
"""

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from avsep_jax.kernels import block_ranges
from avsep_jax.kernels import flash_common as common


def backward_dq(static, q, k, v, lengths, key_mask, d_out, lse, delta):
  """dq like q, from d_out like q and lse, delta (B, H, Tq_pad, 1) f32."""
  blocks = static.blocks
  b, h, tq_pad, tk_pad, d = common.dims(static, q, k)
  bq = blocks.block_q_dq
  in_specs, args = common.leading_inputs(
      static, (common.tile_spec(static, bq, d), common.whole_spec(static, tk_pad, d),
               common.whole_spec(static, tk_pad, d)),
      tk_pad, lengths, q, k, v, key_mask)
  in_specs += [common.tile_spec(static, bq, d), common.row_spec(bq),
               common.row_spec(bq)]
  args += [d_out, lse, delta]
  return pl.pallas_call(
      functools.partial(_dq_kernel, static=static),
      grid=(tq_pad // bq, b, h), in_specs=in_specs,
      out_specs=common.tile_spec(static, bq, d),
      out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
      interpret=static.interpret, compiler_params=common.compiler_params(static, d),
      name="flash_attention_dq")(*args)


def backward_dkv(static, q, k, v, lengths, key_mask, d_out, lse, delta):
  """(dk like k, dv like v); arguments as for `backward_dq`."""
  blocks = static.blocks
  b, h, tq_pad, tk_pad, d = common.dims(static, q, k)
  bk = blocks.block_k_dkv
  in_specs, args = common.leading_inputs(
      static, (common.whole_spec(static, tq_pad, d), common.tile_spec(static, bk, d),
               common.tile_spec(static, bk, d)),
      tk_pad, lengths, q, k, v, key_mask)
  in_specs += [common.whole_spec(static, tq_pad, d), common.whole_row_spec(tq_pad),
               common.whole_row_spec(tq_pad)]
  args += [d_out, lse, delta]
  return pl.pallas_call(
      functools.partial(_dkv_kernel, static=static),
      grid=(tk_pad // bk, b, h), in_specs=in_specs,
      out_specs=[common.tile_spec(static, bk, d), common.tile_spec(static, bk, d)],
      out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype),
                 jax.ShapeDtypeStruct(v.shape, v.dtype)],
      interpret=static.interpret, compiler_params=common.compiler_params(static, d),
      name="flash_attention_dkv")(*args)


# exp2(MASK_VALUE - lse) == 0 in both kernels, since lse >= every visible score (and
# is +inf on rows that see nothing), so unlike the forward they need not zero masked
# probabilities with `visible`.


def _dq_kernel(length_ref, q_ref, k_ref, v_ref, *refs, static):
  key_mask_ref, (do_ref, lse_ref, delta_ref, dq_ref) = common.split_refs(static, refs)
  bq, bk = static.blocks.block_q_dq, static.blocks.block_k_dq
  q_block = pl.program_id(0)
  q_start = q_block * bq
  key_length = common.load_length(length_ref)
  q, d_out = q_ref[...], do_ref[...]
  lse, delta = lse_ref[...], delta_ref[...]
  ranges = block_ranges.key_block_range(
      q_block, key_length, block_q=bq, block_k=bk, q_len=static.q_len,
      k_len=static.k_len, band=static.band)

  def body(j, dq, masked):
    k_start = pl.multiple_of(j * bk, bk)
    k = k_ref[pl.ds(k_start, bk), :]
    v = v_ref[pl.ds(k_start, bk), :]
    s, _ = common.masked_scores(static, q, k, q_start, k_start, key_length,
                                key_mask_ref, masked)
    p = jnp.exp2(s - lse)
    dp = common.dot(d_out, v, 1, 1)
    ds = p * (dp - delta)
    return dq + common.dot(ds.astype(k.dtype), k, 1, 0)

  dq = common.loop(static, ranges, body, jnp.zeros(q.shape, jnp.float32))
  dq_ref[...] = (dq * static.scale).astype(dq_ref.dtype)


def _dkv_kernel(length_ref, q_ref, k_ref, v_ref, *refs, static):
  key_mask_ref, (do_ref, lse_ref, delta_ref, dk_ref, dv_ref) = common.split_refs(
      static, refs)
  bq, bk = static.blocks.block_q_dkv, static.blocks.block_k_dkv
  k_block = pl.program_id(0)
  k_start = k_block * bk
  key_length = common.load_length(length_ref)
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
    s, _ = common.masked_scores(static, q, k, q_start, k_start, key_length,
                                key_mask_ref, masked)
    p = jnp.exp2(s - lse)
    dv = dv + common.dot(p.astype(d_out.dtype), d_out, 0, 0)
    dp = common.dot(d_out, v, 1, 1)
    ds = p * (dp - delta)
    dk = dk + common.dot(ds.astype(q.dtype), q, 0, 0)
    return dk, dv

  zeros = jnp.zeros(k.shape, jnp.float32)
  dk, dv = common.loop(static, ranges, body, (zeros, zeros))
  dk_ref[...] = (dk * static.scale).astype(dk_ref.dtype)
  dv_ref[...] = dv.astype(dv_ref.dtype)
