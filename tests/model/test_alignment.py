"""Soft-DTW against ott-jax and a NumPy DP; alignment recovers known offsets."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ott.geometry import costs as ott_costs

from avsep_jax.model import alignment


def numpy_soft_dtw(cost, gamma, allowed):
  """The textbook O(N M) recursion, cell by cell, in float64."""
  n, m = cost.shape
  r = np.full((n + 1, m + 1), np.inf)
  r[0, 0] = 0.0
  for i in range(1, n + 1):
    for j in range(1, m + 1):
      if not allowed[i - 1, j - 1]:
        continue
      prev = np.array([r[i - 1, j], r[i, j - 1], r[i - 1, j - 1]])
      finite = prev[np.isfinite(prev)]
      if finite.size == 0:
        continue
      lo = finite.min()
      r[i, j] = cost[i - 1, j - 1] + lo - gamma * np.log(np.exp(-(finite - lo) / gamma).sum())
  return r[n, m]


def smooth_features(n, dim, seed):
  rng = np.random.default_rng(seed)
  t = np.linspace(0, 1, n)[:, None]
  freqs = rng.uniform(1, 4, size=(1, dim))
  phases = rng.uniform(0, 2 * np.pi, size=(1, dim))
  return np.sin(2 * np.pi * freqs * t + phases).astype(np.float32)


@pytest.mark.parametrize("gamma", [0.05, 1.0])
def test_value_matches_ott_jax_without_band(gamma):
  x = np.random.default_rng(0).normal(size=(23, 3)).astype(np.float32)
  y = np.random.default_rng(1).normal(size=(11, 3)).astype(np.float32)
  cost = ((x[:, None] - y[None]) ** 2).sum(-1)
  ours = alignment.soft_dtw(jnp.asarray(cost), gamma)
  ref = ott_costs.SoftDTW(gamma=gamma)(jnp.asarray(x), jnp.asarray(y))
  np.testing.assert_allclose(float(ours), float(ref), rtol=1e-5)


def test_banded_value_matches_numpy_dp_and_batches():
  rng = np.random.default_rng(2)
  cost = rng.uniform(0, 2, size=(3, 20, 7)).astype(np.float32)
  allowed = alignment.band_mask(20, 7, 1.5)
  ours = np.asarray(alignment.soft_dtw(jnp.asarray(cost), 0.1, band=1.5))
  for b in range(3):
    np.testing.assert_allclose(ours[b], numpy_soft_dtw(cost[b], 0.1, allowed), rtol=1e-5)


@pytest.mark.parametrize("offset", [-2, 3])
def test_alignment_recovers_a_known_offset(offset):
  n = 50
  x = smooth_features(n + 10, 4, seed=3)
  a = x[5:5 + n]                       # frame i of a ...
  v = x[5 - offset:5 - offset + n]     # ... is frame i + offset of v
  cost = ((a[:, None] - v[None]) ** 2).sum(-1)
  _, expected = alignment.soft_dtw_alignment(jnp.asarray(cost), gamma=0.01, band=4)
  path = np.argmax(np.asarray(expected), axis=1)
  interior = np.arange(abs(offset), n - abs(offset))
  np.testing.assert_array_equal(path[interior] - interior, offset)


def test_alignment_stays_in_band_and_is_differentiable():
  rng = np.random.default_rng(4)
  cost = jnp.asarray(rng.uniform(0, 2, size=(2, 40, 10)), jnp.float32)
  _, expected = alignment.soft_dtw_alignment(cost, gamma=0.1, band=2)
  outside = ~alignment.band_mask(40, 10, 2)
  assert np.abs(np.asarray(expected)[:, outside]).max() == 0.0
  rows = np.asarray(alignment.normalize_rows(expected)).sum(-1)
  np.testing.assert_allclose(rows, 1.0, atol=1e-4)

  def loss(c):
    return jnp.sum(alignment.normalize_rows(alignment.soft_dtw_alignment(c, 0.1, 2)[1])
                   * jnp.arange(10.0))

  grad = jax.jit(jax.grad(loss))(cost)
  assert np.isfinite(np.asarray(grad)).all() and np.abs(np.asarray(grad)).max() > 0


def test_interpolation_matrix_matches_numpy_interp():
  video_t = (np.arange(12) + 0.5) / 25
  audio_t = np.arange(48) * 0.01
  values = np.random.default_rng(5).normal(size=12)
  w = alignment.video_to_audio_matrix(48, 12, hop_length=160, sample_rate=16000, fps=25)
  np.testing.assert_allclose(w @ values, np.interp(audio_t, video_t, values), atol=1e-5)


def test_bad_arguments():
  with pytest.raises(ValueError, match="gamma"):
    alignment.soft_dtw(jnp.ones((3, 3)), 0.0)
  with pytest.raises(ValueError, match="cost must be"):
    alignment.soft_dtw(jnp.ones((3,)), 0.1)
