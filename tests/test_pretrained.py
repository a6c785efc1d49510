"""The shipped weights: they load as `separate`'s default, fit the size budget, and
separate the reference mixtures (made here) as README.md says, by fast_bss_eval."""

import os
import pathlib
import re

import fast_bss_eval.numpy
import numpy as np
import pytest

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


@pytest.mark.parametrize("path", [pretrained.DEFAULT, pretrained.DEFAULT_STREAM],
                         ids=["lite", "stream"])
def test_shipped_weights_separate_as_readme_says(tiny_data_dir, path):
  assert os.path.getsize(path) <= 50e6
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
  # The same weights on the same mixtures: only float rounding may differ.
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
