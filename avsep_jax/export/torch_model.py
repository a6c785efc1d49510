"""PyTorch mirror of the inference path of `avsep_jax.model.AVSeparator`.

Same computation, same parameter tree: every torch submodule is named after the Flax
module it mirrors (`audio_encoder.transformer.block_0.attn.query`), so
`avsep_jax.export.convert` maps weights by path. Layouts stay channel-last as in Flax;
convolutions permute around torch's NCHW kernels.

What is mirrored: both decoders (the band separator, whose complex masks come back as
(real, imag) pairs since ONNX has no complex dtype, and the magnitude-mask decoder),
every alignment ('interpolate', 'hold' and 'soft_dtw', the latter with its forward
table and expected-alignment backward pass written out as scans over the table's
anti-diagonals, which export as ONNX Scans whose length follows the input's), every
phase ('complex' and 'mixture' iSTFT, 'griffin_lim' from the estimate's phase), causal
and windowed attention, the causal model end to end (causal STFT framing, causal CNN
and 3-D stem padding, no positions), the decoder's activity cue, the audio-only
baseline (a learned stream per slot; the video input is then ignored), every
variant's sizes. Dropout is absent (inference only). The forward returns the
waveforms; `forward_with_aux` adds the lip activity logits and the masks.

This module holds the model: the audio and visual encoders, the fusion, the separation
decoder and `AVSeparatorTorch`. Its parts live beside it: `torch_separator` (the band
separator), `torch_signal` (the STFT and iSTFT as convolutions, Griffin-Lim),
`torch_alignment` (the video-to-audio alignments) and `torch_blocks` (attention, the
transformer encoder, the convolutions, MobileFaceNet).
"""

import math

import torch
from torch import nn

from avsep_jax.export.torch_alignment import _interpolate_time
from avsep_jax.export.torch_alignment import held_video_frames
from avsep_jax.export.torch_alignment import VideoAligner
from avsep_jax.export.torch_blocks import _gelu
from avsep_jax.export.torch_blocks import _layer_norm
from avsep_jax.export.torch_blocks import Conv2dSame
from avsep_jax.export.torch_blocks import ConvNormAct
from avsep_jax.export.torch_blocks import Encoder
from avsep_jax.export.torch_blocks import MlpBlock
from avsep_jax.export.torch_blocks import MobileFaceNet
from avsep_jax.export.torch_blocks import MultiHeadAttention
from avsep_jax.export.torch_separator import BandSeparator
from avsep_jax.export.torch_signal import _unit_phase
from avsep_jax.export.torch_signal import griffin_lim
from avsep_jax.export.torch_signal import ISTFT
from avsep_jax.export.torch_signal import STFT

PHASES = ("complex", "mixture", "griffin_lim")
DECODERS = ("bands", "masks")
_PIXEL_MEAN, _PIXEL_STD = 0.45, 0.25


# --------------------------------------------------------------------------- encoders


class AudioEncoder(nn.Module):

  def __init__(self, cfg, n_fft, causal, window):
    super().__init__()
    self.phase_features, self.causal = cfg.phase_features, causal
    c = 3 if cfg.phase_features else 1
    f = n_fft // 2 + 1
    self.cnn = nn.Module()
    self.num_cnn = len(cfg.cnn_channels)
    for i, ch in enumerate(cfg.cnn_channels):
      self.cnn.add_module(f"conv_{i}", Conv2dSame(c, ch, (3, 3), (1, 2),
                                                  first_pads=(2, 0) if causal else None))
      self.cnn.add_module(f"ln_{i}", _layer_norm(ch))
      c, f = ch, -(-f // 2)
    self.proj = nn.Linear(c * f, cfg.d_model)
    self.transformer = Encoder(cfg.d_model, cfg.num_layers, cfg.num_heads, cfg.mlp_dim,
                               causal, window, cfg.get("positions", True))

  def features(self, re, im):
    """`audio.spectrogram_features`: (B, T, F) -> (B, T, F, C)."""
    feats = [torch.log(torch.sqrt(re * re + im * im) + 1e-5)]
    if self.phase_features:
      c, s = _unit_phase(re, im)
      # Causal: the frame before the first has phase zero (cos 1, sin 0).
      c0 = torch.ones_like(c[:, :1]) if self.causal else c[:, :1]
      s0 = torch.zeros_like(s[:, :1]) if self.causal else s[:, :1]
      c_prev = torch.cat([c0, c[:, :-1]], dim=1)
      s_prev = torch.cat([s0, s[:, :-1]], dim=1)
      # cos and sin of the frame-to-frame phase difference, without atan2.
      feats += [c * c_prev + s * s_prev, s * c_prev - c * s_prev]
    return torch.stack(feats, dim=-1)

  def forward(self, re, im):
    x = self.features(re, im)
    for i in range(self.num_cnn):
      x = _gelu(getattr(self.cnn, f"ln_{i}")(getattr(self.cnn, f"conv_{i}")(x)))
    x = self.proj(x.flatten(2))
    return self.transformer(x)


class VisualEncoder(nn.Module):

  def __init__(self, cfg, roi_size, causal, window):
    super().__init__()
    self.embed_dim, self.d_model = cfg.embed_dim, cfg.d_model
    self.stem3d = ConvNormAct(1, cfg.stem_channels, tuple(cfg.stem_kernel),
                              strides=(1, 2, 2), causal=causal)
    size = -(-roi_size // 2)
    self.trunk = MobileFaceNet(cfg.stem_channels, size, cfg.trunk_stem_channels,
                               tuple(map(tuple, cfg.trunk_blocks)),
                               cfg.trunk_out_channels, cfg.embed_dim)
    self.proj = nn.Linear(cfg.embed_dim, cfg.d_model)
    self.transformer = Encoder(cfg.d_model, cfg.num_layers, cfg.num_heads, cfg.mlp_dim,
                               causal, window, cfg.get("positions", True))

  def forward(self, video):
    """(B, S, F, H, W) uint8 or float in [0, 255] -> (B, S, F, d_model)."""
    b, s, f, h, w = video.shape
    x = (video.float() / 255.0 - _PIXEL_MEAN) / _PIXEL_STD
    x = self.stem3d(x.reshape(b * s, f, h, w, 1))
    x = self.trunk(x.flatten(0, 1))
    x = self.proj(x.reshape(b * s, f, self.embed_dim))
    return self.transformer(x).reshape(b, s, f, self.d_model)


# ----------------------------------------------------------------------------- fusion


def _time_mask(t, s, causal, window, device):
  if not causal and window is None:
    return None
  q = torch.arange(t, device=device)
  k = q[None, :].expand(s, t).reshape(s * t)
  dt = k[None, :] - q[:, None]
  ok = torch.ones_like(dt, dtype=torch.bool)
  if causal:
    ok = ok & (dt <= 0)
  if window is not None:
    ok = ok & (dt >= -window[0]) & (dt <= window[1])
  return ok


class CrossModalLayer(nn.Module):

  def __init__(self, d, num_heads, mlp_dim, causal, window):
    super().__init__()
    self.causal, self.window = causal, window
    self.ln_audio = _layer_norm(d)
    self.ln_video = _layer_norm(d)
    self.audio_from_video = MultiHeadAttention(d, d, num_heads, causal, window,
                                               time_masked=False)
    self.video_from_audio = MultiHeadAttention(d, d, num_heads, causal, window)
    self.ln_mlp_audio = _layer_norm(d)
    self.mlp_audio = MlpBlock(d, mlp_dim)
    self.ln_mlp_video = _layer_norm(d)
    self.mlp_video = MlpBlock(d, mlp_dim)

  def forward(self, audio, video, speaker_mask):
    b, s, t, d = video.shape
    a_in = self.ln_audio(audio)
    v_in = self.ln_video(video)
    # expand + reshape rather than repeat_interleave, whose export with a dynamic
    # count builds an Expand that onnxruntime rejects.
    visible = speaker_mask[:, :, None].expand(b, s, t).reshape(b, s * t)[:, None, None, :]
    time_mask = _time_mask(t, s, self.causal, self.window, audio.device)
    if time_mask is not None:
      visible = visible & time_mask[None, None]
    audio = audio + self.audio_from_video(a_in, v_in.reshape(b, s * t, d), mask=visible)
    a_kv = a_in[:, None].expand(b, s, t, d).reshape(b * s, t, d)
    video = video + self.video_from_audio(v_in.reshape(b * s, t, d), a_kv).reshape(
        b, s, t, d)
    audio = audio + self.mlp_audio(self.ln_mlp_audio(audio))
    video = video + self.mlp_video(self.ln_mlp_video(video))
    return audio, video


class Fusion(nn.Module):

  def __init__(self, cfg, d, d_video, hop_length, sample_rate, fps, causal, window):
    super().__init__()
    self.aligner = VideoAligner(cfg.alignment, hop_length, sample_rate, fps,
                                cfg.dtw_gamma, cfg.dtw_band, cfg.align_dim, d, d_video)
    self.video_proj = nn.Linear(d_video, d)
    self.audio_embedding = nn.Parameter(torch.zeros(d))
    self.video_embedding = nn.Parameter(torch.zeros(d))
    self.num_layers = cfg.num_layers
    for i in range(cfg.num_layers):
      self.add_module(f"layer_{i}", CrossModalLayer(d, cfg.num_heads, cfg.mlp_dim,
                                                    causal, window))
    self.ln_audio_out = _layer_norm(d)
    self.ln_video_out = _layer_norm(d)

  def forward(self, audio, video, speaker_mask):
    video = self.video_proj(self.aligner(audio, video))
    audio = audio + self.audio_embedding
    video = video + self.video_embedding
    for i in range(self.num_layers):
      audio, video = getattr(self, f"layer_{i}")(audio, video, speaker_mask)
    return self.ln_audio_out(audio), self.ln_video_out(video)


# ---------------------------------------------------------------------------- decoder


class DecoderLayer(nn.Module):

  def __init__(self, d, num_heads, mlp_dim, causal, window):
    super().__init__()
    self.ln_time = _layer_norm(d)
    self.time_attn = MultiHeadAttention(d, d, num_heads, causal, window)
    self.ln_speaker = _layer_norm(d)
    self.speaker_attn = MultiHeadAttention(d, d, num_heads, causal, window,
                                           time_masked=False)
    self.ln_cross = _layer_norm(d)
    self.cross_attn = MultiHeadAttention(d, d, num_heads, causal, window)
    self.ln_mlp = _layer_norm(d)
    self.mlp = MlpBlock(d, mlp_dim)

  def forward(self, x, memory, speaker_mask):
    b, s, t, d = x.shape
    h = self.ln_time(x).reshape(b * s, t, d)
    x = x + self.time_attn(h, h).reshape(b, s, t, d)
    h = self.ln_speaker(x).transpose(1, 2).reshape(b * t, s, d)
    key_mask = speaker_mask[:, None, :].expand(b, t, s).reshape(b * t, s)
    h = self.speaker_attn(h, h, key_mask=key_mask)
    x = x + h.reshape(b, t, s, d).transpose(1, 2)
    h = self.ln_cross(x).reshape(b * s, t, d)
    mem = memory[:, None].expand(b, s, t, d).reshape(b * s, t, d)
    x = x + self.cross_attn(h, mem).reshape(b, s, t, d)
    return x + self.mlp(self.ln_mlp(x))


class SeparationDecoder(nn.Module):

  def __init__(self, cfg, d, scales, causal, window):
    super().__init__()
    self.scales = scales
    self.query_embedding = nn.Parameter(torch.zeros(d))
    self.num_layers = cfg.num_layers
    for i in range(cfg.num_layers):
      self.add_module(f"layer_{i}", DecoderLayer(d, cfg.num_heads, cfg.mlp_dim,
                                                 causal, window))
    self.ln_out = _layer_norm(d)
    for n_fft, _, _ in scales:
      self.add_module(f"mask_{n_fft}", nn.Linear(d, n_fft // 2 + 1))

  def forward(self, video, audio, speaker_mask, num_frames):
    """num_frames: each scale's STFT frame count ->
    list over scales of (B, S, T_k, n_fft // 2 + 1) masks in [0, 1]."""
    x = video + self.query_embedding
    for i in range(self.num_layers):
      x = getattr(self, f"layer_{i}")(x, audio, speaker_mask)
    x = self.ln_out(x)
    main_hop = self.scales[0][2]
    masks = []
    for (n_fft, _, hop), t_k in zip(self.scales, num_frames):
      logits = getattr(self, f"mask_{n_fft}")(x)
      logits = _interpolate_time(logits, t_k, hop / main_hop, 0.0, dim=2)
      masks.append(torch.sigmoid(logits))
    return masks


# ------------------------------------------------------------------------------ model


def _estimate(re, im, mask, phase):
  """Mixture spectrum re, im (B, T, F) x a slot mask -> the estimate's (B, S, T, F) pair.

  A real mask (B, S, T, F) scales the mixture; a complex one, a pair (real, imag),
  multiplies it (`phase` 'complex' and 'griffin_lim') or scales it by its modulus
  ('mixture': the mixture's phase), as `avsep.reconstruct`.
  """
  re, im = re[:, None], im[:, None]
  if not isinstance(mask, tuple):
    return re * mask, im * mask
  m_re, m_im = mask
  if phase == "mixture":
    gain = torch.sqrt(m_re * m_re + m_im * m_im)
    return re * gain, im * gain
  return re * m_re - im * m_im, re * m_im + im * m_re


class AVSeparatorTorch(nn.Module):
  """Inference mirror of `AVSeparator(config)`; `convert.build_mirror` fills it."""

  def __init__(self, config):
    super().__init__()
    cfg = config
    self.kind = cfg.decoder.get("kind", "masks")
    if self.kind not in DECODERS:
      raise ValueError(f"decoder.kind must be one of {DECODERS}, got {self.kind!r}")
    if cfg.phase not in PHASES:
      raise ValueError(f"phase must be one of {PHASES}, got {cfg.phase!r}")
    self.phase = cfg.phase
    self.griffin_lim_iters = int(cfg.griffin_lim_iters)
    self.num_speakers = int(cfg.num_speakers)
    self.roi_size = int(cfg.roi_size)
    self.sample_rate, self.video_fps = int(cfg.sample_rate), cfg.video_fps
    self.scales = tuple(tuple(int(v) for v in s) for s in cfg.stft_scales)
    if self.kind == "bands" and len(self.scales) != 1:
      raise ValueError("decoder.kind='bands' predicts at the main STFT scale only: set "
                       "stft_scales to one scale")
    window = None if cfg.attention_window is None else tuple(cfg.attention_window)
    causal = bool(cfg.causal)
    main_n_fft, _, main_hop = self.scales[0]
    frames_per_video = cfg.sample_rate / cfg.video_fps / main_hop
    video_window = None if window is None else tuple(
        math.ceil(w / frames_per_video) for w in window)
    d = cfg.audio.d_model

    self.causal = causal
    self.stfts = nn.ModuleList([STFT(*s, causal=causal) for s in self.scales])
    self.istfts = nn.ModuleList([ISTFT(*s, causal=causal) for s in self.scales])
    self.audio_encoder = AudioEncoder(cfg.audio, main_n_fft, causal, window)
    self.use_video = bool(cfg.get("use_video", True))
    if cfg.decoder.get("cue_alignment", "fixed") != "fixed":
      raise NotImplementedError("the PyTorch mirror routes the activity cue by the "
                                "frame-rate map only (decoder.cue_alignment='fixed')")
    if self.use_video:
      self.visual_encoder = VisualEncoder(cfg.visual, cfg.roi_size, causal, video_window)
      self.activity_head = nn.Linear(cfg.visual.d_model, 1)
      self.fusion = Fusion(cfg.fusion, d, cfg.visual.d_model, main_hop, cfg.sample_rate,
                           cfg.video_fps, causal, window)
    else:
      # The audio-only baseline's streams: a learned embedding per slot.
      self.slot_embedding = nn.Parameter(torch.zeros(cfg.num_speakers, d))
    if self.kind == "bands":
      self.separator = BandSeparator(cfg.decoder, main_n_fft // 2 + 1, d, causal, window)
    else:
      self.decoder = SeparationDecoder(cfg.decoder, d, self.scales, causal, window)
    # The decoder's slot cue: each slot's lip activity on the audio frames, (c, c^2).
    self.activity_cue = (nn.Linear(2, d)
                         if self.use_video and cfg.decoder.get("activity_cue") else None)
    self.video_scale = main_hop * cfg.video_fps / cfg.sample_rate

  def forward(self, mixture, video, speaker_mask):
    """mixture (B, T) f32, video (B, S, F, H, W) uint8, speaker_mask (B, S) bool
    -> waveforms (B, S, T) f32, zeros in masked slots."""
    return self.forward_with_aux(mixture, video, speaker_mask)[0]

  def forward_with_aux(self, mixture, video, speaker_mask):
    """As `forward`, plus an aux dict.

    Returns:
      waveforms (B, S, T) and {'masks': a list over STFT scales, 'activity_logits':
      (B, S, F) (only when the model reads the video)}. A mask is (B, S, T_k, bins)
      in [0, 1] from the 'masks' decoder; from 'bands' the one (main) scale's complex
      mask as a pair (real, imag) of (B, S, T, bins).
    """
    mixture = mixture.float()
    speaker_mask = speaker_mask.bool()
    b, num_samples = mixture.shape
    s = video.shape[1]
    specs = [stft(mixture) for stft in self.stfts]
    audio = self.audio_encoder(*specs[0])
    aux = {}
    if self.use_video:
      video_tokens = self.visual_encoder(video)
      activity = self.activity_head(video_tokens)[..., 0]
      audio, streams = self.fusion(audio, video_tokens, speaker_mask)
      if self.activity_cue is not None:
        streams = streams + self._activity_cue(torch.sigmoid(activity), streams.shape[2])
      aux["activity_logits"] = activity
    else:
      t, d = audio.shape[1:]
      streams = self.slot_embedding[None, :s, None].expand(b, s, t, d)
    if self.kind == "bands":
      masks = [self.separator(*specs[0], streams, speaker_mask)]
    else:
      masks = self.decoder(streams, audio, speaker_mask, [re.shape[1] for re, _ in specs])

    keep = speaker_mask[:, :, None].float()
    flat = lambda z: z.flatten(0, 1)
    waves = []
    for (re, im), mask, istft, stft in zip(specs, masks, self.istfts, self.stfts):
      re, im = _estimate(re, im, mask, self.phase)   # (B, S, T_k, bins)
      if self.phase == "griffin_lim":
        # From the estimate's phase, as `avsep.reconstruct`.
        mag = torch.sqrt(re * re + im * im)
        c, sn = _unit_phase(re, im)
        y = griffin_lim(flat(mag), flat(c), flat(sn), stft, istft, num_samples,
                        self.griffin_lim_iters)
      else:
        y = istft(flat(re), flat(im), num_samples)
      waves.append(y.reshape(b, s, -1) * keep)
    aux["masks"] = masks
    return torch.stack(waves, dim=1).mean(dim=1), aux

  def _activity_cue(self, cue, num_frames):
    """(B, S, F) activity in [0, 1] on video frames -> (B, S, T, d) query offsets."""
    if self.causal:
      c = torch.index_select(
          cue, 2, held_video_frames(num_frames, cue.shape[2], self.video_scale, cue.device))
    else:
      c = _interpolate_time(cue, num_frames, self.video_scale, -0.5, dim=2)
    c = c[..., None]
    return self.activity_cue(torch.cat([c, c * c], dim=-1))
