"""Mouth ROIs: the two mouth corners land on the ROI's canonical positions."""

import numpy as np
import pytest

from avsep_jax.vision import roi


def _blob_image(points, shape=(240, 320), sigma=1.5):
  """Grey image with a Gaussian spot centred at each continuous (x, y)."""
  yy, xx = np.mgrid[0:shape[0], 0:shape[1]] + 0.5   # pixel centres
  img = np.zeros(shape)
  for x, y in points:
    img += 250 * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma ** 2))
  return np.clip(img, 0, 255).astype(np.uint8)


def _centroid(patch, offset_x=0):
  w = np.clip(patch.astype(float) - 20, 0, None)
  yy, xx = np.mgrid[0:patch.shape[0], 0:patch.shape[1]] + 0.5
  return np.array([(w * xx).sum() / w.sum() + offset_x, (w * yy).sum() / w.sum()])


def _landmarks(corner_a, corner_b):
  lm = np.zeros((5, 2))
  lm[3], lm[4] = corner_a, corner_b
  return lm


@pytest.mark.parametrize("size", [88, 64])
@pytest.mark.parametrize("angle_deg,width", [(0.0, 52.0), (20.0, 37.0), (-35.0, 80.0)])
def test_mouth_corners_land_on_canonical_positions(size, angle_deg, width):
  """A rotated, scaled mouth ends up level, at the recipe's positions."""
  centre = np.array([161.3, 118.7])
  d = 0.5 * width * np.array([np.cos(np.radians(angle_deg)), np.sin(np.radians(angle_deg))])
  a, b = centre - d, centre + d
  frame = _blob_image([a, b])
  out = roi.mouth_rois(frame[None], _landmarks(a, b)[None], size=size)
  assert out.shape == (1, size, size) and out.dtype == np.uint8
  half = size // 2
  found = [_centroid(out[0, :, :half]), _centroid(out[0, :, half:], offset_x=half)]
  np.testing.assert_allclose(found, roi.canonical_mouth_corners(size), atol=0.35)


def test_corner_order_does_not_matter():
  a, b = np.array([140.0, 120.0]), np.array([190.0, 131.0])
  frame = _blob_image([a, b])[None]
  one = roi.mouth_rois(frame, _landmarks(a, b)[None])
  two = roi.mouth_rois(frame, _landmarks(b, a)[None])
  np.testing.assert_array_equal(one, two)


def test_rgb_frames_are_converted_to_luma():
  rng = np.random.default_rng(0)
  rgb = rng.integers(0, 256, (2, 100, 120, 3), dtype=np.uint8)
  lm = np.tile(_landmarks([40.0, 50.0], [80.0, 52.0]), (2, 1, 1))
  np.testing.assert_array_equal(roi.mouth_rois(rgb, lm), roi.mouth_rois(roi.to_gray(rgb), lm))
  # BT.601 weights on pure colours.
  prim = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255]]], np.uint8)
  np.testing.assert_array_equal(roi.to_gray(prim), [[76, 150, 29]])


def test_identity_transform_copies_pixels():
  """Corners exactly at the canonical positions of a same-sized image: a pixel copy."""
  rng = np.random.default_rng(0)
  img = rng.integers(0, 256, (1, 88, 88), dtype=np.uint8)
  out = roi.mouth_rois(img, _landmarks(*roi.MOUTH_CORNERS)[None])
  np.testing.assert_array_equal(out, img)
