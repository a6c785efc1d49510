"""The one multi-head attention module used by every encoder, the fusion and the decoder.

`attention_impl` picks the kernel: 'xla' or 'cudnn' through
`jax.nn.dot_product_attention`, or 'pallas' (`avsep_jax.kernels.flash_attention`, which
never materialises the scores and skips blocks outside a window). Masks compose: key
padding (`key_mask`), `causal`, a `(left, right)` sliding window on positions, and an
optional full boolean `mask`.

'pallas' takes masks that are one row per example, (B|1, 1, 1, Tk): key padding and
absent speakers, passed to the kernel as a key mask. A mask that varies over heads or
queries (the fusion's speaker-time mask when causal or windowed) and head dims above
128 go to 'xla' instead, with a warning logged once per reason. Head dims below a
supported size are zero-padded (the scores do not change); on CPU the kernel runs in
Pallas interpret mode.
"""

import functools
import logging

import flax.linen as nn
import jax
import jax.numpy as jnp

from avsep_jax import kernels
from avsep_jax.model import layers

ATTENTION_IMPLS = ("xla", "cudnn", "pallas")


def dot_product_attention(q, k, v, *, mask=None, causal=False, window=None, impl="xla"):
  """Scaled dot-product attention; rows with no visible key return zeros.

  Args:
    q: (B, Tq, H, D) queries.
    k, v: (B, Tk, H, D) keys and values.
    mask: optional bool, broadcastable to (B, H, Tq, Tk); True = attend.
    causal: key j visible to query i only when j <= i.
    window: optional (left, right): key j visible when i - left <= j <= i + right.
    impl: one of `ATTENTION_IMPLS`.

  Returns:
    (B, Tq, H, D) in q's dtype.
  """
  if impl not in ATTENTION_IMPLS:
    raise ValueError(f"attention_impl must be one of {ATTENTION_IMPLS}, got {impl!r}")
  if impl == "pallas":
    reason = _pallas_unsupported(q, mask)
    if reason is None:
      return _pallas_attention(q, k, v, mask, causal, window)
    _log_fallback_once(reason)
    impl = "xla"
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


def _pallas_unsupported(q, mask):
  """Why the Pallas kernel cannot take this call, or None when it can."""
  if mask is not None and (mask.ndim != 4 or mask.shape[1] != 1 or mask.shape[2] != 1):
    return f"a mask of shape {mask.shape} varies over heads or queries"
  if q.shape[-1] > max(kernels.SUPPORTED_HEAD_DIMS):
    return f"head dim {q.shape[-1]} > {max(kernels.SUPPORTED_HEAD_DIMS)}"
  if q.dtype not in kernels.SUPPORTED_DTYPES:
    return f"dtype {q.dtype}"
  return None


@functools.cache
def _log_fallback_once(reason):
  logging.getLogger(__name__).warning(
      "attention_impl='pallas' falls back to 'xla' here: %s", reason)


def _pallas_attention(q, k, v, mask, causal, window):
  """`dot_product_attention` through the Pallas flash kernel (see the module doc)."""
  b, tq, _, d = q.shape
  tk = k.shape[1]
  key_mask = key_lengths = None
  if mask is not None:
    key_mask = jnp.broadcast_to(mask[:, 0, 0, :], (b, tk))
    # Keys after the last visible one are skipped whole; the mask handles the rest.
    last = tk - jnp.argmax(key_mask[:, ::-1], axis=-1)
    key_lengths = jnp.where(jnp.any(key_mask, axis=-1), last, 0)
  if window is not None:
    # A side at least the sequence long is no limit; the kernel rejects it as a typo.
    longest = max(tq, tk) - 1
    window = (min(int(window[0]), longest), min(int(window[1]), longest))
  d_kernel = min(s for s in kernels.SUPPORTED_HEAD_DIMS if s >= d)
  pad = ((0, 0),) * 3 + ((0, d_kernel - d),)
  q, k, v = (jnp.pad(x, pad) for x in (q, k, v))
  out = kernels.flash_attention(
      q, k, v, key_lengths=key_lengths, key_mask=key_mask, causal=causal,
      window=window, scale=d ** -0.5, interpret=jax.default_backend() == "cpu")
  return out[..., :d]


def _position_mask(tq, tk, causal, window):
  """(Tq, Tk) bool of the causal/window constraints on positions."""
  ok = time_mask(jnp.arange(tq), jnp.arange(tk), causal, window)
  return jnp.ones((tq, tk), bool) if ok is None else ok


def time_mask(query_time, key_time, causal, window):
  """(Tq, Tk) bool from causal/window on the queries' and keys' times (e.g. several
  streams' queries in one row attending to one stream's keys), or None when neither
  is set."""
  if not causal and window is None:
    return None
  dt = key_time[None, :] - query_time[:, None]
  ok = jnp.ones(dt.shape, bool)
  if causal:
    ok &= dt <= 0
  if window is not None:
    ok &= (dt >= -window[0]) & (dt <= window[1])
  return ok


def slot_queries_mask(num_slots, length, causal, window):
  """(1, 1, S*T, T) bool, or None: the time mask when every slot's T queries are laid
  out in one row of S*T (slot-major) against one stream's T keys, so that the keys
  and values, shared by all slots, are projected once instead of once per slot."""
  ok = time_mask(jnp.tile(jnp.arange(length), num_slots), jnp.arange(length), causal,
                 window)
  return None if ok is None else ok[None, None]


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
