"""Plain-JAX attention with the flash kernel's signature and masks: the tests' ground truth.

It materialises the (B, H, Tq, Tk) scores, so it is for tests and short sequences only.
"""

import jax.numpy as jnp
from jax import lax

from avsep_jax.kernels import block_ranges


def reference_attention(q, k, v, *, key_lengths=None, causal=False, window=None,
                        interpret=False, key_mask=None, scale=None, block_sizes=None,
                        platform=None):
  """Softmax attention in float32; rows with no visible key return zeros.

  Args:
    q: (B, Tq, H, D) queries.
    k, v: (B, Tk, H, D) keys and values.
    key_lengths: optional (B,) int; keys j >= key_lengths[b] are masked.
    causal: key j visible to query i only when j <= i.
    window: optional (left, right); key j visible when i - left <= j <= i + right.
    key_mask: optional (B, Tk) bool, False masks that key.
    scale: score scale; default 1 / sqrt(D).
    interpret, block_sizes, platform: the kernel's execution arguments, ignored here
      so that both functions can share call sites.

  Returns:
    (B, Tq, H, D) in q's dtype.
  """
  del interpret, block_sizes, platform
  b, tq, _, d = q.shape
  tk = k.shape[1]
  scale = d ** -0.5 if scale is None else scale
  scores = jnp.einsum("bqhd,bkhd->bhqk", q.astype(jnp.float32), k.astype(jnp.float32))
  visible = visible_mask(b, tq, tk, key_lengths=key_lengths, causal=causal,
                         window=window, key_mask=key_mask)[:, None]
  scores = jnp.where(visible, scores * scale, -jnp.inf)
  # The shift cancels in the softmax, so it needs no gradient; all-masked rows get 0
  # instead of -inf to avoid inf - inf.
  peak = lax.stop_gradient(jnp.max(scores, axis=-1, keepdims=True))
  peak = jnp.where(jnp.isfinite(peak), peak, 0.0)
  p = jnp.where(visible, jnp.exp(scores - peak), 0.0)
  total = jnp.sum(p, axis=-1, keepdims=True)
  p = p / jnp.where(total > 0, total, 1.0)
  out = jnp.einsum("bhqk,bkhd->bqhd", p, v.astype(jnp.float32))
  return out.astype(q.dtype)


def visible_mask(batch, q_len, k_len, *, key_lengths=None, causal=False, window=None,
                 key_mask=None):
  """(B, Tq, Tk) bool: which keys each query sees."""
  left, right = block_ranges.Band.from_args(causal, window).sides(q_len, k_len)
  i = jnp.arange(q_len)[:, None]
  j = jnp.arange(k_len)[None, :]
  ok = (j >= i - left) & (j <= i + right)
  ok = jnp.broadcast_to(ok, (batch, q_len, k_len))
  if key_lengths is not None:
    ok &= j[None] < jnp.asarray(key_lengths)[:, None, None]
  if key_mask is not None:
    ok &= jnp.asarray(key_mask, bool)[:, None, :]
  return ok
