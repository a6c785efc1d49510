"""Pre-LN transformer encoder, sinusoidal positions, and the remat switch."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from avsep_jax.model import attention
from avsep_jax.model import layers

REMAT_POLICIES = {
    "none": None,
    # Recompute everything in the backward pass: least memory.
    "full": jax.checkpoint_policies.nothing_saveable,
    # Keep matmul outputs, recompute the cheap elementwise ops.
    "dots": jax.checkpoint_policies.checkpoint_dots,
}


def maybe_remat(module_cls, policy: str):
  """Wraps a Linen module class in `nn.remat` according to a config string."""
  if policy not in REMAT_POLICIES:
    raise ValueError(f"remat must be one of {sorted(REMAT_POLICIES)}, got {policy!r}")
  if policy == "none":
    return module_cls
  return nn.remat(module_cls, policy=REMAT_POLICIES[policy])


def sinusoidal_positions(length: int, dim: int, max_timescale: float = 10_000.0):
  """(length, dim) float32 sinusoidal position encodings (Vaswani et al. 2017)."""
  if dim % 2:
    raise ValueError(f"positional encoding needs an even dim, got {dim}")
  pos = np.arange(length)[:, None]
  inv = np.exp(-np.log(max_timescale) * np.arange(0, dim, 2) / dim)[None, :]
  angles = pos * inv
  return jnp.asarray(np.concatenate([np.sin(angles), np.cos(angles)], axis=-1),
                     jnp.float32)


class EncoderBlock(nn.Module):
  """x + SelfAttention(LN(x)), then x + MLP(LN(x))."""

  num_heads: int
  mlp_dim: int
  opts: layers.LayerOptions = layers.LayerOptions()

  @nn.compact
  def __call__(self, x, key_mask=None):
    """(B, T, d), optional key_mask (B, T) -> (B, T, d)."""
    kw = self.opts.kw
    x = nn.with_logical_constraint(x, (layers.BATCH, layers.LENGTH, layers.EMBED))
    h = layers.layer_norm(name="ln_attn", **kw)(x)
    x = x + attention.MultiHeadAttention(self.num_heads, self.opts, name="attn")(
        h, h, key_mask=key_mask)
    h = layers.layer_norm(name="ln_mlp", **kw)(x)
    return x + layers.MlpBlock(self.mlp_dim, self.opts, name="mlp")(h)


class Encoder(nn.Module):
  """Sinusoidal positions + `num_layers` pre-LN blocks + final LayerNorm.

  Layers are a Python loop rather than `nn.scan` so compiled cost analysis counts every
  layer's FLOPs (XLA counts a loop body once).

  `positions=False` leaves positions out: a causal stream has no absolute time origin
  worth learning, and its causal attention tells the layers the order anyway.
  """

  num_layers: int
  num_heads: int
  mlp_dim: int
  opts: layers.LayerOptions = layers.LayerOptions()
  positions: bool = True

  @nn.compact
  def __call__(self, x, key_mask=None):
    """(B, T, d) -> (B, T, d)."""
    if self.positions:
      x = x + sinusoidal_positions(x.shape[1], x.shape[2]).astype(x.dtype)
    block_cls = maybe_remat(EncoderBlock, self.opts.remat)
    for i in range(self.num_layers):
      x = block_cls(self.num_heads, self.mlp_dim, self.opts, name=f"block_{i}")(
          x, key_mask)
    return layers.layer_norm(name="ln_out", **self.opts.kw)(x)
