"""PyTorch mirrors of the building blocks the encoders, fusion and decoder share.

Attention, MLP and the transformer encoder as `avsep_jax.model.attention`, `layers`
and `transformer` (tokens (B, T, d)); the convolutions and the MobileFaceNet trunk as
`avsep_jax.model.layers` and `visual`, channel-last as in Flax ((N, H, W, C)),
permuted around torch's NCHW kernels.
"""

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

_LN_EPS = 1e-5
# jax.nn.dot_product_attention's fill for masked logits.
_MASK_FILL = -0.7 * float(np.finfo(np.float32).max)


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
  """`depthwise.DepthwiseConv`: per-channel filter, no bias, on (N, H, W, C)."""

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
