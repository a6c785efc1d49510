"""Band-split separator: (frame, band) tokens, blocks that alternate attention over
bands, over time and across speaker slots, and a complex ratio mask per slot.

    mixture STFT -> compressed real/imag per bin -> BandSplit (+ time positions)
      -> shared blocks, once per mixture (no slots yet: what every slot reads)
      -> one copy per slot -> slot blocks (each adds its slot's stream to every band)
      -> BandMask -> complex mask (B, S, T, F)

A complex mask can reach the source (phase included), where a magnitude mask on the
mixture's phase is capped near 12-13 dB SI-SNRi even when perfect (BENCHMARKS.md,
"Oracle masks"). Attention over bands models structure along frequency, which the
frame-token decoder folded away; attention over time goes through the one attention
module, so windows, causal masks and the Pallas kernel apply per band; attention across
slots at each (frame, band) is where speakers compete for the mixture's energy.
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from avsep_jax.model import attention
from avsep_jax.model import bands
from avsep_jax.model import layers
from avsep_jax.model import transformer


class TFBlock(nn.Module):
  """Pre-LN residual block on (B, S, T, K, d) tokens.

  Order: + condition (per slot and frame, broadcast over bands); attention over bands
  (per frame); over time (per band); across slots (per frame and band, absent slots
  masked; only when `slots`); MLP. No slot positions: the block is equivariant to the
  order of the slots, which their conditions alone tell apart.

  Attributes:
    num_heads, mlp_dim: attention heads and MLP width.
    opts: shared layer options; `opts.window` and `opts.causal` act on time.
    slots: add the attention across slots (False for the shared, slot-free blocks).
  """

  num_heads: int
  mlp_dim: int
  opts: layers.LayerOptions = layers.LayerOptions()
  slots: bool = True

  @nn.compact
  def __call__(self, x, condition=None, speaker_mask=None):
    """x (B, S, T, K, d), condition (B, S, T, dc) or None, speaker_mask (B, S) -> x."""
    b, s, t, k, d = x.shape
    opts, kw = self.opts, self.opts.kw
    if condition is not None:
      x = x + layers.dense(d, (None, layers.EMBED), name="condition", **kw)(
          condition)[:, :, :, None].astype(x.dtype)

    h = layers.layer_norm(name="ln_band", **kw)(x).reshape(b * s * t, k, d)
    x = x + attention.MultiHeadAttention(self.num_heads, opts, time_masked=False,
                                         name="band_attn")(h, h).reshape(x.shape)

    h = layers.layer_norm(name="ln_time", **kw)(x)
    h = h.transpose(0, 1, 3, 2, 4).reshape(b * s * k, t, d)
    h = attention.MultiHeadAttention(self.num_heads, opts, name="time_attn")(h, h)
    x = x + h.reshape(b, s, k, t, d).transpose(0, 1, 3, 2, 4)

    if self.slots:
      h = layers.layer_norm(name="ln_slot", **kw)(x)
      h = h.transpose(0, 2, 3, 1, 4).reshape(b * t * k, s, d)
      key_mask = jnp.repeat(speaker_mask, t * k, axis=0)  # rows ordered (b, t, k)
      h = attention.MultiHeadAttention(self.num_heads, opts, time_masked=False,
                                       name="slot_attn")(h, h, key_mask=key_mask)
      x = x + h.reshape(b, t, k, s, d).transpose(0, 3, 1, 2, 4)

    h = layers.layer_norm(name="ln_mlp", **kw)(x)
    return x + layers.MlpBlock(self.mlp_dim, opts, name="mlp")(h)


class BandSeparator(nn.Module):
  """Mixture spectrum + one stream per slot -> one complex ratio mask per slot.

  Attributes:
    config: `config.model.decoder` with kind 'bands': d_model, num_heads, mlp_dim,
      shared_layers, num_layers, bands (layout, see `bands.band_edges`), compress
      (feature power law), mask_hidden, positions.
    opts: shared layer options; `opts.window` is in audio frames.
  """

  config: Any
  opts: layers.LayerOptions = layers.LayerOptions()

  @nn.compact
  def __call__(self, spec, streams, speaker_mask):
    """Predict the masks.

    Args:
      spec: (B, T, F) complex main-scale mixture STFT.
      streams: (B, S, T, dc) each slot's condition on the STFT frames (its fused
        visual stream, or a learned slot embedding in the audio-only baseline).
      speaker_mask: (B, S) bool.

    Returns:
      (B, S, T, F) complex64 masks: the estimate of slot s is masks[:, s] * spec.
    """
    cfg, opts, kw = self.config, self.opts, self.opts.kw
    b, t, f = spec.shape
    s = streams.shape[1]
    if not opts.causal:
      # Level-free features; a stream cannot know the whole utterance's level, and the
      # power law below already shrinks level changes by 1 - compress.
      rms = jnp.sqrt(jnp.mean(jnp.abs(spec) ** 2, axis=(1, 2), keepdims=True))
      spec = spec / (rms + 1e-8)
    edges = bands.band_edges(f, tuple(tuple(band) for band in cfg.bands))
    x = bands.BandSplit(edges, cfg.d_model, name="band_split", **kw)(
        bands.compressed_features(spec, cfg.compress))              # (B, T, K, d)
    if cfg.get("positions", True):
      x = x + transformer.sinusoidal_positions(t, cfg.d_model)[:, None].astype(x.dtype)
    x = x[:, None].astype(opts.dtype)
    block_cls = transformer.maybe_remat(TFBlock, opts.remat)
    for i in range(cfg.shared_layers):
      x = block_cls(cfg.num_heads, cfg.mlp_dim, opts, slots=False,
                    name=f"shared_{i}")(x)
    x = jnp.broadcast_to(x, (b, s) + x.shape[2:])
    streams = streams.astype(opts.dtype)
    for i in range(cfg.num_layers):
      x = block_cls(cfg.num_heads, cfg.mlp_dim, opts, name=f"layer_{i}")(
          x, streams, speaker_mask)
    return bands.BandMask(edges, cfg.mask_hidden, name="mask", **kw)(x)
