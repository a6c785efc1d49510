"""The band separator's output path against oracle masks, and its band split."""

import functools

import fast_bss_eval
import flax.linen as nn
import jax
import ml_collections
import numpy as np
import pytest

from avsep_jax import model as model_lib
from avsep_jax import signal
from avsep_jax.model import avsep
from avsep_jax.model import bands
from tests.model import test_avsep

SCALE = signal.SCALES[0]


def speech_like(seed, samples=16_000):
  """A voiced-speech stand-in: a harmonic series on a gliding pitch, syllable-rate
  amplitude modulation, a little noise. Two of them overlap in time and frequency."""
  rng = np.random.default_rng(seed)
  t = np.arange(samples) / 16_000
  f0 = rng.uniform(100, 220) * (1 + 0.1 * np.sin(2 * np.pi * rng.uniform(0.5, 2) * t))
  phase = 2 * np.pi * np.cumsum(f0) / 16_000
  voice = sum(np.sin(k * phase + rng.uniform(0, 2 * np.pi)) / k for k in range(1, 30))
  envelope = np.clip(np.sin(2 * np.pi * rng.uniform(3, 5) * t + rng.uniform(0, 6)), 0, 1)
  return (0.1 * voice * envelope + 0.003 * rng.normal(size=samples)).astype(np.float32)


def oracle_estimates(sources):
  """(S, T) sources -> {phase: (S, T) estimates} through `avsep.reconstruct`."""
  mixture = sources.sum(0, keepdims=True)
  spec = signal.stft(mixture, *SCALE)                              # (1, T_k, F)
  source_specs = signal.stft(sources[None], *SCALE)                # (1, S, T_k, F)
  x = np.asarray(spec)[:, None]
  ratio = np.where(np.abs(x) > 0, np.asarray(source_specs) / np.where(x == 0, 1, x), 0)
  return {
      "complex": avsep.reconstruct(spec, ratio, SCALE, sources.shape[-1], "complex"),
      "mixture": avsep.reconstruct(spec, np.clip(np.abs(ratio), 0, 1), SCALE,
                                   sources.shape[-1], "mixture"),
  }


def test_oracle_complex_mask_reaches_the_source_and_the_magnitude_mask_is_capped():
  sources = np.stack([speech_like(0), speech_like(1)])
  estimates = oracle_estimates(sources)
  si_sdr = {phase: np.asarray(fast_bss_eval.si_sdr(sources, np.asarray(est[0]),
                                                    zero_mean=False))
            for phase, est in estimates.items()}
  assert si_sdr["complex"].min() > 40.0, si_sdr
  # The clipped ratio mask on the mixture's phase: what a perfect sigmoid head gets.
  assert si_sdr["mixture"].max() < 25.0, si_sdr


@functools.lru_cache(maxsize=None)
def model(**overrides):
  """`smoke` with 2 slots (and `make_causal`'s window when causal=W)."""
  config = model_lib.model_config("smoke", num_speakers=2)
  overrides = dict(overrides)
  if "causal" in overrides:
    model_lib.variants.make_causal(config, window=overrides.pop("causal"))
  config.update(overrides)
  m = model_lib.AVSeparator(config)
  mixture, video, mask = test_avsep.make_inputs(1, 2)
  params = nn.unbox(jax.jit(m.init)(jax.random.key(0), mixture, video, mask))
  return m, params, jax.jit(m.apply)


def test_model_output_is_its_masks_through_the_output_path():
  m, params, apply = model()
  mixture, video, mask = test_avsep.make_inputs(2, 2)
  mask[1, 1] = False
  out, aux = apply(params, mixture, video, mask)
  masks = aux["masks"]["512"]
  assert masks.dtype == np.complex64 and m.config.decoder.kind == "bands"
  assert list(aux["masks"]) == ["512"] and aux["scale_waveforms"].shape[1] == 1
  spec = signal.stft(mixture, *SCALE)
  want = np.array(signal.istft(masks * spec[:, None], *SCALE, length=mixture.shape[1]))
  want[1, 1] = 0.0
  np.testing.assert_allclose(np.asarray(out), want, atol=1e-6)


@pytest.mark.parametrize("variant", ["full", "lite", "smoke"])
def test_band_layouts_tile_the_spectrum_low_bands_finest(variant):
  layout = model_lib.model_config(variant).decoder.bands
  edges = bands.band_edges(257, layout)
  assert edges[0][0] == 0 and edges[-1][1] == 257
  assert all(a[1] == b[0] for a, b in zip(edges, edges[1:]))
  widths = [stop - start for start, stop in edges]
  assert widths == sorted(widths)
  # The mask head's scatter puts band slots back in bin order.
  index, valid = bands._gather_index(edges)
  np.testing.assert_array_equal(index.reshape(-1)[np.flatnonzero(valid)], np.arange(257))


def test_a_layout_wider_than_the_spectrum_is_refused():
  with pytest.raises(ValueError, match="needs 288 bins"):
    bands.band_edges(257, ((32, 9),))


def test_mask_starts_at_half_the_mixture():
  _, params, apply = model()
  mixture, video, mask = test_avsep.make_inputs(1, 2)
  _, aux = apply(params, mixture, video, mask)
  masks = np.asarray(aux["masks"]["512"])
  # The output layer starts small: every bin's mask near 1/2 + 0i, so every slot
  # starts with a non-zero estimate that SI-SNR has a gradient for.
  np.testing.assert_allclose(masks.real, 0.5, atol=0.1)
  np.testing.assert_allclose(masks.imag, 0.0, atol=0.1)


def test_padded_slot_changes_nothing_and_slot_order_is_followed():
  _, params, apply = model()
  mixture, video, mask = test_avsep.make_inputs(1, 2, seed=3)
  alone, _ = apply(params, mixture, video[:, :1], mask[:, :1])
  padded, _ = apply(params, mixture, video, np.array([[True, False]]))
  np.testing.assert_allclose(np.asarray(padded[:, 0]), np.asarray(alone[:, 0]), atol=1e-5)
  assert not np.asarray(padded[:, 1]).any()
  both, _ = apply(params, mixture, video, mask)
  swapped, _ = apply(params, mixture, video[:, ::-1], mask)
  np.testing.assert_allclose(np.asarray(swapped), np.asarray(both)[:, ::-1], atol=1e-5)


def test_causal_separator_does_not_look_ahead():
  _, params, apply = model(causal=16)
  mixture, video, mask = test_avsep.make_inputs(1, 2, seed=4)
  later = mixture.copy()
  cut = 6_400
  later[:, cut:] = 0.0   # change only the future of sample `cut`
  out, _ = apply(params, mixture, video, mask)
  out2, _ = apply(params, later, video, mask)
  # A causal STFT frame ends at its last sample; overlap-add finishes a sample
  # win - hop samples after it arrives (signal.causal_padding).
  done = cut - (SCALE[1] - SCALE[2])
  np.testing.assert_allclose(np.asarray(out)[..., :done], np.asarray(out2)[..., :done],
                             atol=1e-5)
  assert np.abs(np.asarray(out)[..., cut:] - np.asarray(out2)[..., cut:]).max() > 1e-3


@pytest.mark.parametrize("overrides", [dict(attention_impl="pallas"),
                                       dict(phase="griffin_lim", griffin_lim_iters=2),
                                       dict(phase="mixture"), dict(remat="full")])
def test_options_run(overrides):
  _, params, apply = model()
  out, _ = model(**overrides)[2](params, *test_avsep.make_inputs(1, 2, seed=6))
  assert out.shape == (1, 2, test_avsep.SAMPLES) and np.isfinite(np.asarray(out)).all()


def test_weights_of_the_mask_decoder_are_refused_by_a_band_config():
  from avsep_jax import checkpoints  # pylint: disable=g-import-not-at-top
  from avsep_jax import loading  # pylint: disable=g-import-not-at-top
  config = ml_collections.ConfigDict({"model": model_lib.model_config("smoke_masks", 2)})
  old = loading.abstract_params(config)
  config.model = model_lib.model_config("smoke", 2)
  mismatch = checkpoints.params_mismatch(old, loading.abstract_params(config))
  assert mismatch == ("the checkpoint has modules ['decoder'] where the config has "
                      "['separator']: another architecture; load it with the config it "
                      "was trained with")
