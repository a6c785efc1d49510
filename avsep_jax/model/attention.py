"""The one multi-head attention module used by every encoder, the fusion and the decoder.

`attention_impl` picks the kernel: 'xla' or 'cudnn' through
`jax.nn.dot_product_attention`. Masks compose: key padding (`key_mask`), `causal`, a
`(left, right)` sliding window on positions, and an optional full boolean `mask`.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from avsep_jax.model import layers

ATTENTION_IMPLS = ("xla", "cudnn")


def dot_product_attention(q, k, v, *, mask=None, causal=False, window=None, impl="xla"):
  """Scaled dot-product attention; rows with no visible key return zeros.

  Args:
    q: (B, Tq, H, D) queries.
    k, v: (B, Tk, H, D) keys and values.
    mask: optional bool, broadcastable to (B, H, Tq, Tk); True = attend.
    causal: key j visible to query i only when j <= i.
    window: optional (left, right): key j visible when i - left <= j <= i + right.
    impl: 'xla' or 'cudnn'.

  Returns:
    (B, Tq, H, D) in q's dtype.
  """
  if impl not in ATTENTION_IMPLS:
    raise ValueError(f"attention_impl must be one of {ATTENTION_IMPLS}, got {impl!r}")
  out = jax.nn.dot_product_attention(
      q, k, v, mask=mask, is_causal=causal,
      local_window_size=None if window is None else tuple(window),
      implementation=impl)
  if mask is None:
    return out
  # A softmax over only masked keys is uniform over them, which would leak padded
  # values into the row; a query that may see nothing gets zeros instead.
  tq, tk = q.shape[1], k.shape[1]
  visible = jnp.broadcast_to(mask, mask.shape[:-2] + (tq, tk))
  visible &= _position_mask(tq, tk, causal, window)
  has_key = jnp.any(visible, axis=-1)  # (B|1, H|1, Tq)
  has_key = jnp.moveaxis(has_key, -1, 1)[..., None]  # (B|1, Tq, H|1, 1)
  return jnp.where(has_key, out, jnp.zeros((), out.dtype))


def _position_mask(tq, tk, causal, window):
  """(Tq, Tk) bool of the causal/window constraints on positions."""
  i = jnp.arange(tq)[:, None]
  j = jnp.arange(tk)[None, :]
  ok = jnp.ones((tq, tk), bool)
  if causal:
    ok &= j <= i
  if window is not None:
    left, right = window
    ok &= (j >= i - left) & (j <= i + right)
  return ok


class MultiHeadAttention(nn.Module):
  """Multi-head attention with q/k/v/out projections annotated for sharding.

  Attributes:
    num_heads: number of heads; the head dim is d_model // num_heads.
    opts: shared layer options; `opts.causal` and `opts.window` apply when
      `time_masked` (queries and keys on one time axis).
    time_masked: False for attention whose keys are not a time axis (speaker slots)
      or whose time mask the caller builds (`mask`).
  """

  num_heads: int
  opts: layers.LayerOptions = layers.LayerOptions()
  time_masked: bool = True

  @nn.compact
  def __call__(self, inputs_q, inputs_kv, *, key_mask=None, mask=None):
    """Attend from `inputs_q` to `inputs_kv`.

    Args:
      inputs_q: (B, Tq, d) queries.
      inputs_kv: (B, Tk, d_kv) keys/values source.
      key_mask: optional (B, Tk) bool, False for padded keys.
      mask: optional bool broadcastable to (B, H, Tq, Tk), combined with key_mask.

    Returns:
      (B, Tq, d).
    """
    opts = self.opts
    d = inputs_q.shape[-1]
    if d % self.num_heads:
      raise ValueError(f"d_model {d} is not divisible by num_heads {self.num_heads}")
    head_dim = d // self.num_heads

    # Plain Dense layers over the merged (heads * head_dim) axis: DenseGeneral
    # initialises its kernel flattened to 2-D, which breaks 3-D logical sharding.
    def project(name, x):
      y = layers.dense(self.num_heads * head_dim, (layers.EMBED, layers.HEADS),
                       use_bias=False, name=name, **opts.kw)(x)
      return y.reshape(y.shape[:-1] + (self.num_heads, head_dim))

    q = project("query", inputs_q)
    k = project("key", inputs_kv)
    v = project("value", inputs_kv)
    if key_mask is not None:
      km = key_mask[:, None, None, :]
      mask = km if mask is None else jnp.logical_and(mask, km)
    out = dot_product_attention(
        q, k, v, mask=mask, causal=self.time_masked and opts.causal,
        window=opts.window if self.time_masked else None, impl=opts.attention_impl)
    out = out.reshape(out.shape[:-2] + (d,))
    out = layers.dense(d, (layers.HEADS, layers.EMBED), use_bias=False, name="out",
                       **opts.kw)(out)
    return nn.Dropout(opts.dropout_rate)(out, deterministic=opts.deterministic)
