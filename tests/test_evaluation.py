"""score_batch against fast_bss_eval and metric sanity, summarize against
scipy.stats, format_table and write_json."""

import json
import math

import fast_bss_eval.numpy
import numpy as np
import pytest
import scipy.signal
import scipy.stats

from avsep_jax import evaluation

SAMPLE_RATE = 16000
NUM_SAMPLES = 40000  # 2.5 s
METRICS = ("si_snr", "si_snri", "si_snri_pit", "sdr", "sdri", "pesq", "stoi")


def _speech_like(num_samples, seed):
  """Voiced-speech stand-in that PESQ detects as speech: a glottal pulse train
  with a gliding f0 through two formant resonators, a syllable-rate envelope
  and a pause; peak 0.5."""
  rng = np.random.default_rng(seed)
  t = np.arange(num_samples) / SAMPLE_RATE
  f0 = 110.0 + 50.0 * np.sin(2 * np.pi * 0.6 * t + rng.uniform(0, 2 * np.pi))
  pulses = np.diff(np.floor(np.cumsum(f0) / SAMPLE_RATE), prepend=0.0)
  voice = scipy.signal.lfilter([1.0], [1.0, -0.95], pulses)
  for formant, bandwidth in ((rng.uniform(500, 800), 80.0),
                             (rng.uniform(1100, 2000), 120.0)):
    radius = np.exp(-np.pi * bandwidth / SAMPLE_RATE)
    theta = 2 * np.pi * formant / SAMPLE_RATE
    voice = scipy.signal.lfilter(
        [1.0 - radius], [1.0, -2 * radius * np.cos(theta), radius**2], voice)
  envelope = 0.1 + np.sin(2 * np.pi * 2.0 * t + rng.uniform(0, np.pi))**2
  envelope[(t > 0.45 * t[-1]) & (t < 0.6 * t[-1])] = 0.0
  signal = voice * envelope
  return (0.5 * signal / np.max(np.abs(signal))).astype(np.float32)


def _scaled(x, reference, snr_db):
  """`x` rescaled to `snr_db` below `reference`'s energy."""
  return x * (np.linalg.norm(reference) / np.linalg.norm(x)
              * 10**(-snr_db / 20))


@pytest.fixture(name="batch", scope="module")
def batch_fixture():
  """(sources (2, 3, T), mixture (2, T), mask (2, 3)); example 0 has two
  speakers and a padded (silent) third slot, example 1 has three."""
  mask = np.array([[True, True, False], [True, True, True]])
  sources = np.stack([
      np.stack([_speech_like(NUM_SAMPLES, 3 * b + s) * mask[b, s]
                for s in range(3)]) for b in range(2)])
  return sources, sources.sum(axis=1), mask


def _degraded(sources, mask, snr_db, seed=0):
  """Each real source plus the next real speaker's speech and white noise,
  each `snr_db` + 3 dB below it (interference-plus-noise at ~`snr_db`);
  padded slots get noise, which must not matter."""
  rng = np.random.default_rng(seed)
  estimates = rng.standard_normal(sources.shape).astype(np.float32)
  for b, s in zip(*np.nonzero(mask)):
    real = np.nonzero(mask[b])[0]
    other = sources[b, real[(list(real).index(s) + 1) % len(real)]]
    noise = rng.standard_normal(NUM_SAMPLES)
    estimates[b, s] = (sources[b, s] + _scaled(other, sources[b, s], snr_db + 3)
                       + _scaled(noise, sources[b, s], snr_db + 3))
  return estimates


@pytest.fixture(name="perfect", scope="module")
def perfect_fixture(batch):
  sources, mixture, mask = batch
  return evaluation.score_batch(sources, sources, mixture, mask)


def test_records_per_real_speaker(batch, perfect):
  assert [r["num_speakers"] for r in perfect] == [2, 2, 3, 3, 3]
  assert all(set(r) == {"num_speakers", *METRICS} for r in perfect)
  sources, mixture, mask = batch
  fast = evaluation.score_batch(sources, sources, mixture, mask,
                                pesq_stoi=False)
  assert all("pesq" not in r and "stoi" not in r for r in fast)


def test_perfect_estimates_score_top(perfect):
  for r in perfect:
    assert r["si_snr"] > 60 and r["sdr"] > 40
    assert r["stoi"] == pytest.approx(1.0, abs=1e-3)
    assert r["pesq"] > 4.5  # wideband PESQ tops out at 4.64


def test_mixture_as_estimate_improves_nothing(batch):
  sources, mixture, mask = batch
  estimates = np.repeat(mixture[:, None], 3, axis=1)
  records = evaluation.score_batch(estimates, sources, mixture, mask,
                                   pesq_stoi=False)
  for r in records:
    assert r["si_snri"] == pytest.approx(0.0, abs=1e-4)
    assert r["sdri"] == pytest.approx(0.0, abs=1e-4)


def test_noisier_estimates_score_lower(batch):
  sources, mixture, mask = batch
  clean = evaluation.score_batch(_degraded(sources, mask, 30.0), sources,
                                 mixture, mask)
  noisy = evaluation.score_batch(_degraded(sources, mask, 10.0), sources,
                                 mixture, mask)
  for c, n in zip(clean, noisy):
    for metric in METRICS:
      assert c[metric] > n[metric], (metric, c, n)


def test_si_snr_matches_fast_bss_eval(batch):
  sources, mixture, mask = batch
  estimates = _degraded(sources, mask, 5.0)
  records = evaluation.score_batch(estimates, sources, mixture, mask,
                                   pesq_stoi=False)
  b, s = np.nonzero(mask)
  refs = sources[b, s][:, None].astype(np.float64)
  expected = fast_bss_eval.numpy.si_sdr(
      refs, estimates[b, s][:, None].astype(np.float64), zero_mean=True)[:, 0]
  baseline = fast_bss_eval.numpy.si_sdr(
      refs, mixture[b][:, None].astype(np.float64), zero_mean=True)[:, 0]
  np.testing.assert_allclose([r["si_snr"] for r in records], expected,
                             rtol=0, atol=1e-3)
  np.testing.assert_allclose([r["si_snri"] for r in records],
                             expected - baseline, rtol=0, atol=1e-3)


def test_si_snri_pit_scores_swapped_slots_like_fast_bss_eval(batch):
  sources, mixture, mask = batch
  estimates = _degraded(sources, mask, 5.0)
  estimates[1] = estimates[1, [2, 0, 1]]  # example 1's voices come out rotated
  records = evaluation.score_batch(estimates, sources, mixture, mask,
                                   pesq_stoi=False)
  rotated = records[2:]
  ref = sources[1][:, None].astype(np.float64)
  best = fast_bss_eval.numpy.si_sdr(sources[1].astype(np.float64),
                                    estimates[1].astype(np.float64), zero_mean=True)
  baseline = fast_bss_eval.numpy.si_sdr(
      ref, np.repeat(mixture[1][None, None], 3, 0).astype(np.float64),
      zero_mean=True)[:, 0]
  np.testing.assert_allclose([r["si_snri_pit"] for r in rotated], best - baseline,
                             rtol=0, atol=1e-3)
  assert all(r["si_snri"] < r["si_snri_pit"] - 10 for r in rotated)
  for r in records[:2]:  # example 0 is in order: both scores agree
    assert r["si_snri_pit"] == pytest.approx(r["si_snri"], abs=1e-4)


def test_undefined_scores_are_nan_not_errors(batch):
  sources, mixture, mask = batch
  estimates = sources.copy()
  estimates[1, 0] = 0.0  # a real speaker the model silenced
  records = evaluation.score_batch(estimates, sources, mixture, mask)
  silenced = records[2]
  assert math.isnan(silenced["pesq"]) and not np.isfinite(silenced["sdr"])
  assert silenced["stoi"] == pytest.approx(0.0, abs=1e-3)
  assert all(np.isfinite(r["pesq"]) for i, r in enumerate(records) if i != 2)
  # 0.2 s: under PESQ's 0.25 s minimum and STOI's 30 frames.
  short = evaluation.score_batch(sources[:, :, :3200], sources[:, :, :3200],
                                 mixture[:, :3200], mask)
  assert all(math.isnan(r["pesq"]) and math.isnan(r["stoi"]) for r in short)
  assert all(np.isfinite(r["si_snr"]) for r in short)
  summary = evaluation.summarize(records)
  assert summary["all"]["pesq"]["n"] == 4
  assert summary["all"]["pesq"]["nonfinite"] == 1


def test_score_batch_rejects_bad_inputs(batch):
  sources, mixture, mask = batch
  with pytest.raises(ValueError, match="16000"):
    evaluation.score_batch(sources, sources, mixture, mask, sample_rate=8000)
  with pytest.raises(ValueError, match="speaker_mask"):
    evaluation.score_batch(sources, sources, mixture, mask.astype(int))
  with pytest.raises(ValueError, match="mixture"):
    evaluation.score_batch(sources, sources, sources, mask)


@pytest.fixture(name="records")
def records_fixture():
  rng = np.random.default_rng(0)
  records = [{"num_speakers": n, "si_snr": float(rng.normal(10, 3)),
              "pesq": float(rng.normal(2.5, 0.5))}
             for n in [2] * 7 + [3] * 5 + [4]]
  records[1]["pesq"] = math.nan  # a failed PESQ
  records[8]["si_snr"] = -math.inf  # SDR-like -inf of a silent estimate
  return records


def _expected(values):
  finite = np.array([v for v in values if np.isfinite(v)])
  low, high = scipy.stats.t.interval(0.95, len(finite) - 1,
                                     loc=np.mean(finite),
                                     scale=scipy.stats.sem(finite))
  return np.mean(finite), (high - low) / 2, len(finite)


def test_summarize_matches_scipy(records):
  summary = evaluation.summarize(records)
  assert list(summary) == ["all", "2", "3", "4"]
  for group, members in (("all", records),
                         ("2", records[:7]), ("3", records[7:12])):
    for metric in ("si_snr", "pesq"):
      values = [r[metric] for r in members]
      mean, ci95, n = _expected(values)
      stats = summary[group][metric]
      assert stats["mean"] == pytest.approx(mean, rel=1e-12)
      assert stats["ci95"] == pytest.approx(ci95, rel=1e-12)
      assert stats["n"] == n
      assert stats["nonfinite"] == len(values) - n
  single = summary["4"]["si_snr"]
  assert single["mean"] == records[12]["si_snr"] and single["n"] == 1
  assert math.isnan(single["ci95"])
  assert set(summary["all"]) == {"si_snr", "pesq"}


def test_format_table(records):
  table = evaluation.format_table(evaluation.summarize(records))
  lines = table.splitlines()
  header = lines[0].split()
  assert header == ["speakers", "n", "si_snr", "pesq"]
  rows = [line.split()[0] for line in lines[2:6]]
  assert rows == ["2", "3", "4", "all"]
  assert lines[5].split()[1] == "13"
  assert "±" in lines[2]
  assert any(line.startswith("pesq: 1 of 13") for line in lines)
  assert len({len(line) for line in lines[:6]}) == 1  # fixed width


def test_write_json_round_trips(records, tmp_path):
  summary = evaluation.summarize(records)
  path = tmp_path / "eval" / "validation_100.json"
  evaluation.write_json(path, summary, step=np.int64(100), checkpoint="ckpt")
  evaluation.write_json(path, summary, step=200, checkpoint="ckpt")  # replaces
  loaded = json.loads(path.read_text())
  assert loaded["step"] == 200 and loaded["checkpoint"] == "ckpt"
  # Non-finite numbers become null: strict JSON has no NaN.
  assert loaded["summary"]["4"]["si_snr"]["ci95"] is None
  for group in loaded["summary"].values():
    for stats in group.values():
      stats.update({k: math.nan for k, v in stats.items() if v is None})
  np.testing.assert_equal(loaded["summary"], summary)
  assert [p.name for p in path.parent.iterdir()] == [path.name]
