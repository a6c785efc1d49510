"""Model sizes: `full` (the ADR's dimensions), `lite` (CPU training and serving),
`stream` (lite made causal for real-time streaming: nothing looks ahead),
`audio_only` (lite without the video: the baseline that measures what the lips add),
`smoke` (tiny, for tests), and the magnitude-mask decoder that the band separator
replaced, kept as an ablation: `lite_masks` (lite's sizes) and `smoke_masks` (for the
tests of that path). `configs/*.py` put one of these under `config.model`."""

import ml_collections

from avsep_jax import signal

VARIANTS = ("full", "lite", "stream", "audio_only", "smoke", "lite_masks", "smoke_masks")

# (n_fft, win_length, hop_length); the first is the token scale (100 frames/s).
STFT_SCALES = signal.SCALES

# MobileFaceNet (Chen et al. 2018) stages: (expansion, channels, repeats, stride).
_MOBILEFACENET_BLOCKS = ((2, 64, 5, 2), (4, 128, 1, 2), (2, 128, 6, 1), (4, 128, 1, 2),
                         (2, 128, 2, 1))


def model_config(variant: str = "full", num_speakers: int = 6) -> ml_collections.ConfigDict:
  """The `config.model` ConfigDict of one variant with `num_speakers` slots."""
  if variant not in VARIANTS:
    raise ValueError(f"unknown model variant {variant!r}; choose from {VARIANTS}")
  c = ml_collections.ConfigDict()
  c.num_speakers = num_speakers
  c.sample_rate = 16_000
  c.video_fps = 25
  c.roi_size = 88
  c.stft_scales = STFT_SCALES
  c.phase = "complex"            # or "mixture", "griffin_lim" (model.avsep.reconstruct)
  c.griffin_lim_iters = 32
  c.dtype = "float32"            # compute dtype; params stay in param_dtype
  c.param_dtype = "float32"
  c.attention_impl = "xla"       # or "cudnn", "pallas" (avsep_jax.kernels)
  c.attention_window = ml_collections.config_dict.placeholder(tuple)  # (left, right) frames
  c.causal = False               # streaming: see `model.avsep.check_causal`
  c.use_video = True             # False: audio-only baseline (`make_audio_only`)
  c.remat = "none"               # "none" | "full" | "dots"
  c.dropout_rate = 0.1

  c.audio = ml_collections.ConfigDict(dict(
      cnn_channels=(32, 32, 64, 64), d_model=512, num_layers=8, num_heads=8,
      mlp_dim=2048, phase_features=True, positions=True))
  c.visual = ml_collections.ConfigDict(dict(
      stem_channels=64, stem_kernel=(5, 7, 7), trunk_stem_channels=64,
      trunk_blocks=_MOBILEFACENET_BLOCKS, trunk_out_channels=512, embed_dim=256,
      d_model=256, num_layers=6, num_heads=8, mlp_dim=1024, positions=True))
  c.fusion = ml_collections.ConfigDict(dict(
      alignment="soft_dtw", dtw_gamma=0.1, dtw_band=3, align_dim=64,
      num_layers=2, num_heads=8, mlp_dim=2048))
  # activity_cue: add each slot's per-frame speech activity (the lips' estimate, or a
  # given cue) to its decoder query; the trainer's oracle-cue curriculum
  # (`oracle_cue_steps`) is what lets a fresh model leave the symmetric start.
  # cue_alignment: how the cue reaches the audio frames: 'fixed' (the frame-rate map)
  # or 'fusion' (the fusion's alignment, which can absorb an audio-video offset; Flax
  # only, an experiment).
  # The separator (model.separator): (frame, band) tokens, blocks alternating attention
  # over bands, time and slots, a complex mask per slot. Bands in bins of 31.25 Hz:
  # 2-bin bands up to 1 kHz, then 4, 8 and 16 bins (40 bands, as BS-RoFormer's
  # finer-at-low-frequency split). The transformer keeps the design record's 8 heads;
  # its width is 128, not 512: it runs on T x 40 tokens per slot instead of T.
  c.decoder = ml_collections.ConfigDict(dict(
      kind="bands", d_model=128, num_heads=8, mlp_dim=512, shared_layers=2,
      num_layers=6, bands=((2, 16), (4, 8), (8, 8), (16, 8)), compress=0.3,
      mask_hidden=256, positions=True, activity_cue=True, cue_alignment="fixed"))
  # One scale: a complex mask at the main scale can reach the source; the other
  # scales stay in the multi-resolution STFT loss (config.stft_loss_weight).
  c.stft_scales = (STFT_SCALES[0],)

  if variant == "full":
    c.dtype = "bfloat16"
  elif variant in ("lite", "stream", "audio_only", "lite_masks"):
    c.audio.update(cnn_channels=(16, 16, 32, 32), d_model=256, num_layers=4,
                   num_heads=4, mlp_dim=1024)
    c.visual.update(stem_channels=16, trunk_stem_channels=32,
                    trunk_blocks=((2, 32, 2, 2), (4, 64, 1, 2), (2, 64, 2, 1),
                                  (4, 64, 1, 2)),
                    trunk_out_channels=256, embed_dim=128, d_model=128, num_layers=2,
                    num_heads=4, mlp_dim=512)
    c.fusion.update(align_dim=32, num_layers=1, num_heads=4, mlp_dim=1024)
    # 20 bands: 4 bins up to 1 kHz, then 8, 16 and 32.
    c.decoder.update(d_model=64, num_heads=4, mlp_dim=128, shared_layers=1, num_layers=3,
                     bands=((4, 8), (8, 4), (16, 4), (32, 4)), mask_hidden=128)
    if variant == "stream":
      make_causal(c)
    elif variant == "audio_only":
      make_audio_only(c)
    elif variant == "lite_masks":
      make_mask_decoder(c)
  elif variant in ("smoke", "smoke_masks"):
    c.dropout_rate = 0.0
    c.audio.update(cnn_channels=(4, 8), d_model=32, num_layers=1, num_heads=2,
                   mlp_dim=64)
    c.visual.update(stem_channels=4, stem_kernel=(3, 5, 5), trunk_stem_channels=8,
                    trunk_blocks=((2, 8, 1, 2), (2, 16, 1, 2)), trunk_out_channels=32,
                    embed_dim=16, d_model=16, num_layers=1, num_heads=2, mlp_dim=32)
    c.fusion.update(align_dim=8, num_layers=1, num_heads=2, mlp_dim=64)
    c.decoder.update(d_model=16, num_heads=2, mlp_dim=32, shared_layers=1, num_layers=1,
                     bands=((32, 8),), mask_hidden=16)
    if variant == "smoke_masks":
      make_mask_decoder(c, num_layers=1, num_heads=2, mlp_dim=64)
  return c


def make_causal(c: ml_collections.ConfigDict, window: int = 100) -> ml_collections.ConfigDict:
  """Turns a model config into its streaming form, in place: causal convs and STFT
  framing, left-only attention over the last `window` audio frames, newest-video-frame
  alignment, one STFT scale, no absolute positions (see `avsep.check_causal`)."""
  c.causal = True
  c.attention_window = (window, 0)
  c.stft_scales = (STFT_SCALES[0],)
  c.fusion.alignment = "hold"
  c.audio.positions = c.visual.positions = False
  if c.decoder.get("kind") == "bands":
    c.decoder.positions = False
  return c


def make_audio_only(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Turns a model config into the audio-only baseline, in place: no visual encoder or
  fusion, a learned embedding per slot as the decoder's query, no activity cue. Slot
  order is then arbitrary: train it with PIT (`pit_weight=1`, as `configs/*:audio_only`
  do) and compare models by `si_snri_pit`."""
  c.use_video = False
  c.decoder.activity_cue = False
  return c


def make_mask_decoder(c: ml_collections.ConfigDict, num_layers: int = 2,
                      num_heads: int = 4, mlp_dim: int = 1024) -> ml_collections.ConfigDict:
  """Turns a model config into the frame-token decoder with sigmoid magnitude masks on
  the mixture's phase, in place (at three STFT scales, one when causal): the head
  before the band separator, kept as an ablation (its oracle is capped near 12-13 dB
  SI-SNRi). Defaults: lite's sizes."""
  c.phase = "mixture"
  c.stft_scales = (STFT_SCALES[0],) if c.causal else STFT_SCALES
  c.decoder = ml_collections.ConfigDict(dict(
      kind="masks", num_layers=num_layers, num_heads=num_heads, mlp_dim=mlp_dim,
      activity_cue=c.decoder.activity_cue))
  return c
