"""The causal model and its step-by-step streaming: nothing looks ahead, the stream
equals the offline model shifted by the stated delay, misuse gets clear errors."""

import functools

import flax.linen as nn
import jax
import numpy as np
import pytest

from avsep_jax import model as model_lib
from avsep_jax.model import variants
from avsep_jax.stream import Streamer
from avsep_jax.stream import step as step_lib

SAMPLES = 16_000   # 1 s: longer than the test window, so caches roll over
FRAMES = 25


def stream_config(num_speakers, activity_cue=False, variant="smoke_masks", **decoder):
  """Smoke-sized streaming model with a short window (20 audio frames, 5 video);
  `decoder` overrides `config.decoder` keys."""
  config = variants.make_causal(variants.model_config(variant, num_speakers), window=20)
  config.decoder.update(activity_cue=activity_cue, **decoder)
  return config


@functools.lru_cache(maxsize=None)
def model_and_params(num_speakers, activity_cue=False, variant="smoke_masks", **decoder):
  config = stream_config(num_speakers, activity_cue, variant, **decoder)
  net = model_lib.AVSeparator(config)
  mixture, video, mask = inputs(1, num_speakers)
  params = nn.unbox(jax.jit(net.init)(jax.random.key(3), mixture, video, mask))["params"]
  if variant == "smoke":
    # The mask head starts near 1/2 everywhere (its output kernel is scaled by 0.01);
    # scaled back up, its masks depend on the tokens as a trained model's do.
    head = params["separator"]["mask"]
    head["out_kernel"] = 100.0 * head["out_kernel"]
  return config, net, params


def inputs(batch, speakers, seed=0):
  rng = np.random.default_rng(seed)
  mixture = (0.1 * rng.normal(size=(batch, SAMPLES))).astype(np.float32)
  video = rng.integers(0, 256, (batch, speakers, FRAMES, 88, 88), dtype=np.uint8)
  return mixture, video, np.ones((batch, speakers), bool)


def offline(net, params, mixture, video, mask):
  out, _ = jax.jit(net.apply)({"params": params}, mixture, video, mask)
  return np.asarray(out)


def test_stream_variant_is_lite_made_causal():
  lite, stream = variants.model_config("lite"), variants.model_config("stream")
  assert stream.causal and tuple(stream.attention_window) == (100, 0)
  assert stream.fusion.alignment == "hold" and len(stream.stft_scales) == 1
  assert stream.audio.d_model == lite.audio.d_model
  with pytest.raises(ValueError, match="fusion.alignment='hold'"):
    lite.causal = True
    model_lib.avsep.check_causal(lite)
  masks = variants.model_config("lite_masks")  # three STFT scales
  with pytest.raises(ValueError, match="one STFT scale"):
    masks.causal = True
    model_lib.avsep.check_causal(masks)
  step_lib.check_streamable(variants.make_causal(variants.model_config("lite")))


@pytest.mark.slow
def test_causal_model_output_ignores_later_input():
  config, net, params = model_and_params(2)
  mixture, video, mask = inputs(1, 2)
  base = offline(net, params, mixture, video, mask)
  later = mixture.copy()
  later[:, 8000:] = 0.0
  # Frame 13 arrives at 0.52 s = sample 8320, after the audio change.
  changed = video.copy()
  changed[:, :, 13:] = 0
  diff = np.abs(offline(net, params, later, changed, mask) - base).max(axis=(0, 1))
  first = int(np.argmax(diff > 0))
  # The window of the frame ending at 8160 starts at 7760: its first sample (Hann
  # weight 0) is the first that may change, win - hop = 240 samples before 8000.
  delay = config.stft_scales[0][1] - config.stft_scales[0][2]
  assert first == 8000 - delay + 1, first


# Each case compiles its own step functions (18-24 s on 2 cores): the fast tier keeps the
# one with an absent slot, the activity cue and a step shorter than the window's.
@pytest.mark.parametrize("num_speakers,absent,activity_cue,step_ms", [
    pytest.param(2, (), False, 20, marks=pytest.mark.slow), (2, (1,), True, 10),
    pytest.param(6, (2, 4, 5), False, 40, marks=pytest.mark.slow),
    pytest.param(6, (), True, 20, marks=pytest.mark.slow)])
def test_stream_equals_offline_shifted_by_the_delay(num_speakers, absent, activity_cue,
                                                    step_ms):
  check_stream_equals_offline(model_and_params(num_speakers, activity_cue), absent,
                              step_ms)


def check_stream_equals_offline(model, absent, step_ms):
  """Streams a batch of two recordings (the second without the `absent` slots) in steps
  of `step_ms` and compares them with the offline model shifted by the delay."""
  config, net, params = model
  num_speakers = config.num_speakers
  mixture, video, mask = inputs(2, num_speakers, seed=num_speakers)
  mask[1, list(absent)] = False
  expected = offline(net, params, mixture, video, mask)
  streamer = Streamer(config, params, step_ms=step_ms)
  assert streamer.delay == 240 and streamer.step_samples == 16 * step_ms
  out = streamer.run(mixture, video, mask)
  d = streamer.delay
  assert out.shape == expected.shape
  np.testing.assert_allclose(out[..., d:], expected[..., :-d], rtol=0, atol=1e-4)
  assert np.abs(expected).max() > 1e-2  # not comparing silence
  np.testing.assert_array_equal(out[..., :d], 0.0)
  np.testing.assert_array_equal(out[1, list(absent)], 0.0)


# The band separator (`smoke`, with the activity cue): the fast tier keeps 2 slots
# with an absent one and one-hop steps; 3 slots step by two hops; the last case has
# bands of three widths, two shared and two slot blocks.
@pytest.mark.parametrize("num_speakers,absent,step_ms,decoder", [
    (2, (1,), 10, {}),
    pytest.param(3, (0,), 20, {}, marks=pytest.mark.slow),
    pytest.param(3, (1,), 20, dict(bands=((4, 4), (8, 4), (16, 2)), shared_layers=2,
                                   num_layers=2), marks=pytest.mark.slow)])
def test_band_separator_stream_equals_offline_shifted_by_the_delay(
    num_speakers, absent, step_ms, decoder):
  check_stream_equals_offline(
      model_and_params(num_speakers, True, "smoke", **decoder), absent, step_ms)


def test_band_separator_state_has_its_caches_only():
  config = stream_config(3, variant="smoke",
                         bands=((4, 4), (8, 4), (16, 2)), shared_layers=2, num_layers=3)
  state = jax.eval_shape(functools.partial(step_lib.init_state, config),
                         jax.ShapeDtypeStruct((2, 3), bool))
  # 10 bands, 2 heads of 8, the last 20 frames.
  shapes = {k: v.shape for k, v in state.items() if k.startswith("separator")}
  assert shapes == {**{f"separator_shared_kv_{i}": (2, 2, 10, 20, 2, 8) for i in range(2)},
                    **{f"separator_kv_{i}": (2, 2, 3, 10, 20, 2, 8) for i in range(3)}}
  assert not [k for k in state if k.startswith("decoder")]
  masks = jax.eval_shape(functools.partial(step_lib.init_state, stream_config(3)),
                         jax.ShapeDtypeStruct((2, 3), bool))
  assert not [k for k in masks if k.startswith("separator")]
  assert "decoder_time_kv_0" in masks and "decoder_cross_kv_0" in masks


def test_misuse_gets_a_clear_error():
  config, _, params = model_and_params(2, activity_cue=True)  # the fast tier's case
  streamer = Streamer(config, params, step_ms=20)
  mixture, video, mask = inputs(1, 2)
  state = streamer.init(mask)
  with pytest.raises(ValueError, match=r"an audio step is \(B, 320\) samples"):
    streamer.push_audio(state, mixture[:, :300])
  with pytest.raises(ValueError, match="one frame of shape"):
    streamer.push_video(state, video[:, :, :2])
  # A state from a model with other weights, and one from another config.
  other = Streamer(config, jax.tree.map(lambda p: p + 1.0, params))
  with pytest.raises(ValueError, match="state is from another model"):
    streamer.push_audio(other.init(mask), mixture[:, :320])
  config6 = stream_config(6, activity_cue=False)
  # Zero weights of the right shapes: the check is on the model, not its values.
  params6 = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), nn.unbox(jax.eval_shape(
      model_lib.AVSeparator(config6).init, jax.random.key(0), *inputs(1, 6)))["params"])
  with pytest.raises(ValueError, match="state is from another model"):
    streamer.push_audio(Streamer(config6, params6).init(np.ones((1, 6), bool)),
                        mixture[:, :320])
  with pytest.raises(ValueError, match="whole number of 10 ms hops"):
    Streamer(config, params, step_ms=15)
  with pytest.raises(ValueError, match="needs a causal model"):
    Streamer(variants.model_config("smoke_masks", 2), params)
