"""stft / istft against librosa (window='hann', center=True, reflect)."""

import jax
import jax.numpy as jnp
import librosa
import numpy as np
import pytest

import avsep_jax.signal as avsig

_stft = jax.jit(avsig.stft, static_argnums=(1, 2, 3))
_istft = jax.jit(avsig.istft, static_argnums=(1, 2, 3, 4))

# 8000 is a multiple of every hop; the others are not.
LENGTHS = (8000, 8123, 4001)


def _librosa_stft(x, n_fft, win_length, hop_length):
  return librosa.stft(x, n_fft=n_fft, hop_length=hop_length,
                      win_length=win_length, window="hann", center=True,
                      pad_mode="reflect").T


def _librosa_istft(spec, n_fft, win_length, hop_length, length=None):
  return librosa.istft(spec.T, n_fft=n_fft, hop_length=hop_length,
                       win_length=win_length, window="hann", center=True,
                       length=length)


def test_scales_and_num_frames():
  assert avsig.SCALES[0] == (512, 400, 160)
  assert set(avsig.SCALES) == {(512, 400, 160), (256, 200, 80),
                                  (1024, 800, 320)}
  assert avsig.num_frames(16000, 160) == 101
  assert avsig.num_frames(16159, 160) == 101
  assert _stft(np.zeros(16000, np.float32), 512, 400, 160).shape == (101, 257)


@pytest.mark.parametrize("length", LENGTHS)
@pytest.mark.parametrize("scale", avsig.SCALES)
def test_stft_matches_librosa(speech_like, scale, length):
  x = speech_like(length, seed=length)
  expected = _librosa_stft(x, *scale)
  actual = np.asarray(_stft(x, *scale))
  assert actual.dtype == np.complex64
  assert actual.shape == expected.shape == (
      avsig.num_frames(length, scale[2]), scale[0] // 2 + 1)
  # Measured max error ~3e-6 against spectra peaking at ~10-100.
  np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-4)


@pytest.mark.parametrize("length", LENGTHS)
@pytest.mark.parametrize("scale", avsig.SCALES)
def test_istft_matches_librosa(speech_like, scale, length):
  x = speech_like(length, seed=length)
  spec = _librosa_stft(x, *scale)
  for out_length in (None, length, length - 301, length + 555):
    np.testing.assert_allclose(
        _istft(spec, *scale, out_length),
        _librosa_istft(spec, *scale, out_length), rtol=0, atol=1e-5,
        err_msg=f"length={out_length}")


# Hops that divide n_fft, odd window padding, hops longer than the window.
@pytest.mark.parametrize("scale", [(512, 512, 128), (512, 401, 100),
                                   (64, 50, 70)])
def test_unusual_scales_match_librosa(speech_like, scale):
  x = speech_like(4001, seed=4)
  expected = _librosa_stft(x, *scale)
  np.testing.assert_allclose(_stft(x, *scale), expected, rtol=0, atol=1e-4)
  np.testing.assert_allclose(_istft(expected, *scale, 4001),
                             _librosa_istft(expected, *scale, 4001), rtol=0,
                             atol=1e-5)


@pytest.mark.parametrize("scale", avsig.SCALES)
def test_round_trip_recovers_signal(speech_like, scale):
  x = speech_like(8123, seed=1)
  np.testing.assert_allclose(
      _istft(_stft(x, *scale), *scale, len(x)), x, rtol=0, atol=1e-5)


def test_leading_axes_are_batched(speech_like):
  xs = np.stack([speech_like(4001, seed=s) for s in range(6)]).reshape(
      2, 3, 4001)
  specs = _stft(xs, 512, 400, 160)
  assert specs.shape == (2, 3, 26, 257)
  waves = _istft(specs, 512, 400, 160, 4001)
  for i in range(2):
    for j in range(3):
      np.testing.assert_allclose(specs[i, j], _stft(xs[i, j], 512, 400, 160),
                                 rtol=0, atol=1e-5)
      np.testing.assert_allclose(waves[i, j],
                                 _istft(specs[i, j], 512, 400, 160, 4001),
                                 rtol=0, atol=1e-6)


def test_jit_matches_eager(speech_like):
  x = speech_like(4001, seed=2)
  np.testing.assert_allclose(_stft(x, 256, 200, 80),
                             avsig.stft(x, 256, 200, 80), rtol=0, atol=1e-5)


def test_bfloat16_input_is_transformed_in_float32(speech_like):
  x = jnp.asarray(speech_like(4001, seed=3), jnp.bfloat16)
  spec = avsig.stft(x)
  assert spec.dtype == jnp.complex64
  np.testing.assert_array_equal(spec, avsig.stft(x.astype(jnp.float32)))
  assert avsig.istft(spec.astype(jnp.complex64)).dtype == jnp.float32


@pytest.mark.parametrize("kwargs, match", [
    (dict(n_fft=512, win_length=600, hop_length=160), r"win_length \(600\)"),
    (dict(n_fft=511, win_length=400, hop_length=160), "n_fft must be even"),
    (dict(n_fft=512, win_length=400, hop_length=0), "hop_length must be"),
    (dict(n_fft=512, win_length=400, hop_length=160.0), "hop_length must be"),
])
def test_stft_rejects_bad_scales(kwargs, match):
  with pytest.raises(ValueError, match=match):
    avsig.stft(np.zeros(1000, np.float32), **kwargs)
  with pytest.raises(ValueError, match=match):
    avsig.istft(np.zeros((5, 257), np.complex64), **kwargs)


def test_stft_rejects_bad_input():
  with pytest.raises(ValueError, match="waveform"):
    avsig.stft(np.float32(1.0))
  with pytest.raises(ValueError, match="real waveform"):
    avsig.stft(np.zeros(1000, np.complex64))
  with pytest.raises(ValueError, match="reflect padding"):
    avsig.stft(np.zeros(256, np.float32))


def test_istft_rejects_bad_input():
  with pytest.raises(ValueError, match="257 bins"):
    avsig.istft(np.zeros((5, 256), np.complex64))
  with pytest.raises(ValueError, match=r"\(\.\.\., frames, bins\)"):
    avsig.istft(np.zeros(257, np.complex64))
  with pytest.raises(ValueError, match="length must be"):
    avsig.istft(np.zeros((5, 257), np.complex64), length=-1)


@pytest.mark.parametrize("scale", avsig.SCALES)
def test_causal_framing_is_librosa_on_left_padded_input(speech_like, scale):
  n_fft, win_length, hop = scale
  x = speech_like(8000, seed=3)
  pad = avsig.causal_padding(*scale)
  # Frame t's window ends at (t + 1) * hop: it reads no later sample.
  assert -pad + (n_fft + win_length) // 2 == hop  # frame 0 starts at -pad
  padded = np.pad(x, (pad, n_fft))
  expected = librosa.stft(padded, n_fft=n_fft, hop_length=hop, win_length=win_length,
                          window="hann", center=False).T[:8000 // hop]
  actual = np.asarray(avsig.stft(x, *scale, causal=True))
  assert actual.shape == (avsig.num_frames(8000, hop, causal=True), n_fft // 2 + 1)
  np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-4)
  # Changing the future leaves past frames alone.
  later = x.copy()
  later[4000:] = 0.0
  np.testing.assert_array_equal(
      np.asarray(avsig.stft(later, *scale, causal=True))[:4000 // hop], actual[:4000 // hop])
  # And the inverse recovers the signal up to its last win - hop samples, which lie
  # under fewer windows: they fade out rather than amplify rounding error.
  y = np.asarray(avsig.istft(actual, *scale, causal=True))
  tail = win_length - hop
  assert y.shape == x.shape
  np.testing.assert_allclose(y[:-tail], x[:-tail], atol=1e-5)
  assert np.all(np.abs(y[-tail:]) <= np.abs(x[-tail:]) + 1e-5)
  # The interior normaliser is the squared window overlap-added one hop apart.
  steady = avsig.steady_window_sum(*scale)
  ola = librosa.filters.window_sumsquare(window="hann", n_frames=40, hop_length=hop,
                                         win_length=win_length, n_fft=n_fft)
  start = -(-n_fft // hop) * hop  # a whole number of hops, past the first frame
  np.testing.assert_allclose(steady, ola[start:start + hop], rtol=1e-5)
