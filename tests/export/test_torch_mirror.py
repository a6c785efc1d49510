"""PyTorch mirror vs the JAX model on fresh random weights and inputs (f32)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from avsep_jax.export import convert
from avsep_jax.export import torch_alignment
from avsep_jax.export import torch_separator
from avsep_jax.export import torch_signal
from avsep_jax.model import AVSeparator, model_config
from avsep_jax.model import alignment
from avsep_jax.model import bands
from avsep_jax.model import layers
from avsep_jax.model import separator
from avsep_jax.model import variants
from avsep_jax import signal

TOL = 1e-4


def _inputs(cfg, batch, num_samples, mask, seed=0):
  rng = np.random.default_rng(seed)
  s = cfg.num_speakers
  frames = num_samples * cfg.video_fps // cfg.sample_rate
  mixture = (0.1 * rng.standard_normal((batch, num_samples))).astype(np.float32)
  video = rng.integers(0, 256, (batch, s, frames, cfg.roi_size, cfg.roi_size), np.uint8)
  return mixture, video, np.asarray(mask, bool)


def _init(cfg, mixture, video, mask, seed):
  """Fresh params of AVSeparator(cfg). The band separator's mask head starts near 1/2
  everywhere (its output kernel is scaled by 0.01), so that head is scaled back up:
  its masks then depend on the tokens as a trained model's do, and so does the test."""
  variables = nn.unbox(jax.jit(AVSeparator(cfg).init)(jax.random.PRNGKey(seed), mixture,
                                                      video, mask))
  if cfg.decoder.get("kind") == "bands":
    head = variables["params"]["separator"]["mask"]
    head["out_kernel"] = 100.0 * head["out_kernel"]
  return variables


def _compare(cfg, mixture, video, mask, seed=0):
  variables = _init(cfg, mixture, video, mask, seed)
  want, aux = jax.jit(AVSeparator(cfg).apply)(variables, mixture, video, mask)
  mirror = convert.build_mirror(cfg, variables["params"])
  with torch.no_grad():
    got, got_aux = mirror.forward_with_aux(
        torch.from_numpy(mixture), torch.from_numpy(video), torch.from_numpy(mask))
  want = np.asarray(want)
  assert got.shape == want.shape
  np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=TOL)
  if cfg.get("use_video", True):
    np.testing.assert_allclose(got_aux["activity_logits"].numpy(),
                               np.asarray(aux["activity_logits"]), rtol=0, atol=TOL)
  assert len(got_aux["masks"]) == len(aux["masks"])
  for got_mask, (n_fft, _, _) in zip(got_aux["masks"], cfg.stft_scales):
    want_mask = np.asarray(aux["masks"][str(n_fft)])
    if cfg.decoder.get("kind") == "bands":   # complex, as a pair (real, imag)
      got_mask = got_mask[0].numpy() + 1j * got_mask[1].numpy()
    else:
      got_mask = got_mask.numpy()
    np.testing.assert_allclose(got_mask, want_mask, rtol=0, atol=TOL)
  # Masked slots are silent, real ones are not.
  assert np.all(got.numpy()[~mask] == 0)
  assert np.all(np.abs(got.numpy()[mask]).max(axis=-1) > 0)
  return variables, mirror


def _band_config(num_speakers, causal=False):
  """smoke with two shared and two slot blocks and three band widths (16, 32 and
  65 bins: the last band takes the Nyquist bin), so every block kind runs twice."""
  cfg = model_config("smoke", num_speakers)
  if causal:
    variants.make_causal(cfg, window=20)
  cfg.decoder.update(bands=((16, 4), (32, 2), (64, 2)), shared_layers=2, num_layers=2)
  return cfg


@pytest.mark.slow
@pytest.mark.parametrize("num_speakers,mask,method", [
    (2, [[True, True], [True, False]], "interpolate"),
    (6, [[True, True, False, True, False, False], [True] * 6], "soft_dtw"),
])
def test_mirror_matches_jax(num_speakers, mask, method):
  cfg = model_config("smoke_masks", num_speakers)
  cfg.fusion.alignment = method
  mixture, video, mask = _inputs(cfg, 2, 6_400, mask)
  _compare(cfg, mixture, video, mask)


@pytest.mark.slow  # 20 s
def test_mirror_matches_jax_soft_dtw_odd_length():
  cfg = model_config("smoke_masks", 2)   # soft-DTW alignment, the default
  mixture, video, mask = _inputs(cfg, 1, 3_250, [[True, False]], seed=1)
  _compare(cfg, mixture, video, mask, seed=1)


@pytest.mark.slow  # 8-33 s each
@pytest.mark.parametrize("num_speakers,mask,phase,causal,size", [
    (2, [[True, True], [True, False]], "complex", False, "smoke"),
    (3, [[True, False, True], [True, True, True]], "mixture", False, "bands_x2"),
    (2, [[False, True], [True, True]], "griffin_lim", False, "smoke"),
    (3, [[True, True, False], [True, True, True]], "complex", True, "bands_x2"),
    (2, [[True, True], [True, False]], "complex", False, "audio_only"),
])
def test_mirror_matches_jax_bands(num_speakers, mask, phase, causal, size):
  # The band separator end to end: complex masks as (real, imag) pairs, each phase,
  # causal with a window shorter than the input, and the audio-only baseline's slot
  # embeddings; 'bands_x2' has every block kind twice and three band widths.
  if size == "bands_x2":
    cfg = _band_config(num_speakers, causal)
  else:
    cfg = model_config("smoke", num_speakers)
    if causal:
      variants.make_causal(cfg, window=20)
  if size == "audio_only":
    variants.make_audio_only(cfg)
  if not causal and num_speakers == 2:
    cfg.fusion.alignment = "interpolate"   # soft-DTW's mirror has its own tests
  cfg.phase = phase
  cfg.griffin_lim_iters = 3
  if phase == "griffin_lim":
    cfg.attention_window = (8, 2)
  mixture, video, mask = _inputs(cfg, 2, 4_050 if causal else 4_000, mask, seed=6)
  _compare(cfg, mixture, video, mask, seed=6)


@pytest.mark.parametrize("causal,window", [(False, None), (False, (8, 2)), (True, (20, 0))])
def test_band_separator_matches_flax(causal, window):
  # The separator alone, at the size with every block kind twice: fast enough for
  # the quick tier, where the whole-model comparisons above are slow.
  cfg = _band_config(3, causal).decoder
  b, s, t, f, dc = 2, 3, 30, 257, 24
  rng = np.random.default_rng(8)
  spec = 0.03 * (rng.standard_normal((b, t, f)) + 1j * rng.standard_normal((b, t, f)))
  spec[:, :, 5] = 0   # bins of zero magnitude take the compression's other branch
  spec = spec.astype(np.complex64)
  streams = rng.standard_normal((b, s, t, dc)).astype(np.float32)
  mask = np.array([[True, False, True], [True, True, True]])
  module = separator.BandSeparator(cfg, layers.LayerOptions(causal=causal, window=window))
  params = nn.unbox(jax.jit(module.init)(jax.random.PRNGKey(3), spec, streams, mask))
  head = params["params"]["mask"]
  head["out_kernel"] = 100.0 * head["out_kernel"]   # as `_init`
  want = np.asarray(jax.jit(module.apply)(params, spec, streams, mask))
  mirror = torch_separator.BandSeparator(cfg, f, dc, causal, window).eval()
  mirror.load_state_dict(convert.flax_to_state_dict(params, mirror), strict=True)
  with torch.no_grad():
    re, im = mirror(torch.from_numpy(spec.real.copy()), torch.from_numpy(spec.imag.copy()),
                    torch.from_numpy(streams), torch.from_numpy(mask))
  assert re.shape == im.shape == (b, s, t, f)
  assert np.abs(want - 0.5).max() > 1.0   # the masks vary, slots and bins apart
  np.testing.assert_allclose(re.numpy() + 1j * im.numpy(), want, rtol=0, atol=TOL)


@pytest.mark.parametrize("layout", [((32, 8),), ((16, 4), (32, 2), (64, 2)),
                                    ((2, 16), (4, 8), (8, 8), (16, 8)), ((300, 1),)])
def test_band_layout_matches_flax(layout):
  # The mirror keeps its own copy of the layout (the torch modules import no Flax).
  if sum(w * n for w, n in layout) > 257:
    with pytest.raises(ValueError, match="needs 300 bins"):
      torch_separator.band_edges(257, layout)
    return
  edges = torch_separator.band_edges(257, layout)
  assert edges == bands.band_edges(257, layout) and edges[-1][1] == 257
  for got, want in zip(torch_separator._gather_index(edges), bands._gather_index(edges)):
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("n,m,band", [
    (5, 9, None), (5, 9, 2), (8, 8, None), (8, 8, 1), (16, 5, 3), (1, 4, None), (4, 1, 2),
])
def test_soft_dtw_alignment_matches_jax(n, m, band):
  # Costs in the model's range (1 - cosine); tables taller and wider than square, one
  # row and one column; integer slopes (8/8, 8/4) put cells exactly on the band's edge.
  cost = np.random.default_rng(n * m).uniform(0, 2, (2, 3, n, m)).astype(np.float32)
  want_value, want = alignment.soft_dtw_alignment(jnp.asarray(cost), 0.1, band)
  value, got = torch_alignment.soft_dtw_alignment(torch.from_numpy(cost), 0.1, band)
  np.testing.assert_allclose(got.numpy(), np.asarray(want), rtol=0, atol=1e-5)
  np.testing.assert_allclose(value.numpy(), np.asarray(want_value), rtol=1e-6, atol=0)
  # Off the band the alignment is exactly zero, and each row has mass.
  off = ~alignment.band_mask(n, m, band)
  assert np.all(got.numpy()[..., off] == 0)
  assert np.all(got.numpy().sum(-1) > 0)


def test_soft_dtw_backward_is_the_gradient():
  # The written-out E recursion against torch autograd through the forward table, in
  # float64 so that only a wrong recursion (not rounding) can fail, on a table larger
  # than the JAX comparison's, where float32 rounding alone reaches ~1e-5.
  cost = torch.from_numpy(np.random.default_rng(7).uniform(0, 2, (3, 60, 15)))
  cost.requires_grad_(True)
  value, expected = torch_alignment.soft_dtw_alignment(cost, 0.1, 3)
  (grad,) = torch.autograd.grad(value.sum(), cost)
  np.testing.assert_allclose(expected.detach().numpy(), grad.numpy(), rtol=0, atol=1e-12)


@pytest.mark.slow
def test_mirror_matches_jax_griffin_lim_window():
  cfg = model_config("smoke_masks", 2)
  cfg.fusion.alignment = "interpolate"
  cfg.phase = "griffin_lim"
  cfg.griffin_lim_iters = 3
  cfg.attention_window = (8, 2)
  mixture, video, mask = _inputs(cfg, 2, 4_000, [[True, True], [False, True]], seed=2)
  _compare(cfg, mixture, video, mask, seed=2)


@pytest.mark.slow
@pytest.mark.parametrize("num_speakers,mask,num_samples,activity_cue", [
    (2, [[True, True], [True, False]], 8_000, False),
    (6, [[True, False, True, True, False, False], [True] * 6], 8_050, True),
])
def test_mirror_matches_jax_causal(num_speakers, mask, num_samples, activity_cue):
  # The streaming model: causal STFT framing, CNN and stem padding, 'hold' alignment,
  # no positions, a left-only window shorter than the input; an odd length reaches
  # the causal iSTFT's zero tail.
  cfg = variants.make_causal(model_config("smoke_masks", num_speakers), window=20)
  cfg.decoder.activity_cue = activity_cue
  mixture, video, mask = _inputs(cfg, 2, num_samples, mask, seed=4)
  _compare(cfg, mixture, video, mask, seed=4)


@pytest.mark.parametrize("scale", signal.SCALES)
@pytest.mark.parametrize("causal", [False, True])
def test_stft_istft_match_signal(scale, causal):
  rng = np.random.default_rng(3)
  x = rng.standard_normal((2, 5_001)).astype(np.float32)
  want = np.asarray(signal.stft(x, *scale, causal=causal))
  re, im = torch_signal.STFT(*scale, causal=causal)(torch.from_numpy(x))
  np.testing.assert_allclose(re.numpy(), want.real, atol=2e-4)
  np.testing.assert_allclose(im.numpy(), want.imag, atol=2e-4)
  spec = want * rng.uniform(0, 1, want.shape).astype(np.float32)
  back = np.asarray(signal.istft(spec, *scale, length=5_001, causal=causal))
  got = torch_signal.ISTFT(*scale, causal=causal)(
      torch.from_numpy(spec.real.copy()), torch.from_numpy(spec.imag.copy()), 5_001)
  np.testing.assert_allclose(got.numpy(), back, rtol=0, atol=1e-5)


@pytest.mark.slow  # 13 s
def test_safetensors_round_trip_and_wrong_config(tmp_path):
  cfg = model_config("smoke_masks", 2)
  cfg.fusion.alignment = "interpolate"
  mixture, video, mask = _inputs(cfg, 1, 3_200, [[True, True]])
  model = AVSeparator(cfg)
  variables = jax.jit(model.init)(jax.random.PRNGKey(0), mixture, video, mask)
  mirror = convert.build_mirror(cfg, variables["params"])
  path = tmp_path / "smoke.safetensors"
  convert.save_safetensors(path, mirror, cfg)
  loaded, loaded_cfg = convert.load_safetensors(path, expected_config=cfg)
  args = [torch.from_numpy(a) for a in (mixture, video, mask)]
  with torch.no_grad():
    np.testing.assert_array_equal(loaded(*args).numpy(), mirror(*args).numpy())
  # The Flax tree comes back unchanged.
  back = convert.state_dict_to_flax(loaded.state_dict(), loaded)
  flat_back = convert._flatten(back)
  flat_orig = convert._flatten(convert._unbox(variables["params"]))
  assert flat_back.keys() == flat_orig.keys()
  for k, v in flat_orig.items():
    np.testing.assert_array_equal(flat_back[k], v, err_msg=str(k))

  other = model_config("smoke_masks", 6)
  with pytest.raises(convert.ParamsMismatchError, match="num_speakers"):
    convert.load_safetensors(path, expected_config=other)
  lite = model_config("lite_masks", 2)
  lite.fusion.alignment = "interpolate"
  with pytest.raises(convert.ParamsMismatchError, match="do not fit"):
    convert.build_mirror(lite, variables["params"])
  soft = model_config("smoke_masks", 2)   # soft_dtw has aligner projections the params lack
  with pytest.raises(convert.ParamsMismatchError, match="aligner"):
    convert.build_mirror(soft, variables["params"])
  bands_cfg = model_config("smoke", 2)
  bands_cfg.fusion.alignment = "interpolate"
  with pytest.raises(convert.ParamsMismatchError, match="separator/band_split"):
    convert.build_mirror(bands_cfg, variables["params"])
  not_ours = tmp_path / "other.safetensors"
  from safetensors.torch import save_file
  save_file({"x": torch.zeros(1)}, str(not_ours))
  with pytest.raises(ValueError, match="not a model file"):
    convert.load_safetensors(not_ours)


@pytest.mark.slow  # 14 s
def test_safetensors_round_trip_bands(tmp_path):
  # The per-band weights are parameters of the band modules, mapped by their Flax names.
  cfg = model_config("smoke", 2)
  cfg.fusion.alignment = "interpolate"
  mixture, video, mask = _inputs(cfg, 1, 3_200, [[True, False]])
  variables = _init(cfg, mixture, video, mask, seed=0)
  mirror = convert.build_mirror(cfg, variables["params"])
  path = tmp_path / "bands.safetensors"
  convert.save_safetensors(path, mirror, cfg)
  loaded, loaded_cfg = convert.load_safetensors(path, expected_config=cfg)
  assert loaded_cfg.decoder.kind == "bands"
  args = [torch.from_numpy(a) for a in (mixture, video, mask)]
  with torch.no_grad():
    np.testing.assert_array_equal(loaded(*args).numpy(), mirror(*args).numpy())
  flat_back = convert._flatten(convert.state_dict_to_flax(loaded.state_dict(), loaded))
  flat_orig = convert._flatten(convert._unbox(variables["params"]))
  assert flat_back.keys() == flat_orig.keys()
  for k, v in flat_orig.items():
    np.testing.assert_array_equal(flat_back[k], v, err_msg=str(k))
  assert ("separator", "band_split", "kernel") in flat_back
