"""End to end on a real-photo mp4: tracks, mouth ROIs and audio from `face_tracks`."""

import json

import numpy as np
import pytest
import vision_images
from PIL import Image

from avsep_jax.vision import avio, detect, pipeline, roi

SRC_FPS, SRC_FRAMES, SRC_RATE = 30, 18, 44_100


def _half(image):
  return np.asarray(Image.fromarray(image).resize((256, 256), Image.BILINEAR))


def _two_face_frames(n):
  """Astronaut and cameraman side by side (256x512), drifting 2 px a frame."""
  pair = np.concatenate([_half(vision_images.astronaut()), _half(vision_images.camera())], 1)
  canvas = np.zeros((256, 576, 3), np.uint8)
  frames = []
  for j in range(n):
    f = canvas.copy()
    f[:, 2 * j:2 * j + 512] = pair
    frames.append(f)
  return np.stack(frames)


def _tone(seconds):
  t = np.arange(int(seconds * SRC_RATE)) / SRC_RATE
  return np.stack([0.3 * np.sin(2 * np.pi * 300 * t)] * 2, axis=1)


@pytest.fixture(scope="module")
def two_faces_mp4(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("pipeline") / "two_faces.mp4")
  avio.write_video(path, _two_face_frames(SRC_FRAMES), fps=SRC_FPS,
                   audio=_tone(SRC_FRAMES / SRC_FPS), sample_rate=SRC_RATE)
  return path


def test_two_faces_give_two_tracks_rois_and_audio(two_faces_mp4, face_detector):
  result = pipeline.face_tracks(two_faces_mp4, detector=face_detector)
  f = result.num_frames
  assert f == 15  # 0.6 s at 25 fps
  assert len(result.tracks) == 2 and not result.dropped
  assert result.rois.shape == (2, f, 88, 88) and result.rois.dtype == np.uint8
  assert result.audio.shape == (f * 640,) and result.sample_rate == 16_000
  for t in result.tracks:
    assert t.detected.all()
    # Mouth corners inside the face box, the face drifting right with the frames.
    x1, y1, x2, y2 = t.boxes.T
    mouth = t.landmarks[:, 3:5]
    assert np.all((mouth[..., 0] > x1[:, None]) & (mouth[..., 0] < x2[:, None]))
    assert np.all((mouth[..., 1] > y1[:, None]) & (mouth[..., 1] < y2[:, None]))
    assert (x1[-1] - x1[0]) > 20
  # The ROIs are the mouth crops of the decoded luma frames at the tracks' landmarks.
  gray = avio.read_video(two_faces_mp4, gray=True)
  for k, t in enumerate(result.tracks):
    np.testing.assert_array_equal(result.rois[k], roi.mouth_rois(gray, t.landmarks))
    assert result.rois[k].std() > 10  # a mouth, not a flat patch
  summary = json.loads(json.dumps(result.summary()))
  assert [t["slot"] for t in summary["tracks"]] == [0, 1]


def test_more_faces_than_slots_keeps_the_most_visible(two_faces_mp4, face_detector):
  result = pipeline.face_tracks(two_faces_mp4, detector=face_detector, max_tracks=1,
                                with_audio=False)
  assert len(result.tracks) == 1 and len(result.dropped) == 1
  assert result.rois.shape[0] == 1 and result.audio is None
  assert len(result.summary()["dropped_tracks"]) == 1


def test_no_face(tmp_path, face_detector):
  path = str(tmp_path / "coffee.mp4")
  coffee = vision_images.coffee()[:256, :256]
  avio.write_video(path, np.stack([coffee] * 6), fps=25, audio=_tone(0.24)[:, 0],
                   sample_rate=SRC_RATE)
  with pytest.raises(pipeline.NoFaceError, match="no face"):
    pipeline.face_tracks(path, detector=face_detector)


def test_missing_streams_fail_before_detection(tmp_path, face_detector):
  silent = str(tmp_path / "silent.mp4")
  avio.write_video(silent, np.zeros((4, 64, 64, 3), np.uint8), fps=25)
  with pytest.raises(avio.MediaError, match="no audio stream"):
    pipeline.face_tracks(silent, detector=face_detector)
  voice = str(tmp_path / "voice.wav")
  avio.write_audio(voice, np.zeros(1600))
  with pytest.raises(avio.MediaError, match="no video stream"):
    pipeline.face_tracks(voice, detector=face_detector)


def test_detect_lists_every_video_frame(two_faces_mp4, face_detector):
  """`python -m avsep_jax.vision.detect VIDEO --json`: one entry per 25 fps frame."""
  frames = list(detect.detect_file(two_faces_mp4, face_detector))
  assert len(frames) == 15
  assert all(len(faces) == 2 for faces in frames)
