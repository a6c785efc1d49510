"""Separation decoder: one query stream per speaker slot -> masks at several STFT scales."""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from avsep_jax.model import alignment
from avsep_jax.model import attention
from avsep_jax.model import layers
from avsep_jax.model import transformer


class DecoderLayer(nn.Module):
  """Self-attention over time, attention across speaker slots, cross-attention to audio.

  The across-slot attention runs at each frame over the S slots (absent ones masked):
  it is where speakers compete for the mixture's energy. It carries no slot positions,
  so the layer is equivariant to the order of the speakers.
  """

  num_heads: int
  mlp_dim: int
  opts: layers.LayerOptions = layers.LayerOptions()

  @nn.compact
  def __call__(self, x, memory, speaker_mask):
    """x (B, S, T, d), memory (B, T, d), speaker_mask (B, S) -> (B, S, T, d)."""
    b, s, t, d = x.shape
    opts, kw = self.opts, self.opts.kw

    h = layers.layer_norm(name="ln_time", **kw)(x).reshape(b * s, t, d)
    x = x + attention.MultiHeadAttention(self.num_heads, opts, name="time_attn")(
        h, h).reshape(b, s, t, d)

    h = layers.layer_norm(name="ln_speaker", **kw)(x)
    h = h.transpose(0, 2, 1, 3).reshape(b * t, s, d)
    key_mask = jnp.repeat(speaker_mask, t, axis=0)  # (B*T, S), rows ordered (b, t)
    h = attention.MultiHeadAttention(self.num_heads, opts, time_masked=False,
                                     name="speaker_attn")(h, h, key_mask=key_mask)
    x = x + h.reshape(b, t, s, d).transpose(0, 2, 1, 3)

    # All slots' queries in one row against the memory: its keys and values are
    # projected once, not once per slot (fusion.CrossModalLayer does the same).
    h = layers.layer_norm(name="ln_cross", **kw)(x).reshape(b, s * t, d)
    x = x + attention.MultiHeadAttention(
        self.num_heads, opts, time_masked=False, name="cross_attn")(
            h, memory,
            mask=attention.slot_queries_mask(s, t, opts.causal, opts.window)).reshape(
                b, s, t, d)

    h = layers.layer_norm(name="ln_mlp", **kw)(x)
    return x + layers.MlpBlock(self.mlp_dim, opts, name="mlp")(h)


class SeparationDecoder(nn.Module):
  """Speaker queries -> transformer decoder -> sigmoid masks at every STFT scale.

  Queries: one learned query embedding shared by all slots, plus that slot's aligned
  visual stream. Sharing the embedding (rather than one per slot index) keeps the model
  equivariant to speaker order, which the video alone fixes.

  Attributes:
    config: `config.model.decoder` (num_layers, num_heads, mlp_dim).
    scales: ((n_fft, win_length, hop_length), ...), the main (token) scale first.
    opts: shared layer options; `opts.window` is in audio frames.
  """

  config: Any
  scales: tuple[tuple[int, int, int], ...]
  opts: layers.LayerOptions = layers.LayerOptions()

  @nn.compact
  def __call__(self, video, audio, speaker_mask, num_frames):
    """Predict one mask per speaker and scale.

    Args:
      video: (B, S, T, d) fused visual streams on the audio frame axis.
      audio: (B, T, d) fused audio memory.
      speaker_mask: (B, S) bool.
      num_frames: each scale's STFT frame count, main scale first (T).

    Returns:
      tuple over scales of (B, S, T_k, n_fft_k // 2 + 1) float32 masks in [0, 1].
    """
    cfg, opts, kw = self.config, self.opts, self.opts.kw
    d = video.shape[-1]
    query = self.param("query_embedding", nn.with_logical_partitioning(
        nn.initializers.normal(0.02), (layers.EMBED,)), (d,), opts.param_dtype)
    x = (video + query).astype(opts.dtype)
    layer_cls = transformer.maybe_remat(DecoderLayer, opts.remat)
    for i in range(cfg.num_layers):
      x = layer_cls(cfg.num_heads, cfg.mlp_dim, opts, name=f"layer_{i}")(
          x, audio, speaker_mask)
    x = layers.layer_norm(name="ln_out", **kw)(x)

    main_hop = self.scales[0][2]
    t = x.shape[2]
    masks = []
    for (n_fft, _, hop), t_k in zip(self.scales, num_frames):
      # Masks are predicted on the token (main) frame grid, then moved in time to this
      # scale's frames; the fine scale gets its own bins, the time detail comes from
      # interpolation between tokens.
      logits = layers.dense(n_fft // 2 + 1, (layers.EMBED, None), name=f"mask_{n_fft}",
                            **kw)(x).astype(jnp.float32)
      resample = alignment.interpolation_matrix(
          np.arange(t_k) * hop, np.arange(t) * main_hop)
      logits = jnp.einsum("kt,bstf->bskf", jnp.asarray(resample), logits)
      masks.append(nn.sigmoid(logits))
    return tuple(masks)
