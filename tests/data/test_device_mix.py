"""On-device mixing: the grain path's contract and statistics, determinism, and the
trainer's `config.input='device'` training and resuming at the right step."""

import dataclasses
import importlib.util
import os
import pathlib
import shutil
import subprocess
import sys

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from scipy import stats

from avsep_jax import checkpoints
from avsep_jax import parallel
from avsep_jax import train
from avsep_jax.data import device_mix
from avsep_jax.data import pipeline

ROOT = pathlib.Path(__file__).resolve().parents[2]
DATASET = "synthav/tiny"
# 2..4 speakers in 4 slots, short clips, no peak scaling (the limit is above any
# mixture's peak, so source levels are the drawn gains): statistics in seconds.
MIX = pipeline.MixConfig(max_speakers=4, min_speakers=2, slots=4, segment_seconds=0.4,
                         peak=1e3)
GAIN_DB = MIX.gain_db
BATCH = 64
# Few settings, each compiled once (make_mix_batch caches): compiles dominate here.
# A low peak limit, so that some mixtures are scaled down.
NOISY = dataclasses.replace(MIX, noise_snr_db=(10.0, 10.0), peak=0.3)


@pytest.fixture(scope="module")
def host_data(tiny_data_dir):
  return device_mix.read_split(DATASET, "train", tiny_data_dir)


@pytest.fixture(scope="module")
def data(host_data):
  return jax.device_put(host_data)


@pytest.fixture(scope="module")
def batch_sharding():
  mesh = parallel.make_mesh((-1, 1, 1), ("data", "fsdp", "tensor"))
  return parallel.batch_sharding(mesh, (("batch", ("data", "fsdp")),))


def mix(data, step, config=MIX, batch_size=BATCH, seed=0):
  fn = device_mix.make_mix_batch(config, batch_size)
  return jax.device_get(fn(device_mix.step_key(seed, step), data))


@pytest.fixture(scope="module")
def device_batches(data):
  return [mix(data, step) for step in range(3)]


@pytest.fixture(scope="module")
def grain_batches(tiny_data_dir):
  it = iter(pipeline.make_dataset(DATASET, "train", tiny_data_dir, MIX, batch_size=8,
                                  seed=0))
  return [next(it) for _ in range(48)]


@pytest.mark.slow
def test_batches_have_the_grain_paths_fields_shapes_and_dtypes(device_batches,
                                                               grain_batches):
  got, want = device_batches[0], grain_batches[0]
  assert got.keys() == want.keys()
  for k in want:
    assert got[k].shape[1:] == want[k].shape[1:] and got[k].dtype == want[k].dtype, k
    assert len(got[k]) == BATCH


def test_speaker_counts_are_uniform_like_the_grain_paths(device_batches, grain_batches):
  counts = [np.concatenate([b["num_speakers"] for b in batches])
            for batches in (device_batches, grain_batches)]
  histograms = np.stack([np.bincount(c, minlength=5)[2:] for c in counts])
  for c, histogram in zip(counts, histograms):
    assert histogram.sum() == len(c)  # nothing outside 2..4
    # Fixed seeds: a p-value this low is a wrong distribution, not bad luck.
    assert stats.chisquare(histogram).pvalue > 1e-3, histogram
  assert stats.chi2_contingency(histograms).pvalue > 1e-3, histograms


def source_levels_db(batches):
  """Real sources' RMS in dB relative to the pipeline's common level (0.05)."""
  rms = np.concatenate([np.sqrt(np.mean(b["sources"] ** 2, -1))[b["speaker_mask"]]
                        for b in batches])
  return 20 * np.log10(rms / 0.05)


def test_source_levels_follow_the_gain_range_like_the_grain_paths(device_batches,
                                                                  grain_batches):
  device, host = source_levels_db(device_batches), source_levels_db(grain_batches)
  uniform = stats.uniform(loc=GAIN_DB[0], scale=GAIN_DB[1] - GAIN_DB[0]).cdf
  for levels in (device, host):
    # The 1e-4 guard on the crop's RMS pulls a level down by ~0.02 dB at speech levels.
    assert levels.min() > GAIN_DB[0] - 0.1 and levels.max() < GAIN_DB[1] + 0.01
    assert stats.kstest(levels, uniform).pvalue > 1e-3
  assert stats.ks_2samp(device, host).pvalue > 1e-3


def assert_padding_is_silent_and_black(batch):
  padded = ~batch["speaker_mask"]
  assert padded.any()
  assert np.all(batch["sources"][padded] == 0) and np.all(batch["video"][padded] == 0)
  assert np.all(batch["av_offset"][padded] == 0)
  np.testing.assert_array_equal(batch["speaker_mask"].sum(1), batch["num_speakers"])
  assert np.all(batch["speaker_mask"][:, :2])  # at least min_speakers, packed first


def test_noise_scales_to_the_snr_padding_stays_silent_and_peaks_are_limited(data):
  batch = mix(data, 0, NOISY)
  assert_padding_is_silent_and_black(batch)
  clean = batch["sources"].sum(1)
  residual = batch["mixture"] - clean
  snr = 10 * np.log10(np.mean(clean ** 2, -1) / np.mean(residual ** 2, -1))
  np.testing.assert_allclose(snr, 10.0, atol=0.01)
  peaks = np.abs(batch["mixture"]).max(-1)
  assert np.all(peaks <= 0.3 + 1e-6) and np.sum(np.isclose(peaks, 0.3)) >= 8


def windows(host_data, u, frames):
  """Every window the grain path's `_crop` can cut from utterance u: (audio, video)."""
  have = int(host_data.frames[u])
  audio = host_data.audio[u, :have * 640].astype(np.float32) / 32768.0
  video = host_data.video[u, :have]
  if have >= frames:
    for start in range(have - frames + 1):
      yield audio[start * 640:(start + frames) * 640], video[start:start + frames]
  for pad in range(frames - have + 1):
    a = np.zeros(frames * 640, np.float32)
    a[pad * 640:(pad + have) * 640] = audio
    yield a, np.pad(video, ((pad, frames - have - pad), (0, 0), (0, 0)), mode="edge")


def speakers_of(host_data):
  """(N,) compact speaker id of each utterance, from the speaker table."""
  speaker = np.full(len(host_data.frames), -1)
  for k, row in enumerate(host_data.speaker_utterances):
    speaker[row[:host_data.speaker_counts[k]]] = k
  return speaker


def matching_utterance(host_data, source, video, frames):
  """The utterance whose frame-aligned window, times one gain, is this source: (index,
  gain, window audio), or None."""
  for u in range(len(host_data.frames)):
    for crop, crop_video in windows(host_data, u, frames):
      if np.array_equal(video, crop_video):
        gain = np.dot(source, crop) / np.dot(crop, crop)
        if np.allclose(source, gain * crop, rtol=0, atol=1e-6):
          return u, gain, crop
  return None


@pytest.mark.parametrize("seconds", [0.4, 3.0])  # 3 s: most tiny utterances are shorter
def test_sources_are_frame_aligned_crops_of_distinct_speakers_times_their_gain(
    host_data, data, seconds):
  config = dataclasses.replace(MIX, segment_seconds=seconds)
  batch = mix(data, 0, config, batch_size=4)
  speaker = speakers_of(host_data)
  assert np.all(speaker >= 0)
  for b in range(4):
    found = []
    for s in np.flatnonzero(batch["speaker_mask"][b]):
      match = matching_utterance(host_data, batch["sources"][b, s], batch["video"][b, s],
                                 config.segment_frames)
      assert match, f"example {b} slot {s}: no frame-aligned crop matches"
      u, gain, crop = match
      level = 20 * np.log10(gain * (np.sqrt(np.mean(crop ** 2)) + 1e-4) / 0.05)
      assert GAIN_DB[0] - 1e-3 <= level <= GAIN_DB[1] + 1e-3
      assert batch["av_offset"][b, s] == host_data.av_offset[u]
      found.append(u)
    assert len(set(speaker[found])) == len(found), "a speaker appears twice"


def test_utterance_draws_are_distinct_speakers_spread_over_every_utterance(host_data,
                                                                          data):
  keys = jax.random.split(jax.random.key(0), 2000)
  drawn = jax.jit(jax.vmap(lambda k: device_mix._draw_utterances(k, data, 4)))(keys)
  speakers = speakers_of(host_data)[np.asarray(drawn)]
  assert all(len(set(row)) == 4 for row in speakers)
  # Equal utterance counts per speaker (tiny): every utterance equally likely.
  histogram = np.bincount(np.asarray(drawn).ravel(), minlength=len(host_data.frames))
  assert stats.chisquare(histogram).pvalue > 1e-3


@pytest.mark.slow
def test_batches_depend_on_seed_and_step_only_and_resume_continues(
    tiny_data_dir, data, batch_sharding):
  def factory(seed):
    return device_mix.make_iterator_factory(DATASET, tiny_data_dir, MIX,
                                            batch_size=BATCH, seed=seed,
                                            augment_video=True, sharding=batch_sharding)

  make = factory(3)
  a, b = make(), make()
  first = [next(a) for _ in range(3)]
  for want in first:
    got = next(b)
    for k in want:
      np.testing.assert_array_equal(got[k], want[k])
  assert not np.array_equal(first[0]["mixture"], first[1]["mixture"])
  assert not np.array_equal(next(factory(4)())["mixture"], first[0]["mixture"])

  resumed = make()
  resumed.set_state(a.get_state())
  assert a.get_state() == {"step": 3}
  np.testing.assert_array_equal(next(resumed)["video"], next(a)["video"])

  # Already global: the trainer's global_batch hands the same arrays on.
  again = parallel.global_batch(first[0], batch_sharding)
  assert all(again[k] is first[0][k] for k in first[0])

  # Augmentation changes the faces only: same mixtures, padded slots still black.
  augmented, plain = jax.device_get(first[0]), mix(data, 0, seed=3)
  np.testing.assert_array_equal(augmented["mixture"], plain["mixture"])
  assert_padding_is_silent_and_black(augmented)
  real = plain["speaker_mask"]
  assert np.mean(np.abs(augmented["video"][real].astype(int) - plain["video"][real])) > 1


def test_split_over_the_memory_budget_is_a_clear_error(tiny_data_dir):
  with pytest.raises(ValueError, match=r"synthav/tiny split 'train' needs .* GiB"):
    device_mix.read_split(DATASET, "train", tiny_data_dir, max_bytes=1 << 20)


def test_device_input_is_refused_with_several_processes(monkeypatch):
  config = smoke_config()
  config.input = "device"
  train.check_config(config)
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  with pytest.raises(ValueError, match="input 'device' runs on one process"):
    train.check_config(config)


def test_a_checkpoint_of_the_other_input_kind_is_a_clear_error(tiny_data_dir, tmp_path):
  mngr = checkpoints.manager(str(tmp_path), keep=2, save_every=1, async_save=False)
  make = device_mix.make_iterator_factory(DATASET, tiny_data_dir, MIX, batch_size=BATCH,
                                          seed=0)
  state = {"x": np.zeros(2, np.float32)}
  saved = make()
  saved.set_state({"step": 5})
  checkpoints.save(mngr, 5, state, saved)
  mngr.wait_until_finished()
  step, _, it = checkpoints.restore_latest(mngr, state, make)
  assert step == 5 and it.get_state() == {"step": 5}
  grain_iter = lambda: iter(grain.MapDataset.range(4).to_iter_dataset())  # noqa: E731
  with pytest.raises(ValueError, match="holds an on-device mixer's step"):
    checkpoints.restore_latest(mngr, state, grain_iter)
  mngr.close()


def smoke_config():
  spec = importlib.util.spec_from_file_location("six", ROOT / "configs" / "6spk.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config("smoke")


def run_main(workdir, data_dir, *overrides):
  """`python -m avsep_jax.main` on the 6-speaker smoke config with on-device input;
  its compilation cache is the test run's (JAX_COMPILATION_CACHE_DIR, conftest)."""
  cmd = [sys.executable, "-m", "avsep_jax.main", f"--config={ROOT}/configs/6spk.py:smoke",
         f"--workdir={workdir}", f"--config.data_dir={data_dir}", "--config.input=device",
         "--config.batch_size=4", "--config.eval_examples=4",
         "--config.eval_every_steps=100", "--config.checkpoint_every_steps=2",
         *overrides]
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  result = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env,
                          timeout=600)
  assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
  return result.stdout + result.stderr


def checkpoint_params(workdir, step):
  path = str(pathlib.Path(workdir) / "checkpoints" / str(step) / "state")
  checkpointer = ocp.PyTreeCheckpointer()
  tree = checkpointer.metadata(path).item_metadata.tree
  as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
  return checkpointer.restore(path, restore_args=as_numpy)["params"]


@pytest.mark.slow
def test_device_input_trains_and_resumes_at_the_right_step(tiny_data_dir, tmp_path):
  straight, resumed = tmp_path / "straight", tmp_path / "resumed"
  run_main(straight, tiny_data_dir, "--config.total_steps=4")
  shutil.copytree(straight, resumed)
  shutil.rmtree(resumed / "checkpoints" / "4")
  out = run_main(resumed, tiny_data_dir, "--config.total_steps=4")
  assert "at step 2" in out, out
  a, b = checkpoint_params(straight, 4), checkpoint_params(resumed, 4)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)
