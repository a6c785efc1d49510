"""PyTorch step modules of the causal (`stream`) model: `avsep_jax.stream.step` in torch.

Two modules over the weights of a `torch_model.AVSeparatorTorch` mirror (shared, not
copied): `VideoStep` (one mouth frame per slot) and `AudioStep` (n STFT hops of
audio). They compute what `step.video_step` / `step.audio_step` compute, on the same
state: the same names, shapes and dtypes (`state_spec`, in `step.init_state`'s order).
Each module reads the state entries it needs and returns the ones it changes, as flat
tuples of tensors, so a module exports to ONNX with the state as graph inputs and
outputs (`reads`, `writes`: the names, in argument and result order).

Written for export: no complex dtype (the band separator's complex masks are (real,
imag) pairs), no torch.stft (the STFT is a strided conv1d against windowed DFT bases,
the inverse a conv_transpose1d, as in torch_signal.py), attention masks built in the
graph from the `samples` / `video_frames` counters, and caches of fixed size updated by
concat + slice.

`TorchStreamer` drives the modules eagerly with the interface of
`avsep_jax.stream.Streamer` (timing and parity checks).
"""

import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from avsep_jax.export import torch_blocks as tb
from avsep_jax.export import torch_model as tm
from avsep_jax.export import torch_separator
from avsep_jax.export import torch_signal as ts
from avsep_jax.signal.stft import steady_window_sum
from avsep_jax.stream import driver

_FILL = tb._MASK_FILL


# ------------------------------------------------------------------------------ state


def _hops_per_video_frame(config):
  return config.sample_rate // (config.stft_scales[0][2] * config.video_fps)


def _is_bands(config):
  return config.decoder.get("kind", "masks") == "bands"


def _num_bands(config):
  n_fft = config.stft_scales[0][0]
  layout = tuple(tuple(band) for band in config.decoder.bands)
  return len(torch_separator.band_edges(n_fft // 2 + 1, layout))


def windows(config):
  """Left attention windows in audio frames and in video frames (`step._windows`)."""
  left = int(config.attention_window[0])
  return left, math.ceil(left / _hops_per_video_frame(config))


def state_spec(config, batch, speakers):
  """[(name, shape, dtype name)] of the stream state, in `step.init_state`'s order."""
  n_fft, win, hop = config.stft_scales[0]
  left, left_video = windows(config)
  a, v, f, d = config.audio, config.visual, config.fusion, config.decoder
  b, s, roi = batch, speakers, config.roi_size

  def kv(*lead, window, d_model, heads):
    return (2, *lead, window, heads, d_model // heads)

  spec = [
      ("samples", (), "int32"),
      ("video_frames", (), "int32"),
      ("speaker_mask", (b, s), "bool"),
      ("stft", (b, win - hop), "float32"),
      ("phase", (b, n_fft // 2 + 1), "float32"),
      ("stem", (b, s, v.stem_kernel[0] - 1, roi, roi), "float32"),
      ("video_tokens", (b, s, 2, v.d_model), "float32"),
      ("activity", (b, s, 2), "float32"),
      ("ola", (b, s, win - hop), "float32"),
  ]
  bins = n_fft // 2 + 1
  channels = (3 if a.phase_features else 1,) + tuple(a.cnn_channels)
  for i in range(len(a.cnn_channels)):
    spec.append((f"cnn_{i}", (b, 2, bins, channels[i]), "float32"))
    bins = (bins + 1) // 2
  for i in range(a.num_layers):
    spec.append((f"audio_kv_{i}", kv(b, window=left, d_model=a.d_model,
                                     heads=a.num_heads), "float32"))
  for i in range(v.num_layers):
    spec.append((f"visual_kv_{i}", kv(b, s, window=left_video, d_model=v.d_model,
                                      heads=v.num_heads), "float32"))
  for i in range(f.num_layers):
    spec.append((f"fusion_av_kv_{i}", kv(b, s, window=left, d_model=a.d_model,
                                         heads=f.num_heads), "float32"))
    spec.append((f"fusion_va_kv_{i}", kv(b, window=left, d_model=a.d_model,
                                         heads=f.num_heads), "float32"))
  if _is_bands(config):
    k = _num_bands(config)
    for i in range(d.shared_layers):
      spec.append((f"separator_shared_kv_{i}", kv(b, k, window=left, d_model=d.d_model,
                                                  heads=d.num_heads), "float32"))
    for i in range(d.num_layers):
      spec.append((f"separator_kv_{i}", kv(b, s, k, window=left, d_model=d.d_model,
                                           heads=d.num_heads), "float32"))
  else:
    for i in range(d.num_layers):
      spec.append((f"decoder_time_kv_{i}", kv(b, s, window=left, d_model=a.d_model,
                                              heads=d.num_heads), "float32"))
      spec.append((f"decoder_cross_kv_{i}", kv(b, window=left, d_model=a.d_model,
                                               heads=d.num_heads), "float32"))
  return spec


def init_state(config, speaker_mask):
  """{name: tensor} before any input (zeros), for a (B, S) bool speaker mask."""
  mask = torch.as_tensor(np.asarray(speaker_mask, bool))
  state = {}
  for name, shape, dtype in state_spec(config, *mask.shape):
    state[name] = torch.zeros(shape, dtype=getattr(torch, dtype))
  state["speaker_mask"] = mask.clone()
  return state


# ----------------------------------------------------------------------------- layers


def _heads(linear, x, num_heads):
  return linear(x).unflatten(-1, (num_heads, -1))


def _attend(q, k, v, visible=None):
  """Softmax attention; rows that may see nothing give zeros (`step._attend`).

  q (N, Tq, H, D), k/v (N, Tk, H, D), visible bool broadcastable to (N, H, Tq, Tk),
  or None when every key is visible (no Where nodes in the graph).
  Plain matmuls (not einsum), so INT8 quantization sees MatMul nodes.
  """
  q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
  scores = torch.matmul(q, k.transpose(-1, -2)) * q.shape[-1] ** -0.5
  if visible is None:
    return torch.matmul(torch.softmax(scores, dim=-1), v).transpose(1, 2)
  weights = torch.softmax(torch.where(visible, scores, torch.full_like(scores, _FILL)),
                          dim=-1)
  weights = torch.where(visible, weights, torch.zeros_like(weights))
  return torch.matmul(weights, v).transpose(1, 2)


def _time_visible(start, n, window):
  """(n, window + n) bool: query start + i sees key start - window + j when it is not
  later, within the left window, and not before the stream (`step._time_visible`)."""
  q = start + torch.arange(n)[:, None]
  k = start - window + torch.arange(window + n)[None, :]
  return (k <= q) & (k >= q - window) & (k >= 0)


def _attention(attn, x, visible=None):
  """Self-attention within groups that need no cache (slots, bands at one frame):
  x (N, L, d), visible as `_attend`'s -> (N, L, d)."""
  heads = [_heads(lin, x, attn.num_heads) for lin in (attn.query, attn.key, attn.value)]
  return attn.out(_attend(*heads, visible).flatten(-2))


def _cached_attention(attn, x_q, x_kv, cache, visible):
  """New queries over cached + new keys: x_q (N, n, d), x_kv (N, n, d_kv),
  cache (2, N, W, H, D) -> (out (N, n, d), new cache)."""
  n, h = x_kv.shape[1], attn.num_heads
  k = torch.cat([cache[0], _heads(attn.key, x_kv, h)], dim=1)
  v = torch.cat([cache[1], _heads(attn.value, x_kv, h)], dim=1)
  out = _attend(_heads(attn.query, x_q, h), k, v, visible)
  return attn.out(out.flatten(-2)), torch.stack([k[:, n:], v[:, n:]])


def _self_block(block, x, cache, visible):
  """A pre-LN `EncoderBlock` over n new frames with a KV cache."""
  h = block.ln_attn(x)
  out, cache = _cached_attention(block.attn, h, h, cache, visible)
  x = x + out
  return x + block.mlp(block.ln_mlp(x)), cache


def _tf_block(block, x, condition, speaker_mask, cache, visible):
  """A `torch_separator.TFBlock` over n new frames (`step._tf_block`); returns (x, new
  cache).

  x (B, S, n, K, d) (S = 1 in the shared blocks), condition (B, S, n, dc) or None,
  speaker_mask (B, S) (read by the slot blocks only), cache (2, B, [S,] K, W, H, D),
  visible (n, W + n).
  """
  b, s, n, k, d = x.shape
  if block.condition is not None:
    x = x + block.condition(condition)[:, :, :, None]
  h = block.ln_band(x).reshape(b * s * n, k, d)
  x = x + _attention(block.band_attn, h).reshape(x.shape)

  h = block.ln_time(x).transpose(2, 3).reshape(b * s * k, n, d)
  out, new_cache = _cached_attention(block.time_attn, h, h,
                                     cache.reshape(2, b * s * k, *cache.shape[-3:]),
                                     visible[None, None])
  x = x + out.reshape(b, s, k, n, d).transpose(2, 3)

  if block.slots:
    h = block.ln_slot(x).permute(0, 2, 3, 1, 4).reshape(b * n * k, s, d)
    # Rows (b, n, k), as h's.
    seen = speaker_mask[:, None].expand(b, n * k, s).reshape(b * n * k, 1, 1, s)
    out = _attention(block.slot_attn, h, seen)
    x = x + out.reshape(b, n, k, s, d).permute(0, 3, 1, 2, 4)
  return x + block.mlp(block.ln_mlp(x)), new_cache.reshape(cache.shape)


# ------------------------------------------------------------------------------ video


class VideoStep(nn.Module):
  """`step.video_step`: forward(*state[reads], frame) -> state[writes].

  frame: (B, S, H, W) uint8 (or float in [0, 255]) mouth ROIs of video frame
  `video_frames`.
  """

  def __init__(self, mirror, config):
    super().__init__()
    self.visual = mirror.visual_encoder
    self.activity_head = mirror.activity_head
    cfg = config.visual
    self.num_layers = cfg.num_layers
    _, self.left_video = windows(config)
    self.kernel = tuple(cfg.stem_kernel)
    layers = [f"visual_kv_{i}" for i in range(cfg.num_layers)]
    self.reads = ("video_frames", "stem", "video_tokens", "activity", *layers)
    self.writes = self.reads

  def forward(self, *args):
    state = dict(zip(self.reads, args[:-1]))
    frame = args[-1]
    b, s, h, w = frame.shape
    x = (frame.float() / 255.0 - tm._PIXEL_MEAN) / tm._PIXEL_STD
    frames = torch.cat([state["stem"], x[:, :, None]], dim=2)  # (B, S, kt, H, W)
    # The causal stem's newest output frame reads exactly these kt frames.
    stem = self.visual.stem3d
    _, kh, kw = self.kernel
    ph, pw = tb._same_pads(h, kh, 2), tb._same_pads(w, kw, 2)
    y = F.pad(frames.reshape(b * s, 1, *frames.shape[2:]), (pw[0], pw[1], ph[0], ph[1]))
    y = F.conv3d(y, stem.conv.weight, stride=(1, 2, 2))[:, :, 0].permute(0, 2, 3, 1)
    y = stem.prelu(stem.ln(y))
    y = self.visual.proj(self.visual.trunk(y))[:, None]  # (B*S, 1, d)

    new = {}
    visible = _time_visible(state["video_frames"], 1, self.left_video)[None, None]
    encoder = self.visual.transformer
    for i in range(self.num_layers):
      cache = state[f"visual_kv_{i}"]
      y, c = _self_block(getattr(encoder, f"block_{i}"), y,
                         cache.reshape(2, b * s, *cache.shape[3:]), visible)
      new[f"visual_kv_{i}"] = c.reshape(cache.shape)
    token = encoder.ln_out(y).reshape(b, s, -1)
    activity = self.activity_head(token)[..., 0]
    new.update(
        stem=frames[:, :, 1:],
        video_tokens=torch.cat([state["video_tokens"][:, :, 1:], token[:, :, None]], 2),
        activity=torch.cat([state["activity"][:, :, 1:], activity[:, :, None]], 2),
        video_frames=state["video_frames"] + 1)
    return tuple(new[k] for k in self.writes)


# ------------------------------------------------------------------------------ audio


class AudioStep(nn.Module):
  """`step.audio_step` for a fixed `hops` per step: forward(*state[reads], chunk) ->
  (waveforms, *state[writes]).

  chunk: (B, hops * hop) float32 mixture; waveforms: (B, S, hops * hop) float32 of
  samples [samples - delay, samples - delay + hops * hop), zeros in absent slots.
  The decoder is the mirror's, by `config.decoder.kind`: the mask decoder or the band
  separator.
  """

  def __init__(self, mirror, config, hops):
    super().__init__()
    self.mirror = mirror
    self.hops = int(hops)
    self.n_fft, self.win, self.hop = (int(v) for v in config.stft_scales[0])
    self.left, _ = windows(config)
    self.hops_per_video = _hops_per_video_frame(config)
    self.activity_cue = bool(config.decoder.get("activity_cue"))
    self.bands, self.phase = _is_bands(config), config.phase
    a, f, d = config.audio, config.fusion, config.decoder
    self.num_cnn, self.audio_layers = len(a.cnn_channels), a.num_layers
    self.fusion_layers, self.decoder_layers = f.num_layers, d.num_layers
    self.phase_features = a.phase_features

    n_fft, win, hop = self.n_fft, self.win, self.hop
    left = (n_fft - win) // 2
    # Bases over the window's support only: frames are win samples, hop apart.
    analysis = mirror.stfts[0].basis[:, :, left:left + win].clone()
    synthesis = mirror.istfts[0].basis[:, :, left:left + win].clone()
    self.register_buffer("analysis", analysis, persistent=False)
    self.register_buffer("synthesis", synthesis, persistent=False)
    # Every sample at or after the stream's start lies under the same window positions:
    # the squared-window normaliser is periodic in the hop (`step._overlap_add`).
    # (steady_window_sum's phase counts from the frame's start, ours from the window's.)
    norm = np.roll(steady_window_sum(n_fft, win, hop), -left)
    self.register_buffer("norm", torch.tensor(np.tile(norm, self.hops)), persistent=False)

    names = lambda stem, n: [f"{stem}_{i}" for i in range(n)]
    if self.bands:
      decoder = (*names("separator_shared_kv", d.shared_layers),
                 *names("separator_kv", d.num_layers))
    else:
      decoder = [k for i in range(self.decoder_layers)
                 for k in (f"decoder_time_kv_{i}", f"decoder_cross_kv_{i}")]
    self.writes = ("samples", "stft", "phase", *names("cnn", self.num_cnn),
                   *names("audio_kv", self.audio_layers),
                   *[k for i in range(self.fusion_layers)
                     for k in (f"fusion_av_kv_{i}", f"fusion_va_kv_{i}")],
                   *decoder, "ola")
    self.reads = ("samples", "video_frames", "speaker_mask", "video_tokens",
                  *(("activity",) if self.activity_cue else ()), *self.writes[1:])

  def forward(self, *args):
    state = dict(zip(self.reads, args[:-1]))
    chunk = args[-1].float()
    n, hop = self.hops, self.hop
    new = {}
    re, im = self._spectrum(state, chunk, new)
    start = torch.div(state["samples"], hop, rounding_mode="floor")
    visible = _time_visible(start, n, self.left)
    audio = self._audio_tokens(state, re, im, new, visible)
    video, activity = self._held(state, start)
    audio, streams = self._fusion(state, audio, video, new, visible)
    if self.activity_cue:
      c = torch.sigmoid(activity)[..., None]
      streams = streams + self.mirror.activity_cue(torch.cat([c, c * c], dim=-1))
    if self.bands:
      masks = self._separator(state, re, im, streams, new, visible)
    else:
      masks = self._decoder(state, streams, audio, new, visible)
    out = self._overlap_add(state, re, im, masks, new)
    new["samples"] = state["samples"] + n * hop
    keep = state["speaker_mask"][:, :, None]
    out = torch.where(keep, out, torch.zeros_like(out))
    return (out,) + tuple(new[k] for k in self.writes)

  def _spectrum(self, state, chunk, new):
    """-> re, im (B, n, bins) of the new causal STFT frames."""
    x = torch.cat([state["stft"], chunk], dim=1)
    new["stft"] = x[:, self.hops * self.hop:]
    y = F.conv1d(x[:, None], self.analysis, stride=self.hop)  # (B, 2 * bins, n)
    bins = self.n_fft // 2 + 1
    return y[:, :bins].transpose(1, 2), y[:, bins:].transpose(1, 2)

  def _audio_tokens(self, state, re, im, new, visible):
    """(B, n, bins) spectrum -> (B, n, d) audio tokens."""
    enc = self.mirror.audio_encoder
    feats = [torch.log(torch.sqrt(re * re + im * im) + 1e-5)]
    # The state keeps the last frame's phase angle (as step.py); 0 for a zero bin.
    last_re, last_im = re[:, -1], im[:, -1]
    zero = (last_re == 0) & (last_im == 0)
    new["phase"] = torch.atan2(last_im, torch.where(zero, torch.ones_like(last_re),
                                                    last_re))
    if self.phase_features:
      c, s = ts._unit_phase(re, im)
      c_prev = torch.cat([torch.cos(state["phase"])[:, None], c[:, :-1]], dim=1)
      s_prev = torch.cat([torch.sin(state["phase"])[:, None], s[:, :-1]], dim=1)
      feats += [c * c_prev + s * s_prev, s * c_prev - c * s_prev]
    x = torch.stack(feats, dim=-1)
    for i in range(self.num_cnn):
      x = torch.cat([state[f"cnn_{i}"], x], dim=1)
      new[f"cnn_{i}"] = x[:, -2:]
      conv = getattr(enc.cnn, f"conv_{i}")
      h = x.permute(0, 3, 1, 2)
      pw = tb._same_pads(h.shape[3], 3, 2)
      h = F.conv2d(F.pad(h, (pw[0], pw[1])), conv.weight, conv.bias, stride=(1, 2))
      x = tb._gelu(getattr(enc.cnn, f"ln_{i}")(h.permute(0, 2, 3, 1)))
    x = enc.proj(x.flatten(2))
    for i in range(self.audio_layers):
      x, new[f"audio_kv_{i}"] = _self_block(getattr(enc.transformer, f"block_{i}"), x,
                                            state[f"audio_kv_{i}"], visible[None, None])
    return enc.transformer.ln_out(x)

  def _held(self, state, start):
    """Held video frame per new audio frame: (B, S, n, d_v), (B, S, n)."""
    t = start + torch.arange(self.hops)
    frame = torch.div(t, self.hops_per_video, rounding_mode="floor")
    # Index into the two-frame ring; a frame not yet pushed holds the newest one.
    newest = torch.clamp(frame - (state["video_frames"] - 2), 0, 1) == 1
    tokens, activity = state["video_tokens"], state.get("activity")
    held = torch.where(newest[None, None, :, None], tokens[:, :, 1:2], tokens[:, :, 0:1])
    if activity is None:
      return held, None
    return held, torch.where(newest[None, None], activity[:, :, 1:2], activity[:, :, 0:1])

  def _fusion(self, state, audio, video, new, visible):
    """audio (B, n, d), video (B, S, n, d_v) -> fused audio and per-slot streams."""
    fusion = self.mirror.fusion
    b, s, n, _ = video.shape
    audio = audio + fusion.audio_embedding
    video = fusion.video_proj(video) + fusion.video_embedding
    mask = state["speaker_mask"]
    for i in range(self.fusion_layers):
      layer = getattr(fusion, f"layer_{i}")
      a_in, v_in = layer.ln_audio(audio), layer.ln_video(video)
      # audio <- every present slot's video: keys are (slot, time) pairs.
      att = layer.audio_from_video
      h = att.num_heads
      cache = state[f"fusion_av_kv_{i}"]  # (2, B, S, W, H, D)
      w = cache.shape[3]
      k = torch.cat([cache[0], _heads(att.key, v_in, h)], dim=2)
      v = torch.cat([cache[1], _heads(att.value, v_in, h)], dim=2)
      new[f"fusion_av_kv_{i}"] = torch.stack([k[:, :, n:], v[:, :, n:]])
      seen = visible[None, None] & mask[:, :, None, None]  # (B, S, n, W + n)
      seen = seen.transpose(1, 2).reshape(b, 1, n, s * (w + n))
      out = _attend(_heads(att.query, a_in, h), k.reshape(b, s * (w + n), *k.shape[3:]),
                    v.reshape(b, s * (w + n), *v.shape[3:]), seen)
      audio_new = audio + att.out(out.flatten(-2))
      # each slot's video <- audio.
      att = layer.video_from_audio
      cache = state[f"fusion_va_kv_{i}"]
      k = torch.cat([cache[0], _heads(att.key, a_in, h)], dim=1)
      v = torch.cat([cache[1], _heads(att.value, a_in, h)], dim=1)
      new[f"fusion_va_kv_{i}"] = torch.stack([k[:, n:], v[:, n:]])
      vq = _heads(att.query, v_in, h).reshape(b, s * n, h, -1)
      out = _attend(vq, k, v, visible.repeat(s, 1)[None, None])
      video = video + att.out(out.reshape(b, s, n, -1))
      audio = audio_new + layer.mlp_audio(layer.ln_mlp_audio(audio_new))
      video = video + layer.mlp_video(layer.ln_mlp_video(video))
    return fusion.ln_audio_out(audio), fusion.ln_video_out(video)

  def _decoder(self, state, x, memory, new, visible):
    """x (B, S, n, d), memory (B, n, d) -> (B, S, n, bins) masks."""
    dec = self.mirror.decoder
    b, s, n, d = x.shape
    mask = state["speaker_mask"]
    x = x + dec.query_embedding
    for i in range(self.decoder_layers):
      layer = getattr(dec, f"layer_{i}")
      h = layer.ln_time(x).reshape(b * s, n, d)
      cache = state[f"decoder_time_kv_{i}"]
      out, c = _cached_attention(layer.time_attn, h, h,
                                 cache.reshape(2, b * s, *cache.shape[3:]),
                                 visible[None, None])
      new[f"decoder_time_kv_{i}"] = c.reshape(cache.shape)
      x = x + out.reshape(b, s, n, d)

      h = layer.ln_speaker(x).transpose(1, 2).reshape(b * n, s, d)
      seen = mask[:, None].expand(b, n, s).reshape(b * n, s)[:, None, None, :]
      out = _attention(layer.speaker_attn, h, seen)
      x = x + out.reshape(b, n, s, d).transpose(1, 2)

      h = layer.ln_cross(x).reshape(b, s * n, d)
      out, new[f"decoder_cross_kv_{i}"] = _cached_attention(
          layer.cross_attn, h, memory, state[f"decoder_cross_kv_{i}"],
          visible.repeat(s, 1)[None, None])
      x = x + out.reshape(b, s, n, d)
      x = x + layer.mlp(layer.ln_mlp(x))
    x = dec.ln_out(x)
    return torch.sigmoid(getattr(dec, f"mask_{self.n_fft}")(x))

  def _separator(self, state, re, im, streams, new, visible):
    """Stepwise band separator (`step._separator`; causal: no level normalisation, no
    positions): re, im (B, n, bins), streams (B, S, n, d) -> (B, S, n, bins) complex
    masks as (real, imag). Band split and mask head act on each frame alone, so they
    run as the mirror's modules."""
    sep = self.mirror.separator
    b, s = streams.shape[:2]
    x = sep.band_split(torch_separator.compressed_features(re, im, sep.compress))
    x = x[:, None]  # (B, 1, n, K, d)
    for i, name in enumerate(sep.shared):
      key = f"separator_shared_kv_{i}"
      x, new[key] = _tf_block(getattr(sep, name), x, None, None, state[key], visible)
    x = x.expand(b, s, *x.shape[2:])
    for i, name in enumerate(sep.layers):
      key = f"separator_kv_{i}"
      x, new[key] = _tf_block(getattr(sep, name), x, streams, state["speaker_mask"],
                              state[key], visible)
    return sep.mask(x)

  def _overlap_add(self, state, re, im, masks, new):
    """Masks on the new frames, (B, S, n, bins) real or a complex (real, imag) pair ->
    (B, S, n * hop) finished samples (inverse causal STFT of the estimate,
    `tm._estimate`, as `step._overlap_add`)."""
    est_re, est_im = tm._estimate(re, im, masks, self.phase)
    b, s, n, bins = est_re.shape
    spec = torch.cat([est_re, est_im], dim=-1)
    spec = spec.reshape(b * s, n, 2 * bins).transpose(1, 2)
    frames = F.conv_transpose1d(spec, self.synthesis, stride=self.hop)[:, 0]
    out = frames.reshape(b, s, -1) + F.pad(state["ola"], (0, n * self.hop))
    new["ola"] = out[..., n * self.hop:]
    done = out[..., :n * self.hop] / self.norm
    # Samples before the start (the first delay of the first steps) are not signal.
    position = state["samples"] - (self.win - self.hop) + torch.arange(n * self.hop)
    return torch.where(position >= 0, done, torch.zeros_like(done))


# ---------------------------------------------------------------------------- driver


class TorchStreamer:
  """`avsep_jax.stream.Streamer` on the PyTorch step modules (eager).

  Attributes:
    config: `config.model` (causal).
    step_samples: audio samples per step.
    delay: algorithmic delay in samples (window - hop).
    model_id: fingerprint of config and weights carried in the state (as Streamer's).
  """

  def __init__(self, config, params, step_ms: float = 20.0):
    from avsep_jax.export import convert
    from avsep_jax.stream import Streamer
    reference = Streamer(config, params, step_ms)  # validates; same numbers
    self.config = config
    self.step_samples, self.delay = reference.step_samples, reference.delay
    self.model_id = reference.model_id
    self.mirror = convert.build_mirror(config, params)
    self.video = VideoStep(self.mirror, config).eval()
    self.audio = AudioStep(self.mirror, config,
                           self.step_samples // config.stft_scales[0][2]).eval()

  def init(self, speaker_mask):
    """The state ({name: tensor} + model_id) for a (B, S) bool speaker mask."""
    speaker_mask = np.asarray(speaker_mask, bool)
    if speaker_mask.ndim != 2 or not 1 <= speaker_mask.shape[1] <= self.config.num_speakers:
      raise ValueError(f"speaker_mask must be (B, S) with S <= "
                       f"{self.config.num_speakers}, got shape {speaker_mask.shape}")
    state = init_state(self.config, speaker_mask)
    state["model_id"] = torch.tensor(self.model_id, dtype=torch.int32)
    return state

  def push_video(self, state, frame):
    """Consumes video frame state['video_frames']: (B, S, H, W) mouth ROIs."""
    b, s = self._check_state(state)
    size = self.config.roi_size
    if tuple(np.shape(frame)) != (b, s, size, size):
      raise ValueError(f"a video step is one frame of shape (B, S, H, W) = "
                       f"{(b, s, size, size)}, got {tuple(np.shape(frame))}")
    with torch.no_grad():
      out = self.video(*(state[k] for k in self.video.reads), torch.as_tensor(frame))
    return {**state, **dict(zip(self.video.writes, out))}

  def push_audio(self, state, chunk):
    """Consumes (B, step_samples) mixture samples; returns (state, (B, S, step))."""
    b, _ = self._check_state(state)
    if tuple(np.shape(chunk)) != (b, self.step_samples):
      raise ValueError(
          f"an audio step is (B, {self.step_samples}) samples ({self.step_samples} at "
          f"{self.config.sample_rate} Hz for this streamer), got {tuple(np.shape(chunk))}")
    with torch.no_grad():
      out = self.audio(*(state[k] for k in self.audio.reads),
                       torch.as_tensor(np.asarray(chunk, np.float32)))
    return {**state, **dict(zip(self.audio.writes, out[1:]))}, out[0]

  def run(self, mixture, video, speaker_mask, on_step=None):
    """Streams a whole recording in arrival order (as `Streamer.run`) -> (B, S, T)."""
    return driver.drive(self, mixture, video, speaker_mask, on_step=on_step)[0]

  def _check_state(self, state):
    return driver.check_state(state, self._state_shapes, self.model_id, "TorchStreamer")

  def _state_shapes(self, b, s):
    return {name: shape for name, shape, _ in state_spec(self.config, b, s)} | {
        "model_id": ()}
