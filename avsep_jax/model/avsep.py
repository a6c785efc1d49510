"""AVSeparator: mixture + one mouth video per speaker -> one waveform per speaker.

    mixture -> STFT -> AudioEncoder ----------------------.
                                                          |- Fusion -> one stream per slot
    mouth ROIs -> VisualEncoder -> (align to audio) ------'
    mixture STFT + streams -> BandSeparator -> complex masks -> iSTFT | Griffin-Lim
                           (or the SeparationDecoder: magnitude masks x STFT scales)
"""

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from avsep_jax import signal
from avsep_jax.model import alignment as alignment_lib
from avsep_jax.model import audio as audio_lib
from avsep_jax.model import decoder as decoder_lib
from avsep_jax.model import fusion as fusion_lib
from avsep_jax.model import layers
from avsep_jax.model import separator as separator_lib
from avsep_jax.model import visual as visual_lib

PHASES = ("complex", "mixture", "griffin_lim")
DECODERS = ("bands", "masks")


def check_causal(config):
  """Raises ValueError unless a `causal` config is causal end to end (what streaming
  needs): one STFT scale, no Griffin-Lim, 'hold' alignment, a left-only window."""
  if not config.causal:
    return
  problems = []
  if len(config.stft_scales) != 1:
    problems.append("one STFT scale (resampling masks between scales looks ahead)")
  if config.phase == "griffin_lim":
    problems.append("phase 'complex' or 'mixture' (Griffin-Lim iterates over the whole "
                    "signal)")
  if config.fusion.alignment != "hold":
    problems.append("fusion.alignment='hold'")
  if config.attention_window is None or tuple(config.attention_window)[1] != 0:
    problems.append("attention_window=(left, 0) (a stream keeps a bounded past)")
  if problems:
    raise ValueError("a causal model needs " + "; ".join(problems))


def check_inputs(config, mixture, video, speaker_mask, sample_rate=None,
                 visual_features=None):
  """Raises ValueError naming the problem when inputs break the model's contract.

  Args:
    config: `config.model`.
    mixture: (B, T) float.
    video: (B, S, F, H, W) mouth ROIs, S <= config.num_speakers; None when
      `visual_features` stand in for it.
    speaker_mask: (B, S) bool.
    sample_rate: the caller's sample rate, if known; must equal config.sample_rate.
    visual_features: None, or (B, S, F, d_model) cached frame features of the video.
  """
  if sample_rate is not None and sample_rate != config.sample_rate:
    raise ValueError(f"audio must be sampled at {config.sample_rate} Hz, got "
                     f"{sample_rate} Hz; resample it first")
  if mixture.ndim != 2:
    raise ValueError(f"mixture must have rank 2 (B, T), got shape {mixture.shape}")
  if (video is None) == (visual_features is None):
    raise ValueError("pass either video or visual_features, not both or neither")
  if visual_features is not None:
    d = config.visual.d_model
    if visual_features.ndim != 4 or visual_features.shape[-1] != d:
      raise ValueError(f"visual_features must be (B, S, F, {d}) frame features, got "
                       f"shape {visual_features.shape}")
  elif video.ndim != 5:
    raise ValueError(f"video must have rank 5 (B, S, F, H, W), got shape {video.shape}")
  if speaker_mask.ndim != 2:
    raise ValueError(f"speaker_mask must have rank 2 (B, S), got shape "
                     f"{speaker_mask.shape}")
  b, t = mixture.shape
  visual = video if visual_features is None else visual_features
  _, s, f = visual.shape[:3]
  if visual.shape[0] != b or speaker_mask.shape != (b, s):
    raise ValueError(f"batch/speaker dims disagree: mixture {mixture.shape}, video "
                     f"{visual.shape}, speaker_mask {speaker_mask.shape}")
  if not 1 <= s <= config.num_speakers:
    raise ValueError(f"video has {s} speaker slots; this model has 1..."
                     f"{config.num_speakers}")
  if video is not None and video.shape[3:] != (config.roi_size, config.roi_size):
    h, w = video.shape[3:]
    raise ValueError(f"mouth ROIs must be {config.roi_size}x{config.roi_size}, got "
                     f"{h}x{w}")
  min_len = max(n_fft for n_fft, _, _ in config.stft_scales)
  if t < min_len:
    raise ValueError(f"mixture has {t} samples; at least {min_len} are needed")
  expected = t * config.video_fps / config.sample_rate
  if abs(f - expected) > 1:
    raise ValueError(
        f"video has {f} frames but {t} samples at {config.sample_rate} Hz need "
        f"{expected:.1f} frames at {config.video_fps} fps (+/- 1)")


def layer_options(cfg, train: bool = False) -> layers.LayerOptions:
  """The options every layer of the model `cfg` runs with; `window` in audio frames."""
  window = None if cfg.attention_window is None else tuple(cfg.attention_window)
  return layers.LayerOptions(
      attention_impl=cfg.attention_impl, causal=cfg.causal, window=window,
      dropout_rate=cfg.dropout_rate, deterministic=not train, remat=cfg.remat,
      dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype))


def video_options(cfg, opts: layers.LayerOptions) -> layers.LayerOptions:
  """`opts` for the visual encoder, which runs at the video frame rate: the attention
  window in video frames, rounded up."""
  if opts.window is None:
    return opts
  audio_frames_per_video_frame = cfg.sample_rate / cfg.video_fps / cfg.stft_scales[0][2]
  return dataclasses.replace(opts, window=tuple(
      math.ceil(w / audio_frames_per_video_frame) for w in opts.window))


class AVSeparator(nn.Module):
  """The audio-visual separation model (ADR-0001).

  Attributes:
    config: `config.model` (see `avsep_jax.model.variants`).
  """

  config: Any

  @nn.compact
  def __call__(self, mixture, video, speaker_mask, train=False, sample_rate=None,
               activity_cue=None, oracle_share=None, visual_features=None):
    """Separate one voice per speaker slot.

    Args:
      mixture: (B, T) float32 waveform at `config.sample_rate`.
      video: (B, S, F, H, W) uint8 mouth ROIs at `config.video_fps`, S <= num_speakers;
        None when `visual_features` are given.
      speaker_mask: (B, S) bool, False for padded (absent) slots.
      train: enables dropout (needs a 'dropout' rng).
      sample_rate: optional; checked against `config.sample_rate`.
      activity_cue: optional (B, S, F) per-frame activity in [0, 1] used as the
        decoder's slot cue when `config.decoder.activity_cue` (default: the lips'
        estimate, sigmoid of `activity_logits`).
      oracle_share: optional (B,) weight in [0, 1] of `activity_cue` against the
        lips' estimate, per example (a training curriculum); None uses
        `activity_cue` alone when given.
      visual_features: optional (B, S, F, d_visual) frame features of the video
        (`VisualEncoder.frame_features`, e.g. from a cache of a frozen encoder) in
        place of `video`: the visual CNN then does not run.

    Returns:
      waveforms (B, S, T) float32 (zeros in padded slots) and an aux dict:
        masks: {str(n_fft): (B, S, T_k, n_fft // 2 + 1)} per STFT scale, complex64
          from the 'bands' decoder (one scale), float32 in [0, 1] from 'masks';
        scale_waveforms: (B, K, S, T), one reconstruction per scale (their mean is
          the output);
        alignment: (B, S, T_audio, F) video-to-audio alignment weights;
        audio_tokens: (B, T_audio, d), speaker_tokens: (B, S, T_audio, d) (fused);
        activity_logits: (B, S, F) per-video-frame speech activity of each slot;
        alignment and activity_logits only when the model reads the video
        (`config.use_video`; False is the audio-only baseline, which ignores `video`).
    """
    cfg = self.config
    check_inputs(cfg, mixture, video, speaker_mask, sample_rate, visual_features)
    if cfg.phase not in PHASES:
      raise ValueError(f"phase must be one of {PHASES}, got {cfg.phase!r}")
    kind = cfg.decoder.get("kind", "masks")
    if kind not in DECODERS:
      raise ValueError(f"decoder.kind must be one of {DECODERS}, got {kind!r}")
    if kind == "bands" and len(cfg.stft_scales) != 1:
      raise ValueError("decoder.kind='bands' predicts at the main STFT scale only: set "
                       "stft_scales to one scale (the loss has its own scales)")
    check_causal(cfg)
    opts = layer_options(cfg, train)
    scales = tuple(tuple(s) for s in cfg.stft_scales)
    _, _, main_hop = scales[0]
    num_samples = mixture.shape[1]
    speaker_mask = speaker_mask.astype(bool)

    # Signal processing stays in float32 whatever the compute dtype: bf16's 8-bit
    # mantissa would cost tens of dB of reconstruction accuracy.
    mixture = mixture.astype(jnp.float32)
    specs = [signal.stft(mixture, *scale, causal=cfg.causal) for scale in scales]

    audio = audio_lib.AudioEncoder(cfg.audio, opts, name="audio_encoder")(specs[0])
    aux = {}
    if cfg.get("use_video", True):
      audio, streams, aux = self._fuse_video(audio, video, visual_features, speaker_mask,
                                             opts, main_hop, activity_cue, oracle_share)
    else:
      # Audio-only baseline: the slots differ only by a learned embedding each, so which
      # voice lands in which slot is arbitrary and training needs PIT (`pit_weight`).
      if cfg.decoder.get("activity_cue"):
        raise ValueError("use_video=False needs decoder.activity_cue=False: there are no "
                         "lips to read a slot's activity from")
      slots = self.param("slot_embedding", nn.with_logical_partitioning(
          nn.initializers.normal(1.0), (None, layers.EMBED)),
          (cfg.num_speakers, audio.shape[-1]), opts.param_dtype)
      b, t, d = audio.shape
      s = speaker_mask.shape[1]
      streams = jnp.broadcast_to(slots[None, :s, None].astype(audio.dtype), (b, s, t, d))
    if kind == "bands":
      masks = (separator_lib.BandSeparator(cfg.decoder, opts, name="separator")(
          specs[0], streams, speaker_mask),)
    else:
      masks = decoder_lib.SeparationDecoder(cfg.decoder, scales, opts, name="decoder")(
          streams, audio, speaker_mask, [spec.shape[1] for spec in specs])

    keep = speaker_mask[:, :, None].astype(jnp.float32)
    scale_waves = jnp.stack([
        self._reconstruct(spec, mask, scale, num_samples) * keep
        for spec, mask, scale in zip(specs, masks, scales)], axis=1)
    aux.update({
        "masks": {str(scale[0]): m for scale, m in zip(scales, masks)},
        "scale_waveforms": scale_waves,
        "audio_tokens": audio,
        "speaker_tokens": streams,
    })
    return scale_waves.mean(axis=1), aux

  @nn.nowrap
  def _fuse_video(self, audio, video, visual_features, speaker_mask, opts, main_hop,
                  activity_cue, oracle_share):
    """Visual encoder (from video or its frame features), lip-activity head and
    fusion: audio (B, T, d) -> fused audio (B, T, d), per-slot streams (B, S, T, d)
    and aux {alignment, activity_logits}."""
    cfg = self.config
    video_tokens = visual_lib.VisualEncoder(cfg.visual, video_options(cfg, opts),
                                            name="visual_encoder")(video, visual_features)
    # Speech activity read from the lips alone, before any audio is mixed in: the
    # trainer's activity loss gives the visual encoder a direct signal, which breaks
    # the symmetric start where every slot outputs the same mask.
    activity = layers.dense(1, (layers.EMBED, None), name="activity_head",
                            **opts.kw)(video_tokens)[..., 0].astype(jnp.float32)
    audio, streams, weights = fusion_lib.Fusion(
        cfg.fusion, main_hop, cfg.sample_rate, cfg.video_fps, opts, name="fusion")(
            audio, video_tokens, speaker_mask)
    if cfg.decoder.get("activity_cue"):
      cue = nn.sigmoid(activity)
      if activity_cue is not None:
        share = 1.0 if oracle_share is None else oracle_share[:, None, None]
        cue = share * activity_cue + (1.0 - share) * cue
      # 'fusion': the cue reaches the audio frames through the fusion's alignment,
      # which can absorb an audio-video offset; 'fixed': through the frame-rate map.
      route = weights if cfg.decoder.get("cue_alignment", "fixed") == "fusion" else None
      streams = streams + self._activity_cue(
          cue, streams.shape, main_hop, opts, route).astype(streams.dtype)
    return audio, streams, {"alignment": weights, "activity_logits": activity}

  @nn.nowrap
  def _activity_cue(self, cue, shape, hop_length, opts, alignment=None):
    """(B, S, F) activity on video frames -> (B, S, T, d) query offsets; onto the
    audio frames by `alignment` (B, S, T, F) when given, else the frame-rate map."""
    if alignment is None:
      weights = alignment_lib.video_to_audio_matrix(
          shape[2], cue.shape[-1], hop_length=hop_length,
          sample_rate=self.config.sample_rate, fps=self.config.video_fps,
          causal=self.config.causal)
      c = jnp.einsum("tf,bsf->bst", jnp.asarray(weights), cue.astype(jnp.float32))
    else:
      c = jnp.einsum("bstf,bsf->bst", alignment.astype(jnp.float32),
                     cue.astype(jnp.float32))
    c = c[..., None]
    return layers.dense(shape[-1], (None, layers.EMBED), name="activity_cue",
                        **opts.kw)(jnp.concatenate([c, c * c], axis=-1))

  def _reconstruct(self, spec, mask, scale, num_samples):
    return reconstruct(spec, mask, scale, num_samples, self.config.phase,
                       causal=self.config.causal, n_iter=self.config.griffin_lim_iters)


def reconstruct(spec, mask, scale, num_samples, phase="complex", causal=False, n_iter=32):
  """The model's output path: mixture STFT (B, T_k, F) x masks (B, S, T_k, F) ->
  (B, S, T) waveforms.

  phase: 'complex' inverts mask * spec (a complex mask sets the phase); 'mixture'
  keeps the mixture's phase, |mask| * spec (for the real masks of the 'masks' decoder
  the two are the same); 'griffin_lim' iterates from the estimate's phase, which
  converges in far fewer iterations than a random start and needs no rng.
  """
  n_fft, win_length, hop_length = scale
  if phase in ("complex", "mixture"):
    gain = mask if phase == "complex" else jnp.abs(mask)
    return signal.istft(gain * spec[:, None], n_fft, win_length, hop_length,
                        length=num_samples, causal=causal)
  estimate = mask * spec[:, None]
  return signal.griffin_lim(
      jnp.abs(estimate), n_fft=n_fft, win_length=win_length, hop_length=hop_length,
      length=num_samples, n_iter=n_iter, init_phase=jnp.angle(estimate))
