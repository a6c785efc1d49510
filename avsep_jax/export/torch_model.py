"""PyTorch mirror of the inference path of `avsep_jax.model.AVSeparator`.

Same computation, same parameter tree: every torch submodule is named after the Flax
module it mirrors (`audio_encoder.transformer.block_0.attn.query`), so
`avsep_jax.export.convert` maps weights by path. Layouts stay channel-last as in Flax;
convolutions permute around torch's NCHW kernels.

What is mirrored: every alignment ('interpolate', 'hold' and 'soft_dtw', the latter
with its forward table and expected-alignment backward pass written out as scans over
the table's anti-diagonals, which export as ONNX Scans whose length follows the
input's), both phases ('mixture' iSTFT and 'griffin_lim'), causal and windowed
attention, the causal (`stream`) model end to end (causal STFT framing, causal CNN and
3-D stem padding, no positions), the decoder's activity cue, every variant's sizes.
Dropout is absent (inference only). The forward returns the waveforms;
`forward_with_aux` adds the lip activity logits and the per-scale masks.

Signal processing is written with convolutions only (no torch.stft/istft, no complex
dtype), because that is what exports to ONNX with a dynamic length (see the serving
notes): the STFT is a strided conv1d against windowed cos/sin bases after reflect
padding, the iSTFT a conv_transpose1d against windowed inverse-DFT bases divided by the
overlap-added squared window, both matching `avsep_jax.signal.stft/istft` (Hann window
of win_length centred in n_fft, centred or causal frames, librosa's normalisation).
"""

import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

PHASES = ("mixture", "griffin_lim")
ALIGNMENTS = ("interpolate", "hold", "soft_dtw")
_PIXEL_MEAN, _PIXEL_STD = 0.45, 0.25
_LN_EPS = 1e-5
# jax.nn.dot_product_attention's fill for masked logits.
_MASK_FILL = -0.7 * float(np.finfo(np.float32).max)
_SOFT_DTW_INF = 1e10
_TINY = float(np.finfo(np.float32).tiny)


def _same_pads(size, kernel, stride):
  """(lo, hi) padding of XLA's 'SAME' for one spatial dim (lax.padtype_to_pads)."""
  if stride == 1:
    total = kernel - 1
  else:
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
  return total // 2, total - total // 2


def _gelu(x):
  # flax.linen.gelu is the tanh approximation.
  return F.gelu(x, approximate="tanh")


def _layer_norm(dim):
  return nn.LayerNorm(dim, eps=_LN_EPS)


# ----------------------------------------------------------------------------- signal


def hann_window(n_fft, win_length):
  """(n_fft,) float64 periodic Hann of win_length centred in n_fft (as signal.stft)."""
  n = np.arange(win_length)
  hann = 0.5 - 0.5 * np.cos(2.0 * np.pi * n / win_length)
  left = (n_fft - win_length) // 2
  return np.pad(hann, (left, n_fft - win_length - left))


def _dft_angles(n_fft, win_length):
  """The analysis window (n_fft,) and the DFT phase 2 pi k n / n_fft (bins, n_fft)."""
  k = np.arange(n_fft // 2 + 1)[:, None]
  n = np.arange(n_fft)[None, :]
  return hann_window(n_fft, win_length), 2.0 * np.pi * k * n / n_fft


def causal_padding(n_fft, win_length, hop_length):
  """Zeros before the signal in causal framing (`signal.causal_padding`)."""
  return n_fft - (n_fft - win_length) // 2 - hop_length


def steady_window_sum(n_fft, win_length, hop_length):
  """(hop,) overlap-added squared window inside a signal (`signal.steady_window_sum`)."""
  squared = hann_window(n_fft, win_length).astype(np.float64) ** 2
  squared = np.pad(squared, (0, -len(squared) % hop_length))
  return squared.reshape(-1, hop_length).sum(axis=0).astype(np.float32)


class STFT(nn.Module):
  """STFT as a conv1d: (N, T) -> re, im (N, frames, bins).

  Centred and reflect-padded (1 + T // hop frames), or with `causal` framing: zeros
  before the signal so frame t's window ends at sample (t + 1) * hop (T // hop frames).
  """

  def __init__(self, n_fft, win_length, hop_length, causal=False):
    super().__init__()
    self.n_fft, self.win_length, self.hop_length = n_fft, win_length, hop_length
    self.causal = causal
    win, angle = _dft_angles(n_fft, win_length)
    basis = np.concatenate([win * np.cos(angle), -win * np.sin(angle)], axis=0)
    self.register_buffer("basis", torch.tensor(basis[:, None, :], dtype=torch.float32),
                         persistent=False)

  def forward(self, x):
    if self.causal:
      pad = causal_padding(self.n_fft, self.win_length, self.hop_length)
      # The zeros after the signal only reach the window's zero tail, and give exactly
      # T // hop frames.
      x = F.pad(x[:, None, :], (pad, self.n_fft - self.hop_length - pad))
    else:
      pad = self.n_fft // 2
      x = F.pad(x[:, None, :], (pad, pad), mode="reflect")
    y = F.conv1d(x, self.basis, stride=self.hop_length)  # (N, 2*bins, frames)
    bins = self.n_fft // 2 + 1
    return y[:, :bins].transpose(1, 2), y[:, bins:].transpose(1, 2)


class ISTFT(nn.Module):
  """Inverse of `STFT` (signal.istft): re, im (N, frames, bins) -> (N, length)."""

  def __init__(self, n_fft, win_length, hop_length, causal=False):
    super().__init__()
    self.n_fft, self.win_length, self.hop_length = n_fft, win_length, hop_length
    self.causal = causal
    bins = n_fft // 2 + 1
    win, angle = _dft_angles(n_fft, win_length)
    # irfft: DC and Nyquist count once and their imaginary parts are ignored.
    weight = np.full((bins, 1), 2.0)
    weight[0] = weight[-1] = 1.0
    real = weight * np.cos(angle) / n_fft * win
    imag = -weight * np.sin(angle) / n_fft * win
    imag[0] = imag[-1] = 0.0
    basis = np.concatenate([real, imag], axis=0)[:, None, :]  # (2*bins, 1, n_fft)
    self.register_buffer("basis", torch.tensor(basis, dtype=torch.float32),
                         persistent=False)
    self.register_buffer("win_sq", torch.tensor((win ** 2)[None, None, :],
                                                dtype=torch.float32), persistent=False)

  def forward(self, re, im, length):
    """`length` is a Python int or a 0-d tensor (the mixture's sample count)."""
    spec = torch.cat([re, im], dim=-1).transpose(1, 2)  # (N, 2*bins, frames)
    y = F.conv_transpose1d(spec, self.basis, stride=self.hop_length)[:, 0]
    ones = torch.ones_like(spec[:1, :1])
    win_sum = F.conv_transpose1d(ones, self.win_sq, stride=self.hop_length)[0, 0]
    if self.causal:  # the partly covered tail fades instead of amplifying (signal.istft)
      floor = float(steady_window_sum(self.n_fft, self.win_length, self.hop_length).min())
      win_sum = torch.clamp(win_sum, min=floor)
    y = y / torch.where(win_sum > _TINY, win_sum, torch.ones_like(win_sum))
    if self.causal:
      start = causal_padding(self.n_fft, self.win_length, self.hop_length)
      # The last samples of a causal signal may lie past the last frame (less than one
      # hop): zeros, as signal.istft pads.
      y = F.pad(y, (0, self.hop_length))
    else:
      # Every scale has hop <= n_fft // 2, so start + length never passes the end.
      start = self.n_fft // 2
    return y[:, start:start + length]


def _unit_phase(re, im):
  """cos and sin of angle(re + i im), with angle(0) = 0 as jnp.angle."""
  mag = torch.sqrt(re * re + im * im)
  nonzero = mag > 0
  safe = torch.where(nonzero, mag, torch.ones_like(mag))
  return (torch.where(nonzero, re / safe, torch.ones_like(re)),
          torch.where(nonzero, im / safe, torch.zeros_like(im)))


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


# -------------------------------------------------------------------------- attention


def _position_mask(tq, tk, causal, window, device):
  i = torch.arange(tq, device=device)[:, None]
  j = torch.arange(tk, device=device)[None, :]
  ok = torch.ones(tq, tk, dtype=torch.bool, device=device)
  if causal:
    ok = ok & (j <= i)
  if window is not None:
    ok = ok & (j >= i - window[0]) & (j <= i + window[1])
  return ok


def dot_product_attention(q, k, v, mask=None, causal=False, window=None):
  """q (B, Tq, H, D), k/v (B, Tk, H, D), mask bool broadcastable to (B, H, Tq, Tk).

  As `avsep_jax.model.attention.dot_product_attention`: rows of a given mask with no
  visible key return zeros.
  """
  d = q.shape[-1]
  logits = torch.einsum("bqhd,bkhd->bhqk", q, k) * (d ** -0.5)
  visible = mask
  if causal or window is not None:
    pos = _position_mask(q.shape[1], k.shape[1], causal, window, q.device)
    visible = pos if visible is None else visible & pos
  if visible is not None:
    logits = torch.where(visible, logits, torch.full_like(logits, _MASK_FILL))
  probs = torch.softmax(logits, dim=-1)
  out = torch.einsum("bhqk,bkhd->bqhd", probs, v)
  if mask is None:
    return out
  has_key = torch.any(visible.expand(*visible.shape[:-2], q.shape[1], k.shape[1]),
                      dim=-1)  # (B|1, H|1, Tq)
  has_key = has_key.transpose(1, 2)[..., None]  # (B|1, Tq, H|1, 1)
  return torch.where(has_key, out, torch.zeros_like(out))


class MultiHeadAttention(nn.Module):

  def __init__(self, d, d_kv, num_heads, causal=False, window=None, time_masked=True):
    super().__init__()
    if d % num_heads:
      raise ValueError(f"d_model {d} is not divisible by num_heads {num_heads}")
    self.num_heads = num_heads
    self.causal = time_masked and causal
    self.window = window if time_masked else None
    self.query = nn.Linear(d, d, bias=False)
    self.key = nn.Linear(d_kv, d, bias=False)
    self.value = nn.Linear(d_kv, d, bias=False)
    self.out = nn.Linear(d, d, bias=False)

  def forward(self, x_q, x_kv, key_mask=None, mask=None):
    h = self.num_heads
    q = self.query(x_q).unflatten(-1, (h, -1))
    k = self.key(x_kv).unflatten(-1, (h, -1))
    v = self.value(x_kv).unflatten(-1, (h, -1))
    if key_mask is not None:
      km = key_mask[:, None, None, :]
      mask = km if mask is None else mask & km
    out = dot_product_attention(q, k, v, mask, self.causal, self.window)
    return self.out(out.flatten(-2))


class MlpBlock(nn.Module):

  def __init__(self, d, mlp_dim):
    super().__init__()
    self.wi = nn.Linear(d, mlp_dim)
    self.wo = nn.Linear(mlp_dim, d)

  def forward(self, x):
    return self.wo(_gelu(self.wi(x)))


def sinusoidal_positions(length, dim, device):
  """(length, dim) as `transformer.sinusoidal_positions`, built from a traced length."""
  pos = torch.arange(length, device=device, dtype=torch.float64)[:, None]
  inv = torch.tensor(np.exp(-np.log(10_000.0) * np.arange(0, dim, 2) / dim),
                     dtype=torch.float64, device=device)[None, :]
  angles = pos * inv
  return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1).float()


class EncoderBlock(nn.Module):

  def __init__(self, d, num_heads, mlp_dim, causal, window):
    super().__init__()
    self.ln_attn = _layer_norm(d)
    self.attn = MultiHeadAttention(d, d, num_heads, causal, window)
    self.ln_mlp = _layer_norm(d)
    self.mlp = MlpBlock(d, mlp_dim)

  def forward(self, x):
    h = self.ln_attn(x)
    x = x + self.attn(h, h)
    return x + self.mlp(self.ln_mlp(x))


class Encoder(nn.Module):

  def __init__(self, d, num_layers, num_heads, mlp_dim, causal=False, window=None,
               positions=True):
    super().__init__()
    self.d, self.positions = d, positions
    for i in range(num_layers):
      self.add_module(f"block_{i}", EncoderBlock(d, num_heads, mlp_dim, causal, window))
    self.num_layers = num_layers
    self.ln_out = _layer_norm(d)

  def forward(self, x):
    if self.positions:
      x = x + sinusoidal_positions(x.shape[1], self.d, x.device)
    for i in range(self.num_layers):
      x = getattr(self, f"block_{i}")(x)
    return self.ln_out(x)


# ---------------------------------------------------------------------- convolutions


class Conv2dSame(nn.Module):
  """flax nn.Conv (NHWC, 'SAME' or 'VALID') over the last three dims of (N, H, W, C).

  `first_pads` = (lo, hi) replaces 'SAME' on the first spatial axis (the audio CNN's
  causal time padding (2, 0)).
  """

  def __init__(self, c_in, c_out, kernel, strides=(1, 1), bias=True, padding="SAME",
               first_pads=None):
    super().__init__()
    self.kernel, self.strides, self.padding = tuple(kernel), tuple(strides), padding
    self.first_pads = first_pads
    self.weight = nn.Parameter(torch.zeros(c_out, c_in, *self.kernel))
    self.bias = nn.Parameter(torch.zeros(c_out)) if bias else None

  def forward(self, x):
    x = x.permute(0, 3, 1, 2)
    if self.padding == "SAME":
      # Static spatial sizes take XLA's formula; a stride-1 (possibly dynamic) axis
      # pads kernel - 1 whatever its size.
      ph = self.first_pads or _same_pads(x.shape[2], self.kernel[0], self.strides[0])
      pw = _same_pads(x.shape[3], self.kernel[1], self.strides[1])
      x = F.pad(x, (pw[0], pw[1], ph[0], ph[1]))
    x = F.conv2d(x, self.weight, self.bias, stride=self.strides)
    return x.permute(0, 2, 3, 1)


class DepthwiseConv(nn.Module):
  """`layers.DepthwiseConv`: per-channel filter, no bias, on (N, H, W, C)."""

  def __init__(self, channels, kernel, strides=(1, 1), padding="SAME"):
    super().__init__()
    self.kernel, self.strides, self.padding = tuple(kernel), tuple(strides), padding
    self.weight = nn.Parameter(torch.zeros(channels, 1, *self.kernel))

  def forward(self, x):
    x = x.permute(0, 3, 1, 2)
    if self.padding == "SAME":
      ph = _same_pads(x.shape[2], self.kernel[0], self.strides[0])
      pw = _same_pads(x.shape[3], self.kernel[1], self.strides[1])
      x = F.pad(x, (pw[0], pw[1], ph[0], ph[1]))
    x = F.conv2d(x, self.weight, stride=self.strides, groups=x.shape[1])
    return x.permute(0, 2, 3, 1)


class FramesConv3D(nn.Module):
  """`visual.FramesAsChannelsConv3D`: 'SAME' 3-D conv of (N, F, H, W, 1) video
  (`causal`: kt - 1 past frames of time padding instead)."""

  def __init__(self, features, kernel, strides, causal=False):
    super().__init__()
    self.kernel, self.strides, self.causal = tuple(kernel), tuple(strides), causal
    self.weight = nn.Parameter(torch.zeros(features, 1, *self.kernel))

  def forward(self, x):
    kt, kh, kw = self.kernel
    x = x[:, None, ..., 0]  # (N, 1, F, H, W)
    pt = (kt - 1, 0) if self.causal else _same_pads(x.shape[2], kt, 1)
    ph = _same_pads(x.shape[3], kh, self.strides[1])
    pw = _same_pads(x.shape[4], kw, self.strides[2])
    x = F.pad(x, (pw[0], pw[1], ph[0], ph[1], pt[0], pt[1]))
    x = F.conv3d(x, self.weight, stride=(1,) + self.strides[1:])
    return x.permute(0, 2, 3, 4, 1)


class PReLU(nn.Module):
  """flax nn.PReLU: one slope for every channel."""

  def __init__(self):
    super().__init__()
    self.negative_slope = nn.Parameter(torch.tensor(0.01))

  def forward(self, x):
    return torch.where(x >= 0, x, self.negative_slope * x)


class ConvNormAct(nn.Module):
  """`visual.ConvNormAct`; the conv kind follows the same rules as the Flax module."""

  def __init__(self, c_in, features, kernel, strides=None, groups=1, linear=False,
               padding="SAME", causal=False):
    super().__init__()
    kernel = tuple(kernel)
    strides = tuple(strides) if strides else (1,) * len(kernel)
    if len(kernel) == 3 and c_in == 1:
      self.conv = FramesConv3D(features, kernel, strides, causal)
    elif groups == 1 and all(k == 1 for k in kernel) and all(s == 1 for s in strides):
      self.conv = nn.Linear(c_in, features, bias=False)
    elif groups > 1 and groups == c_in == features:
      self.conv = DepthwiseConv(features, kernel, strides, padding)
    elif groups == 1 and len(kernel) == 2:
      self.conv = Conv2dSame(c_in, features, kernel, strides, bias=False,
                             padding=padding)
    else:
      raise NotImplementedError(
          f"no mirror for a conv with kernel {kernel}, groups {groups}, {c_in} inputs")
    self.ln = _layer_norm(features)
    self.prelu = None if linear else PReLU()

  def forward(self, x):
    x = self.ln(self.conv(x))
    return x if self.prelu is None else self.prelu(x)


class Bottleneck(nn.Module):

  def __init__(self, c_in, expansion, features, stride):
    super().__init__()
    hidden = c_in * expansion
    self.expand = ConvNormAct(c_in, hidden, (1, 1))
    self.depthwise = ConvNormAct(hidden, hidden, (3, 3), strides=(stride, stride),
                                 groups=hidden)
    self.project = ConvNormAct(hidden, features, (1, 1), linear=True)
    self.residual = stride == 1 and c_in == features

  def forward(self, x):
    h = self.project(self.depthwise(self.expand(x)))
    return h + x if self.residual else h


class MobileFaceNet(nn.Module):

  def __init__(self, c_in, size, stem_channels, blocks, out_channels, embed_dim):
    super().__init__()
    self.conv1 = ConvNormAct(c_in, stem_channels, (3, 3), strides=(2, 2))
    size = -(-size // 2)
    self.dwconv1 = ConvNormAct(stem_channels, stem_channels, (3, 3),
                               groups=stem_channels)
    self.stages = []
    c = stem_channels
    for i, (t, ch, n, s) in enumerate(blocks):
      for j in range(n):
        stride = s if j == 0 else 1
        name = f"stage{i}_{j}"
        self.add_module(name, Bottleneck(c, t, ch, stride))
        self.stages.append(name)
        c = ch
        size = -(-size // stride)
    self.conv_out = ConvNormAct(c, out_channels, (1, 1))
    self.gdconv = ConvNormAct(out_channels, out_channels, (size, size),
                              groups=out_channels, padding="VALID", linear=True)
    self.embedding = nn.Linear(out_channels, embed_dim)

  def forward(self, x):
    x = self.dwconv1(self.conv1(x))
    for name in self.stages:
      x = getattr(self, name)(x)
    x = self.gdconv(self.conv_out(x))
    return self.embedding(x.flatten(1))


# --------------------------------------------------------------------------- encoders


class AudioEncoder(nn.Module):

  def __init__(self, cfg, n_fft, causal, window):
    super().__init__()
    self.phase_features, self.causal = cfg.phase_features, causal
    c = 3 if cfg.phase_features else 1
    f = n_fft // 2 + 1
    self.cnn = nn.Module()
    self.num_cnn = len(cfg.cnn_channels)
    for i, ch in enumerate(cfg.cnn_channels):
      self.cnn.add_module(f"conv_{i}", Conv2dSame(c, ch, (3, 3), (1, 2),
                                                  first_pads=(2, 0) if causal else None))
      self.cnn.add_module(f"ln_{i}", _layer_norm(ch))
      c, f = ch, -(-f // 2)
    self.proj = nn.Linear(c * f, cfg.d_model)
    self.transformer = Encoder(cfg.d_model, cfg.num_layers, cfg.num_heads, cfg.mlp_dim,
                               causal, window, cfg.get("positions", True))

  def features(self, re, im):
    """`audio.spectrogram_features`: (B, T, F) -> (B, T, F, C)."""
    feats = [torch.log(torch.sqrt(re * re + im * im) + 1e-5)]
    if self.phase_features:
      c, s = _unit_phase(re, im)
      # Causal: the frame before the first has phase zero (cos 1, sin 0).
      c0 = torch.ones_like(c[:, :1]) if self.causal else c[:, :1]
      s0 = torch.zeros_like(s[:, :1]) if self.causal else s[:, :1]
      c_prev = torch.cat([c0, c[:, :-1]], dim=1)
      s_prev = torch.cat([s0, s[:, :-1]], dim=1)
      # cos and sin of the frame-to-frame phase difference, without atan2.
      feats += [c * c_prev + s * s_prev, s * c_prev - c * s_prev]
    return torch.stack(feats, dim=-1)

  def forward(self, re, im):
    x = self.features(re, im)
    for i in range(self.num_cnn):
      x = _gelu(getattr(self.cnn, f"ln_{i}")(getattr(self.cnn, f"conv_{i}")(x)))
    x = self.proj(x.flatten(2))
    return self.transformer(x)


class VisualEncoder(nn.Module):

  def __init__(self, cfg, roi_size, causal, window):
    super().__init__()
    self.embed_dim, self.d_model = cfg.embed_dim, cfg.d_model
    self.stem3d = ConvNormAct(1, cfg.stem_channels, tuple(cfg.stem_kernel),
                              strides=(1, 2, 2), causal=causal)
    size = -(-roi_size // 2)
    self.trunk = MobileFaceNet(cfg.stem_channels, size, cfg.trunk_stem_channels,
                               tuple(map(tuple, cfg.trunk_blocks)),
                               cfg.trunk_out_channels, cfg.embed_dim)
    self.proj = nn.Linear(cfg.embed_dim, cfg.d_model)
    self.transformer = Encoder(cfg.d_model, cfg.num_layers, cfg.num_heads, cfg.mlp_dim,
                               causal, window, cfg.get("positions", True))

  def forward(self, video):
    """(B, S, F, H, W) uint8 or float in [0, 255] -> (B, S, F, d_model)."""
    b, s, f, h, w = video.shape
    x = (video.float() / 255.0 - _PIXEL_MEAN) / _PIXEL_STD
    x = self.stem3d(x.reshape(b * s, f, h, w, 1))
    x = self.trunk(x.flatten(0, 1))
    x = self.proj(x.reshape(b * s, f, self.embed_dim))
    return self.transformer(x).reshape(b, s, f, self.d_model)


# ----------------------------------------------------------------------------- fusion


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


def _time_mask(t, s, causal, window, device):
  if not causal and window is None:
    return None
  q = torch.arange(t, device=device)
  k = q[None, :].expand(s, t).reshape(s * t)
  dt = k[None, :] - q[:, None]
  ok = torch.ones_like(dt, dtype=torch.bool)
  if causal:
    ok = ok & (dt <= 0)
  if window is not None:
    ok = ok & (dt >= -window[0]) & (dt <= window[1])
  return ok


class CrossModalLayer(nn.Module):

  def __init__(self, d, num_heads, mlp_dim, causal, window):
    super().__init__()
    self.causal, self.window = causal, window
    self.ln_audio = _layer_norm(d)
    self.ln_video = _layer_norm(d)
    self.audio_from_video = MultiHeadAttention(d, d, num_heads, causal, window,
                                               time_masked=False)
    self.video_from_audio = MultiHeadAttention(d, d, num_heads, causal, window)
    self.ln_mlp_audio = _layer_norm(d)
    self.mlp_audio = MlpBlock(d, mlp_dim)
    self.ln_mlp_video = _layer_norm(d)
    self.mlp_video = MlpBlock(d, mlp_dim)

  def forward(self, audio, video, speaker_mask):
    b, s, t, d = video.shape
    a_in = self.ln_audio(audio)
    v_in = self.ln_video(video)
    # expand + reshape rather than repeat_interleave, whose export with a dynamic
    # count builds an Expand that onnxruntime rejects.
    visible = speaker_mask[:, :, None].expand(b, s, t).reshape(b, s * t)[:, None, None, :]
    time_mask = _time_mask(t, s, self.causal, self.window, audio.device)
    if time_mask is not None:
      visible = visible & time_mask[None, None]
    audio = audio + self.audio_from_video(a_in, v_in.reshape(b, s * t, d), mask=visible)
    a_kv = a_in[:, None].expand(b, s, t, d).reshape(b * s, t, d)
    video = video + self.video_from_audio(v_in.reshape(b * s, t, d), a_kv).reshape(
        b, s, t, d)
    audio = audio + self.mlp_audio(self.ln_mlp_audio(audio))
    video = video + self.mlp_video(self.ln_mlp_video(video))
    return audio, video


class Fusion(nn.Module):

  def __init__(self, cfg, d, d_video, hop_length, sample_rate, fps, causal, window):
    super().__init__()
    self.aligner = VideoAligner(cfg.alignment, hop_length, sample_rate, fps,
                                cfg.dtw_gamma, cfg.dtw_band, cfg.align_dim, d, d_video)
    self.video_proj = nn.Linear(d_video, d)
    self.audio_embedding = nn.Parameter(torch.zeros(d))
    self.video_embedding = nn.Parameter(torch.zeros(d))
    self.num_layers = cfg.num_layers
    for i in range(cfg.num_layers):
      self.add_module(f"layer_{i}", CrossModalLayer(d, cfg.num_heads, cfg.mlp_dim,
                                                    causal, window))
    self.ln_audio_out = _layer_norm(d)
    self.ln_video_out = _layer_norm(d)

  def forward(self, audio, video, speaker_mask):
    video = self.video_proj(self.aligner(audio, video))
    audio = audio + self.audio_embedding
    video = video + self.video_embedding
    for i in range(self.num_layers):
      audio, video = getattr(self, f"layer_{i}")(audio, video, speaker_mask)
    return self.ln_audio_out(audio), self.ln_video_out(video)


# ---------------------------------------------------------------------------- decoder


class DecoderLayer(nn.Module):

  def __init__(self, d, num_heads, mlp_dim, causal, window):
    super().__init__()
    self.ln_time = _layer_norm(d)
    self.time_attn = MultiHeadAttention(d, d, num_heads, causal, window)
    self.ln_speaker = _layer_norm(d)
    self.speaker_attn = MultiHeadAttention(d, d, num_heads, causal, window,
                                           time_masked=False)
    self.ln_cross = _layer_norm(d)
    self.cross_attn = MultiHeadAttention(d, d, num_heads, causal, window)
    self.ln_mlp = _layer_norm(d)
    self.mlp = MlpBlock(d, mlp_dim)

  def forward(self, x, memory, speaker_mask):
    b, s, t, d = x.shape
    h = self.ln_time(x).reshape(b * s, t, d)
    x = x + self.time_attn(h, h).reshape(b, s, t, d)
    h = self.ln_speaker(x).transpose(1, 2).reshape(b * t, s, d)
    key_mask = speaker_mask[:, None, :].expand(b, t, s).reshape(b * t, s)
    h = self.speaker_attn(h, h, key_mask=key_mask)
    x = x + h.reshape(b, t, s, d).transpose(1, 2)
    h = self.ln_cross(x).reshape(b * s, t, d)
    mem = memory[:, None].expand(b, s, t, d).reshape(b * s, t, d)
    x = x + self.cross_attn(h, mem).reshape(b, s, t, d)
    return x + self.mlp(self.ln_mlp(x))


class SeparationDecoder(nn.Module):

  def __init__(self, cfg, d, scales, causal, window):
    super().__init__()
    self.scales = scales
    self.query_embedding = nn.Parameter(torch.zeros(d))
    self.num_layers = cfg.num_layers
    for i in range(cfg.num_layers):
      self.add_module(f"layer_{i}", DecoderLayer(d, cfg.num_heads, cfg.mlp_dim,
                                                 causal, window))
    self.ln_out = _layer_norm(d)
    for n_fft, _, _ in scales:
      self.add_module(f"mask_{n_fft}", nn.Linear(d, n_fft // 2 + 1))

  def forward(self, video, audio, speaker_mask, num_frames):
    """num_frames: each scale's STFT frame count ->
    list over scales of (B, S, T_k, n_fft // 2 + 1) masks in [0, 1]."""
    x = video + self.query_embedding
    for i in range(self.num_layers):
      x = getattr(self, f"layer_{i}")(x, audio, speaker_mask)
    x = self.ln_out(x)
    main_hop = self.scales[0][2]
    masks = []
    for (n_fft, _, hop), t_k in zip(self.scales, num_frames):
      logits = getattr(self, f"mask_{n_fft}")(x)
      logits = _interpolate_time(logits, t_k, hop / main_hop, 0.0, dim=2)
      masks.append(torch.sigmoid(logits))
    return masks


# ------------------------------------------------------------------------------ model


def griffin_lim(mag, init_re, init_im, stft, istft, length, n_iter, momentum=0.99):
  """`signal.griffin_lim` on (N, frames, bins) magnitudes from the given phase."""
  alpha = momentum / (1.0 + momentum)
  a_re, a_im = init_re, init_im
  p_re = p_im = torch.zeros_like(mag)
  for _ in range(n_iter):
    r_re, r_im = stft(istft(mag * a_re, mag * a_im, length))
    a_re, a_im = r_re - alpha * p_re, r_im - alpha * p_im
    norm = torch.sqrt(a_re * a_re + a_im * a_im) + _TINY
    a_re, a_im = a_re / norm, a_im / norm
    p_re, p_im = r_re, r_im
  return istft(mag * a_re, mag * a_im, length)


class AVSeparatorTorch(nn.Module):
  """Inference mirror of `AVSeparator(config)`; `convert.load_flax_params` fills it."""

  def __init__(self, config):
    super().__init__()
    cfg = config
    if cfg.phase not in PHASES:
      raise ValueError(f"phase must be one of {PHASES}, got {cfg.phase!r}")
    self.phase = cfg.phase
    self.griffin_lim_iters = int(cfg.griffin_lim_iters)
    self.num_speakers = int(cfg.num_speakers)
    self.roi_size = int(cfg.roi_size)
    self.sample_rate, self.video_fps = int(cfg.sample_rate), cfg.video_fps
    self.scales = tuple(tuple(int(v) for v in s) for s in cfg.stft_scales)
    window = None if cfg.attention_window is None else tuple(cfg.attention_window)
    causal = bool(cfg.causal)
    main_n_fft, _, main_hop = self.scales[0]
    frames_per_video = cfg.sample_rate / cfg.video_fps / main_hop
    video_window = None if window is None else tuple(
        math.ceil(w / frames_per_video) for w in window)

    self.causal = causal
    self.stfts = nn.ModuleList([STFT(*s, causal=causal) for s in self.scales])
    self.istfts = nn.ModuleList([ISTFT(*s, causal=causal) for s in self.scales])
    self.audio_encoder = AudioEncoder(cfg.audio, main_n_fft, causal, window)
    self.visual_encoder = VisualEncoder(cfg.visual, cfg.roi_size, causal, video_window)
    self.activity_head = nn.Linear(cfg.visual.d_model, 1)
    self.fusion = Fusion(cfg.fusion, cfg.audio.d_model, cfg.visual.d_model, main_hop,
                         cfg.sample_rate, cfg.video_fps, causal, window)
    self.decoder = SeparationDecoder(cfg.decoder, cfg.audio.d_model, self.scales,
                                     causal, window)
    # The decoder's slot cue: each slot's lip activity on the audio frames, (c, c^2).
    self.activity_cue = (nn.Linear(2, cfg.audio.d_model)
                         if cfg.decoder.get("activity_cue") else None)
    self.video_scale = main_hop * cfg.video_fps / cfg.sample_rate

  def forward(self, mixture, video, speaker_mask):
    """mixture (B, T) f32, video (B, S, F, H, W) uint8, speaker_mask (B, S) bool
    -> waveforms (B, S, T) f32, zeros in masked slots."""
    return self.forward_with_aux(mixture, video, speaker_mask)[0]

  def forward_with_aux(self, mixture, video, speaker_mask):
    """As `forward`, plus {'activity_logits': (B, S, F), 'masks': [per scale]}."""
    mixture = mixture.float()
    speaker_mask = speaker_mask.bool()
    b, num_samples = mixture.shape
    s = video.shape[1]
    specs = [stft(mixture) for stft in self.stfts]
    audio = self.audio_encoder(*specs[0])
    video_tokens = self.visual_encoder(video)
    activity = self.activity_head(video_tokens)[..., 0]
    audio, streams = self.fusion(audio, video_tokens, speaker_mask)
    if self.activity_cue is not None:
      streams = streams + self._activity_cue(torch.sigmoid(activity), streams.shape[2])
    masks = self.decoder(streams, audio, speaker_mask, [re.shape[1] for re, _ in specs])

    keep = speaker_mask[:, :, None].float()
    waves = []
    for (re, im), mask, istft, stft in zip(specs, masks, self.istfts, self.stfts):
      re, im = re[:, None] * mask, im[:, None] * mask   # (B, S, T_k, bins)
      flat = lambda z: z.flatten(0, 1)
      if self.phase == "mixture":
        y = istft(flat(re), flat(im), num_samples)
      else:
        mag = torch.sqrt(re * re + im * im)  # = mask * |X|, mask >= 0
        c, sn = _unit_phase(*specs[len(waves)])
        c, sn = c[:, None].expand_as(mag), sn[:, None].expand_as(mag)
        y = griffin_lim(flat(mag), flat(c), flat(sn), stft, istft, num_samples,
                        self.griffin_lim_iters)
      waves.append(y.reshape(b, s, -1) * keep)
    return torch.stack(waves, dim=1).mean(dim=1), {"activity_logits": activity,
                                                   "masks": masks}

  def _activity_cue(self, cue, num_frames):
    """(B, S, F) activity in [0, 1] on video frames -> (B, S, T, d) query offsets."""
    if self.causal:
      c = torch.index_select(
          cue, 2, held_video_frames(num_frames, cue.shape[2], self.video_scale, cue.device))
    else:
      c = _interpolate_time(cue, num_frames, self.video_scale, -0.5, dim=2)
    c = c[..., None]
    return self.activity_cue(torch.cat([c, c * c], dim=-1))
