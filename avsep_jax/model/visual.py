"""Visual encoder: mouth ROIs -> 3D conv lip-motion stem -> MobileFaceNet -> transformer.

Every speaker slot is encoded independently (speakers folded into the batch), so one
slot's video never influences another's tokens here.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from avsep_jax import depthwise
from avsep_jax.model import layers
from avsep_jax.model import transformer

Dtype = Any

# Mean and spread of 8-bit grey levels after /255; centres the input near zero.
_PIXEL_MEAN, _PIXEL_STD = 0.45, 0.25


def _conv_init(ndim):
  return nn.with_logical_partitioning(
      nn.initializers.lecun_normal(),
      (None,) * ndim + (layers.CONV_IN, layers.CONV_OUT))


class FramesAsChannelsConv3D(nn.Module):
  """SAME 3-D convolution of a one-channel video as a 2-D conv over stacked frames.

  The kt frames around each frame become kt input channels of one 2-D conv: the same
  result and parameter as `nn.Conv(features, (kt, kh, kw))` with stride 1 in time, but
  XLA's CPU backend runs this 12x (forward + kernel gradient) to 25x (forward) faster
  than its one-channel 3-D conv (experiments/benchmarks/conv_forms.py).
  `causal` pads time with kt - 1 past frames instead (an output frame reads no later
  frame).
  """

  features: int
  kernel: tuple[int, int, int]
  strides: tuple[int, int, int] = (1, 1, 1)
  causal: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    """(N, F, H, W, 1) -> (N, F, H', W', features), H' = ceil(H / stride)."""
    kt, kh, kw = self.kernel
    if self.strides[0] != 1:
      raise ValueError(f"time stride must be 1, got {self.strides}")
    kernel = self.param("kernel", _conv_init(3), (kt, kh, kw, 1, self.features),
                        self.param_dtype).astype(self.dtype)
    n, f = x.shape[:2]
    (before, after), = (((kt - 1, 0),) if self.causal
                        else jax.lax.padtype_to_pads((f,), (kt,), (1,), "SAME"))
    padded = jnp.pad(x[..., 0].astype(self.dtype), ((0, 0), (before, after), (0, 0), (0, 0)))
    stacked = jnp.stack([padded[:, i:i + f] for i in range(kt)], axis=-1)
    stacked = stacked.reshape((n * f,) + stacked.shape[2:])   # (N*F, H, W, kt)
    y = jax.lax.conv_general_dilated(
        stacked, jnp.transpose(kernel[..., 0, :], (1, 2, 0, 3)), self.strides[1:],
        "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y.reshape((n, f) + y.shape[1:])


class PointwiseConv(nn.Module):
  """A 1x1 (x1) convolution as a matmul over channels, with nn.Conv's parameter.

  XLA's CPU backend runs the matmul 2x (forward) to 2.7x (forward + backward) faster
  than the convolution (experiments/benchmarks/conv_forms.py).
  """

  features: int
  ndim: int = 2
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    """(N, ..., C_in) -> (N, ..., features)."""
    kernel = self.param("kernel", _conv_init(self.ndim),
                        (1,) * self.ndim + (x.shape[-1], self.features), self.param_dtype)
    return jnp.einsum("...c,cd->...d", x.astype(self.dtype),
                      kernel.reshape(kernel.shape[-2:]).astype(self.dtype))


class ConvNormAct(nn.Module):
  """Conv -> LayerNorm over channels -> PReLU (or no activation when `linear`).

  LayerNorm per pixel stands in for MobileFaceNet's BatchNorm: batch statistics would
  mix speaker slots (and padded ones) across the batch.
  """

  features: int
  kernel: tuple[int, ...]
  strides: tuple[int, ...] | None = None
  groups: int = 1
  linear: bool = False
  padding: str = "SAME"
  causal: bool = False  # 3-D kernels on video: pad time with past frames only
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    """(N, ..., C_in) -> (N, ..., features)."""
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    if len(self.kernel) == 3 and x.shape[-1] == 1:
      x = FramesAsChannelsConv3D(self.features, self.kernel, self.strides or (1, 1, 1),
                                 self.causal, name="conv", **kw)(x)
    elif (self.groups == 1 and all(k == 1 for k in self.kernel)
          and all(st == 1 for st in self.strides or ())):
      x = PointwiseConv(self.features, len(self.kernel), name="conv", **kw)(x)
    elif self.groups > 1 and self.groups == x.shape[-1] == self.features:
      x = depthwise.DepthwiseConv(self.kernel, self.strides or (1, 1), self.padding,
                               kernel_init=_conv_init(2), name="conv", **kw)(x)
    else:
      x = nn.Conv(self.features, self.kernel, strides=self.strides,
                  padding=self.padding, feature_group_count=self.groups,
                  use_bias=False, kernel_init=_conv_init(len(self.kernel)),
                  name="conv", **kw)(x)
    x = layers.layer_norm(name="ln", **kw)(x)
    if self.linear:
      return x
    return nn.PReLU(param_dtype=self.param_dtype, name="prelu")(x)


class Bottleneck(nn.Module):
  """MobileNetV2 inverted residual: 1x1 expand, 3x3 depthwise, 1x1 linear project."""

  expansion: int
  features: int
  stride: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    """(N, H, W, C) -> (N, H/stride, W/stride, features)."""
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    hidden = x.shape[-1] * self.expansion
    h = ConvNormAct(hidden, (1, 1), name="expand", **kw)(x)
    h = ConvNormAct(hidden, (3, 3), strides=(self.stride,) * 2, groups=hidden,
                    name="depthwise", **kw)(h)
    h = ConvNormAct(self.features, (1, 1), linear=True, name="project", **kw)(h)
    if self.stride == 1 and x.shape[-1] == self.features:
      h = h + x
    return h


class MobileFaceNet(nn.Module):
  """MobileFaceNet trunk (Chen et al. 2018) applied to each frame.

  Attributes:
    stem_channels: the first 3x3/2 conv and the 3x3 depthwise conv after it.
    blocks: ((expansion, channels, repeats, stride), ...) bottleneck stages.
    out_channels: the 1x1 conv before the global depthwise conv.
    embed_dim: size of the per-frame embedding.
  """

  stem_channels: int
  blocks: tuple[tuple[int, int, int, int], ...]
  out_channels: int
  embed_dim: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    """(N, H, W, C) frames -> (N, embed_dim)."""
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = ConvNormAct(self.stem_channels, (3, 3), strides=(2, 2), name="conv1", **kw)(x)
    x = ConvNormAct(self.stem_channels, (3, 3), groups=self.stem_channels,
                    name="dwconv1", **kw)(x)
    for i, (t, c, n, s) in enumerate(self.blocks):
      for j in range(n):
        x = Bottleneck(t, c, s if j == 0 else 1, name=f"stage{i}_{j}", **kw)(x)
    x = ConvNormAct(self.out_channels, (1, 1), name="conv_out", **kw)(x)
    # Global depthwise conv: a learned spatial weighting instead of average pooling,
    # so the mouth's position inside the ROI still matters.
    x = ConvNormAct(self.out_channels, x.shape[1:3], groups=self.out_channels,
                    padding="VALID", linear=True, name="gdconv", **kw)(x)
    x = x.reshape(x.shape[0], -1)
    return layers.dense(self.embed_dim, (layers.CONV_OUT, layers.EMBED),
                        name="embedding", **kw)(x)


class VisualEncoder(nn.Module):
  """Mouth ROI video -> per-speaker visual tokens at the video frame rate.

  Two stages: `frame_features` (3D conv stem, MobileFaceNet per frame, projection),
  where only the stem reads neighbouring frames, then a transformer over each slot's
  frames. A frozen encoder's frame features can be computed once per utterance and
  cached (`avsep_jax.data.visual_cache`); `__call__` then takes them instead of video.

  Attributes:
    config: `config.model.visual` (stem_channels, stem_kernel, trunk_*, d_model,
      num_layers, num_heads, mlp_dim).
    opts: shared layer options; `opts.window` is in video frames.
  """

  config: Any
  opts: layers.LayerOptions = layers.LayerOptions()

  def setup(self):
    cfg, kw = self.config, self.opts.kw
    # The 3D stem sees several frames at once: lip motion, not only lip shape.
    self.stem3d = ConvNormAct(cfg.stem_channels, tuple(cfg.stem_kernel), strides=(1, 2, 2),
                              causal=self.opts.causal, **kw)
    self.trunk = MobileFaceNet(cfg.trunk_stem_channels, tuple(map(tuple, cfg.trunk_blocks)),
                               cfg.trunk_out_channels, cfg.embed_dim, **kw)
    self.proj = layers.dense(cfg.d_model, (None, layers.EMBED), **kw)
    self.transformer = transformer.Encoder(cfg.num_layers, cfg.num_heads, cfg.mlp_dim,
                                           self.opts, cfg.get("positions", True))

  def frame_features(self, video, num_frames=None):
    """(B, S, F, H, W) uint8 (or float in [0, 255]) -> (B, S, F, d_model) in the
    compute dtype: each frame's token before the transformer. Frame t reads frames
    t - kt // 2 .. t + kt // 2 (kt the stem's temporal kernel; t - kt + 1 .. t when
    causal), zero-padded at the clip's ends.

    `num_frames` (an int array, broadcast over (B, S)): frames from there on are
    padding, read as the zeros beyond a clip's end, so that the frames before it get
    what the clip alone would give (a cache encodes clips padded to a few lengths and
    compiles once per length, not once per clip).
    """
    cfg = self.config
    b, s, f, h, w = video.shape
    x = (video.astype(jnp.float32) / 255.0 - _PIXEL_MEAN) / _PIXEL_STD
    if num_frames is not None:
      inside = jnp.arange(f) < jnp.asarray(num_frames)[..., None]
      x = jnp.where(jnp.broadcast_to(inside, (b, s, f))[..., None, None], x, 0.0)
    x = x.reshape(b * s, f, h, w, 1).astype(self.opts.dtype)
    x = self.stem3d(x)
    x = self.trunk(x.reshape((b * s * f,) + x.shape[2:]))
    x = self.proj(x.reshape(b * s, f, cfg.embed_dim))
    return x.reshape(b, s, f, cfg.d_model)

  def __call__(self, video=None, frame_features=None):
    """(B, S, F, H, W) uint8 video, or its (B, S, F, d_model) `frame_features`
    (any float dtype; cast to the compute dtype) -> (B, S, F, d_model) tokens."""
    if (video is None) == (frame_features is None):
      raise ValueError("pass either video or frame_features, not both or neither")
    if frame_features is None:
      frame_features = self.frame_features(video)
    b, s, f, d = frame_features.shape
    x = self.transformer(frame_features.reshape(b * s, f, d).astype(self.opts.dtype))
    return x.reshape(b, s, f, d)
