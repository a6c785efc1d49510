"""Small Linen building blocks shared by every encoder: dense, norm, MLP.

Every parameter carries logical axis names (see `configs/*.py: logical_axis_rules`), so
the same module shards over a ('data', 'fsdp', 'tensor') mesh without code changes.
"""

import dataclasses
from typing import Any

import flax.linen as nn
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
