"""The attention module against a plain-NumPy softmax attention."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from avsep_jax import model as model_lib
from avsep_jax.model import attention


def numpy_attention(q, k, v, allowed):
  """q (B,Tq,H,D), k/v (B,Tk,H,D), allowed (B,H,Tq,Tk) bool; all-masked rows -> 0."""
  q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
  scores = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
  scores = np.where(allowed, scores, -np.inf)
  m = np.max(scores, axis=-1, keepdims=True)
  m = np.where(np.isfinite(m), m, 0.0)
  p = np.where(allowed, np.exp(scores - m), 0.0)
  denom = p.sum(-1, keepdims=True)
  p = np.divide(p, denom, out=np.zeros_like(p), where=denom > 0)
  return np.einsum("bhqk,bkhd->bqhd", p, v)


def allowed_mask(b, h, tq, tk, key_mask=None, causal=False, window=None):
  i = np.arange(tq)[:, None]
  j = np.arange(tk)[None, :]
  ok = np.ones((b, h, tq, tk), bool)
  if key_mask is not None:
    ok &= np.asarray(key_mask)[:, None, None, :]
  if causal:
    ok &= j <= i
  if window is not None:
    ok &= (j >= i - window[0]) & (j <= i + window[1])
  return ok


@pytest.mark.parametrize("causal,window,padded", [
    (False, None, False), (True, None, False), (False, (3, 2), False),
    (True, (4, 0), True), (False, None, True), (False, (2, 5), True)])
def test_matches_numpy_reference(causal, window, padded):
  b, t, h, d = 2, 17, 2, 8
  rng = np.random.default_rng(0)
  q, k, v = (rng.normal(size=(b, t, h, d)).astype(np.float32) for _ in range(3))
  key_mask = None
  if padded:
    key_mask = np.arange(t)[None, :] < np.array([[t], [9]])
  mask = None if key_mask is None else jnp.asarray(key_mask)[:, None, None, :]
  got = attention.dot_product_attention(q, k, v, mask=mask, causal=causal, window=window)
  want = numpy_attention(q, k, v, allowed_mask(b, h, t, t, key_mask, causal, window))
  np.testing.assert_allclose(np.asarray(got), want, atol=2e-5, rtol=1e-4)


def test_rows_with_no_visible_key_are_zero_not_nan():
  b, t, h, d = 2, 6, 2, 4
  rng = np.random.default_rng(1)
  q, k, v = (rng.normal(size=(b, t, h, d)).astype(np.float32) for _ in range(3))
  key_mask = np.zeros((b, t), bool)
  key_mask[0, 3:] = True  # example 0: causal rows 0..2 see nothing; example 1: none
  out = attention.dot_product_attention(
      q, k, v, mask=jnp.asarray(key_mask)[:, None, None, :], causal=True)
  out = np.asarray(out)
  assert np.isfinite(out).all()
  np.testing.assert_array_equal(out[0, :3], 0.0)
  np.testing.assert_array_equal(out[1], 0.0)
  assert np.abs(out[0, 3:]).min() > 0


def test_module_masks_padded_keys_and_rejects_bad_heads():
  mha = attention.MultiHeadAttention(num_heads=2)
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.normal(size=(1, 5, 8)), jnp.float32)
  key_mask = jnp.array([[True, True, True, False, False]])
  params = mha.init(jax.random.key(0), x, x, key_mask=key_mask)
  base = mha.apply(params, x, x, key_mask=key_mask)
  changed = x.at[:, 3:].set(100.0)
  # Only the queries of the first three tokens are kept: padded keys changed freely.
  out = mha.apply(params, x, changed, key_mask=key_mask)
  np.testing.assert_allclose(np.asarray(out), np.asarray(base), atol=1e-6)
  with pytest.raises(ValueError, match="not divisible by num_heads"):
    attention.MultiHeadAttention(num_heads=3).init(jax.random.key(0), x, x)
  with pytest.raises(ValueError, match="attention_impl"):
    attention.dot_product_attention(x[..., None], x[..., None], x[..., None],
                                    impl="flash")


@pytest.mark.parametrize("causal,window,padded,d", [
    (False, (3, 2), True, 8), (True, None, True, 32), (False, None, False, 16)])
def test_pallas_impl_matches_numpy_reference(causal, window, padded, d):
  b, t, h = 2, 17, 2
  rng = np.random.default_rng(3)
  q, k, v = (rng.normal(size=(b, t, h, d)).astype(np.float32) for _ in range(3))
  key_mask = np.arange(t)[None, :] < np.array([[t], [9]]) if padded else None
  if padded:
    key_mask[1, 4] = False  # a hole: not a prefix mask
  mask = None if key_mask is None else jnp.asarray(key_mask)[:, None, None, :]
  got = attention.dot_product_attention(q, k, v, mask=mask, causal=causal,
                                        window=window, impl="pallas")
  want = numpy_attention(q, k, v, allowed_mask(b, h, t, t, key_mask, causal, window))
  np.testing.assert_allclose(np.asarray(got), want, atol=2e-5, rtol=1e-4)


def test_pallas_impl_falls_back_to_xla_for_per_query_masks(caplog):
  b, t, h, d = 1, 12, 2, 8
  rng = np.random.default_rng(4)
  q, k, v = (rng.normal(size=(b, t, h, d)).astype(np.float32) for _ in range(3))
  mask = jnp.asarray(rng.random((b, 1, t, t)) < 0.7)
  attention._log_fallback_once.cache_clear()
  with caplog.at_level("WARNING"):
    got = attention.dot_product_attention(q, k, v, mask=mask, impl="pallas")
  assert "falls back to 'xla'" in caplog.text
  want = attention.dot_product_attention(q, k, v, mask=mask, impl="xla")
  np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


@pytest.mark.slow
@pytest.mark.parametrize("streaming", [False, True])
def test_smoke_model_gives_the_same_outputs_with_pallas_as_with_xla(streaming, caplog):
  # Streaming: causal time attention with a window; the fusion's speaker-time mask then
  # varies per query, which takes the logged fallback to 'xla' for that one module.
  frames, speakers = 8, 3
  samples = frames * 640  # 25 fps video, 16 kHz audio
  rng = np.random.default_rng(5)
  mixture = (0.1 * rng.normal(size=(2, samples))).astype(np.float32)
  video = rng.integers(0, 256, size=(2, speakers, frames, 88, 88), dtype=np.uint8)
  speaker_mask = np.array([[True, True, True], [True, False, True]])
  outputs = {}
  attention._log_fallback_once.cache_clear()
  for impl in ("xla", "pallas"):
    config = model_lib.model_config("smoke", num_speakers=speakers)
    config.attention_impl = impl
    if streaming:
      model_lib.variants.make_causal(config, window=6)
    model = model_lib.AVSeparator(config)
    if impl == "xla":  # the impl does not change the parameters
      params = nn.unbox(jax.jit(model.init)(jax.random.key(0), mixture, video,
                                            speaker_mask))
    with caplog.at_level("WARNING"):
      outputs[impl] = jax.jit(model.apply)(params, mixture, video, speaker_mask)
  assert ("falls back to 'xla'" in caplog.text) == streaming
  (want, want_aux), (got, got_aux) = outputs["xla"], outputs["pallas"]
  assert np.isfinite(np.asarray(got)).all()
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5, rtol=1e-4)
  for key in ("audio_tokens", "speaker_tokens"):
    want_x, got_x = np.asarray(want_aux[key]), np.asarray(got_aux[key])
    assert np.abs(got_x - want_x).max() < 1e-4 * np.abs(want_x).max(), key
