"""AVSeparator with the smoke config: shapes, masking, equivariance, gradients, dtypes."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from avsep_jax import model as model_lib
from avsep_jax import signal

SAMPLES = 10_240          # 0.64 s at 16 kHz
FRAMES = 16               # 0.64 s at 25 fps
ROI = 88


def make_inputs(batch, speakers, seed=0, samples=SAMPLES, frames=FRAMES):
  rng = np.random.default_rng(seed)
  mixture = (0.1 * rng.normal(size=(batch, samples))).astype(np.float32)
  video = rng.integers(0, 256, size=(batch, speakers, frames, ROI, ROI), dtype=np.uint8)
  mask = np.ones((batch, speakers), bool)
  return mixture, video, mask


@functools.lru_cache(maxsize=None)
def smoke(num_speakers=6, **overrides):
  config = model_lib.model_config("smoke", num_speakers=num_speakers)
  config.update(overrides)
  return model_lib.AVSeparator(config)


@functools.lru_cache(maxsize=None)
def smoke_params(num_speakers=6):
  mixture, video, mask = make_inputs(1, num_speakers)
  # Unboxed: plain arrays instead of LogicallyPartitioned boxes (no mesh in these tests).
  # Jitted, here and below: one compile (8 s on 2 cores) instead of op-by-op dispatch
  # (30 s the first time).
  init = jax.jit(smoke(num_speakers).init)
  return nn.unbox(init(jax.random.key(0), mixture, video, mask))


@functools.lru_cache(maxsize=None)
def jitted_apply(**overrides):
  return jax.jit(smoke(**overrides).apply)


# One slot, the fewest a mixture has, the most: each count is a compile (~20 s), and
# 4 slots run in the padded-slot test below.
@pytest.mark.parametrize("speakers", [pytest.param(1, marks=pytest.mark.slow), 2,
                                      pytest.param(6, marks=pytest.mark.slow)])
def test_output_shapes_for_each_speaker_count(speakers):
  mixture, video, mask = make_inputs(2, speakers)
  out, aux = jitted_apply()(smoke_params(), mixture, video, mask)
  assert out.shape == (2, speakers, SAMPLES) and out.dtype == jnp.float32
  assert np.isfinite(np.asarray(out)).all()
  t_audio = 1 + SAMPLES // 160
  assert aux["alignment"].shape == (2, speakers, t_audio, FRAMES)
  scales = smoke().config.stft_scales  # the band separator's: the main scale alone
  assert aux["scale_waveforms"].shape == (2, len(scales), speakers, SAMPLES)
  assert aux["activity_logits"].shape == (2, speakers, FRAMES)
  for n_fft, _, hop in scales:
    mask = aux["masks"][str(n_fft)]
    assert mask.shape == (2, speakers, 1 + SAMPLES // hop, n_fft // 2 + 1)
    assert mask.dtype == jnp.complex64


def test_padded_slot_does_not_change_other_speakers():
  mixture, video, mask = make_inputs(2, 4, seed=1)
  mask[:, 2] = False
  apply = jitted_apply()
  out, _ = apply(smoke_params(), mixture, video, mask)
  other = video.copy()
  other[:, 2] = np.random.default_rng(9).integers(0, 256, size=other[:, 2].shape)
  out2, _ = apply(smoke_params(), mixture, other, mask)
  out, out2 = np.asarray(out), np.asarray(out2)
  keep = [0, 1, 3]
  np.testing.assert_allclose(out2[:, keep], out[:, keep], atol=1e-6)
  np.testing.assert_array_equal(out[:, 2], 0.0)
  # The test can fail: a real speaker's video does change the other outputs.
  other[:, 0] = other[:, 2]
  out3, _ = apply(smoke_params(), mixture, other, mask)
  assert np.abs(np.asarray(out3)[:, 1] - out[:, 1]).max() > 1e-5


def test_activity_is_read_from_each_slot_video_alone():
  mixture, video, mask = make_inputs(2, 3, seed=6)
  apply = jitted_apply()
  _, aux = apply(smoke_params(), mixture, video, mask)
  other_mix = np.random.default_rng(7).normal(size=mixture.shape).astype(np.float32)
  other_video = video.copy()
  other_video[:, 1] = 255 - other_video[:, 1]
  _, aux2 = apply(smoke_params(), other_mix, other_video, mask)
  a, a2 = np.asarray(aux["activity_logits"]), np.asarray(aux2["activity_logits"])
  np.testing.assert_allclose(a2[:, [0, 2]], a[:, [0, 2]], atol=1e-5)
  assert np.abs(a2[:, 1] - a[:, 1]).max() > 1e-4


def test_permuting_speakers_permutes_outputs():
  mixture, video, mask = make_inputs(2, 5, seed=2)
  mask[1, 4] = False
  perm = np.array([3, 0, 4, 1, 2])
  apply = jitted_apply()
  out, aux = apply(smoke_params(), mixture, video, mask)
  out_p, aux_p = apply(smoke_params(), mixture, video[:, perm], mask[:, perm])
  np.testing.assert_allclose(np.asarray(out_p), np.asarray(out)[:, perm], atol=2e-5)
  np.testing.assert_allclose(np.asarray(aux_p["alignment"]),
                             np.asarray(aux["alignment"])[:, perm], atol=1e-5)


@pytest.mark.slow
def test_jit_grad_of_loss_is_finite_and_reaches_every_component():
  mixture, video, mask = make_inputs(2, 3, seed=3)
  sources = np.random.default_rng(4).normal(size=(2, 3, SAMPLES)).astype(np.float32)
  mask[1, 2] = False
  model = smoke()

  def loss_fn(params):
    out, _ = model.apply(params, mixture, video, mask)
    per_source = -signal.si_snr(out, sources)
    return jnp.sum(per_source * mask) / jnp.sum(mask)

  grads = jax.jit(jax.grad(loss_fn))(smoke_params())["params"]
  leaves = jax.tree.leaves(grads)
  assert all(np.isfinite(np.asarray(g)).all() for g in leaves)
  for part in ("audio_encoder", "visual_encoder", "fusion", "separator"):
    norm = sum(float(jnp.sum(g.astype(jnp.float32) ** 2))
               for g in jax.tree.leaves(grads[part]))
    assert norm > 0, part
  # The soft-DTW cost projections learn through the alignment's own gradient.
  aligner = grads["fusion"]["aligner"]
  assert float(jnp.abs(aligner["video_proj"]["kernel"]).max()) > 0


def test_bf16_compute_is_close_to_f32():
  mixture, video, mask = make_inputs(2, 2, seed=5)
  params = smoke_params()
  out32, _ = jitted_apply()(params, mixture, video, mask)
  out16, _ = jitted_apply(dtype="bfloat16")(params, mixture, video, mask)
  assert out16.dtype == jnp.float32
  agreement = np.asarray(signal.si_snr(out16, out32))
  assert agreement.min() > 20.0, agreement  # dB of bf16 output vs f32 output


@pytest.mark.slow
@pytest.mark.parametrize("overrides", [
    dict(phase="griffin_lim", griffin_lim_iters=4),
    dict(fusion_alignment="interpolate"),
    dict(attention_window=(8, 8)),
    dict(make_causal=16),  # the streaming form (tests/stream checks it is causal)
    dict(remat="full"),
])
def test_options_run(overrides):
  overrides = dict(overrides)
  config = model_lib.model_config("smoke", num_speakers=2)
  if "fusion_alignment" in overrides:
    config.fusion.alignment = overrides.pop("fusion_alignment")
  if "make_causal" in overrides:
    model_lib.variants.make_causal(config, window=overrides.pop("make_causal"))
  config.update(overrides)
  model = model_lib.AVSeparator(config)
  mixture, video, mask = make_inputs(1, 2, seed=6)
  params = nn.unbox(jax.jit(model.init)(jax.random.key(1), mixture, video, mask))
  out, aux = jax.jit(model.apply)(params, mixture, video, mask)
  assert out.shape == (1, 2, SAMPLES) and np.isfinite(np.asarray(out)).all()
  if config.fusion.alignment == "interpolate":
    np.testing.assert_allclose(np.asarray(aux["alignment"]).sum(-1), 1.0, atol=1e-5)


def test_full_config_builds_with_adr_dimensions():
  config = model_lib.model_config("full", num_speakers=6)
  model = model_lib.AVSeparator(config)
  samples, frames = 16_000, 25
  args = (jax.ShapeDtypeStruct((1, samples), jnp.float32),
          jax.ShapeDtypeStruct((1, 6, frames, ROI, ROI), jnp.uint8),
          jax.ShapeDtypeStruct((1, 6), jnp.bool_))
  variables = jax.eval_shape(model.init, jax.random.key(0), *args)
  params = variables["params"]
  audio = params["audio_encoder"]["transformer"]
  visual = params["visual_encoder"]["transformer"]
  assert sorted(k for k in audio if k.startswith("block_")) == [f"block_{i}" for i in range(8)]
  assert sorted(k for k in visual if k.startswith("block_")) == [f"block_{i}" for i in range(6)]
  assert audio["block_0"]["attn"]["query"]["kernel"].value.shape == (512, 8 * 64)
  assert visual["block_0"]["attn"]["query"]["kernel"].value.shape == (256, 8 * 32)
  assert audio["block_0"]["attn"]["query"]["kernel"].names == ("embed", "heads")
  stem = params["visual_encoder"]["stem3d"]["conv"]["kernel"].value
  assert stem.shape == (5, 7, 7, 1, 64)
  separator = params["separator"]
  assert sorted(k for k in separator if k.startswith(("shared_", "layer_"))) == [
      *(f"layer_{i}" for i in range(6)), "shared_0", "shared_1"]
  assert separator["layer_0"]["time_attn"]["query"]["kernel"].value.shape == (128, 128)
  # 40 bands padded to the widest, 17 bins (the last takes the Nyquist bin), x (re, im).
  assert separator["band_split"]["kernel"].value.shape == (40, 2 * 17, 128)
  out, aux = jax.eval_shape(model.apply, variables, *args)
  assert out.shape == (1, 6, samples)
  assert aux["audio_tokens"].shape == (1, 101, 512)
  assert aux["audio_tokens"].dtype == jnp.bfloat16


@pytest.mark.parametrize("change,match", [
    (dict(mixture=np.zeros((SAMPLES,), np.float32)), "mixture must have rank 2"),
    (dict(video=np.zeros((1, FRAMES, ROI, ROI), np.uint8)), "video must have rank 5"),
    (dict(mask=np.ones((1, 2, 1), bool)), "speaker_mask must have rank 2"),
    (dict(video=np.zeros((1, 7, FRAMES, ROI, ROI), np.uint8),
          mask=np.ones((1, 7), bool)), "7 speaker slots; this model has 1...6"),
    (dict(video=np.zeros((1, 2, FRAMES + 2, ROI, ROI), np.uint8)),
     "video has 18 frames but 10240 samples"),
    (dict(video=np.zeros((1, 2, FRAMES, 64, 64), np.uint8)), "88x88"),
    (dict(mask=np.ones((2, 2), bool)), "batch/speaker dims disagree"),
    (dict(sample_rate=8000), "16000 Hz, got 8000 Hz"),
])
def test_bad_input_gets_a_clear_error(change, match):
  mixture, video, mask = make_inputs(1, 2)
  kwargs = dict(mixture=mixture, video=video, mask=mask)
  kwargs.update(change)
  sample_rate = kwargs.pop("sample_rate", None)
  with pytest.raises(ValueError, match=match):
    smoke().apply(smoke_params(), kwargs["mixture"], kwargs["video"], kwargs["mask"],
                  sample_rate=sample_rate)


@pytest.mark.slow
def test_video_one_frame_off_is_accepted():
  mixture, video, mask = make_inputs(1, 2)
  out, _ = jitted_apply()(smoke_params(), mixture, video[:, :, :FRAMES - 1], mask)
  assert out.shape == (1, 2, SAMPLES)


@pytest.mark.slow
def test_activity_cue_reaches_the_decoder_and_defaults_to_the_lips():
  config = model_lib.model_config("smoke", num_speakers=2)
  config.decoder.activity_cue = True
  net = model_lib.AVSeparator(config)
  mixture, video, mask = make_inputs(2, 2, seed=8)
  params = nn.unbox(jax.jit(net.init)(jax.random.key(1), mixture, video, mask))
  apply = jax.jit(net.apply)
  lips, aux = apply(params, mixture, video, mask)
  as_given, _ = apply(params, mixture, video, mask,
                      activity_cue=jax.nn.sigmoid(aux["activity_logits"]))
  np.testing.assert_allclose(np.asarray(as_given), np.asarray(lips), atol=1e-6)
  cue = np.zeros((2, 2, FRAMES), np.float32)
  cue[:, 0] = 1.0  # slot 0 speaks throughout, slot 1 never
  oracle, _ = apply(params, mixture, video, mask, activity_cue=cue)
  assert np.abs(np.asarray(oracle) - np.asarray(lips)).max() > 1e-4
  # A per-example share mixes the given cue with the lips': 1 is the given cue, 0 the
  # lips', each example on its own.
  mixed, _ = apply(params, mixture, video, mask, activity_cue=cue,
                   oracle_share=jnp.array([1.0, 0.0]))
  np.testing.assert_allclose(np.asarray(mixed)[0], np.asarray(oracle)[0], atol=1e-6)
  np.testing.assert_allclose(np.asarray(mixed)[1], np.asarray(lips)[1], atol=1e-6)


@pytest.mark.slow
def test_the_cue_through_the_fusion_alignment():
  """decoder.cue_alignment='fusion' maps the cue by the fusion's own alignment: with
  interpolation that is the frame-rate map, so both routes agree; with a shifted cue
  and soft-DTW they differ (the alignment is learned, not the fixed map)."""
  mixture, video, mask = make_inputs(1, 2, seed=3)
  cue = np.zeros((1, 2, FRAMES), np.float32)
  cue[:, 0, ::2] = 1.0
  outs = {}
  for alignment in ("interpolate", "soft_dtw"):
    for route in ("fixed", "fusion"):
      config = model_lib.model_config("smoke", num_speakers=2)
      config.decoder.update(activity_cue=True, cue_alignment=route)
      config.fusion.alignment = alignment
      net = model_lib.AVSeparator(config)
      params = nn.unbox(jax.jit(net.init)(jax.random.key(1), mixture, video, mask))
      outs[alignment, route], _ = jax.jit(net.apply)(params, mixture, video, mask,
                                                     activity_cue=cue)
  np.testing.assert_allclose(np.asarray(outs["interpolate", "fusion"]),
                             np.asarray(outs["interpolate", "fixed"]), atol=1e-6)
  assert np.abs(np.asarray(outs["soft_dtw", "fusion"])
                - np.asarray(outs["soft_dtw", "fixed"])).max() > 1e-5


@pytest.mark.slow
def test_audio_only_baseline_ignores_the_video_and_learns_under_pit():
  import optax
  config = model_lib.model_config("smoke", num_speakers=2)
  model_lib.variants.make_audio_only(config)
  model = model_lib.AVSeparator(config)
  mixture, video, mask = make_inputs(1, 2, seed=3)
  params = nn.unbox(jax.jit(model.init)(jax.random.key(0), mixture, video, mask))["params"]
  assert "visual_encoder" not in params and "fusion" not in params
  apply = jax.jit(lambda p, m, v, k: model.apply({"params": p}, m, v, k))
  out, aux = apply(params, mixture, video, mask)
  assert "alignment" not in aux and "activity_logits" not in aux
  other = np.random.default_rng(9).integers(0, 256, video.shape, dtype=np.uint8)
  np.testing.assert_array_equal(np.asarray(apply(params, mixture, other, mask)[0]),
                                np.asarray(out))
  # The slot embeddings alone make the slots differ; a padded slot stays silent.
  assert np.abs(np.asarray(out[0, 0] - out[0, 1])).max() > 1e-4
  half = apply(params, mixture, video, np.array([[True, False]]))[0]
  assert np.all(np.asarray(half[0, 1]) == 0)

  # A few Adam steps under PIT on one mixture of two sinusoids separate them a little.
  t = np.arange(mixture.shape[1]) / 16_000
  sources = np.stack([np.sin(2 * np.pi * 300 * t), 0.7 * np.sign(np.sin(2 * np.pi * 2_100 * t))])
  sources = (0.1 * sources[None]).astype(np.float32)
  mix = sources.sum(1)

  def loss_fn(p):
    est, _ = model.apply({"params": p}, mix, video, mask)
    per_example, _ = signal.pit_loss(est, sources, mask)
    return per_example.mean()

  opt = optax.adam(3e-3)
  state = opt.init(params)

  @jax.jit
  def step(p, s):
    loss, grads = jax.value_and_grad(loss_fn)(p)
    updates, s = opt.update(grads, s, p)
    return optax.apply_updates(p, updates), s, loss

  losses = []
  for _ in range(30):
    params, state, loss = step(params, state)
    losses.append(float(loss))
  assert losses[-1] < losses[0] - 3.0, losses  # -SI-SNR, dB

  config.decoder.activity_cue = True
  with pytest.raises(ValueError, match="no lips"):
    model_lib.AVSeparator(config).init(jax.random.key(0), mixture, video, mask)
