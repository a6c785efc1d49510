"""Small Linen building blocks shared by every encoder: dense, norm, MLP, depthwise conv.

Every parameter carries logical axis names (see `configs/*.py: logical_axis_rules`), so
the same module shards over a ('data', 'fsdp', 'tensor') mesh without code changes.
"""

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any

# Logical axis names used on parameters and activations.
EMBED = "embed"
MLP = "mlp"
HEADS = "heads"
KV = "kv"
BATCH = "batch"
LENGTH = "length"
CONV_IN = "conv_in"
CONV_OUT = "conv_out"
NORM = "norm"


@dataclasses.dataclass(frozen=True)
class LayerOptions:
  """Settings every block shares, passed down as one hashable attribute.

  Attributes:
    attention_impl: 'xla' | 'cudnn' | 'pallas'.
    causal: time attention sees only the past and present.
    window: optional (left, right) time-attention window in this stream's frames.
    dropout_rate: dropout on attention and MLP outputs.
    deterministic: disables dropout (inference).
    remat: 'none' | 'full' | 'dots' (see `transformer.REMAT_POLICIES`).
    dtype: compute dtype; param_dtype: parameter dtype.
  """

  attention_impl: str = "xla"
  causal: bool = False
  window: tuple[int, int] | None = None
  dropout_rate: float = 0.0
  deterministic: bool = True
  remat: str = "none"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @property
  def kw(self):
    """dtype/param_dtype keyword arguments for leaf Flax layers."""
    return dict(dtype=self.dtype, param_dtype=self.param_dtype)


def dense(features, axes, *, dtype, param_dtype, use_bias=True, name=None):
  """`nn.Dense` whose kernel is annotated with logical `axes` (in, out)."""
  return nn.Dense(
      features,
      use_bias=use_bias,
      dtype=dtype,
      param_dtype=param_dtype,
      kernel_init=nn.with_logical_partitioning(nn.initializers.xavier_uniform(), axes),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), (axes[-1],)),
      name=name,
  )


def layer_norm(*, dtype, param_dtype, name=None):
  """Pre-LN LayerNorm over the last axis; statistics per token, never across the batch.

  Per-token statistics matter here: a batch statistic (BatchNorm) would let a padded
  speaker slot change the other speakers' outputs.
  """
  return nn.LayerNorm(
      epsilon=1e-5,
      dtype=dtype,
      param_dtype=param_dtype,
      scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), (NORM,)),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), (NORM,)),
      name=name,
  )


class MlpBlock(nn.Module):
  """Position-wise feed-forward block: Dense(mlp_dim) -> GELU -> Dense(d).

  Attributes:
    mlp_dim: hidden width.
    opts: shared layer options (dropout after the hidden activation).
  """

  mlp_dim: int
  opts: LayerOptions = LayerOptions()

  @nn.compact
  def __call__(self, x):
    """(..., d) -> (..., d)."""
    d = x.shape[-1]
    h = dense(self.mlp_dim, (EMBED, MLP), name="wi", **self.opts.kw)(x)
    h = nn.gelu(h)
    h = nn.Dropout(self.opts.dropout_rate)(h, deterministic=self.opts.deterministic)
    return dense(d, (MLP, EMBED), name="wo", **self.opts.kw)(h)


class DepthwiseConv(nn.Module):
  """2-D depthwise convolution (one filter per channel, no bias) as shifted products.

  Same parameter as `nn.Conv(C, kernel, feature_group_count=C)` (kernel (kh, kw, 1, C)),
  but XLA's CPU backend runs grouped convolutions 15-40x slower than this elementwise
  form in the forward pass, which it fuses into one loop (and which is as fast on GPU);
  with the backward pass, 1.2x slower at stride 1 and 7x at stride 2
  (experiments/benchmarks/conv_forms.py).

  Attributes:
    kernel_size: (kh, kw).
    strides: (sh, sw).
    padding: 'SAME' | 'VALID' | ((top, bottom), (left, right)); 'SAME' pads as
      `nn.Conv` does (the extra pixel at the bottom/right).
  """

  kernel_size: tuple[int, int]
  strides: tuple[int, int] = (1, 1)
  padding: Any = "SAME"
  kernel_init: Any = nn.initializers.lecun_normal()
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    """(N, H, W, C) -> (N, H', W', C)."""
    (kh, kw), (sh, sw), c = self.kernel_size, self.strides, x.shape[-1]
    kernel = self.param("kernel", self.kernel_init, (kh, kw, 1, c), self.param_dtype)
    kernel, x = kernel.astype(self.dtype), x.astype(self.dtype)
    padding = self.padding
    if isinstance(padding, str):
      padding = jax.lax.padtype_to_pads(x.shape[1:3], (kh, kw), (sh, sw), padding)
    x = jnp.pad(x, ((0, 0), *padding, (0, 0)))
    h, w = x.shape[1:3]
    if (h, w) == (kh, kw):  # a global filter: one output pixel
      return jnp.einsum("nhwc,hwc->nc", x, kernel[:, :, 0])[:, None, None]
    ho, wo = (h - kh) // sh + 1, (w - kw) // sw + 1
    out = None
    for i in range(kh):
      for j in range(kw):
        tap = x[:, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw] * kernel[i, j, 0]
        out = tap if out is None else out + tap
    return out
