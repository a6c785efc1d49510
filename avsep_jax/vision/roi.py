"""88x88 grayscale mouth ROIs aligned by the two mouth-corner landmarks.

The lip-reading recipe (LRW/LRS pipelines, see notes/av-corpora-and-visual.md) smooths
landmarks over about 12 frames, warps each face by a similarity transform onto a mean
face, crops 96x96 around the mouth and centre-crops 88x88 in grayscale. RetinaFace gives
only five points, so the similarity here is the one that maps the two mouth corners onto
fixed positions of the ROI (two point pairs determine it exactly: scale, rotation,
shift). Those positions reproduce the recipe's framing: in the mean 68-point face shape
the mouth is 0.65 of the outer-eye distance wide and the centre of its 20 points lies
0.05 mouth widths below the corner line; a 52-pixel mouth in the 96-pixel crop (about
half of it, as in LRW crops) puts the corners of the 88x88 centre crop at
x = 44 -/+ 26 and y = 44 - 2.6. Smoothing belongs to `tracking`.

Coordinates are continuous pixels (pixel (row i, col j) covers [j, j+1) x [i, i+1), as
RetinaFace's anchors assume).
"""

import numpy as np

ROI_SIZE = 88
# Mouth corners (x, y) in an ROI_SIZE ROI, image-left corner first.
MOUTH_CORNERS = np.array([[18.0, 41.4], [70.0, 41.4]], np.float64)
# ITU-R BT.601 luma weights (what OpenCV's RGB2GRAY and FFmpeg's gray use).
_LUMA = np.array([0.299, 0.587, 0.114])


def canonical_mouth_corners(size=ROI_SIZE):
  """(2, 2) target mouth-corner positions in a size x size ROI (scaled from 88)."""
  return MOUTH_CORNERS * (size / ROI_SIZE)


def to_gray(frames):
  """(..., H, W, 3) uint8 RGB -> (..., H, W) uint8 BT.601 luma."""
  return np.clip(np.round(np.asarray(frames, np.float32) @ _LUMA.astype(np.float32)),
                 0, 255).astype(np.uint8)


def mouth_transform(mouth_corners, size=ROI_SIZE):
  """Similarity from ROI coordinates to frame coordinates, by the mouth corners.

  Args:
    mouth_corners: (..., 2, 2) the two mouth corners (x, y) in the frame; their order
      does not matter (the image-left one goes to the ROI's left).
    size: ROI side.

  Returns:
    (..., 2, 3) affine matrices A with [x, y] = A @ [u, v, 1] for ROI point (u, v).
  """
  p = np.asarray(mouth_corners, np.float64)
  swap = p[..., 0, 0] > p[..., 1, 0]
  p = np.where(swap[..., None, None], p[..., ::-1, :], p)
  q = canonical_mouth_corners(size)
  # As complex numbers, frame = a * roi + b with a = (p1 - p0) / (q1 - q0).
  zp = p[..., 0] + 1j * p[..., 1]
  zq = q[:, 0] + 1j * q[:, 1]
  a = (zp[..., 1] - zp[..., 0]) / (zq[1] - zq[0])
  b = zp[..., 0] - a * zq[0]
  return np.stack([
      np.stack([a.real, -a.imag, b.real], axis=-1),
      np.stack([a.imag, a.real, b.imag], axis=-1)], axis=-2)


def warp(images, transforms, size=ROI_SIZE):
  """Bilinear sampling of size x size patches through ROI -> image affine maps.

  Args:
    images: (N, H, W) uint8 or float.
    transforms: (N, 2, 3) from `mouth_transform`.
    size: output side.

  Returns:
    (N, size, size) uint8; points outside the image take the nearest edge pixel.
  """
  images = np.asarray(images)
  n, h, w = images.shape
  centres = np.arange(size) + 0.5
  uv1 = np.stack(np.broadcast_arrays(centres[None, :], centres[:, None], 1.0), axis=-1)
  xy = np.einsum("nij,rcj->nrci", np.asarray(transforms, np.float64), uv1)
  # Continuous coordinates -> array indices (pixel centres at +0.5).
  x = np.clip(xy[..., 0] - 0.5, 0, w - 1)
  y = np.clip(xy[..., 1] - 0.5, 0, h - 1)
  x0 = np.minimum(np.floor(x).astype(np.int64), w - 2 if w > 1 else 0)
  y0 = np.minimum(np.floor(y).astype(np.int64), h - 2 if h > 1 else 0)
  x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
  fx, fy = x - x0, y - y0
  idx = np.arange(n)[:, None, None]
  img = images.astype(np.float32)
  top = img[idx, y0, x0] * (1 - fx) + img[idx, y0, x1] * fx
  bottom = img[idx, y1, x0] * (1 - fx) + img[idx, y1, x1] * fx
  out = top * (1 - fy) + bottom * fy
  return np.clip(np.round(out), 0, 255).astype(np.uint8)


def mouth_rois(frames, landmarks, size=ROI_SIZE):
  """Mouth ROIs of one face over frames.

  Args:
    frames: (F, H, W) uint8 grey or (F, H, W, 3) uint8 RGB.
    landmarks: (F, 5, 2) RetinaFace landmarks (indices 3, 4: mouth corners), already
      smoothed over time for stable crops.
    size: ROI side (88; the lite models may use 64).

  Returns:
    (F, size, size) uint8 grayscale ROIs.
  """
  frames = np.asarray(frames)
  if frames.ndim == 4:
    frames = to_gray(frames)
  return warp(frames, mouth_transform(np.asarray(landmarks)[:, 3:5], size), size)
