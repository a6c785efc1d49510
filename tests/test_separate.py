"""`python -m avsep_jax.separate` end to end on real face photos and eSpeak NG speech.

The checkpoint is a smoke-config train state saved through the trainer's checkpoint
module at step 0 (untrained weights: the test checks the plumbing, not the quality),
with the `config.json` the trainer writes beside it.
"""

import functools
import json
import os
import pathlib
import sys
import wave

import numpy as np
import pytest
import soxr
from PIL import Image

from avsep_jax import separate
from avsep_jax.data.synthav import tts
from avsep_jax.vision import avio

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "vision"))
import vision_images  # real photos shared with the vision tests

SIDE = 160  # each face photo downscaled to SIDE x SIDE


def _photo(image):
  return np.asarray(Image.fromarray(image).resize((SIDE, SIDE), Image.BILINEAR))


def _speech():
  """Two eSpeak NG voices saying different GRID sentences, mixed: (T,) float32."""
  a = tts.synthesize("bin blue at f two now", tts.Voice(name="en-us"), 1).audio
  b = tts.synthesize("place red by g nine soon", tts.Voice(name="en-gb-x-rp+f3"), 2).audio
  mix = np.zeros(max(len(a), len(b)), np.float32)
  mix[:len(a)] += a
  mix[:len(b)] += b
  return 0.5 * mix


@pytest.fixture(scope="module")
def media(tmp_path_factory):
  """Input files: two faces with speech, three faces, and the bad inputs."""
  root = tmp_path_factory.mktemp("separate_media")
  astronaut, camera = _photo(vision_images.astronaut()), _photo(vision_images.camera())
  speech = _speech()
  frames = int(np.ceil(len(speech) / 640))
  pair = np.concatenate([astronaut, camera], axis=1)
  paths = {"two": root / "two_faces.mp4", "three": root / "three_faces.mp4",
           "silent": root / "silent.mp4", "audio_only": root / "speech.wav",
           "no_face": root / "coffee.mp4", "garbage": root / "garbage.mp4"}
  # Source at 30 fps and 44.1 kHz: separate resamples to 25 fps / 16 kHz.
  avio.write_video(paths["two"], np.stack([pair] * int(np.ceil(frames * 1.2))), fps=30,
                   audio=soxr.resample(speech, 16_000, 44_100), sample_rate=44_100)
  # A third face in the first 40% of the frames only: the least visible, dropped.
  three = np.zeros((50, SIDE, 3 * SIDE, 3), np.uint8)
  three[:, :, :2 * SIDE] = pair
  three[:20, :, 2 * SIDE:] = astronaut[:, ::-1]
  avio.write_video(paths["three"], three, fps=25, audio=speech[:32000])
  avio.write_video(paths["silent"], np.stack([pair] * 10), fps=25)
  avio.write_audio(paths["audio_only"], speech)
  coffee = vision_images.coffee()[:SIDE, :SIDE]
  avio.write_video(paths["no_face"], np.stack([coffee] * 10), fps=25, audio=speech[:6400])
  paths["garbage"].write_bytes(b"this is not a video\n" * 50)
  return {k: str(v) for k, v in paths.items()}


@pytest.fixture(scope="module")
def checkpoint(make_checkpoint):
  """A training workdir holding an untrained smoke-model checkpoint and config.json."""
  return make_checkpoint("configs/2spk.py:smoke", "separate_workdir")


@pytest.fixture(name="run_separate")
def fixture_run_separate(run_module):
  return functools.partial(run_module, "avsep_jax.separate")


def read_wav(path):
  with wave.open(str(path)) as w:
    assert (w.getnchannels(), w.getsampwidth()) == (1, 2)
    return w.getframerate(), np.frombuffer(w.readframes(w.getnframes()), "<i2")


@pytest.mark.slow
def test_two_faces_give_two_wavs_a_summary_and_mp4s(media, checkpoint, tmp_path,
                                                    run_separate):
  out = tmp_path / "result"
  result = run_separate("--input", media["two"], "--checkpoint", checkpoint,
                        "--output", out, "--mp4", "--chunk_seconds", "1",
                        "--overlap_seconds", "0.4")
  assert result.returncode == 0, result.stderr
  summary = json.loads((out / "summary.json").read_text())
  frames = summary["frames"]
  assert frames == avio.num_frames_at(avio.probe(media["two"]).duration)
  assert summary["sample_rate"] == 16_000 and summary["fps"] == 25
  assert summary["checkpoint"]["step"] == 0 and summary["model_slots"] == 2
  assert summary["chunks"]["count"] >= 2  # > 1 s of video in 1 s chunks
  assert summary["chunks"]["frames"] == 25 and summary["chunks"]["overlap_frames"] >= 10
  assert [t["slot"] for t in summary["tracks"]] == [0, 1]
  assert summary["dropped_tracks"] == []
  # The two faces: one in each half of the frame.
  centres = sorted((t["mean_box"][0] + t["mean_box"][2]) / 2 for t in summary["tracks"])
  assert centres[0] < SIDE < centres[1]
  for t in summary["tracks"]:
    assert t["first_frame"] == 0 and t["last_frame"] == frames - 1
    assert t["end_s"] == pytest.approx(frames / 25)
    rate, pcm = read_wav(out / t["wav"])
    assert rate == 16_000 and len(pcm) == frames * 640
    assert np.all(np.isfinite(pcm)) and np.abs(pcm).max() > 0
    info = avio.probe(out / t["mp4"])
    assert info.has_video and info.has_audio and info.fps == 25
    assert info.duration == pytest.approx(frames / 25, abs=0.1)
  assert sorted(os.listdir(out)) == ["speaker_0.mp4", "speaker_0.wav", "speaker_1.mp4",
                                     "speaker_1.wav", "summary.json"]
  assert sorted(os.listdir(tmp_path)) == ["result"]  # no temporary directory left


@pytest.mark.slow
def test_more_faces_than_slots_keeps_the_most_visible(media, checkpoint, tmp_path,
                                                      run_separate):
  out = tmp_path / "result"
  result = run_separate("--input", media["three"], "--checkpoint", checkpoint,
                        "--output", out)
  assert result.returncode == 0, result.stderr
  assert "dropped track" in result.stdout
  summary = json.loads((out / "summary.json").read_text())
  assert len(summary["tracks"]) == 2 and len(summary["dropped_tracks"]) == 1
  # Shorter than one 6 s chunk: one chunk of the whole video, nothing overlaps.
  assert summary["chunks"] == {"count": 1, "frames": summary["frames"], "overlap_frames": 0}
  dropped = summary["dropped_tracks"][0]
  assert dropped["last_frame"] == 19 and dropped["mean_box"][0] > 2 * SIDE
  assert sorted(p.name for p in out.glob("*.wav")) == ["speaker_0.wav", "speaker_1.wav"]


@pytest.mark.parametrize("name, message", [
    ("missing", "no such file"),
    ("silent", "has no audio stream"),
    ("audio_only", "has no video stream"),
    ("garbage", "cannot read"),
    ("no_face", "no face found"),
])
def test_bad_input_one_error_line_and_no_output(name, message, media, checkpoint,
                                                tmp_path, run_separate):
  path = media.get(name, str(tmp_path / "missing.mp4"))
  out = tmp_path / "new" / "result"
  result = run_separate("--input", path, "--checkpoint", checkpoint, "--output", out)
  assert result.returncode == 1
  errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1 and message in errors[0], result.stderr
  assert result.stderr.strip().splitlines()[-1] == errors[0]
  assert os.listdir(tmp_path) == []  # not even the parent it would have created


def test_bad_checkpoint(media, checkpoint, tmp_path, run_separate):
  out = tmp_path / "result"
  cases = [(tmp_path, "not a training workdir"),
           (checkpoint, "does not fit")]
  for ckpt, message in cases:
    extra = ["--config", f"{ROOT}/configs/2spk.py:lite"] if ckpt == checkpoint else []
    result = run_separate("--input", media["two"], "--checkpoint", ckpt, "--output",
                          out, *extra)
    assert result.returncode == 1
    assert message in result.stderr.strip().splitlines()[-1], result.stderr
    assert not out.exists()


def test_existing_output_is_kept_unless_overwrite(media, checkpoint, tmp_path,
                                                  run_separate):
  out = tmp_path / "result"
  out.mkdir()
  (out / "mine.txt").write_text("keep me")
  result = run_separate("--input", media["two"], "--checkpoint", checkpoint, "--output",
                        out)
  assert result.returncode == 1 and "--overwrite" in result.stderr
  assert os.listdir(out) == ["mine.txt"]


def test_chunks_crossfade_back_to_the_input():
  """With a model that returns the mixture in every slot, the chunked output is the input."""
  rng = np.random.default_rng(0)
  frames, spf = 57, 640
  audio = rng.standard_normal(frames * spf).astype(np.float32)
  rois = np.zeros((2, frames, 8, 8), np.uint8)
  present = np.ones((2, frames), bool)
  calls = []

  def identity(mixture, video, mask):
    calls.append(video.shape)
    return np.repeat(mixture[:, None], video.shape[1], axis=1)

  starts = separate.chunk_starts(frames, 20, 6)
  assert starts == [0, 14, 28, 37]
  out = separate.separate_chunks(identity, audio, rois, present, 3, starts, 20, spf)
  assert out.shape == (2, frames * spf)
  np.testing.assert_allclose(out, np.stack([audio, audio]), rtol=1e-5, atol=1e-5)
  assert set(calls) == {(1, 3, 20, 8, 8)}  # one shape: one compiled program


def test_config_json_round_trip(checkpoint):
  config, source = separate.load_config(checkpoint)
  assert source.endswith("config.json")
  assert config.model.num_speakers == 2
  assert config.model.stft_scales[0] == (512, 400, 160)  # tuples, as the files write them
