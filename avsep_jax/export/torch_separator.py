"""PyTorch mirror of the band separator (`avsep_jax.model.separator` and `bands`).

Spectra are pairs re, im of (B, T, F) and the masks come back as a pair too: ONNX has
no complex dtype. The per-band weights are parameters of the band modules themselves,
named as the Flax params (`kernel`, `bias`, `hidden_kernel`, ...), so that
`convert` maps them by name; their per-band dense is one batched matmul with the band
axis leading, which exports as a MatMul by a constant (K, C, N) weight (INT8 exports
keep those three float: `onnx_export._batched_weight_matmuls`).

The band layout is a copy of `bands.band_edges` (tests hold the two equal): importing
`avsep_jax.model` would bring Flax into the serving path.
"""

import numpy as np
import torch
from torch import nn

from avsep_jax.export.torch_blocks import _layer_norm
from avsep_jax.export.torch_blocks import MlpBlock
from avsep_jax.export.torch_blocks import MultiHeadAttention
from avsep_jax.export.torch_blocks import sinusoidal_positions


def band_edges(num_bins, layout):
  """`bands.band_edges`: ((start, stop), ...) bin ranges covering [0, num_bins)."""
  edges, start = [], 0
  for width, count in layout:
    for _ in range(count):
      edges.append((start, start + width))
      start += width
  if not edges or start > num_bins:
    raise ValueError(f"band layout {tuple(layout)} needs {start} bins; the spectrum has "
                     f"{num_bins}")
  edges[-1] = (edges[-1][0], num_bins)
  return tuple(edges)


def _gather_index(edges):
  """(K, W) bin index of each band slot (0 where padded) and its (K, W) validity."""
  width = max(stop - start for start, stop in edges)
  index = np.zeros((len(edges), width), np.int64)
  valid = np.zeros((len(edges), width), bool)
  for k, (start, stop) in enumerate(edges):
    index[k, :stop - start] = np.arange(start, stop)
    valid[k, :stop - start] = True
  return index, valid


def _per_band_dense(x, kernel, bias):
  """(N, K, C) x kernel (K, C, D) + bias (K, D) -> (N, K, D): band-major, one batched
  MatMul by the kernel as stored."""
  return torch.matmul(x.transpose(0, 1), kernel).transpose(0, 1) + bias


def compressed_features(re, im, power):
  """`bands.compressed_features`: (..., F) pair -> (..., F, 2) of |X|^power e^{i
  angle X}, 0 where |X| = 0."""
  mag = torch.sqrt(re * re + im * im)
  scale = torch.where(mag > 0, torch.pow(mag + 1e-12, power - 1.0),
                      torch.zeros_like(mag))
  return torch.stack([re * scale, im * scale], dim=-1)


class BandSplit(nn.Module):
  """(B, T, F, C) per-bin features -> (B, T, K, d) band tokens, one Dense per band."""

  def __init__(self, edges, channels, d_model):
    super().__init__()
    index, valid = _gather_index(edges)
    k, w = index.shape
    self.register_buffer("index", torch.from_numpy(index.reshape(-1)), persistent=False)
    self.register_buffer("valid", torch.from_numpy(valid[..., None].astype(np.float32)),
                         persistent=False)
    self.kernel = nn.Parameter(torch.zeros(k, w * channels, d_model))
    self.bias = nn.Parameter(torch.zeros(k, d_model))

  def forward(self, x):
    b, t, _, c = x.shape
    k, w, _ = self.valid.shape
    x = torch.index_select(x, 2, self.index).reshape(b, t, k, w, c) * self.valid
    x = _per_band_dense(x.reshape(b * t, k, w * c), self.kernel, self.bias)
    return x.reshape(b, t, k, -1)


class BandMask(nn.Module):
  """(B, S, T, K, d) tokens -> (B, S, T, F) complex mask as (real, imag): per band
  LayerNorm, Dense(hidden), tanh, Dense(2 x width); the padded band slots dropped."""

  def __init__(self, edges, d_model, hidden):
    super().__init__()
    index, valid = _gather_index(edges)
    k, w = index.shape
    self.ln = _layer_norm(d_model)
    self.hidden_kernel = nn.Parameter(torch.zeros(k, d_model, hidden))
    self.hidden_bias = nn.Parameter(torch.zeros(k, hidden))
    self.out_kernel = nn.Parameter(torch.zeros(k, hidden, 2 * w))
    self.out_bias = nn.Parameter(torch.zeros(k, 2 * w))
    self.register_buffer("bins", torch.from_numpy(np.flatnonzero(valid.reshape(-1))),
                         persistent=False)

  def forward(self, x):
    lead, (k, d) = x.shape[:-2], x.shape[-2:]
    h = self.ln(x).reshape(-1, k, d)
    h = torch.tanh(_per_band_dense(h, self.hidden_kernel, self.hidden_bias))
    out = _per_band_dense(h, self.out_kernel, self.out_bias)   # (N, K, 2W): (W, 2)
    out = torch.index_select(out.reshape(out.shape[0], -1, 2), 1, self.bins)
    out = out.reshape(*lead, -1, 2)
    return out[..., 0], out[..., 1]


class TFBlock(nn.Module):
  """`separator.TFBlock` on (B, S, T, K, d): + condition, attention over bands, over
  time (causal/window), across slots (absent slots masked; only when `slots`), MLP."""

  def __init__(self, d, num_heads, mlp_dim, causal, window, slots=True, d_condition=None):
    super().__init__()
    self.slots = slots
    self.condition = nn.Linear(d_condition, d) if slots else None
    self.ln_band = _layer_norm(d)
    self.band_attn = MultiHeadAttention(d, d, num_heads, time_masked=False)
    self.ln_time = _layer_norm(d)
    self.time_attn = MultiHeadAttention(d, d, num_heads, causal, window)
    if slots:
      self.ln_slot = _layer_norm(d)
      self.slot_attn = MultiHeadAttention(d, d, num_heads, time_masked=False)
    self.ln_mlp = _layer_norm(d)
    self.mlp = MlpBlock(d, mlp_dim)

  def forward(self, x, condition=None, speaker_mask=None):
    """x (B, S, T, K, d), condition (B, S, T, dc), speaker_mask (B, S) -> x."""
    b, s, t, k, d = x.shape
    if self.condition is not None:
      x = x + self.condition(condition)[:, :, :, None]
    h = self.ln_band(x).reshape(b * s * t, k, d)
    x = x + self.band_attn(h, h).reshape(b, s, t, k, d)
    h = self.ln_time(x).transpose(2, 3).reshape(b * s * k, t, d)
    h = self.time_attn(h, h)
    x = x + h.reshape(b, s, k, t, d).transpose(2, 3)
    if self.slots:
      h = self.ln_slot(x).permute(0, 2, 3, 1, 4).reshape(b * t * k, s, d)
      key_mask = speaker_mask[:, None, :].expand(b, t * k, s).reshape(b * t * k, s)
      h = self.slot_attn(h, h, key_mask=key_mask)
      x = x + h.reshape(b, t, k, s, d).permute(0, 3, 1, 2, 4)
    return x + self.mlp(self.ln_mlp(x))


class BandSeparator(nn.Module):
  """`separator.BandSeparator`: mixture spectrum + one stream per slot -> one complex
  ratio mask per slot.

  Args:
    cfg: `config.model.decoder` with kind 'bands'.
    num_bins: the main STFT's bins (n_fft // 2 + 1).
    d_condition: the streams' width.
    causal, window: as the model's time attention (window in audio frames).
  """

  def __init__(self, cfg, num_bins, d_condition, causal, window):
    super().__init__()
    self.causal, self.compress = causal, float(cfg.compress)
    self.d_model, self.positions = cfg.d_model, cfg.get("positions", True)
    edges = band_edges(num_bins, tuple(tuple(band) for band in cfg.bands))
    self.band_split = BandSplit(edges, 2, cfg.d_model)
    self.shared = [f"shared_{i}" for i in range(cfg.shared_layers)]
    self.layers = [f"layer_{i}" for i in range(cfg.num_layers)]
    for name in self.shared:
      self.add_module(name, TFBlock(cfg.d_model, cfg.num_heads, cfg.mlp_dim, causal,
                                    window, slots=False))
    for name in self.layers:
      self.add_module(name, TFBlock(cfg.d_model, cfg.num_heads, cfg.mlp_dim, causal,
                                    window, d_condition=d_condition))
    self.mask = BandMask(edges, cfg.d_model, cfg.mask_hidden)

  def forward(self, re, im, streams, speaker_mask):
    """re, im (B, T, F) main-scale mixture STFT, streams (B, S, T, dc), speaker_mask
    (B, S) bool -> masks (real, imag), each (B, S, T, F): slot s's estimate is
    masks[:, s] * spec."""
    if not self.causal:
      # Level-free features, as the Flax module: rms over (T, F) of |X|^2.
      rms = torch.sqrt(torch.mean(re * re + im * im, dim=(1, 2), keepdim=True))
      re, im = re / (rms + 1e-8), im / (rms + 1e-8)
    x = self.band_split(compressed_features(re, im, self.compress))   # (B, T, K, d)
    if self.positions:
      x = x + sinusoidal_positions(x.shape[1], self.d_model, x.device)[:, None]
    x = x[:, None]
    for name in self.shared:
      x = getattr(self, name)(x)
    b, s = streams.shape[:2]
    x = x.expand(b, s, *x.shape[2:])
    for name in self.layers:
      x = getattr(self, name)(x, streams, speaker_mask)
    return self.mask(x)
