"""PyTorch mirror of the video-to-audio alignment (`avsep_jax.model.fusion.VideoAligner`
and what it uses of `avsep_jax.model.alignment`).

Video tokens (B, S, F, Dv) onto the audio frames of (B, T, Da) tokens: linear
interpolation ('interpolate'), the newest video frame already arrived ('hold', the
causal model's), or the expected soft-DTW alignment of projected features
('soft_dtw'), whose forward table and backward pass are written out as scans over the
table's anti-diagonals (ONNX Scans whose length follows the input's).
"""

import torch
from torch import nn

ALIGNMENTS = ("interpolate", "hold", "soft_dtw")
_SOFT_DTW_INF = 1e10


def _interp_indices(num_out, num_in, scale, offset, device):
  """lo, hi, frac of linear interpolation at input positions clip(i*scale + offset)."""
  pos = torch.arange(num_out, device=device, dtype=torch.float32) * scale + offset
  pos = torch.clamp(pos, min=0.0)
  pos = torch.minimum(pos, (num_in - 1) * torch.ones_like(pos))
  lo = torch.floor(pos)
  frac = pos - lo
  lo = lo.long()
  hi = torch.minimum(lo + 1, (num_in - 1) * torch.ones_like(lo))
  return lo, hi, frac


def held_video_frames(num_audio, num_video, scale, device):
  """(num_audio,) long: the newest video frame arrived one hop before each causal audio
  frame completes, min(floor(t * scale), F - 1) with scale = hop * fps / sr
  (`alignment.video_to_audio_matrix(causal=True)`)."""
  pos = torch.arange(num_audio, device=device, dtype=torch.float64) * scale + 1e-9
  newest = torch.floor(pos).long()
  return torch.minimum(newest, (num_video - 1) * torch.ones_like(newest))


def _interpolate_time(x, num_out, scale, offset, dim):
  """Linear interpolation of `x` along `dim` onto num_out positions i*scale + offset."""
  lo, hi, frac = _interp_indices(num_out, x.shape[dim], scale, offset, x.device)
  shape = [1] * x.ndim
  shape[dim] = -1
  frac = frac.reshape(shape)
  return (torch.index_select(x, dim, lo) * (1 - frac)
          + torch.index_select(x, dim, hi) * frac)


def _scan(step, init, xs, reverse=False):
  """`torch._higher_order_ops.scan` semantics: carry, stacked outputs of step over dim 0.

  Under export it is the scan op (an ONNX Scan whose length follows the input); eagerly
  a Python loop over the same step, because an eager scan compiles with dynamo on
  every new shape (seconds each).
  """
  if torch.compiler.is_exporting():
    from torch._higher_order_ops.scan import scan
    return scan(step, init, xs, reverse=reverse)
  length = xs[0].shape[0]
  carry, ys = init, [None] * length
  for k in (reversed(range(length)) if reverse else range(length)):
    carry, ys[k] = step(carry, [x[k] for x in xs])
  return carry, [torch.stack(y) for y in zip(*ys)]


def _diagonal_cells(n, m, band, device):
  """Anti-diagonal k of an (n, m) table holds cells (k - j, j), j < m: the (K, m) row
  index i = k - j (K = n + m - 1) and whether the cell is in the table and the band.

  The band test is `alignment.band_mask`'s, in float64 from the same integers, so
  the cells on its edge fall on the same side; built from the (possibly traced) sizes.
  """
  k = torch.arange(n + m - 1, device=device)[:, None]
  j = torch.arange(m, device=device)[None, :]
  i = k - j
  ok = (i >= 0) & (i < n)
  if band is not None:
    one = torch.ones((), dtype=torch.float64, device=device)
    # n == 1 leaves only i = 0, where any finite slope gives 0 as band_mask's slope 0.
    slope = (m - 1) * one / torch.clamp((n - 1) * one, min=1.0)
    ok = ok & (torch.abs(i.double() * slope - j.double()) <= band)
  return i, ok


def soft_dtw_alignment(cost, gamma, band):
  """Soft-DTW value and expected alignment E = d value / d cost, as
  `alignment.soft_dtw_alignment`: the forward table R and the backward E recursion
  (Cuturi & Blondel 2017, Algorithm 2), banded like the JAX scan.

  Both recursions run over the N + M - 1 anti-diagonals, each step vectorised over a
  diagonal and the batch; the diagonal indices and band come from the input's sizes, so
  the export keeps N and M dynamic (two ONNX Scans).

  Args:
    cost: (..., N, M) float32 (or float64).
    gamma: softmin temperature > 0; band: half-width in columns, or None.

  Returns:
    value (...,) and E (..., N, M), in cost's dtype.
  """
  n, m = cost.shape[-2:]
  batch = cost.shape[:-2]
  cost = cost.reshape(-1, n * m)                         # (P, N*M)
  p = cost.shape[0]
  i, ok = _diagonal_cells(n, m, band, cost.device)       # (K, M)
  j = torch.arange(m, device=cost.device)[None, :]
  # Out-of-table cells gather a clipped neighbour; `ok` discards them.
  diag_cost = cost[:, (torch.clamp(i, 0, n - 1) * m + j).reshape(-1)]
  diag_cost = diag_cost.reshape(p, -1, m).transpose(0, 1).contiguous()  # (K, P, M)
  # The virtual R[-1, -1] = 0 is the diagonal neighbour of cell (0, 0) only.
  inf = torch.full_like(diag_cost[:, :, :1], _SOFT_DTW_INF)             # (K, P, 1)
  first = torch.arange(inf.shape[0], device=cost.device)[:, None, None] == 0
  corner = torch.where(first, torch.zeros_like(inf), inf)
  ok = ok[:, None, :]                                     # (K, 1, M)

  def forward(carry, xs):
    prev, prev2 = carry                  # R on diagonals k-1 and k-2, (P, M)
    c, valid, corner_k = xs
    edge = torch.full_like(corner_k, _SOFT_DTW_INF)
    up = prev                                            # R[i-1, j]
    left = torch.cat([edge, prev[:, :-1]], dim=-1)       # R[i, j-1]
    diag = torch.cat([corner_k, prev2[:, :-1]], dim=-1)  # R[i-1, j-1]
    z = torch.stack([up, left, diag], dim=-1) / -gamma
    r = torch.where(valid, c - gamma * torch.logsumexp(z, dim=-1), edge)
    # The softmin's weights on the three neighbours: its derivative, for the backward.
    return (r, prev.clone()), (torch.softmax(z, dim=-1),)

  init = torch.full_like(diag_cost[0], _SOFT_DTW_INF)
  (last_r, _), (weights,) = _scan(forward, (init, init.clone()),
                                  (diag_cost, ok, corner))

  def backward(carry, xs):
    adj, adj_prev = carry    # d value / dR on diagonal k (complete) and k-1 (partial)
    valid, w = xs
    g = torch.where(valid, adj, torch.zeros_like(adj))  # = d value / d cost on diagonal k
    up, left, diag = (g[..., None] * w).unbind(-1)
    # R[i-1, j] is cell j of diagonal k-1; R[i, j-1] and R[i-1, j-1] are cell j-1.
    shift = lambda x: torch.cat([x[:, 1:], torch.zeros_like(x[:, :1])], dim=-1)
    return (adj_prev + up + shift(left), shift(diag)), (g,)

  zeros = torch.zeros_like(init)
  last = torch.cat([zeros[:, 1:], torch.ones_like(zeros[:, :1])], dim=-1)  # dR[N-1, M-1]
  _, (expected,) = _scan(backward, (last, zeros), (ok, weights), reverse=True)
  # Back from diagonals: E[i, j] = expected[i + j, :, j].
  rows = torch.arange(n, device=cost.device)[:, None]
  expected = expected.transpose(0, 1).reshape(p, -1)     # (P, K*M)
  expected = expected[:, ((rows + j) * m + j).reshape(-1)]
  return last_r[:, m - 1].reshape(batch), expected.reshape(*batch, n, m)


class VideoAligner(nn.Module):

  def __init__(self, method, hop_length, sample_rate, fps, gamma, band, align_dim,
               d_audio, d_video):
    super().__init__()
    if method not in ALIGNMENTS:
      raise ValueError(f"alignment must be one of {ALIGNMENTS}, got {method!r}")
    self.method = method
    # Audio frame t sits at t * hop / sr; video frame f at (f + 0.5) / fps.
    self.scale = hop_length * fps / sample_rate
    self.gamma, self.band = gamma, band
    if method == "soft_dtw":
      self.audio_proj = nn.Linear(d_audio, align_dim)
      self.video_proj = nn.Linear(d_video, align_dim)

  def forward(self, audio, video):
    """audio (B, T, Da), video (B, S, F, Dv) -> aligned (B, S, T, Dv)."""
    t = audio.shape[1]
    if self.method == "interpolate":
      return _interpolate_time(video, t, self.scale, -0.5, dim=2)
    if self.method == "hold":
      return torch.index_select(
          video, 2, held_video_frames(t, video.shape[2], self.scale, video.device))
    a = self.audio_proj(audio)
    v = self.video_proj(video)
    a = a / (torch.linalg.vector_norm(a, dim=-1, keepdim=True) + 1e-6)
    v = v / (torch.linalg.vector_norm(v, dim=-1, keepdim=True) + 1e-6)
    cost = 1.0 - torch.einsum("bta,bsfa->bstf", a, v)
    _, expected = soft_dtw_alignment(cost, self.gamma, self.band)
    weights = expected / (expected.sum(-1, keepdim=True) + 1e-6)
    return torch.einsum("bstf,bsfd->bstd", weights, video)
