r"""Frames/s of the face pipeline: RetinaFace detection + tracking + mouth ROIs.

  python experiments/benchmarks/face_pipeline.py [--frames=50] [--height=360 --width=640]

Builds a short mp4 of two real faces (scikit-image's astronaut and cameraman, drifting
sideways) at the given frame size, then times on the default JAX device:
  detect  RetinaFace on decoded 25 fps frames, batched (--batch_size), one jitted call each;
  track   association, gap filling and smoothing of the detections;
  roi     88x88 mouth ROIs of every track;
  total   `face_tracks` end to end (decoding both passes included, audio excluded).
Each figure is the median of --repeats timings after one warm-up (compilation).
"""

import os
import tempfile
import time

import jax
import numpy as np
import skimage.data
from absl import app, flags
from PIL import Image

from avsep_jax.vision import avio, pipeline, retinaface, roi, tracking

_FRAMES = flags.DEFINE_integer("frames", 50, "Frames of the test video (25 fps).")
_HEIGHT = flags.DEFINE_integer("height", 360, "Frame height.")
_WIDTH = flags.DEFINE_integer("width", 640, "Frame width.")
_BATCH = flags.DEFINE_integer("batch_size", 8, "Frames per detector call.")
_MAX_SIZE = flags.DEFINE_integer("max_size", 640, "Detector input's longer side (0: native).")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timings per measurement (median).")


def make_video(path, frames, height, width):
  """Two faces side by side on a grey canvas, drifting 1 px per frame."""
  side = min(height, width // 2 - frames)
  faces = [skimage.data.astronaut(), np.repeat(skimage.data.camera()[..., None], 3, -1)]
  pair = np.concatenate([np.asarray(Image.fromarray(f).resize((side, side))) for f in faces], 1)
  out = []
  for j in range(frames):
    canvas = np.full((height, width, 3), 96, np.uint8)
    canvas[(height - side) // 2:(height - side) // 2 + side, j:j + 2 * side] = pair
    out.append(canvas)
  avio.write_video(path, np.stack(out), fps=25)


def median_time(fn, repeats):
  fn()  # warm-up: compilation, file caches
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def main(argv):
  del argv
  n, repeats = _FRAMES.value, _REPEATS.value
  config = retinaface.DetectorConfig(max_size=_MAX_SIZE.value or None)
  detector = retinaface.FaceDetector(config=config, batch_size=_BATCH.value)
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "two_faces.mp4")
    make_video(path, n, _HEIGHT.value, _WIDTH.value)
    frames = avio.read_video(path)
    gray = avio.read_video(path, gray=True)
    dets = detector(frames)
    per_frame = [dets.frame(i) for i in range(len(dets))]
    tracks = tracking.track_faces(per_frame)

    t_detect = median_time(lambda: detector(frames), repeats)
    t_track = median_time(lambda: tracking.track_faces(per_frame), repeats)
    t_roi = median_time(
        lambda: [roi.mouth_rois(gray, t.landmarks) for t in tracks], repeats)
    t_total = median_time(
        lambda: pipeline.face_tracks(path, detector=detector, with_audio=False), repeats)

  scale, _, padded = retinaface.network_size(_HEIGHT.value, _WIDTH.value, config.max_size)
  print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}); "
        f"{n} frames {_HEIGHT.value}x{_WIDTH.value}, detector input {padded[0]}x{padded[1]} "
        f"(scale {scale:.2f}), batch {_BATCH.value}, {len(tracks)} tracks, "
        f"median of {repeats}")
  for name, t in (("detect", t_detect), ("track", t_track), ("roi", t_roi),
                  ("detect+track+roi", t_detect + t_track + t_roi),
                  ("face_tracks end to end", t_total)):
    print(f"  {name:24s} {n / t:9.1f} frames/s  ({1000 * t / n:7.2f} ms/frame)")


if __name__ == "__main__":
  app.run(main)
