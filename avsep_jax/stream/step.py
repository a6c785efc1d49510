"""The causal (`stream`) model as two step functions with explicit state.

`video_step` consumes one mouth frame per speaker when it arrives (every 40 ms);
`audio_step` consumes `n` STFT hops of audio (10 ms each) and returns the separated
audio of `n` hops. Together they compute exactly what `AVSeparator` computes offline on
the whole input, `DELAY` samples later: the output of the step that brings the input up
to sample E covers samples [E - DELAY - n * hop, E - DELAY) of the offline waveforms.

Everything that carries over between steps is in one flat dict of arrays (`init_state`),
so the same state can be passed through `jax.jit` and, later, through an exported graph
as inputs and outputs:

  samples, video_frames   () int32: input consumed so far (for positions and masks)
  speaker_mask            (B, S) bool
  stft                    (B, win - hop): the last samples, the next frames' overlap
  phase                   (B, bins): the last frame's phase (phase-difference feature)
  cnn_i                   (B, 2, F_i, C_i): the audio CNN's two past input frames
  stem                    (B, S, kt - 1, H, W): the 3-D stem's past (normalised) frames
  video_tokens, activity  (B, S, 2, d_v), (B, S, 2): the two newest video frames' tokens
  <stack>_kv_<layer>      (2, ..., W, heads, head_dim): keys and values of the last W
                          frames (W = the left attention window), oldest first; slots
                          before the stream's start are masked by position. Stacks and
                          their leading axes: audio (B), visual (B, S), fusion_av
                          (B, S), fusion_va (B); then by `config.decoder.kind`:
                          'masks': decoder_time (B, S), decoder_cross (B);
                          'bands': separator_shared (B, K), separator (B, S, K)
  ola                     (B, S, win - hop): overlap-add sums not yet complete

Shapes: B batch, S speaker slots, K frequency bands, T_step = n * hop samples per audio
step.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from avsep_jax.model import avsep as avsep_lib
from avsep_jax.model import bands as bands_lib
from avsep_jax.model import visual as visual_lib
from avsep_jax import signal

_LN = nn.LayerNorm(epsilon=1e-5)  # as `model.layers.layer_norm`


def check_streamable(config):
  """Raises ValueError unless `config.model` can run step by step."""
  if not config.causal:
    raise ValueError("streaming needs a causal model (the `stream` variant, "
                     "configs/*.py:stream); this one looks ahead")
  avsep_lib.check_causal(config)
  if config.dtype != "float32":
    raise ValueError(f"streaming runs in float32, the model computes in {config.dtype}")
  if config.decoder.get("cue_alignment", "fixed") != "fixed":
    raise ValueError("streaming routes the activity cue by the frame-rate map: "
                     "decoder.cue_alignment='fixed'")
  _, _, hop = config.stft_scales[0]
  if config.sample_rate % (hop * config.video_fps):
    raise ValueError("streaming needs a whole number of STFT hops per video frame")


def delay_samples(config) -> int:
  """Algorithmic delay: a sample is final once the last window over it has arrived."""
  _, win, hop = config.stft_scales[0]
  return win - hop


def hops_per_video_frame(config) -> int:
  _, _, hop = config.stft_scales[0]
  return config.sample_rate // (hop * config.video_fps)


def _windows(config):
  """Left attention windows in audio frames and in video frames."""
  left = config.attention_window[0]
  return left, math.ceil(left / hops_per_video_frame(config))


def init_state(config, speaker_mask):
  """The state before any input: zeros (what the offline model pads with).

  Args:
    config: `config.model` of a streamable model.
    speaker_mask: (B, S) bool, False for absent slots; fixed for the stream.
  """
  check_streamable(config)
  speaker_mask = jnp.asarray(speaker_mask, bool)
  b, s = speaker_mask.shape
  n_fft, win, hop = config.stft_scales[0]
  left, left_video = _windows(config)
  a, v, f, d = config.audio, config.visual, config.fusion, config.decoder

  def kv(*lead, window, d_model, heads):
    return jnp.zeros((2, *lead, window, heads, d_model // heads), jnp.float32)

  state = {
      "samples": jnp.zeros((), jnp.int32),
      "video_frames": jnp.zeros((), jnp.int32),
      "speaker_mask": speaker_mask,
      "stft": jnp.zeros((b, win - hop), jnp.float32),
      "phase": jnp.zeros((b, n_fft // 2 + 1), jnp.float32),
      "stem": jnp.zeros((b, s, v.stem_kernel[0] - 1, config.roi_size, config.roi_size),
                        jnp.float32),
      "video_tokens": jnp.zeros((b, s, 2, v.d_model), jnp.float32),
      "activity": jnp.zeros((b, s, 2), jnp.float32),
      "ola": jnp.zeros((b, s, win - hop), jnp.float32),
  }
  bins = n_fft // 2 + 1
  channels = (3 if a.phase_features else 1,) + tuple(a.cnn_channels)
  for i in range(len(a.cnn_channels)):
    state[f"cnn_{i}"] = jnp.zeros((b, 2, bins, channels[i]), jnp.float32)
    bins = (bins + 1) // 2
  for i in range(a.num_layers):
    state[f"audio_kv_{i}"] = kv(b, window=left, d_model=a.d_model, heads=a.num_heads)
  for i in range(v.num_layers):
    state[f"visual_kv_{i}"] = kv(b, s, window=left_video, d_model=v.d_model,
                                 heads=v.num_heads)
  for i in range(f.num_layers):
    state[f"fusion_av_kv_{i}"] = kv(b, s, window=left, d_model=a.d_model,
                                    heads=f.num_heads)
    state[f"fusion_va_kv_{i}"] = kv(b, window=left, d_model=a.d_model, heads=f.num_heads)
  if d.get("kind", "masks") == "bands":
    k = len(_band_edges(config))
    for i in range(d.shared_layers):
      state[f"separator_shared_kv_{i}"] = kv(b, k, window=left, d_model=d.d_model,
                                             heads=d.num_heads)
    for i in range(d.num_layers):
      state[f"separator_kv_{i}"] = kv(b, s, k, window=left, d_model=d.d_model,
                                      heads=d.num_heads)
  else:
    for i in range(d.num_layers):
      state[f"decoder_time_kv_{i}"] = kv(b, s, window=left, d_model=a.d_model,
                                         heads=d.num_heads)
      state[f"decoder_cross_kv_{i}"] = kv(b, window=left, d_model=a.d_model,
                                          heads=d.num_heads)
  return state


def _band_edges(config):
  """The band separator's ((start, stop), ...) bin ranges at the main STFT scale."""
  n_fft = config.stft_scales[0][0]
  return bands_lib.band_edges(n_fft // 2 + 1,
                              tuple(tuple(band) for band in config.decoder.bands))


# ----------------------------------------------------------------------------- layers


def _dense(p, x):
  y = x @ p["kernel"]
  return y + p["bias"] if "bias" in p else y


def _ln(p, x):
  return _LN.apply({"params": p}, x)


def _mlp(p, x):
  return _dense(p["wo"], nn.gelu(_dense(p["wi"], x)))


def _heads(p, x, num_heads):
  y = x @ p["kernel"]
  return y.reshape(y.shape[:-1] + (num_heads, -1))


def _attend(q, k, v, visible):
  """Softmax attention with a boolean mask; a row that may see nothing gives zeros.

  q (N, Tq, H, D), k/v (N, Tk, H, D), visible broadcastable to (N, H, Tq, Tk).
  """
  scores = jnp.einsum("nqhd,nkhd->nhqk", q, k) * q.shape[-1] ** -0.5
  scores = jnp.where(visible, scores, -jnp.inf)
  any_key = jnp.any(visible, axis=-1, keepdims=True)
  weights = jax.nn.softmax(jnp.where(any_key, scores, 0.0), axis=-1)
  weights = jnp.where(any_key & visible, weights, 0.0)
  return jnp.einsum("nhqk,nkhd->nqhd", weights, v)


def _time_visible(start, n, window):
  """(n, window + n) bool: query start + i sees cached/new key start - window + j when
  it is in the past or present, within the left window, and not before the stream."""
  q = start + jnp.arange(n)[:, None]
  k = start - window + jnp.arange(window + n)[None, :]
  return (k <= q) & (k >= q - window) & (k >= 0)


def _attention(p, x, visible, num_heads):
  """Self-attention within groups that need no cache (slots, bands at one frame).

  x (N, L, d), visible broadcastable to (N, H, L, L) -> (N, L, d).
  """
  q, k, v = (_heads(p[name], x, num_heads) for name in ("query", "key", "value"))
  out = _attend(q, k, v, visible)
  return _dense(p["out"], out.reshape(x.shape[:-1] + (-1,)))


def _cached_attention(p, x_q, x_kv, cache, visible, num_heads):
  """Attention of new queries over cached + new keys; returns (out, new cache).

  x_q (N, n, d), x_kv (N, n, d_kv), cache (2, N, W, H, D), visible (N|1, 1, n, W + n).
  """
  n = x_kv.shape[1]
  k = jnp.concatenate([cache[0], _heads(p["key"], x_kv, num_heads)], axis=1)
  v = jnp.concatenate([cache[1], _heads(p["value"], x_kv, num_heads)], axis=1)
  out = _attend(_heads(p["query"], x_q, num_heads), k, v, visible)
  out = _dense(p["out"], out.reshape(out.shape[:2] + (-1,)))
  return out, jnp.stack([k[:, n:], v[:, n:]])


def _self_block(p, x, cache, visible, num_heads):
  """A pre-LN encoder block (`transformer.EncoderBlock`) over n new frames."""
  h = _ln(p["ln_attn"], x)
  out, cache = _cached_attention(p["attn"], h, h, cache, visible, num_heads)
  x = x + out
  return x + _mlp(p["mlp"], _ln(p["ln_mlp"], x)), cache


# ------------------------------------------------------------------------------ video


def video_step(config, params, state, frame):
  """One mouth frame per slot -> its visual token and lip-activity logit, into state.

  Args:
    config: `config.model`; params: the model's params.
    state: from `init_state` or a previous step.
    frame: (B, S, H, W) uint8 (or float in [0, 255]) mouth ROIs of video frame
      `state["video_frames"]`.

  Returns:
    the new state.
  """
  cfg, p = config.visual, params["visual_encoder"]
  b, s, h, w = frame.shape
  x = (frame.astype(jnp.float32) / 255.0 - visual_lib._PIXEL_MEAN) / visual_lib._PIXEL_STD
  frames = jnp.concatenate([state["stem"], x[:, :, None]], axis=2)  # (B, S, kt, H, W)
  # The causal stem's newest output frame reads exactly these kt frames: one 2-D conv
  # with the frames as channels (`visual.FramesAsChannelsConv3D`), then LN + PReLU.
  q = p["stem3d"]
  kernel = jnp.transpose(q["conv"]["kernel"][..., 0, :], (1, 2, 0, 3))  # (kh, kw, kt, C)
  y = jax.lax.conv_general_dilated(
      jnp.moveaxis(frames.reshape((b * s,) + frames.shape[2:]), 1, -1), kernel, (2, 2),
      "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
  y = _ln(q["ln"], y)
  y = jnp.where(y >= 0, y, q["prelu"]["negative_slope"] * y)
  trunk = visual_lib.MobileFaceNet(cfg.trunk_stem_channels,
                                   tuple(map(tuple, cfg.trunk_blocks)),
                                   cfg.trunk_out_channels, cfg.embed_dim)
  y = _dense(p["proj"], trunk.apply({"params": p["trunk"]}, y))[:, None]  # (B*S, 1, d)

  _, left_video = _windows(config)
  new = dict(state)
  visible = _time_visible(state["video_frames"], 1, left_video)[None, None]
  for i in range(cfg.num_layers):
    cache = state[f"visual_kv_{i}"].reshape((2, b * s) + state[f"visual_kv_{i}"].shape[3:])
    y, cache = _self_block(p["transformer"][f"block_{i}"], y, cache, visible,
                           cfg.num_heads)
    new[f"visual_kv_{i}"] = cache.reshape(state[f"visual_kv_{i}"].shape)
  token = _ln(p["transformer"]["ln_out"], y).reshape(b, s, -1)
  activity = _dense(params["activity_head"], token)[..., 0]
  new.update(
      stem=frames[:, :, 1:],
      video_tokens=jnp.concatenate([state["video_tokens"][:, :, 1:], token[:, :, None]], 2),
      activity=jnp.concatenate([state["activity"][:, :, 1:], activity[:, :, None]], 2),
      video_frames=state["video_frames"] + 1)
  return new


# ------------------------------------------------------------------------------ audio


def _spectrum(config, state, chunk):
  """New samples -> (B, n, bins) complex frames of the causal STFT, and new buffer."""
  n_fft, win, hop = config.stft_scales[0]
  x = jnp.concatenate([state["stft"], chunk.astype(jnp.float32)], axis=1)
  n = chunk.shape[1] // hop
  frames = jnp.stack([x[:, j * hop:j * hop + win] for j in range(n)], axis=1)
  left = (n_fft - win) // 2
  frames = jnp.pad(frames, ((0, 0), (0, 0), (left, n_fft - win - left)))
  spec = jnp.fft.rfft(frames * signal.window(n_fft, win), axis=-1)
  return spec, x[:, -(win - hop):]


def _audio_tokens(config, params, state, spec, new):
  """(B, n, bins) spectrum -> (B, n, d) audio tokens (the audio encoder, stepwise)."""
  cfg, p = config.audio, params["audio_encoder"]
  feats = [jnp.log(jnp.abs(spec) + 1e-5)]
  phase = jnp.angle(spec)
  if cfg.phase_features:
    dphase = jnp.diff(phase, axis=1, prepend=state["phase"][:, None])
    feats += [jnp.cos(dphase), jnp.sin(dphase)]
  new["phase"] = phase[:, -1]
  x = jnp.stack(feats, axis=-1)
  for i, c in enumerate(cfg.cnn_channels):
    x = jnp.concatenate([state[f"cnn_{i}"], x], axis=1)
    new[f"cnn_{i}"] = x[:, -2:]
    freq_pad, = jax.lax.padtype_to_pads((x.shape[2],), (3,), (2,), "SAME")
    conv = nn.Conv(c, (3, 3), strides=(1, 2), padding=((0, 0), freq_pad))
    x = conv.apply({"params": p["cnn"][f"conv_{i}"]}, x)
    x = nn.gelu(_ln(p["cnn"][f"ln_{i}"], x))
  b, n = x.shape[:2]
  x = _dense(p["proj"], x.reshape(b, n, -1))
  left, _ = _windows(config)
  visible = _time_visible(state["samples"] // config.stft_scales[0][2], n, left)[None, None]
  for i in range(cfg.num_layers):
    x, new[f"audio_kv_{i}"] = _self_block(p["transformer"][f"block_{i}"], x,
                                          state[f"audio_kv_{i}"], visible, cfg.num_heads)
  return _ln(p["transformer"]["ln_out"], x)


def _held(config, state, n):
  """For each new audio frame, the newest video frame that had arrived one hop before
  it completed: (B, S, n, d_v) tokens and (B, S, n) activity logits ('hold').

  The ring holds the two newest pushed frames: the one these frames need and, when
  a frame has arrived ahead of the step that needs it, that one too.
  """
  hop = config.stft_scales[0][2]
  t = state["samples"] // hop + jnp.arange(n)
  frame = t // hops_per_video_frame(config)
  # Index into the two-frame ring; a frame not yet pushed holds the newest one
  # (as the offline model holds its last frame past the end of the video).
  slot = jnp.clip(frame - (state["video_frames"] - 2), 0, 1)
  pick = jax.nn.one_hot(slot, 2, dtype=jnp.float32)  # (n, 2)
  return (jnp.einsum("nr,bsrd->bsnd", pick, state["video_tokens"]),
          jnp.einsum("nr,bsr->bsn", pick, state["activity"]))


def _fusion(config, params, state, audio, video, new, visible):
  """Stepwise `fusion.Fusion` on n new frames: audio (B, n, d), video (B, S, n, d_v)."""
  cfg, p = config.fusion, params["fusion"]
  b, s, n, _ = video.shape
  audio = audio + p["audio_embedding"]
  video = _dense(p["video_proj"], video) + p["video_embedding"]
  mask = state["speaker_mask"]
  for i in range(cfg.num_layers):
    q = p[f"layer_{i}"]
    a_in = _ln(q["ln_audio"], audio)
    v_in = _ln(q["ln_video"], video)
    # audio <- every present slot's video: keys are (slot, time) pairs.
    cache = state[f"fusion_av_kv_{i}"]  # (2, B, S, W, H, D)
    w = cache.shape[3]
    k = jnp.concatenate([cache[0], _heads(q["audio_from_video"]["key"], v_in,
                                          cfg.num_heads)], axis=2)
    v = jnp.concatenate([cache[1], _heads(q["audio_from_video"]["value"], v_in,
                                          cfg.num_heads)], axis=2)
    new[f"fusion_av_kv_{i}"] = jnp.stack([k[:, :, n:], v[:, :, n:]])
    seen = visible[None, None] & mask[:, :, None, None]  # (B, S, n, W + n)
    seen = seen.transpose(0, 2, 1, 3).reshape(b, 1, n, s * (w + n))
    out = _attend(_heads(q["audio_from_video"]["query"], a_in, cfg.num_heads),
                  k.reshape((b, s * (w + n)) + k.shape[3:]),
                  v.reshape((b, s * (w + n)) + v.shape[3:]), seen)
    audio_new = audio + _dense(q["audio_from_video"]["out"], out.reshape(b, n, -1))
    # each slot's video <- audio.
    cache = state[f"fusion_va_kv_{i}"]
    k = jnp.concatenate([cache[0], _heads(q["video_from_audio"]["key"], a_in,
                                          cfg.num_heads)], axis=1)
    v = jnp.concatenate([cache[1], _heads(q["video_from_audio"]["value"], a_in,
                                          cfg.num_heads)], axis=1)
    new[f"fusion_va_kv_{i}"] = jnp.stack([k[:, n:], v[:, n:]])
    vq = _heads(q["video_from_audio"]["query"], v_in, cfg.num_heads)  # (B, S, n, H, D)
    out = _attend(vq.reshape((b, s * n) + vq.shape[3:]), k, v,
                  jnp.tile(visible, (s, 1))[None, None])
    video = video + _dense(q["video_from_audio"]["out"], out.reshape(b, s, n, -1))
    audio = audio_new + _mlp(q["mlp_audio"], _ln(q["ln_mlp_audio"], audio_new))
    video = video + _mlp(q["mlp_video"], _ln(q["ln_mlp_video"], video))
  return _ln(p["ln_audio_out"], audio), _ln(p["ln_video_out"], video)


def _decoder(config, params, state, x, memory, new, visible):
  """Stepwise `decoder.SeparationDecoder`: x (B, S, n, d), memory (B, n, d) ->
  (B, S, n, bins) main-scale masks."""
  cfg, p = config.decoder, params["decoder"]
  b, s, n, d = x.shape
  mask = state["speaker_mask"]
  x = x + p["query_embedding"]
  for i in range(cfg.num_layers):
    q = p[f"layer_{i}"]
    h = _ln(q["ln_time"], x).reshape(b * s, n, d)
    cache = state[f"decoder_time_kv_{i}"]
    out, cache = _cached_attention(q["time_attn"], h, h,
                                   cache.reshape((2, b * s) + cache.shape[3:]),
                                   visible[None, None], cfg.num_heads)
    new[f"decoder_time_kv_{i}"] = cache.reshape(state[f"decoder_time_kv_{i}"].shape)
    x = x + out.reshape(b, s, n, d)

    h = _ln(q["ln_speaker"], x).transpose(0, 2, 1, 3).reshape(b * n, s, d)
    seen = jnp.repeat(mask, n, axis=0)[:, None, None, :]  # (B*n, 1, 1, S)
    out = _attention(q["speaker_attn"], h, seen, cfg.num_heads)
    x = x + out.reshape(b, n, s, d).transpose(0, 2, 1, 3)

    h = _ln(q["ln_cross"], x).reshape(b, s * n, d)
    out, new[f"decoder_cross_kv_{i}"] = _cached_attention(
        q["cross_attn"], h, memory, state[f"decoder_cross_kv_{i}"],
        jnp.tile(visible, (s, 1))[None, None], cfg.num_heads)
    x = x + out.reshape(b, s, n, d)
    x = x + _mlp(q["mlp"], _ln(q["ln_mlp"], x))
  x = _ln(p["ln_out"], x)
  n_fft = config.stft_scales[0][0]
  return jax.nn.sigmoid(_dense(p[f"mask_{n_fft}"], x))


def _tf_block(p, x, condition, speaker_mask, cache, visible, num_heads):
  """A `separator.TFBlock` over n new frames; returns (x, new cache).

  x (B, S, n, K, d) (S = 1 in the shared blocks), condition (B, S, n, dc) or None,
  speaker_mask (B, S) (read by the slot blocks only), cache (2, B, [S,] K, W, H, D),
  visible (n, W + n).
  """
  b, s, n, k, d = x.shape
  if condition is not None:
    x = x + _dense(p["condition"], condition)[:, :, :, None]
  h = _ln(p["ln_band"], x).reshape(b * s * n, k, d)
  every_band = jnp.ones((1, 1, 1, k), bool)
  x = x + _attention(p["band_attn"], h, every_band, num_heads).reshape(x.shape)

  h = _ln(p["ln_time"], x).transpose(0, 1, 3, 2, 4).reshape(b * s * k, n, d)
  out, new_cache = _cached_attention(p["time_attn"], h, h,
                                     cache.reshape((2, b * s * k) + cache.shape[-3:]),
                                     visible[None, None], num_heads)
  x = x + out.reshape(b, s, k, n, d).transpose(0, 1, 3, 2, 4)

  if "slot_attn" in p:
    h = _ln(p["ln_slot"], x).transpose(0, 2, 3, 1, 4).reshape(b * n * k, s, d)
    seen = jnp.repeat(speaker_mask, n * k, axis=0)[:, None, None, :]  # rows (b, n, k)
    out = _attention(p["slot_attn"], h, seen, num_heads)
    x = x + out.reshape(b, n, k, s, d).transpose(0, 3, 1, 2, 4)
  x = x + _mlp(p["mlp"], _ln(p["ln_mlp"], x))
  return x, new_cache.reshape(cache.shape)


def _separator(config, params, state, spec, streams, new, visible):
  """Stepwise `separator.BandSeparator` (causal: no level normalisation, no
  positions): spec (B, n, bins) complex, streams (B, S, n, d) -> (B, S, n, bins)
  complex masks.

  Band split and mask head act on each frame alone, so they run as the Flax modules.
  """
  cfg, p = config.decoder, params["separator"]
  b, s = streams.shape[:2]
  edges = _band_edges(config)
  x = bands_lib.BandSplit(edges, cfg.d_model).apply(
      {"params": p["band_split"]},
      bands_lib.compressed_features(spec, cfg.compress))[:, None]  # (B, 1, n, K, d)
  for i in range(cfg.shared_layers):
    name = f"separator_shared_kv_{i}"
    x, new[name] = _tf_block(p[f"shared_{i}"], x, None, None, state[name], visible,
                             cfg.num_heads)
  x = jnp.broadcast_to(x, (b, s) + x.shape[2:])
  for i in range(cfg.num_layers):
    name = f"separator_kv_{i}"
    x, new[name] = _tf_block(p[f"layer_{i}"], x, streams, state["speaker_mask"],
                             state[name], visible, cfg.num_heads)
  return bands_lib.BandMask(edges, cfg.mask_hidden).apply({"params": p["mask"]}, x)


def _overlap_add(config, state, spec, masks, new):
  """Masks (B, S, n, bins), real or complex, on the new frames -> (B, S, n * hop)
  finished samples (inverse causal STFT of masks * spec, as `avsep.reconstruct`)."""
  n_fft, win, hop = config.stft_scales[0]
  if config.phase == "mixture":
    masks = jnp.abs(masks)
  frames = jnp.fft.irfft(masks * spec[:, None], n=n_fft, axis=-1)
  left = (n_fft - win) // 2
  window = signal.window(n_fft, win)
  frames = (frames * window)[..., left:left + win]  # the window is zero elsewhere
  b, s, n, _ = frames.shape
  out = jnp.pad(state["ola"], ((0, 0), (0, 0), (0, n * hop)))
  for j in range(n):
    out = out.at[..., j * hop:j * hop + win].add(frames[:, :, j])
  # Every sample at or after the stream's start lies under the same set of window
  # positions, so the squared-window normaliser is periodic in the hop.
  # (steady_window_sum's phase counts from the frame's start, ours from the window's.)
  norm = np.roll(signal.steady_window_sum(n_fft, win, hop), -left)
  new["ola"] = out[..., n * hop:]
  done = out[..., :n * hop] / jnp.asarray(np.tile(norm, n))
  # Samples before the start (the first DELAY of the first steps) are not signal.
  position = state["samples"] - (win - hop) + jnp.arange(n * hop)
  return jnp.where(position >= 0, done, 0.0)


def audio_step(config, params, state, chunk):
  """n hops of mixture -> n hops of separated audio, DELAY samples behind.

  Args:
    config: `config.model`; params: the model's params.
    state: from `init_state` or a previous step; the video frames this chunk needs
      (`driver.frames_needed`), and at most one more, must have gone through
      `video_step` first.
    chunk: (B, n * hop) float32 mixture samples.

  Returns:
    (new state, (B, S, n * hop) float32 waveforms of samples
    [samples - DELAY, samples - DELAY + n * hop), zeros in absent slots).
  """
  hop = config.stft_scales[0][2]
  n = chunk.shape[1] // hop
  new = dict(state)
  spec, new["stft"] = _spectrum(config, state, chunk)
  audio = _audio_tokens(config, params, state, spec, new)
  video, activity = _held(config, state, n)
  left, _ = _windows(config)
  visible = _time_visible(state["samples"] // hop, n, left)
  audio, streams = _fusion(config, params, state, audio, video, new, visible)
  if config.decoder.activity_cue:
    c = jax.nn.sigmoid(activity)[..., None]
    streams = streams + _dense(params["activity_cue"], jnp.concatenate([c, c * c], -1))
  if config.decoder.get("kind", "masks") == "bands":
    masks = _separator(config, params, state, spec, streams, new, visible)
  else:
    masks = _decoder(config, params, state, streams, audio, new, visible)
  out = _overlap_add(config, state, spec, masks, new)
  new["samples"] = state["samples"] + n * hop
  keep = state["speaker_mask"][:, :, None]
  return new, jnp.where(keep, out, 0.0)

