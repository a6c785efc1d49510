"""The mixing pipeline: model contract, mixture = sum of sources, padding, determinism."""

import itertools

import numpy as np
import pytest

from avsep_jax import model as model_lib
from avsep_jax.data import pipeline

BATCH = 3


def make(data_dir, split="train", seed=0, **mix):
  config = pipeline.MixConfig(**{"max_speakers": 4, "min_speakers": 2,
                                 "segment_seconds": 1.0, **mix})
  return pipeline.make_dataset("synthav/tiny", split, data_dir, config,
                               batch_size=BATCH, seed=seed)


def take(ds, n):
  return list(itertools.islice(iter(ds), n))


def test_batches_match_the_model_contract(tiny_data_dir):
  batch = take(make(tiny_data_dir), 1)[0]
  assert batch["mixture"].shape == (BATCH, 16000) and batch["mixture"].dtype == np.float32
  assert batch["sources"].shape == (BATCH, 4, 16000)
  assert batch["video"].shape == (BATCH, 4, 25, 88, 88) and batch["video"].dtype == np.uint8
  assert batch["speaker_mask"].shape == (BATCH, 4) and batch["speaker_mask"].dtype == bool
  config = model_lib.model_config("smoke", num_speakers=4)
  model_lib.check_inputs(config, batch["mixture"], batch["video"], batch["speaker_mask"],
                         sample_rate=16000)


def test_mixture_is_the_sum_of_sources_and_padding_is_silent(tiny_data_dir):
  for batch in take(make(tiny_data_dir), 4):
    np.testing.assert_allclose(batch["mixture"], batch["sources"].sum(1), atol=1e-6)
    assert np.abs(batch["mixture"]).max() <= 0.9 + 1e-6
    mask = batch["speaker_mask"]
    np.testing.assert_array_equal(mask.sum(1), batch["num_speakers"])
    assert np.all(mask[:, :2])  # at least min_speakers, packed first
    assert np.all(batch["sources"][~mask] == 0) and np.all(batch["video"][~mask] == 0)
    real = batch["sources"][mask]
    assert np.all(np.sqrt(np.mean(real ** 2, axis=-1)) > 1e-3)


def test_speaker_counts_and_gains_follow_the_config(tiny_data_dir):
  batches = take(make(tiny_data_dir, min_speakers=3, max_speakers=3, gain_db=(0, 0)), 3)
  for batch in batches:
    assert np.all(batch["num_speakers"] == 3)
    rms = np.sqrt(np.mean(batch["sources"] ** 2, axis=-1))
    # Equal gains: equal loudness (up to the shared peak scaling).
    np.testing.assert_allclose(rms / rms[:, :1], 1.0, rtol=0.05)


def test_same_seed_same_batches_and_restored_state_replays(tiny_data_dir):
  a = take(make(tiny_data_dir, seed=3), 3)
  b = take(make(tiny_data_dir, seed=3), 3)
  c = take(make(tiny_data_dir, seed=4), 1)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x["mixture"], y["mixture"])
  assert not np.array_equal(a[0]["mixture"], c[0]["mixture"])

  it = iter(make(tiny_data_dir, seed=5))
  next(it)
  state = it.get_state()
  expected = [next(it) for _ in range(2)]
  fresh = iter(make(tiny_data_dir, seed=5))
  fresh.set_state(state)
  for want in expected:
    got = next(fresh)
    np.testing.assert_array_equal(got["mixture"], want["mixture"])
    np.testing.assert_array_equal(got["video"], want["video"])


def test_noise_and_augmentation(tiny_data_dir):
  config = pipeline.MixConfig(max_speakers=3, min_speakers=2, segment_seconds=1.0,
                              noise_snr_db=(10, 10))
  plain = pipeline.make_dataset("synthav/tiny", "train", tiny_data_dir, config,
                                batch_size=BATCH, seed=1)
  aug = pipeline.make_dataset("synthav/tiny", "train", tiny_data_dir, config,
                              batch_size=BATCH, seed=1, augment_video=True)
  p, a = take(plain, 1)[0], take(aug, 1)[0]
  residual = p["mixture"] - p["sources"].sum(1)
  snr = 10 * np.log10(np.mean(p["sources"].sum(1) ** 2, -1) / np.mean(residual ** 2, -1))
  np.testing.assert_allclose(snr, 10.0, atol=0.2)
  mask = p["speaker_mask"]
  assert np.all(a["video"][~mask] == 0)
  assert np.mean(np.abs(a["video"][mask].astype(int) - p["video"][mask])) > 1.0
  np.testing.assert_array_equal(a["mixture"], p["mixture"])


def test_too_many_speakers_for_the_split_is_an_error(tiny_data_dir):
  with pytest.raises(ValueError, match="this split has only 6"):
    make(tiny_data_dir, split="validation", max_speakers=7, min_speakers=2)


def test_a_batch_can_share_one_speaker_count_and_drop_the_other_slots(tiny_data_dir):
  from avsep_jax import train  # the trainer's slot trimming, on the pipeline's batches
  batches = take(make(tiny_data_dir, same_count_per=BATCH), 40)
  counts = [b["num_speakers"] for b in batches]
  assert all(len(set(c)) == 1 for c in counts)  # one count per batch
  # ... drawn per batch over the whole range, uniformly (chi-square, 2 dof, p = 0.001).
  seen = np.bincount([c[0] for c in counts], minlength=5)[2:]
  assert (seen > 0).all() and ((seen - 40 / 3) ** 2 / (40 / 3)).sum() < 13.8, seen
  again = take(make(tiny_data_dir, same_count_per=BATCH), 40)
  assert [b["num_speakers"][0] for b in again] == [c[0] for c in counts]
  for batch in batches[:6]:
    n = int(batch["num_speakers"][0])
    compact = train.compact_slots(batch)
    for key in [k for k in train.SLOT_KEYS if k in batch]:  # video or cached features
      assert compact[key].shape[:2] == (BATCH, n)
      np.testing.assert_array_equal(compact[key], batch[key][:, :n])
    assert not batch["speaker_mask"][:, n:].any()
    np.testing.assert_array_equal(compact["mixture"], batch["mixture"])
