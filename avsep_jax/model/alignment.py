"""Putting 25 fps video tokens on the 100 fps audio axis: interpolation or soft-DTW.

Both produce an alignment matrix A of shape (..., T_audio, F_video) whose rows sum to
one, so aligned video tokens are `A @ video`. The matrix is returned in the model's aux
dict for inspection.
"""

import jax
import jax.numpy as jnp
import numpy as np

# Stands in for +inf in the soft-DTW table: finite, so gradients stay finite.
_INF = 1e10


def interpolation_matrix(out_times, in_times):
  """Linear interpolation weights from a uniform input grid to output times.

  Args:
    out_times: (T_out,) seconds where values are wanted.
    in_times: (T_in,) uniformly spaced seconds where values are known.

  Returns:
    (T_out, T_in) float32 numpy array; each row sums to one. Output times outside the
    input range take the nearest end value.
  """
  out_times = np.asarray(out_times, np.float64)
  in_times = np.asarray(in_times, np.float64)
  n = len(in_times)
  step = in_times[1] - in_times[0] if n > 1 else 1.0
  pos = np.clip((out_times - in_times[0]) / step, 0, n - 1)
  lo = np.floor(pos).astype(int)
  hi = np.minimum(lo + 1, n - 1)
  frac = pos - lo
  weights = np.zeros((len(out_times), n), np.float64)
  rows = np.arange(len(out_times))
  np.add.at(weights, (rows, lo), 1 - frac)
  np.add.at(weights, (rows, hi), frac)
  return weights.astype(np.float32)


def video_to_audio_matrix(num_audio_frames, num_video_frames, *, hop_length,
                          sample_rate, fps, causal=False):
  """(T_audio, F) interpolation from video frame centres to centred STFT frames.

  Audio frame t is centred at t * hop / sr (centred STFT); video frame f covers
  [f / fps, (f + 1) / fps) and is taken at its centre.

  With `causal` (a stream, causal STFT framing): audio frame t, complete at
  (t + 1) * hop / sr, holds the newest video frame that had arrived one hop earlier,
  at t * hop / sr (frame f arrives at f / fps): one-hot rows, nothing from the future,
  and a streamer can encode each video frame in the idle time before the audio step
  that first needs it instead of on that step's critical path.
  """
  if causal:
    newest = np.floor(np.arange(num_audio_frames) * hop_length * fps / sample_rate
                      + 1e-9).astype(int)
    weights = np.zeros((num_audio_frames, num_video_frames), np.float32)
    weights[np.arange(num_audio_frames), np.minimum(newest, num_video_frames - 1)] = 1.0
    return weights
  audio_t = np.arange(num_audio_frames) * hop_length / sample_rate
  video_t = (np.arange(num_video_frames) + 0.5) / fps
  return interpolation_matrix(audio_t, video_t)


def band_mask(n, m, band):
  """(n, m) bool: cells within `band` columns of the straight line (0,0)->(n-1,m-1).

  `band` is in units of the second axis (video frames). None allows every cell.
  """
  if band is None:
    return np.ones((n, m), bool)
  slope = (m - 1) / (n - 1) if n > 1 else 0.0
  i = np.arange(n)[:, None]
  j = np.arange(m)[None, :]
  return np.abs(i * slope - j) <= band


def soft_dtw(cost, gamma, band=None):
  """Soft dynamic time warping value (Cuturi & Blondel 2017) with an optional band.

  The table R[i, j] = cost[i, j] + softmin_gamma(R[i-1, j], R[i, j-1], R[i-1, j-1]) is
  filled one anti-diagonal at a time, so the scan has N + M - 1 steps, each vectorised
  over a diagonal and over the batch.

  Args:
    cost: (..., N, M) pairwise costs (computed in float32).
    gamma: softmin temperature > 0; as gamma -> 0 this becomes classic DTW.
    band: optional Sakoe-Chiba half-width in columns around the (0,0)->(N-1,M-1) line.

  Returns:
    (...,) soft-DTW value R[N-1, M-1].
  """
  if cost.ndim < 2:
    raise ValueError(f"cost must be (..., N, M), got shape {cost.shape}")
  if gamma <= 0:
    raise ValueError(f"gamma must be > 0, got {gamma}")
  cost = cost.astype(jnp.float32)
  n, m = cost.shape[-2:]
  num_diag = n + m - 1
  # Static gather indices: diagonal k holds cells (k - j, j) for j in [0, M).
  k = np.arange(num_diag)[:, None]
  j = np.arange(m)[None, :]
  i = k - j
  valid = (i >= 0) & (i < n)
  valid[valid] &= band_mask(n, m, band)[i[valid], np.broadcast_to(j, i.shape)[valid]]
  diag_cost = cost[..., np.clip(i, 0, n - 1), np.broadcast_to(j, i.shape)]
  diag_cost = jnp.moveaxis(diag_cost, -2, 0)  # (K, ..., M)

  def shift(r, fill):
    """r[j - 1] at position j (the left/diagonal neighbour on the previous diagonals)."""
    pad = jnp.broadcast_to(fill, r.shape[:-1] + (1,))
    return jnp.concatenate([pad, r[..., :-1]], axis=-1)

  def step(carry, xs):
    prev, prev2 = carry  # R on diagonals k-1 and k-2, (..., M)
    c, ok, kk = xs
    up = prev                                   # R[i-1, j]
    left = shift(prev, _INF)                    # R[i, j-1]
    corner = jnp.where(kk == 0, 0.0, _INF)      # the virtual R[-1, -1] = 0
    diag = shift(prev2, corner)                 # R[i-1, j-1]
    neighbours = jnp.stack([up, left, diag], axis=-1)
    softmin = -gamma * jax.nn.logsumexp(-neighbours / gamma, axis=-1)
    r = jnp.where(ok, c + softmin, _INF)
    return (r, prev), None

  init = jnp.full(cost.shape[:-2] + (m,), _INF, jnp.float32)
  (last, _), _ = jax.lax.scan(
      step, (init, init), (diag_cost, jnp.asarray(valid), jnp.arange(num_diag)))
  return last[..., m - 1]


def soft_dtw_alignment(cost, gamma, band=None):
  """Soft-DTW value and its expected alignment E = d value / d cost.

  E[i, j] is the soft probability that the optimal path passes through (i, j); it is
  differentiable in `cost`, so training learns the features the cost is built from.

  Args:
    cost: (..., N, M).
    gamma, band: as in `soft_dtw`.

  Returns:
    value (...,) and E (..., N, M) float32.
  """
  value, vjp = jax.vjp(lambda c: soft_dtw(c, gamma, band), cost.astype(jnp.float32))
  (expected,) = vjp(jnp.ones_like(value))
  return value, expected


def normalize_rows(weights, eps=1e-6):
  """Rows (last axis) rescaled to sum to one: (..., N, M) -> (..., N, M)."""
  return weights / (jnp.sum(weights, axis=-1, keepdims=True) + eps)
