"""griffin_lim and spectral_convergence."""

import jax
import jax.numpy as jnp
import librosa
import numpy as np
import pytest

import avsep_jax.signal as avsig

LENGTH = 8000
SCALE = dict(n_fft=512, win_length=400, hop_length=160)

_griffin_lim = jax.jit(
    avsig.griffin_lim,
    static_argnames=("n_fft", "win_length", "hop_length", "length", "n_iter",
                     "momentum", "return_history"))


@pytest.fixture(name="spec", scope="module")
def spec_fixture(speech_like):
  x = speech_like(LENGTH, seed=7)
  return x, np.asarray(avsig.stft(x, **SCALE))


@pytest.mark.parametrize("momentum", [0.99, 0.0])
def test_matches_librosa_griffinlim(spec, momentum):
  _, complex_spec = spec
  magnitude = np.abs(complex_spec)
  # librosa's init=None starts from zero phase.
  expected = librosa.griffinlim(
      magnitude.T, n_iter=8, hop_length=160, win_length=400, n_fft=512,
      window="hann", center=True, length=LENGTH, pad_mode="reflect",
      momentum=momentum, init=None)
  actual = _griffin_lim(magnitude, **SCALE, length=LENGTH, n_iter=8,
                        momentum=momentum, init_phase=np.zeros_like(magnitude))
  # Momentum amplifies float32 rounding over iterations: measured 1.4e-5
  # after 8 (and ~1e-3 after 32) with momentum 0.99, 1e-6 without.
  np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-4)


@pytest.mark.parametrize("momentum", [0.99, 0.0])
def test_spectral_convergence_falls(spec, momentum):
  _, complex_spec = spec
  waveform, history = _griffin_lim(
      np.abs(complex_spec), **SCALE, length=LENGTH, n_iter=32,
      momentum=momentum, key=jax.random.key(0), return_history=True)
  history = np.asarray(history)
  assert waveform.shape == (LENGTH,)
  assert history.shape == (32,)
  # From random phase the first projection is far off (measured ~0.56); 32
  # iterations bring it to ~0.13 with momentum and ~0.16 without.
  assert history[-1] < 0.5 * history[0]
  # Fast Griffin-Lim may stall briefly but should not climb.
  assert np.all(np.diff(history) < 1e-3), history
  # The history describes the returned waveform's own spectrogram.
  final = avsig.spectral_convergence(np.abs(complex_spec),
                                     avsig.stft(waveform, **SCALE))
  assert final < history[0]


def test_momentum_beats_plain_griffin_lim(spec):
  _, complex_spec = spec
  final = [
      _griffin_lim(np.abs(complex_spec), **SCALE, length=LENGTH, n_iter=32,
                   momentum=momentum, key=jax.random.key(0),
                   return_history=True)[1][-1]
      for momentum in (0.99, 0.0)
  ]
  assert final[0] < final[1]


def test_true_phase_is_a_fixed_point(spec):
  x, complex_spec = spec
  waveform, history = _griffin_lim(
      np.abs(complex_spec), **SCALE, length=LENGTH, n_iter=8,
      init_phase=np.angle(complex_spec), return_history=True)
  assert np.max(history) < 1e-5
  np.testing.assert_allclose(waveform, x, rtol=0, atol=1e-4)


def test_leading_axes_are_batched(spec):
  _, complex_spec = spec
  phases = np.stack([np.angle(complex_spec), np.zeros(complex_spec.shape)])
  magnitudes = np.broadcast_to(np.abs(complex_spec), phases.shape)
  batched = _griffin_lim(magnitudes, **SCALE, length=LENGTH, n_iter=4,
                         init_phase=phases)
  assert batched.shape == (2, LENGTH)
  for i in range(2):
    np.testing.assert_allclose(
        batched[i],
        _griffin_lim(magnitudes[i], **SCALE, length=LENGTH, n_iter=4,
                     init_phase=phases[i]), rtol=0, atol=1e-5)


def test_spectral_convergence_matches_definition():
  rng = np.random.default_rng(0)
  magnitude = rng.uniform(size=(2, 5, 9)).astype(np.float32)
  spec = (rng.standard_normal((2, 5, 9))
          + 1j * rng.standard_normal((2, 5, 9))).astype(np.complex64)
  expected = [np.linalg.norm(m - np.abs(s)) / np.linalg.norm(m)
              for m, s in zip(magnitude, spec)]
  np.testing.assert_allclose(avsig.spectral_convergence(magnitude, spec),
                             expected, rtol=1e-5)
  np.testing.assert_array_equal(
      avsig.spectral_convergence(magnitude, magnitude), [0.0, 0.0])


def test_spectral_convergence_gradient_is_finite():
  # A silent estimate and a perfect match both hit sqrt(0) in the norms.
  target = jnp.ones((4, 3))
  for estimate in (jnp.zeros((4, 3)), target):
    grad = jax.grad(
        lambda s: avsig.spectral_convergence(target, s.astype(jnp.complex64)))(
            estimate)
    assert np.all(np.isfinite(grad))


def test_spectral_convergence_of_silent_target_is_finite():
  silence = np.zeros((1, 4, 3), np.float32)
  values = avsig.spectral_convergence(
      np.concatenate([silence, silence]),
      np.concatenate([silence, np.ones_like(silence)]))
  assert values[0] == 0.0
  assert np.isfinite(values[1]) and values[1] > 1.0


def test_rejects_bad_input(spec):
  _, complex_spec = spec
  magnitude = np.abs(complex_spec)
  with pytest.raises(ValueError, match="init_phase or a PRNG key"):
    avsig.griffin_lim(magnitude, **SCALE, length=LENGTH)
  with pytest.raises(ValueError, match="init_phase must have"):
    avsig.griffin_lim(magnitude, **SCALE, length=LENGTH,
                      init_phase=np.zeros((3, 257)))
  with pytest.raises(ValueError, match=r"\(\.\.\., 51, 257\) magnitude"):
    avsig.griffin_lim(magnitude[:-1], **SCALE, length=LENGTH,
                      key=jax.random.key(0))
  with pytest.raises(ValueError, match=r"\(\.\.\., 52, 257\) magnitude"):
    avsig.griffin_lim(magnitude, **SCALE, length=LENGTH + 160,
                      key=jax.random.key(0))
  with pytest.raises(ValueError, match="momentum must be"):
    avsig.griffin_lim(magnitude, **SCALE, length=LENGTH, momentum=-0.5,
                      key=jax.random.key(0))
  with pytest.raises(ValueError, match="n_iter must be"):
    avsig.griffin_lim(magnitude, **SCALE, length=LENGTH, n_iter=0,
                      key=jax.random.key(0))
  with pytest.raises(ValueError, match="same shape"):
    avsig.spectral_convergence(magnitude, complex_spec[:-1])
