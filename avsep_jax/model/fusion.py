"""Audio-visual fusion: modality embeddings, video->audio time alignment, and layers of
bidirectional cross-attention (audio <- every speaker's video; each video <- audio)."""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from avsep_jax.model import alignment
from avsep_jax.model import attention
from avsep_jax.model import layers
from avsep_jax.model import transformer

Dtype = Any
ALIGNMENTS = ("interpolate", "hold", "soft_dtw")


class VideoAligner(nn.Module):
  """Resamples each speaker's video tokens onto the audio frames.

  'interpolate' uses fixed linear weights between frame centres; 'hold' gives each
  audio frame the newest video frame that had arrived one hop before it completes
  (streaming: nothing from the future; needs a causal STFT's frame times). 'soft_dtw' builds a
  cost 1 - cos(P_a a_t, P_v v_f) from learned projections, runs banded soft-DTW per
  speaker, and uses the expected alignment (rows normalised): it absorbs audio-video
  offsets of a few frames that interpolation would bake in.

  Attributes:
    method: 'interpolate' | 'hold' | 'soft_dtw'.
    hop_length, sample_rate, fps: time bases of the two streams.
    gamma, band: soft-DTW temperature and band half-width in video frames.
    align_dim: width of the projections the cost is built from.
  """

  method: str
  hop_length: int
  sample_rate: int
  fps: float
  gamma: float = 0.1
  band: int | None = 3
  align_dim: int = 64
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, audio, video):
    """Align video to audio frames.

    Args:
      audio: (B, T, Da) audio tokens.
      video: (B, S, F, Dv) per-speaker video tokens.

    Returns:
      aligned (B, S, T, Dv) and the alignment matrix (B, S, T, F) float32.
    """
    if self.method not in ALIGNMENTS:
      raise ValueError(f"alignment must be one of {ALIGNMENTS}, got {self.method!r}")
    b, s, f, _ = video.shape
    t = audio.shape[1]
    if self.method in ("interpolate", "hold"):
      weights = jnp.asarray(alignment.video_to_audio_matrix(
          t, f, hop_length=self.hop_length, sample_rate=self.sample_rate, fps=self.fps,
          causal=self.method == "hold"))
      weights = jnp.broadcast_to(weights, (b, s, t, f))
    else:
      kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
      pa = layers.dense(self.align_dim, (layers.EMBED, None), name="audio_proj", **kw)
      pv = layers.dense(self.align_dim, (layers.EMBED, None), name="video_proj", **kw)
      a = _unit(pa(audio).astype(jnp.float32))           # (B, T, A)
      v = _unit(pv(video).astype(jnp.float32))           # (B, S, F, A)
      cost = 1.0 - jnp.einsum("bta,bsfa->bstf", a, v)
      _, expected = alignment.soft_dtw_alignment(cost, self.gamma, self.band)
      weights = alignment.normalize_rows(expected)
    aligned = jnp.einsum("bstf,bsfd->bstd", weights.astype(video.dtype), video)
    return aligned, weights


def _unit(x, eps=1e-6):
  return x / (jnp.linalg.norm(x, axis=-1, keepdims=True) + eps)


class CrossModalLayer(nn.Module):
  """One bidirectional cross-attention layer.

  audio <- all speakers' video (keys of absent speakers masked), then each speaker's
  video <- audio; both from the layer's inputs, then an MLP on each stream.
  """

  num_heads: int
  mlp_dim: int
  opts: layers.LayerOptions = layers.LayerOptions()

  @nn.compact
  def __call__(self, audio, video, speaker_mask):
    """audio (B, T, d), video (B, S, T, d), speaker_mask (B, S) -> same shapes."""
    b, s, t, d = video.shape
    opts, kw = self.opts, self.opts.kw
    a_in = layers.layer_norm(name="ln_audio", **kw)(audio)
    v_in = layers.layer_norm(name="ln_video", **kw)(video)

    # Keys are (speaker, time) pairs; causal/window act on the time of each key.
    key_time = jnp.tile(jnp.arange(t), s)
    visible = jnp.repeat(speaker_mask, t, axis=1)[:, None, None, :]  # (B,1,1,S*T)
    time_mask = attention.time_mask(jnp.arange(t), key_time, opts.causal, opts.window)
    if time_mask is not None:
      visible = visible & time_mask[None, None]
    audio = audio + attention.MultiHeadAttention(
        self.num_heads, opts, time_masked=False, name="audio_from_video")(
            a_in, v_in.reshape(b, s * t, d), mask=visible)

    # Every slot's queries in one row against the audio: its keys and values are
    # projected once, not once per slot.
    video = video + attention.MultiHeadAttention(
        self.num_heads, opts, time_masked=False, name="video_from_audio")(
            v_in.reshape(b, s * t, d), a_in,
            mask=attention.slot_queries_mask(s, t, opts.causal, opts.window)).reshape(
                b, s, t, d)

    audio = audio + layers.MlpBlock(self.mlp_dim, opts, name="mlp_audio")(
        layers.layer_norm(name="ln_mlp_audio", **kw)(audio))
    video = video + layers.MlpBlock(self.mlp_dim, opts, name="mlp_video")(
        layers.layer_norm(name="ln_mlp_video", **kw)(video))
    return audio, video


class Fusion(nn.Module):
  """Modality embeddings + alignment + `num_layers` CrossModalLayers.

  Attributes:
    config: `config.model.fusion` (alignment, dtw_gamma, dtw_band, align_dim,
      num_layers, num_heads, mlp_dim).
    hop_length, sample_rate, fps: time bases for the alignment.
    opts: shared layer options; `opts.window` is in audio frames.
  """

  config: Any
  hop_length: int
  sample_rate: int
  fps: float
  opts: layers.LayerOptions = layers.LayerOptions()

  @nn.compact
  def __call__(self, audio, video, speaker_mask):
    """Fuse the two streams.

    Args:
      audio: (B, T, d) audio tokens.
      video: (B, S, F, Dv) video tokens.
      speaker_mask: (B, S) bool.

    Returns:
      audio (B, T, d), video (B, S, T, d) on the audio frame axis, alignment (B, S, T, F).
    """
    cfg, opts, kw = self.config, self.opts, self.opts.kw
    d = audio.shape[-1]
    aligned, weights = VideoAligner(
        cfg.alignment, self.hop_length, self.sample_rate, self.fps, cfg.dtw_gamma,
        cfg.dtw_band, cfg.align_dim, name="aligner", **kw)(audio, video)
    video = layers.dense(d, (None, layers.EMBED), name="video_proj", **kw)(aligned)
    embed_init = nn.with_logical_partitioning(nn.initializers.normal(0.02), (layers.EMBED,))
    audio = audio + self.param("audio_embedding", embed_init, (d,), opts.param_dtype)
    video = video + self.param("video_embedding", embed_init, (d,), opts.param_dtype)
    audio, video = audio.astype(opts.dtype), video.astype(opts.dtype)
    layer_cls = transformer.maybe_remat(CrossModalLayer, opts.remat)
    for i in range(cfg.num_layers):
      audio, video = layer_cls(cfg.num_heads, cfg.mlp_dim, opts, name=f"layer_{i}")(
          audio, video, speaker_mask)
    audio = layers.layer_norm(name="ln_audio_out", **kw)(audio)
    video = layers.layer_norm(name="ln_video_out", **kw)(video)
    return audio, video, weights
