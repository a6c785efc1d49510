"""The shipped weights: they load as `separate`'s default, fit the size budget, and
separate the reference mixtures (made here) as README.md says, by fast_bss_eval; the
file format's int8 and float32 storage round trips."""

import os
import pathlib
import re

import fast_bss_eval.numpy
import ml_collections
import numpy as np
import pytest
from flax import traverse_util

from avsep_jax import pretrained
from avsep_jax import separate

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _readme_figure(name):
  """The reference SI-SNRi that README.md quotes for the shipped weights `name`."""
  text = (ROOT / "README.md").read_text()
  found = re.search(rf"`{name}` on the reference mixtures: \*\*(-?\d+\.\d+) dB\*\*",
                    text)
  assert found, f"README.md quotes no reference figure for {name}"
  return float(found.group(1))


def _fast_bss_eval_si_snri(estimates, mixtures):
  """(N,) SI-SNRi of each mixture over its speakers, by fast_bss_eval; slot k is
  scored against voice k (one reference per call: no permutation is solved)."""
  n, s = np.nonzero(mixtures["speaker_mask"])
  refs = mixtures["sources"][n, s][:, None].astype(np.float64)
  separated = fast_bss_eval.numpy.si_sdr(
      refs, estimates[n, s][:, None].astype(np.float64), zero_mean=True)[:, 0]
  baseline = fast_bss_eval.numpy.si_sdr(
      refs, mixtures["mixture"][n][:, None].astype(np.float64), zero_mean=True)[:, 0]
  per_speaker = separated - baseline
  return np.bincount(n, per_speaker) / np.bincount(n)


@pytest.mark.slow
@pytest.mark.parametrize("path", [pretrained.DEFAULT, pretrained.DEFAULT_STREAM],
                         ids=["lite", "stream"])
def test_shipped_weights_separate_as_readme_says(tiny_data_dir, path):
  # int8 storage: both files and the code fit tests/test_repo_size.py's budget.
  assert os.path.getsize(path) <= 10e6
  if path == pretrained.DEFAULT:
    loaded = separate.load_model(None)  # what `separate` runs without --checkpoint
  else:  # what `stream` runs without --model, here on whole mixtures (the same outputs)
    loaded = separate.load_shipped(path)
    assert loaded.config.model.causal
  assert loaded.which == "shipped" and loaded.num_slots == 6
  _, _, card = pretrained.load(path)
  mixtures = pretrained.reference_mixtures(tiny_data_dir, loaded.num_slots)
  count = pretrained.REFERENCE_COUNT
  assert mixtures["speaker_mask"].sum(axis=1).tolist() == [2] * count
  separate_fn = separate.make_separate_fn(loaded)
  estimates = np.concatenate([
      separate_fn(mixtures["mixture"][i:i + 4], mixtures["video"][i:i + 4],
                  mixtures["speaker_mask"][i:i + 4])
      for i in range(0, count, 4)])
  scores = _fast_bss_eval_si_snri(estimates, mixtures)
  assert abs(scores.mean() - _readme_figure(os.path.basename(path).split(".")[0])) <= 1.5
  # The card's figures are the float32 weights'; int8 storage moves no mixture's score
  # by more than 0.05 dB (measured 0.010 lite, 0.034 stream), other float rounding less.
  assert card["storage"]["scheme"] == "int8"
  np.testing.assert_allclose(scores, card["reference"]["per_mixture"], atol=0.05)


def test_shipped_weights_errors(tmp_path):
  with pytest.raises(separate.CheckpointError, match="carry their own config"):
    separate.load_model(None, config_arg="configs/2spk.py:lite")
  with pytest.raises(separate.CheckpointError, match="no shipped weights"):
    separate.load_shipped(str(tmp_path / "absent.safetensors"))
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  foreign = str(tmp_path / "foreign.safetensors")
  save_file({"w": np.zeros(3, np.float32)}, foreign)
  with pytest.raises(separate.CheckpointError,
                     match="not a file of avsep_jax.pretrained"):
    separate.load_shipped(foreign)
  old = str(tmp_path / "float32_v1.safetensors")  # the format before int8 storage
  save_file({"w": np.zeros((3, 2), np.float32)}, old,
            metadata={"format": "avsep_jax.pretrained/1", "config": "{}", "card": "{}"})
  with pytest.raises(separate.CheckpointError, match="'avsep_jax.pretrained/1', want "
                     "'avsep_jax.pretrained/2'"):
    separate.load_shipped(old)
  with pytest.raises(ValueError, match="storage 'bf16' is none of"):
    pretrained.save(old, {"w": np.zeros(3)}, ml_collections.ConfigDict(), {}, "bf16")


def test_storage_round_trips(tmp_path):
  rng = np.random.default_rng(0)
  params = {"dense": {"kernel": rng.normal(size=(64, 48)).astype(np.float32),
                      "bias": rng.normal(size=(48,)).astype(np.float32)},
            "conv": {"kernel": rng.normal(size=(3, 3, 1, 8)) * np.arange(8)},  # 0: zeros
            "slope": np.float32(0.25)}
  config = ml_collections.ConfigDict({"model": {"channels": (16, 32)}})
  card = {"step": 7, "reference": {"si_snri": 1.0}}
  flat = {"/".join(k): np.asarray(v, np.float32)
          for k, v in traverse_util.flatten_dict(params).items()}
  sizes = {}
  for storage in ("float32", "int8"):
    path = str(tmp_path / f"{storage}.safetensors")
    pretrained.save(path, params, config, card, storage)
    sizes[storage] = os.path.getsize(path)
    got_config, got, got_card = pretrained.load(path)
    assert got_config == config and got_card == card
    got = {"/".join(k): v for k, v in traverse_util.flatten_dict(got).items()}
    assert got.keys() == flat.keys()
    for name, want in flat.items():
      assert got[name].dtype == np.float32 and got[name].shape == want.shape, name
      if storage == "float32" or want.ndim < 2:
        np.testing.assert_array_equal(got[name], want, err_msg=name)
      else:  # off by at most half a step of its output channel's scale
        step = np.abs(want).reshape(-1, want.shape[-1]).max(axis=0) / 127
        assert np.all(np.abs(got[name] - want) <= step / 2 * (1 + 1e-6)), name
  assert not got["conv/kernel"][..., 0].any()
  assert sizes["int8"] < sizes["float32"] / 2
