"""Audio encoder: mixture spectrogram -> 2D CNN over (time, freq) -> transformer."""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from avsep_jax.model import layers
from avsep_jax.model import transformer

Dtype = Any


def spectrogram_features(spec, phase_features: bool = True, causal: bool = False):
  """Log-magnitude (+ phase) input features of a complex spectrogram.

  The phase enters as the cosine and sine of its frame-to-frame difference
  (instantaneous frequency): raw phase wraps and looks like noise, its time derivative
  carries the harmonic structure.

  Args:
    spec: (B, T, F) complex STFT.
    phase_features: add the two phase channels.
    causal: the first frame's phase difference is taken from a zero phase (the
      all-zero frame before a causal STFT) instead of from itself, so a stream
      needs no first-frame special case.

  Returns:
    (B, T, F, C) float32 with C = 3 (or 1 without phase features).
  """
  feats = [jnp.log(jnp.abs(spec) + 1e-5)]
  if phase_features:
    phase = jnp.angle(spec)
    before = jnp.zeros_like(phase[:, :1]) if causal else phase[:, :1]
    dphase = jnp.diff(phase, axis=1, prepend=before)
    feats += [jnp.cos(dphase), jnp.sin(dphase)]
  return jnp.stack(feats, axis=-1).astype(jnp.float32)


class ConvFrontend2D(nn.Module):
  """Conv(3x3, stride (1, 2)) + LayerNorm + GELU blocks: halves frequency, keeps time.

  Attributes:
    channels: output channels per block, e.g. (32, 32, 64, 64) takes 257 bins to 17.
    causal: pad time with two past frames instead of one on each side (same kernel),
      so no output frame reads a later input frame.
  """

  channels: tuple[int, ...]
  causal: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    """(B, T, F, C) -> (B, T, F', channels[-1])."""
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    for i, c in enumerate(self.channels):
      # SAME in frequency; in time as documented.
      freq_pad, = jax.lax.padtype_to_pads((x.shape[2],), (3,), (2,), "SAME")
      x = nn.Conv(
          c, (3, 3), strides=(1, 2), padding=((2, 0) if self.causal else (1, 1), freq_pad),
          name=f"conv_{i}",
          kernel_init=nn.with_logical_partitioning(
              nn.initializers.lecun_normal(),
              (None, None, layers.CONV_IN, layers.CONV_OUT)), **kw)(x)
      x = layers.layer_norm(name=f"ln_{i}", **kw)(x)
      x = nn.gelu(x)
    return x


class AudioEncoder(nn.Module):
  """Spectrogram features -> 2D CNN -> Dense(d_model) -> positions + transformer.

  Attributes:
    config: `config.model.audio` (cnn_channels, d_model, num_layers, num_heads,
      mlp_dim, phase_features).
    opts: shared layer options; `opts.window` is in audio frames.
  """

  config: Any
  opts: layers.LayerOptions = layers.LayerOptions()

  @nn.compact
  def __call__(self, spec):
    """(B, T, F) complex mixture STFT -> (B, T, d_model) audio tokens."""
    cfg, kw = self.config, self.opts.kw
    causal = self.opts.causal
    x = spectrogram_features(spec, cfg.phase_features, causal).astype(self.opts.dtype)
    x = ConvFrontend2D(tuple(cfg.cnn_channels), causal, name="cnn", **kw)(x)
    b, t, f, c = x.shape
    x = x.reshape(b, t, f * c)
    x = layers.dense(cfg.d_model, (layers.CONV_OUT, layers.EMBED), name="proj", **kw)(x)
    return transformer.Encoder(cfg.num_layers, cfg.num_heads, cfg.mlp_dim, self.opts,
                               cfg.get("positions", True), name="transformer")(x)
