"""Video/audio I/O: 30 fps + 44.1 kHz stereo in, 25 fps + 16 kHz mono out; bad inputs."""

import numpy as np
import pytest

from avsep_jax.vision import avio

SRC_FPS, SRC_FRAMES, SRC_RATE = 30, 60, 44_100


def _bar_frames(n, width=160, height=48):
  """Frame j shows a white vertical bar at x = 2j: the frame index survives compression."""
  frames = np.zeros((n, height, width, 3), np.uint8)
  for j in range(n):
    frames[j, :, 2 * j:2 * j + 2] = 255
  return frames


def _frame_index(frame):
  return int(np.argmax(frame[..., 0].astype(float).mean(axis=0)) // 2)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
  """2 s mp4: 30 fps bars, 44.1 kHz stereo 440 Hz (left 0.5, right 0.3 amplitude)."""
  path = str(tmp_path_factory.mktemp("avio") / "clip.mp4")
  t = np.arange(2 * SRC_RATE) / SRC_RATE
  tone = np.sin(2 * np.pi * 440 * t)
  avio.write_video(path, _bar_frames(SRC_FRAMES), fps=SRC_FPS,
                   audio=np.stack([0.5 * tone, 0.3 * tone], axis=1), sample_rate=SRC_RATE)
  return path


def test_probe(clip):
  info = avio.probe(clip)
  assert info.has_video and info.has_audio
  assert (info.width, info.height, info.fps) == (160, 48, 30.0)
  assert (info.sample_rate, info.channels) == (SRC_RATE, 2)
  assert abs(info.duration - 2.0) < 0.05


def test_video_resampled_to_25fps_by_timestamp(clip):
  frames = avio.read_video(clip)
  assert frames.shape == (50, 48, 160, 3) and frames.dtype == np.uint8
  # Output frame k shows time k/25: the nearest 30 fps frame is round(1.2 k).
  expected = [int(np.floor(1.2 * k + 0.5)) for k in range(50)]
  assert [_frame_index(f) for f in frames] == expected
  assert len(list(avio.iter_frames(clip, fps=None))) == SRC_FRAMES
  gray = avio.read_video(clip, gray=True)
  assert gray.shape == (50, 48, 160)


def test_audio_resampled_to_16k_mono(clip):
  audio = avio.read_audio(clip)
  assert audio.dtype == np.float32 and audio.ndim == 1
  # AAC ends on a whole 1024-sample frame: at most that much past the 2 s.
  assert 32_000 <= len(audio) <= 32_000 + 1024 * 16_000 // SRC_RATE + 1
  fitted = avio.fit_audio_to_frames(audio, 50)
  assert fitted.shape == (32_000,)
  mid = fitted[4000:28000]
  spectrum = np.abs(np.fft.rfft(mid))
  assert abs(np.argmax(spectrum) * 16_000 / len(mid) - 440) < 2
  # Mono is the channel mean: amplitude (0.5 + 0.3) / 2.
  np.testing.assert_allclose(np.sqrt(np.mean(mid ** 2)), 0.4 / np.sqrt(2), rtol=0.05)


def test_audio_is_aligned_with_the_video(tmp_path):
  """A click at 0.5 s comes out at sample 8000 of the 16 kHz audio."""
  audio = np.zeros(2 * SRC_RATE)
  audio[SRC_RATE // 2:SRC_RATE // 2 + 40] = 0.9
  path = str(tmp_path / "click.mp4")
  avio.write_video(path, _bar_frames(SRC_FRAMES), fps=SRC_FPS, audio=audio,
                   sample_rate=SRC_RATE)
  out = avio.read_audio(path)
  assert abs(int(np.argmax(np.abs(out))) - 8000) < 40


def test_missing_file():
  with pytest.raises(avio.MediaError, match="no such file"):
    avio.read_video("/nonexistent/video.mp4")
  with pytest.raises(avio.MediaError, match="no such file"):
    avio.read_audio("/nonexistent/video.mp4")


def test_garbage_file(tmp_path):
  path = tmp_path / "garbage.mp4"
  path.write_bytes(np.random.default_rng(0).bytes(5000))
  with pytest.raises(avio.MediaError, match="cannot read"):
    avio.read_video(path)
  with pytest.raises(avio.MediaError, match="directory"):
    avio.probe(tmp_path)


def test_no_audio_stream(tmp_path):
  path = str(tmp_path / "silent.mp4")
  avio.write_video(path, _bar_frames(10), fps=25)
  assert len(avio.read_video(path)) == 10
  with pytest.raises(avio.MediaError, match="no audio stream"):
    avio.read_audio(path)


def test_no_video_stream(tmp_path):
  path = str(tmp_path / "voice.wav")
  avio.write_audio(path, 0.1 * np.ones(22_050), sample_rate=44_100)
  with pytest.raises(avio.MediaError, match="no video stream"):
    avio.read_video(path)
  assert len(avio.read_audio(path)) == 8000


def test_unknown_codec(tmp_path, clip):
  """A container whose video codec tag FFmpeg does not know."""
  with open(clip, "rb") as f:
    data = f.read()
  path = tmp_path / "unknown_codec.mp4"
  path.write_bytes(data.replace(b"avc1", b"zzz9"))
  with pytest.raises(avio.MediaError, match="no decoder"):
    avio.read_video(path)


def test_failed_write_leaves_no_file(tmp_path):
  path = tmp_path / "out.mp4"
  with pytest.raises(ValueError):
    avio.write_video(str(path), [], fps=25)
  assert list(tmp_path.iterdir()) == []
