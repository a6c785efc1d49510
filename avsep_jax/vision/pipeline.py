"""From a video file to per-face mouth ROIs and audio: what `separate` and the corpus builders call.

    result = face_tracks("talk.mp4", max_tracks=2)
    result.rois      # (N_tracks, F, 88, 88) uint8, 25 fps
    result.audio     # (F * 640,) float32, 16 kHz mono, aligned with the frames
    result.tracks    # per-track boxes/landmarks/visibility over the F frames
    result.dropped   # tracks beyond max_tracks (least visible), reported not returned

Two streaming passes over the video keep memory at one batch of frames whatever its
length: pass 1 decodes RGB frames at 25 fps and detects faces in batches (one jitted
call each), then tracks are linked and smoothed; pass 2 decodes the same frames as luma
and cuts each track's mouth ROI.
"""

import dataclasses
import os

import numpy as np

from avsep_jax.vision import avio, retinaface, tracking
from avsep_jax.vision import roi as roi_lib


class NoFaceError(avio.MediaError):
  """The video has no face track."""


@dataclasses.dataclass
class FaceTracks:
  """Faces, mouth ROIs and audio of one video.

  Attributes:
    path: the input file.
    fps: video frame rate of every per-frame array (25).
    num_frames: F.
    frame_size: (H, W) of the decoded frames.
    tracks: kept `tracking.Track`s, most visible first (slot order).
    dropped: tracks not kept because of `max_tracks`, most visible first.
    rois: (len(tracks), F, S, S) uint8 mouth ROIs (S = roi_size, 88 by default).
    audio: (F * sample_rate / fps,) float32 mono, or None if not asked for.
    sample_rate: of `audio`.
  """

  path: str
  fps: float
  num_frames: int
  frame_size: tuple[int, int]
  tracks: list
  dropped: list
  rois: np.ndarray
  audio: np.ndarray | None
  sample_rate: int

  def summary(self):
    """JSON-ready description: frames, duration, kept tracks by slot, dropped tracks."""
    return {
        "input": self.path, "fps": self.fps, "frames": self.num_frames,
        "duration_s": round(self.num_frames / self.fps, 3),
        "frame_size": list(self.frame_size),
        "tracks": [{"slot": i, **t.summary()} for i, t in enumerate(self.tracks)],
        "dropped_tracks": [t.summary() for t in self.dropped]}


def detect_frames(path, detector, fps=avio.VIDEO_FPS, progress=None):
  """Pass 1: per-frame detections of a video at `fps`.

  Returns:
    (list over frames of (boxes, scores, landmarks), (H, W)).
  """
  per_frame, batch, size = [], [], None

  def flush():
    dets = detector(np.stack(batch), pad_to_batch=True)
    per_frame.extend(dets.frame(i) for i in range(len(dets)))
    if progress is not None:
      progress(len(batch))
    batch.clear()

  for frame in avio.iter_frames(path, fps=fps):
    size = frame.shape[:2]
    batch.append(frame)
    if len(batch) == detector.batch_size:
      flush()
  if batch:
    flush()
  return per_frame, size


def cut_rois(path, tracks, num_frames, fps=avio.VIDEO_FPS, size=roi_lib.ROI_SIZE,
             batch_size=32):
  """Pass 2: (len(tracks), F, size, size) uint8 mouth ROIs of the given tracks."""
  rois = np.zeros((len(tracks), num_frames, size, size), np.uint8)
  if not tracks:
    return rois
  transforms = np.stack([roi_lib.mouth_transform(t.landmarks[:, 3:5], size) for t in tracks])
  batch, start = [], 0

  def flush(start):
    frames = np.stack(batch)
    n = len(frames)
    for k in range(len(tracks)):
      rois[k, start:start + n] = roi_lib.warp(frames, transforms[k, start:start + n], size)
    batch.clear()
    return start + n

  for frame in avio.iter_frames(path, fps=fps, gray=True):
    if start + len(batch) >= num_frames:
      break  # both passes decode the same frames; this only guards a changed file
    batch.append(frame)
    if len(batch) == batch_size:
      start = flush(start)
  if batch:
    flush(start)
  return rois


def face_tracks(path, *, max_tracks=None, detector=None,
                tracker_config=None, roi_size=roi_lib.ROI_SIZE,
                fps=avio.VIDEO_FPS, sample_rate=avio.SAMPLE_RATE, with_audio=True,
                detect_max_size=640, progress=None):
  """Face tracks, mouth ROIs and audio of a video file.

  Args:
    path: any container FFmpeg reads, with a video stream (and an audio stream when
      `with_audio`).
    max_tracks: keep the this many most visible tracks (the model's speaker slots);
      the others are returned in `dropped`. None keeps all.
    detector: a `retinaface.FaceDetector`; default: the imported weights, frames
      downscaled to `detect_max_size` on their longer side for detection.
    tracker_config: a `tracking.TrackerConfig` (default: its defaults).
    roi_size: ROI side (88; lite models may use 64).
    fps, sample_rate: output rates (25 fps, 16 kHz).
    with_audio: decode the audio too (required to exist when True).
    detect_max_size: see `detector`.
    progress: optional callable receiving the number of frames just detected.

  Returns:
    `FaceTracks`.

  Raises:
    avio.MediaError: missing/unreadable file, missing stream, undecodable codec.
    NoFaceError: no face track in the video.
  """
  path = os.fspath(path)
  info = avio.probe(path)
  if not info.has_video:
    raise avio.MediaError(f"{path} has no video stream")
  if with_audio and not info.has_audio:
    raise avio.MediaError(f"{path} has no audio stream")
  if detector is None:
    detector = retinaface.FaceDetector(
        config=retinaface.DetectorConfig(max_size=detect_max_size))
  per_frame, frame_size = detect_frames(path, detector, fps=fps, progress=progress)
  num_frames = len(per_frame)
  tracks = tracking.track_faces(per_frame, tracker_config or tracking.TrackerConfig())
  if not tracks:
    raise NoFaceError(f"no face found in {path} ({num_frames} frames at {fps:g} fps)")
  kept, dropped = tracking.select_tracks(tracks, max_tracks)
  rois = cut_rois(path, kept, num_frames, fps=fps, size=roi_size)
  audio = None
  if with_audio:
    audio = avio.fit_audio_to_frames(avio.read_audio(path, sample_rate), num_frames,
                                     fps=fps, sample_rate=sample_rate)
  return FaceTracks(path=path, fps=fps, num_frames=num_frames,
                    frame_size=tuple(int(v) for v in frame_size), tracks=kept,
                    dropped=dropped, rois=rois, audio=audio, sample_rate=sample_rate)
