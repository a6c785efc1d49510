"""si_snr and sdr against fast_bss_eval and mir_eval (float64 references)."""

import warnings

import fast_bss_eval
import fast_bss_eval.numpy
import jax
import jax.numpy as jnp
import mir_eval
import numpy as np
import pytest
import scipy.signal

import avsep_jax.signal as avsig

NUM_SAMPLES = 4000
SNRS_DB = (-5.0, 0.0, 10.0, 20.0, 30.0)

_si_snr = jax.jit(avsig.si_snr)
_sdr = jax.jit(avsig.sdr)
_si_snr_improvement = jax.jit(avsig.si_snr_improvement)
_sdr_improvement = jax.jit(avsig.sdr_improvement)


def _distorted(reference, snr_db, rng):
  """A short-filtered, rescaled copy of `reference` plus white noise at
  `snr_db` below it: BSS-eval counts the filter as target, SI-SNR does not."""
  filtered = scipy.signal.lfilter([0.7, 0.25, -0.1, 0.05], [1.0], reference)
  noise = rng.standard_normal(reference.shape)
  noise *= (np.linalg.norm(filtered, axis=-1, keepdims=True)
            / np.linalg.norm(noise, axis=-1, keepdims=True)
            * 10**(-snr_db / 20))
  return (filtered + noise).astype(np.float32)


@pytest.fixture(name="noise_pairs", scope="module")
def noise_pairs_fixture():
  """(estimates, references), each (len(SNRS_DB), T), white-noise sources."""
  rng = np.random.default_rng(0)
  references = (0.3 * rng.standard_normal((len(SNRS_DB), NUM_SAMPLES))
               + 0.05).astype(np.float32)  # DC offset: mean removal matters.
  estimates = np.stack([
      _distorted(r, snr, rng) for r, snr in zip(references, SNRS_DB)])
  return estimates, references


def _mir_eval_sdr(references, estimates):
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)  # Deprecated, still exact.
    sdr, _, _, perm = mir_eval.separation.bss_eval_sources(
        references.astype(np.float64), estimates.astype(np.float64),
        compute_permutation=False)
  np.testing.assert_array_equal(perm, np.arange(len(references)))
  return sdr


def test_si_snr_matches_fast_bss_eval(noise_pairs):
  estimates, references = noise_pairs
  # fast_bss_eval 0.1.4's top-level si_sdr raises AttributeError when torch
  # is not installed (it looks up torch.si_sdr eagerly); this is the numpy
  # backend it would dispatch to.
  expected = fast_bss_eval.numpy.si_sdr(
      references[:, None].astype(np.float64),
      estimates[:, None].astype(np.float64), zero_mean=True)[:, 0]
  # Measured error ~1e-6 dB.
  np.testing.assert_allclose(_si_snr(estimates, references), expected,
                             rtol=0, atol=1e-3)


def test_si_snr_is_scale_and_offset_invariant(noise_pairs):
  estimates, references = noise_pairs
  np.testing.assert_allclose(_si_snr(3.0 * estimates - 0.2, references),
                             _si_snr(estimates, references), rtol=0, atol=1e-3)


def test_sdr_matches_fast_bss_eval(noise_pairs):
  estimates, references = noise_pairs
  expected = fast_bss_eval.sdr(references[:, None].astype(np.float64),
                               estimates[:, None].astype(np.float64))[:, 0]
  # Measured error ~1e-5 dB (float32 solve and diagonal load).
  np.testing.assert_allclose(_sdr(estimates, references), expected, rtol=0,
                             atol=1e-2)


def test_sdr_matches_mir_eval_per_source(noise_pairs):
  estimates, references = noise_pairs
  # With several sources, mir_eval's SDR for source j still projects estimate
  # j onto the delays of reference j only, so the multi-source call (without
  # permutation search) equals one single-source call per pair.
  joint = _mir_eval_sdr(references[:2], estimates[:2])
  single = [_mir_eval_sdr(r[None], e[None])[0]
            for r, e in zip(references[:2], estimates[:2])]
  np.testing.assert_allclose(joint, single, rtol=0, atol=1e-9)
  np.testing.assert_allclose(_sdr(estimates[:2], references[:2]), joint,
                             rtol=0, atol=1e-2)


def test_sdr_matches_mir_eval_on_speech(speech_like):
  rng = np.random.default_rng(1)
  references = np.stack([speech_like(NUM_SAMPLES, seed=s) for s in (3, 4)])
  estimates = np.stack([_distorted(references[0], 0.0, rng),
                        _distorted(references[1], 25.0, rng)])
  # Voiced speech makes the Toeplitz system much worse conditioned than white
  # noise; measured error ~2e-3 dB at 0 dB SDR, 3e-5 dB at 25 dB.
  np.testing.assert_allclose(_sdr(estimates, references),
                             _mir_eval_sdr(references, estimates), rtol=0,
                             atol=1e-2)


def test_sdr_forgives_short_filters_unlike_si_snr(noise_pairs):
  _, references = noise_pairs
  filtered = scipy.signal.lfilter([0.7, 0.25, -0.1, 0.05], [1.0],
                                  references).astype(np.float32)
  # Only the 3-sample filter tail cut off at T is not in the span (~45-65 dB).
  expected = fast_bss_eval.sdr(references[:, None].astype(np.float64),
                               filtered[:, None].astype(np.float64))[:, 0]
  assert np.all(expected > 40.0)
  np.testing.assert_allclose(_sdr(filtered, references), expected, rtol=0,
                             atol=1e-2)
  assert np.all(_si_snr(filtered, references) < 20.0)


def test_leading_axes_are_batched(noise_pairs):
  estimates, references = noise_pairs
  batched = _sdr(estimates[:4].reshape(2, 2, -1),
                 references[:4].reshape(2, 2, -1))
  assert batched.shape == (2, 2)
  np.testing.assert_allclose(batched.reshape(-1),
                             [_sdr(e, r) for e, r in zip(estimates[:4],
                                                         references[:4])],
                             rtol=0, atol=1e-4)


def test_improvements_are_metric_differences(noise_pairs):
  estimates, references = noise_pairs
  estimates = estimates[:4].reshape(2, 2, -1)
  references = references[:4].reshape(2, 2, -1)
  mixtures = references.sum(axis=1)  # (B, T): no source axis.
  stacked = np.repeat(mixtures[:, None], 2, axis=1)
  fbe_mix = fast_bss_eval.sdr(references.astype(np.float64),
                              stacked.astype(np.float64))
  fbe_est = fast_bss_eval.sdr(references.astype(np.float64),
                              estimates.astype(np.float64))
  np.testing.assert_allclose(
      _sdr_improvement(estimates, references, mixtures),
      fbe_est - fbe_mix, rtol=0, atol=2e-2)
  si_mix = fast_bss_eval.numpy.si_sdr(references, stacked, zero_mean=True)
  si_est = fast_bss_eval.numpy.si_sdr(references, estimates, zero_mean=True)
  np.testing.assert_allclose(
      _si_snr_improvement(estimates, references, mixtures),
      si_est - si_mix, rtol=0, atol=2e-3)
  # A mixture that already has the source axis broadcasts the same way.
  np.testing.assert_allclose(
      _si_snr_improvement(estimates, references, mixtures[:, None]),
      _si_snr_improvement(estimates, references, mixtures), rtol=0,
      atol=1e-6)


def test_bfloat16_inputs_are_scored_in_float32(noise_pairs):
  estimates, references = noise_pairs
  low = jnp.asarray(estimates, jnp.bfloat16)
  for metric in (_si_snr, _sdr):
    scores = metric(low, references)
    assert scores.dtype == jnp.float32
    np.testing.assert_array_equal(scores,
                                  metric(low.astype(jnp.float32), references))


def test_rejects_bad_input():
  x = np.zeros((2, 100), np.float32)
  for metric in (avsig.si_snr, avsig.sdr):
    with pytest.raises(ValueError, match="same"):
      metric(x, x[:, :-1])
    with pytest.raises(ValueError, match="same"):
      metric(np.float32(0.0), np.float32(0.0))
  with pytest.raises(ValueError, match="filter_length must be"):
    avsig.sdr(x, x, filter_length=0)
  with pytest.raises(ValueError, match="cannot be broadcast"):
    avsig.si_snr_improvement(x, x, np.zeros((3, 100), np.float32))
