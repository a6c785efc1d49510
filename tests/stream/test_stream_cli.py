"""`python -m avsep_jax.stream` on an untrained causal smoke checkpoint."""

import functools
import importlib
import json
import pathlib
import wave

import jax
import numpy as np
import pytest

from avsep_jax import pretrained
from avsep_jax import separate
from avsep_jax.model import AVSeparator
from avsep_jax.model import variants

ROOT = pathlib.Path(__file__).resolve().parents[2]
stream_main = importlib.import_module("avsep_jax.stream.__main__")


@pytest.fixture(scope="module")
def stream_checkpoint(make_checkpoint):
  config, _ = separate.load_config(None, str(ROOT / "configs" / "2spk.py") + ":smoke")
  variants.make_causal(config.model, window=20)
  return make_checkpoint(config, "stream_workdir")


@pytest.fixture(name="run_stream")
def fixture_run_stream(run_module):
  return functools.partial(run_module, "avsep_jax.stream")


def read_wav(path):
  with wave.open(str(path)) as w:
    return np.frombuffer(w.readframes(w.getnframes()), np.int16) / 32768.0


def write_input(path, samples, seed=0):
  rng = np.random.default_rng(seed)
  mixture = (0.05 * rng.normal(size=samples)).astype(np.float32)
  video = rng.integers(0, 256, (2, samples // 640, 88, 88), dtype=np.uint8)
  np.savez(path, mixture=mixture, video=video)
  return mixture, video


@pytest.mark.slow  # 27 s with its checkpoint
def test_stream_writes_the_offline_models_voices_and_latency(stream_checkpoint,
                                                             tmp_path, run_stream):
  mixture, video = write_input(tmp_path / "in.npz", 16_000)
  out = tmp_path / "out"
  result = run_stream("--model", stream_checkpoint, "--input", tmp_path / "in.npz",
                      "--output", out, "--no-realtime")
  assert result.returncode == 0, result.stderr
  assert "end-to-end p50/p95/p99" in result.stdout
  report = json.loads((out / "latency.json").read_text())
  assert report["steps"] == -(-(16_000 + 240) // 320)
  assert report["overlap_add_delay_ms"] == 15.0 and report["step_ms"] == 20.0
  # Without real-time pacing, latency = step + overlap-add delay + compute.
  np.testing.assert_allclose(np.asarray(report["latency_s"]) - report["compute_s"], 0.035,
                             atol=1e-6)

  # The voices are the offline model's on the same (level-normalised) input, up to the
  # last win - hop samples, which the stream finishes with the flushing steps' windows.
  loaded = separate.load_model(stream_checkpoint)
  gain = separate.level_gain(mixture)
  expected, _ = jax.jit(AVSeparator(loaded.config.model).apply)(
      {"params": loaded.params}, mixture[None] * gain, video[None], np.ones((1, 2), bool))
  expected = np.asarray(expected)[0] / gain
  for slot in range(2):
    voice = read_wav(out / f"speaker_{slot}.wav")
    assert voice.shape == (16_000,)
    np.testing.assert_allclose(voice[:-240], np.clip(expected[slot], -1, 1)[:-240],
                               atol=2e-3)
    assert np.abs(expected[slot]).max() > 1e-2


@pytest.mark.slow
def test_realtime_pacing_and_bad_input(stream_checkpoint, make_checkpoint, tmp_path,
                                       run_stream):
  write_input(tmp_path / "short.npz", 6_400)
  result = run_stream("--model", stream_checkpoint, "--input", tmp_path / "short.npz",
                      "--output", tmp_path / "rt")
  assert result.returncode == 0, result.stderr
  report = json.loads((tmp_path / "rt" / "latency.json").read_text())
  assert report["realtime"]
  # A step's output cannot be ready before its input and the overlap-add delay are in.
  assert min(report["latency_s"]) >= 0.035 - 1e-3

  offline = make_checkpoint("configs/2spk.py:smoke", "offline_workdir")
  cases = [
      (["--model", offline], "needs a causal model"),
      (["--model", tmp_path], "neither a training workdir"),
  ]
  np.savez(tmp_path / "novideo.npz", mixture=np.zeros(3200, np.float32))
  cases.append((["--model", stream_checkpoint, "--input", tmp_path / "novideo.npz"],
                "lacks ['video']"))
  for args, message in cases:
    args = {"--input": tmp_path / "short.npz", **dict(zip(args[::2], args[1::2]))}
    flat = [x for kv in args.items() for x in kv]
    result = run_stream(*flat, "--output", tmp_path / "bad", "--no-realtime")
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error:") and message in last, last
    assert not (tmp_path / "bad").exists()


@pytest.mark.slow  # 15 s with its checkpoint
def test_weights_files_stream_and_the_missing_default_is_explained(
    stream_checkpoint, tmp_path, monkeypatch):
  # The causal weights in the repository stream without --model.
  shipped = stream_main.load_streamer(None, 20.0)
  assert shipped.config.causal and shipped.config.num_speakers == 6
  loaded = separate.load_model(stream_checkpoint)
  path = str(tmp_path / "stream.safetensors")
  # float32 storage: the model id hashes the weights, which int8 storage would round.
  pretrained.save(path, loaded.params, loaded.config,
                  {"step": loaded.step, "params_key": loaded.params_key},
                  storage="float32")
  want = stream_main.load_streamer(stream_checkpoint, 20.0).model_id  # config + weights
  assert stream_main.load_streamer(path, 20.0).model_id == want
  monkeypatch.setattr(pretrained, "DEFAULT_STREAM", path)
  assert stream_main.load_streamer(None, 20.0).model_id == want
  monkeypatch.setattr(pretrained, "DEFAULT_STREAM", str(tmp_path / "absent.safetensors"))
  with pytest.raises(ValueError, match="no causal weights ship with the code yet"):
    stream_main.load_streamer(None, 20.0)
