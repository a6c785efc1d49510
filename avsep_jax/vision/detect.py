"""Prints RetinaFace detections of an image or a video, to check the detector by hand.

    python -m avsep_jax.vision.detect IMAGE_OR_VIDEO [--json] [--threshold 0.5]

With --json: a JSON list with one entry per image/frame, each a list of faces
`{"box": [x1, y1, x2, y2], "score": s, "landmarks": [[x, y] x 5]}` in pixels (landmarks:
eye, eye, nose, mouth corner, mouth corner, each pair left-to-right in the image).
Videos are read at 25 fps (--fps 0: every decoded frame). Errors go to stderr with a
non-zero exit status.
"""

import argparse
import json
import os
import sys

import numpy as np

from avsep_jax.vision import avio, retinaface, weights

_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".gif",
                   ".ppm", ".pgm"}


def read_image(path):
  """(H, W, 3) uint8 RGB of a still image; `avio.MediaError` if unreadable."""
  from PIL import (
    Image,  # pylint: disable=import-outside-toplevel
    UnidentifiedImageError,  # pylint: disable=import-outside-toplevel
  )
  if not os.path.exists(path):
    raise avio.MediaError(f"no such file: {path}")
  try:
    with Image.open(path) as im:
      return np.asarray(im.convert("RGB"))
  except (UnidentifiedImageError, OSError) as e:
    raise avio.MediaError(f"cannot read {path} as an image: {e}") from e


def faces_as_json(boxes, scores, landmarks, decimals=2):
  """One frame's detections as the DESIGN.md JSON schema (list of dicts)."""
  return [{"box": [round(float(v), decimals) for v in b],
           "score": round(float(s), 5),
           "landmarks": [[round(float(x), decimals), round(float(y), decimals)]
                         for x, y in lm]}
          for b, s, lm in zip(boxes, scores, landmarks)]


def detect_file(path, detector, fps=avio.VIDEO_FPS):
  """Yields per-frame JSON-ready face lists of an image (one entry) or a video."""
  if os.path.splitext(path)[1].lower() in _IMAGE_SUFFIXES:
    dets = detector(read_image(path))
    yield faces_as_json(*dets.frame(0))
    return
  batch = []
  for frame in avio.iter_frames(path, fps=fps):
    batch.append(frame)
    if len(batch) == detector.batch_size:
      dets = detector(np.stack(batch))
      batch.clear()
      yield from (faces_as_json(*dets.frame(i)) for i in range(len(dets)))
  if batch:
    dets = detector(np.stack(batch), pad_to_batch=True)
    yield from (faces_as_json(*dets.frame(i)) for i in range(len(dets)))


def main(argv=None):
  parser = argparse.ArgumentParser(
      prog="python -m avsep_jax.vision.detect",
      description="RetinaFace detections (box, score, five landmarks) in pixels.")
  parser.add_argument("input", help="an image (png, jpg, ...) or a video")
  parser.add_argument("--json", action="store_true", help="print one JSON list")
  parser.add_argument("--threshold", type=float, default=0.5,
                      help="face score threshold (the graph's: 0.5)")
  parser.add_argument("--fps", type=float, default=avio.VIDEO_FPS,
                      help="video frame rate to sample at; 0 = every decoded frame")
  parser.add_argument("--max-size", type=int, default=None,
                      help="downscale frames whose longer side exceeds this first")
  parser.add_argument("--weights", default=None, help="params file (default: the cache)")
  args = parser.parse_args(argv)
  if not 0.0 <= args.threshold < 1.0:
    parser.error("--threshold must be in [0, 1)")
  try:
    if not os.path.exists(args.input):
      raise avio.MediaError(f"no such file: {args.input}")
    detector = retinaface.FaceDetector(
        weights.load_variables(args.weights),
        retinaface.DetectorConfig(score_threshold=args.threshold, max_size=args.max_size))
    frames = detect_file(args.input, detector, fps=args.fps or None)
    if args.json:
      # Collected first: a failure half-way must not leave half a JSON document.
      print(json.dumps(list(frames)))
    else:
      for i, faces in enumerate(frames):
        print(f"frame {i}: {len(faces)} face{'s' if len(faces) != 1 else ''}")
        for f in faces:
          lm = " ".join(f"({x:.1f},{y:.1f})" for x, y in f["landmarks"])
          print(f"  box {tuple(round(v, 1) for v in f['box'])} score {f['score']:.4f} "
                f"landmarks {lm}")
  except (avio.MediaError, weights.WeightsNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
