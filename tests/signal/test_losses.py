"""pit_loss against scipy's assignment solver; MR-STFT loss and activity targets
against librosa; activity loss against optax's sigmoid cross-entropy."""

import jax
import jax.numpy as jnp
import librosa
import numpy as np
import optax
import pytest
import scipy.optimize

import avsep_jax.signal as avsig

NUM_SAMPLES = 256  # PIT cost is in the S x S pair losses, not in T.

_pit_loss = jax.jit(avsig.pit_loss)
_mr_stft_loss = jax.jit(avsig.multi_resolution_stft_loss)


def _numpy_neg_si_snr(estimate, reference):
  estimate = estimate - estimate.mean()
  reference = reference - reference.mean()
  target = estimate @ reference / (reference @ reference) * reference
  return -10 * np.log10(np.sum(target**2) / np.sum((estimate - target)**2))


def _reference_pit(estimates, references, mask):
  """Optimal assignment of valid estimates to valid references by
  linear_sum_assignment on the float64 pair-loss matrix."""
  valid = np.flatnonzero(mask)
  if not len(valid):
    return 0.0, {}
  cost = np.array([[_numpy_neg_si_snr(estimates[i], references[j])
                    for j in valid] for i in valid])
  rows, cols = scipy.optimize.linear_sum_assignment(cost)
  return (cost[rows, cols].mean(),
          {int(valid[c]): int(valid[r]) for r, c in zip(rows, cols)})


def _random_case(num_speakers, rng, batch=4):
  references = rng.standard_normal((batch, num_speakers, NUM_SAMPLES))
  # Each estimate is a noisy mix of all references, so pair losses are
  # spread out and the optimum is unique but not trivial.
  weights = rng.uniform(0.0, 1.0, (batch, num_speakers, num_speakers))
  estimates = (np.einsum("bij,bjt->bit", weights, references)
               + 0.5 * rng.standard_normal(references.shape))
  mask = rng.uniform(size=(batch, num_speakers)) < 0.7
  mask[0] = True
  mask[1] = False
  return (estimates.astype(np.float32), references.astype(np.float32), mask)


@pytest.mark.parametrize("num_speakers", [1, 2, 3, 4, 5, 6])
def test_pit_matches_linear_sum_assignment(num_speakers):
  rng = np.random.default_rng(num_speakers)
  estimates, references, mask = _random_case(num_speakers, rng)
  loss, permutation = _pit_loss(estimates, references, mask)
  assert loss.shape == (4,) and permutation.shape == (4, num_speakers)
  permutation = np.asarray(permutation)
  for b in range(4):
    expected_loss, expected_assignment = _reference_pit(
        estimates[b], references[b], mask[b])
    np.testing.assert_allclose(loss[b], expected_loss, rtol=1e-4, atol=1e-4)
    assert sorted(permutation[b]) == list(range(num_speakers))
    for j in range(num_speakers):
      if mask[b, j]:
        assert permutation[b, j] == expected_assignment[j]
      else:
        assert not mask[b, permutation[b, j]]


@pytest.mark.parametrize("num_speakers", [2, 6])
def test_pit_recovers_shuffled_estimates(num_speakers):
  rng = np.random.default_rng(10 + num_speakers)
  references = rng.standard_normal((3, num_speakers, NUM_SAMPLES))
  # estimates[b, shuffle[b, j]] is a noisy copy of references[b, j].
  shuffle = np.stack([rng.permutation(num_speakers) for _ in range(3)])
  estimates = np.empty_like(references)
  for b in range(3):
    estimates[b, shuffle[b]] = (references[b] + 0.1 * rng.standard_normal(
        references[b].shape))
  loss, permutation = _pit_loss(estimates.astype(np.float32),
                                references.astype(np.float32),
                                np.ones((3, num_speakers), bool))
  np.testing.assert_array_equal(permutation, shuffle)
  assert np.all(loss < -15.0)  # ~20 dB SI-SNR each.


def test_padded_speakers_are_never_matched_to_valid_ones():
  rng = np.random.default_rng(0)
  references = rng.standard_normal((1, 3, NUM_SAMPLES)).astype(np.float32)
  estimates = rng.standard_normal((1, 3, NUM_SAMPLES)).astype(np.float32)
  # Bait: padded estimate slot 2 is a perfect copy of valid reference 0, and
  # valid estimate 0 is a perfect copy of padded reference 2.
  estimates[0, 2] = references[0, 0]
  estimates[0, 0] = references[0, 2]
  mask = np.array([[True, True, False]])
  loss, permutation = _pit_loss(estimates, references, mask)
  assert permutation[0, 2] == 2
  assert set(np.asarray(permutation[0, :2])) == {0, 1}
  expected_loss, _ = _reference_pit(estimates[0], references[0], mask[0])
  np.testing.assert_allclose(loss[0], expected_loss, rtol=1e-4)
  # Without padding the bait would win.
  _, unmasked = _pit_loss(estimates, references, np.ones((1, 3), bool))
  assert unmasked[0, 0] == 2


def test_pit_uses_the_given_pair_loss():
  rng = np.random.default_rng(1)
  estimates, references, mask = _random_case(3, rng)
  l1 = lambda e, r: jnp.mean(jnp.abs(e - r), axis=-1)
  loss, permutation = jax.jit(avsig.pit_loss, static_argnums=3)(
      estimates, references, mask, l1)
  for b in range(4):
    valid = np.flatnonzero(mask[b])
    expected = np.mean([np.mean(np.abs(estimates[b, permutation[b, j]]
                                       - references[b, j])) for j in valid]
                       ) if len(valid) else 0.0
    np.testing.assert_allclose(loss[b], expected, rtol=1e-5)


def test_pit_gradient_is_finite_with_silent_padding():
  rng = np.random.default_rng(2)
  estimates, references, _ = _random_case(4, rng, batch=2)
  mask = np.array([[True, True, False, False], [False] * 4])
  # Padded speakers are typically silent on both sides.
  references[~mask] = 0.0
  estimates[~mask] = 0.0
  grad = jax.jit(jax.grad(
      lambda e: jnp.mean(avsig.pit_loss(e, references, mask)[0])))(estimates)
  assert np.all(np.isfinite(grad))
  assert np.any(grad[0, :2] != 0)
  np.testing.assert_array_equal(grad[~mask], 0.0)


def test_pit_rejects_bad_input():
  x = np.zeros((2, 3, 100), np.float32)
  mask = np.ones((2, 3), bool)
  with pytest.raises(ValueError, match="1 to 6 speakers, got S = 7"):
    avsig.pit_loss(np.zeros((1, 7, 10)), np.zeros((1, 7, 10)),
                   np.ones((1, 7), bool))
  with pytest.raises(ValueError, match="same shape"):
    avsig.pit_loss(x, x[:, :2], mask)
  with pytest.raises(ValueError, match=r"\(B, S, T\)"):
    avsig.pit_loss(x[0], x[0], mask)
  with pytest.raises(ValueError, match=r"speaker_mask must have shape"):
    avsig.pit_loss(x, x, mask[:, :2])
  with pytest.raises(ValueError, match="speaker_mask must be bool"):
    avsig.pit_loss(x, x, mask.astype(np.float32))


def _numpy_mr_stft_loss(estimate, reference, eps=1e-7):
  """Parallel WaveGAN's loss from librosa spectrograms, in float64."""
  total = 0.0
  for n_fft, win_length, hop_length in avsig.SCALES:
    spec = lambda x: np.abs(librosa.stft(
        x.astype(np.float64), n_fft=n_fft, hop_length=hop_length,
        win_length=win_length, window="hann", pad_mode="reflect"))
    est, ref = spec(estimate), spec(reference)
    total += (np.linalg.norm(ref - est) / np.linalg.norm(ref)
              + np.mean(np.abs(np.log(est + eps) - np.log(ref + eps))))
  return total / len(avsig.SCALES)


def test_mr_stft_loss_matches_numpy_reference(speech_like):
  rng = np.random.default_rng(3)
  reference = speech_like(4000, seed=5)
  estimate = (0.8 * reference + 0.01 * rng.standard_normal(4000)).astype(
      np.float32)
  np.testing.assert_allclose(_mr_stft_loss(estimate, reference),
                             _numpy_mr_stft_loss(estimate, reference),
                             rtol=1e-5)  # Measured 2e-8.


def test_mr_stft_loss_grows_with_noise(speech_like):
  rng = np.random.default_rng(4)
  reference = speech_like(4000, seed=6)
  noise = rng.standard_normal(4000).astype(np.float32)
  noisy = np.stack([reference + level * noise
                    for level in (0.0, 0.001, 0.01, 0.1)])
  losses = np.asarray(_mr_stft_loss(noisy, np.broadcast_to(reference,
                                                           noisy.shape)))
  assert losses[0] == 0.0
  assert np.all(np.diff(losses) > 0), losses


def test_mr_stft_loss_gradient_is_finite():
  rng = np.random.default_rng(5)
  reference = rng.standard_normal((4, 2000)).astype(np.float32)
  estimate = reference.copy()  # Identical: zero spectral distance.
  estimate[1] += 0.1 * rng.standard_normal(2000)
  estimate[2] = 0.0  # Silent estimate: |STFT| = 0 everywhere.
  reference[3] = 0.0  # Silent reference, e.g. a padded speaker.
  assert np.all(np.isfinite(_mr_stft_loss(estimate, reference)))
  grad = jax.jit(jax.grad(
      lambda e: jnp.sum(avsig.multi_resolution_stft_loss(e, reference))))(
          estimate)
  assert np.all(np.isfinite(grad))


def test_mr_stft_loss_rejects_bad_input():
  x = np.zeros((2, 2000), np.float32)
  with pytest.raises(ValueError, match="same"):
    avsig.multi_resolution_stft_loss(x, x[:, :-1])
  with pytest.raises(ValueError, match="at least one scale"):
    avsig.multi_resolution_stft_loss(x, x, scales=())
  with pytest.raises(ValueError, match="reflect padding"):
    _mr_stft_loss(x[:, :400], x[:, :400])


def test_activity_targets_match_librosa_rms_levels():
  rng = np.random.default_rng(3)
  frame = 640
  envelope = np.repeat(10.0 ** (rng.uniform(-3, 0, 20)), frame)  # -60..0 dB per frame
  sources = np.stack([rng.standard_normal(20 * frame + 100) * np.pad(envelope, (0, 100)),
                      np.zeros(20 * frame + 100)]).astype(np.float32)
  got = np.asarray(avsig.activity_targets(jnp.asarray(sources), frame, range_db=40.0))

  rms = librosa.feature.rms(y=sources[0].astype(np.float64), frame_length=frame,
                            hop_length=frame, center=False)[0]
  level = 20 * np.log10(rms)
  expected = np.clip((level - level.max()) / 40.0 + 1.0, 0.0, 1.0)
  assert got.shape == (2, 20)
  np.testing.assert_allclose(got[0], expected, atol=1e-4)
  np.testing.assert_array_equal(got[1], 0.0)  # a silent (padded) source is inactive


def test_activity_loss_is_sigmoid_cross_entropy():
  rng = np.random.default_rng(4)
  logits = rng.normal(0, 3, (2, 3, 26)).astype(np.float32)
  targets = rng.uniform(0, 1, (2, 3, 25)).astype(np.float32)  # one frame shorter
  got = avsig.activity_loss(jnp.asarray(logits), jnp.asarray(targets))
  expected = optax.sigmoid_binary_cross_entropy(logits[..., :25], targets).mean(-1)
  np.testing.assert_allclose(got, expected, rtol=1e-5)
