"""Renders grayscale mouth ROIs from a phone timeline, with numpy only.

A video is drawn in three steps:

1. `visemes.articulation_track` turns the phones into per-frame articulation
   parameters (opening, spreading, rounding, teeth, tongue, ...).
2. Each frame is drawn on a canvas in the face's own frame, slightly larger
   than the ROI. There the lips are horizontal, so every contour (outer and
   inner lip edges, teeth edges, tongue top) is a function y(x) of the column
   alone: the contours are cheap (F, W) arrays, and a pixel's coverage by the
   region below a contour is `clip(row - y(col) + 0.5, 0, 1)` in units of the
   edge width, which anti-aliases every edge. The regions are stacked bands
   (skin, upper lip, upper teeth, cavity, tongue, lower teeth, lower lip,
   skin), so the frame is a telescoping sum of coverage * tone step.
3. Each frame is warped into the ROI by its head pose (small smooth random
   translation, rotation and scale), then lit (smooth gain and gradient) and
   given sensor noise.

The skin around the mouth (shading, nose base, nasolabial folds, pores, facial
hair) does not depend on the phones and is drawn once per video.

Sizes are in "canonical pixels" of an 88x88 ROI at `roi_scale` 1, where the
mouth is 38-52 px wide at rest, as in LRS/LRW crops (96x96 crops of a 256x256
aligned face, centred on the mouth).
"""

import dataclasses
import struct
import zlib

import numpy as np
import scipy.ndimage

from avsep_jax.data.synthav import visemes

MIN_SIZE = 32
_CANONICAL_SIZE = 88
# Canvas margin around the ROI, as a fraction of the ROI size: room for the
# head motion so that the warp rarely reads outside the canvas.
_MARGIN = 0.14
# Vertical position of the lip line at rest (canonical px, + is down): a bit
# above the ROI centre, as the centre of the mouth landmarks moves down when
# the jaw opens.
_SEAM_Y = -3.0
# Frames drawn at a time.
_CHUNK = 16


@dataclasses.dataclass(frozen=True)
class Appearance:
  """A speaker's look: the same for all their videos.

  Lengths are in canonical pixels (88x88 ROI at roi_scale 1); gray levels in
  0..255 before lighting; ratios are relative to the tone named.
  """
  skin: float  # gray level of the skin
  skin_shading: float  # darkening of the cheeks away from the centre
  lip_darkness: float  # lip tone = skin * (1 - lip_darkness)
  upper_lip: float  # upper lip thickness at the centre
  lower_lip: float  # lower lip thickness at the centre
  mouth_half_width: float  # at rest
  cupid_bow: float  # 0..1, depth of the dip in the upper lip's outline
  lip_gloss: float  # highlight on the lower lip, relative to the lip tone
  teeth: float  # gray level of the front teeth
  tongue: float  # tongue tone relative to the lip tone
  cavity: float  # mouth-cavity tone relative to the lip tone
  texture: float  # skin texture (pores, blotches) contrast
  facial_hair: float  # 0 none .. 1 full stubble/beard density
  hair: float  # gray level of facial hair
  nose_gap: float  # distance from the lip line up to the nose base
  roi_scale: float  # zoom of the crop: > 1 shows a bigger mouth
  offset_x: float  # mouth position in the ROI (imperfect crop centring)
  offset_y: float
  articulation: float  # speaking style: scales the mouth opening
  texture_seed: int  # skin pattern and facial hair layout


def sample_appearance(rng: np.random.Generator) -> Appearance:
  """Draws a speaker's look: skin tone, lips, teeth, facial hair, framing."""
  skin = rng.uniform(60.0, 195.0)
  return Appearance(
      skin=skin,
      skin_shading=rng.uniform(0.04, 0.2),
      lip_darkness=rng.uniform(0.15, 0.4),
      upper_lip=rng.uniform(3.5, 7.0),
      lower_lip=rng.uniform(4.5, 9.0),
      mouth_half_width=rng.uniform(19.0, 26.0),
      cupid_bow=rng.uniform(0.0, 1.0),
      lip_gloss=rng.uniform(0.0, 0.15),
      teeth=skin + (245.0 - skin) * rng.uniform(0.15, 0.8),
      tongue=rng.uniform(0.55, 0.85),
      cavity=rng.uniform(0.12, 0.35),
      texture=rng.uniform(0.01, 0.06),
      facial_hair=(rng.uniform(0.15, 1.0) if rng.uniform() < 0.35 else 0.0),
      hair=min(rng.uniform(15.0, 70.0), 0.6 * skin),
      nose_gap=rng.uniform(26.0, 34.0),
      roi_scale=rng.uniform(0.85, 1.15),
      offset_x=rng.uniform(-3.0, 3.0),
      offset_y=rng.uniform(-3.0, 3.0),
      articulation=rng.uniform(0.8, 1.15),
      texture_seed=int(rng.integers(2**31)),
  )


def _smooth_noise(rng, num_frames, sigma_frames):
  """(F,) smooth random signal with unit standard deviation."""
  pad = int(3 * sigma_frames)
  x = scipy.ndimage.gaussian_filter1d(
      rng.standard_normal(num_frames + 2 * pad),
      sigma_frames)[pad:pad + num_frames]
  # Std of white noise through a unit-gain Gaussian: 1 / sqrt(2 sqrt(pi) s).
  return x * np.sqrt(2.0 * np.sqrt(np.pi) * sigma_frames)


def _skin(a: Appearance, u, v, k):
  """(H, W) float32 static skin around the mouth, in the face's frame.

  Args:
    a: appearance.
    u, v: (1, W) and (H, 1) canvas coordinates in px from the mouth centre.
    k: px per canonical px.
  """
  rng = np.random.default_rng(a.texture_seed)
  shape = (v.shape[0], u.shape[1])
  uc, vc = u / k, v / k  # canonical px
  wh = a.mouth_half_width
  # Cheeks turn away from the light on both sides; the chin bulges towards it.
  shade = 1.0 - a.skin_shading * (uc / (1.8 * wh))**2
  shade = shade + 0.04 * np.exp(-((vc - 30.0) / 10.0)**2)
  # Nose base: the brighter nose above a curved edge, its shadow just below,
  # and the nostrils.
  nose_y = _SEAM_Y - a.nose_gap
  nose_edge = nose_y + 4.0 * (uc / 14.0)**2
  nose = _ramp(nose_edge, vc, 1.5) * np.exp(-(uc / 16.0)**4)
  shade = shade + 0.06 * nose
  shade = shade - 0.18 * np.exp(-((vc - nose_edge - 2.0) / 2.5)**2) * (
      np.exp(-(uc / 14.0)**2))
  for side in (-1.0, 1.0):
    shade = shade - 0.45 * np.exp(-((uc - side * 8.0) / 3.5)**2 -
                                  ((vc - nose_y + 2.5) / 1.6)**2)
  # Philtrum: a groove between two ridges from the nose to the upper lip.
  philtrum = _ramp(vc, nose_y + 2.0, 4.0) * _ramp(-vc, -_SEAM_Y + 4.0, 4.0)
  shade = shade + 0.03 * philtrum * (
      np.exp(-((np.abs(uc) - 4.0) / 1.5)**2) - np.exp(-(uc / 2.0)**2))
  # Nasolabial folds: from the nose wings, curving out past the mouth corners.
  depth = np.clip((vc - nose_y) / (a.nose_gap + 12.0), 0.0, 1.0)
  fold_u = 16.0 + (wh - 8.0) * depth**1.5 + 6.0
  fold = np.exp(-((np.abs(uc) - fold_u) / 2.5)**2) * _ramp(
      vc, nose_y + 2.0, 4.0) * _ramp(-vc, -(_SEAM_Y + 12.0), 8.0)
  shade = shade - 0.05 * fold
  # Pores and blotches.
  grain = scipy.ndimage.gaussian_filter(rng.standard_normal(shape), 0.7 * k)
  blotch = scipy.ndimage.gaussian_filter(rng.standard_normal(shape), 5.0 * k)
  shade = shade * (1.0 + a.texture * (grain / grain.std() +
                                      0.7 * blotch / blotch.std()))
  skin = a.skin * shade
  if a.facial_hair > 0:
    # Stubble: dark dots where high-pass noise exceeds a density threshold, on
    # the moustache band and the chin and jaw, clear of the lips.
    hair_noise = scipy.ndimage.gaussian_filter(
        rng.standard_normal(shape), 0.35 * k)
    hair_noise /= hair_noise.std()
    dots = np.clip(hair_noise - (2.2 - 1.4 * a.facial_hair), 0.0, 1.0)
    lip_top = _SEAM_Y - a.upper_lip * np.clip(1.0 - (uc / wh)**2, 0.0, 1.0)
    moustache = (_ramp(vc, nose_y + 3.0, 3.0) * _ramp(lip_top - 2.0, vc, 2.0) *
                 _ramp(-np.abs(uc), -(wh + 4.0), 4.0))
    chin = _ramp(vc, _SEAM_Y + a.lower_lip + 14.0, 6.0)
    jaw = _ramp(np.abs(uc), wh + 9.0, 6.0) * _ramp(vc, _SEAM_Y - 6.0, 6.0)
    region = np.maximum(moustache, np.maximum(chin, jaw))
    # Dense hair also shades the skin between the hairs.
    alpha = region * (0.1 * a.facial_hair + 0.6 * dots)
    skin = skin + np.clip(alpha, 0.0, 1.0) * (a.hair - skin)
  return skin.astype(np.float32)


def _ramp(x, edge, width):
  """Smooth 0 -> 1 step of x across edge over the given width."""
  return np.clip((x - edge) / width + 0.5, 0.0, 1.0)


def _contours(a: Appearance, track, u, k):
  """Lip, teeth and tongue contours and tones per frame, in canvas px.

  Args:
    a: appearance.
    track: articulation_track output, {name: (F,)}.
    u: (1, W) canvas columns in px from the mouth centre.
    k: px per canonical px.

  Returns:
    ys: list of (F, 1, W) contours y(x), top to bottom: outer upper lip, inner
      upper lip, upper teeth edge, tongue top, lower teeth top, inner lower
      lip, outer lower lip.
    tones: list of len(ys) + 1 tones of the bands between them, top to
      bottom, (F, 1, W), except None for the skin above and below the lips.
    half_width: (F, 1, 1) half the mouth width.
  """
  col = lambda name: track[name][:, None].astype(np.float32)
  opening = np.clip(col("open") * a.articulation, 0.0, 1.2)
  spread, rnd, press, tuck = col("spread"), col("round"), col("press"), col(
      "tuck")
  wh0 = a.mouth_half_width
  half_width = wh0 * (1.0 + 0.12 * spread - 0.28 * rnd)
  # Opening the jaw draws the inner lip contour into an oval.
  inner_half_width = half_width * (0.9 - 0.4 * rnd - 0.12 * opening)
  height = opening * 0.95 * wh0
  uc = u / k
  n_out = uc / half_width
  n_in = uc / inner_half_width
  outer = np.clip(1.0 - n_out**2, 0.0, 1.0)
  # Rounded lips have a fuller, rounder outline.
  fullness = 1.0 - 0.5 * rnd
  # Spread mouths open into a lens with pointed corners, rounded ones into an
  # oval.
  inner = np.clip(1.0 - n_in**2, 0.0, 1.0)**(0.8 - 0.35 * rnd)
  # The jaw carries the lower lip: it takes most of the opening. For f/v the
  # upper lip lifts to bare the teeth resting on the tucked lower lip.
  lift = 0.3 * height + 2.5 * tuck
  drop = 0.7 * height - 1.0 * tuck
  # A closed mouth still shows the lip line as a thin gap; pressed (p, b, m)
  # or pursed lips seal it tighter.
  gap = 0.8 * (1.0 - 0.5 * press) * (1.0 - 0.4 * rnd) * np.sqrt(outer)
  y_in_up = _SEAM_Y - lift * inner - 0.5 * gap
  y_in_low = _SEAM_Y + np.maximum(drop, 0.0) * inner + 0.5 * gap
  bow = (1.0 - 0.3 * a.cupid_bow * np.exp(-(n_out / 0.09)**2) +
         0.12 * a.cupid_bow * np.exp(-((np.abs(n_out) - 0.24) / 0.12)**2))
  # Rounded lips protrude and show more of their red; spread and pressed lips
  # thin out; a tucked lower lip rolls in.
  upper = a.upper_lip * (1.0 + 0.35 * rnd - 0.2 * spread - 0.25 * press)
  lower = a.lower_lip * (1.0 + 0.3 * rnd - 0.15 * spread - 0.2 * press -
                         0.35 * tuck)
  y_out_up = y_in_up - upper * outer**(0.7 * fullness) * bow
  y_out_low = y_in_low + lower * outer**(0.6 * fullness)
  # Inside the opening, top to bottom: upper teeth, dark cavity, tongue, lower
  # teeth; each band is clipped to the space left.
  y_teeth_up = np.minimum(
      y_in_up + col("upper_teeth") * (0.25 * height + 2.5 * tuck + 1.0) *
      np.clip(1.0 - (n_in / 0.8)**4, 0.0, 1.0), y_in_low)
  y_teeth_low = np.maximum(
      y_in_low - col("lower_teeth") * (0.15 * height + 1.0) *
      np.clip(1.0 - (n_in / 0.7)**4, 0.0, 1.0), y_teeth_up)
  tongue_reach = col("tongue") * (y_in_low - y_teeth_up) * np.sqrt(
      np.clip(1.0 - (n_in / 0.6)**2, 0.0, 1.0))
  y_tongue = np.clip(y_teeth_low - tongue_reach, y_teeth_up, y_teeth_low)
  ys = [y_out_up, y_in_up, y_teeth_up, y_tongue, y_teeth_low, y_in_low,
        y_out_low]
  ys = [(y * k)[:, None, :].astype(np.float32) for y in ys]

  lip = a.skin * (1.0 - a.lip_darkness)
  # The teeth darken towards the corners of the mouth, with a faint gap
  # between neighbouring teeth (about 3.5 canonical px wide).
  teeth_shade = (1.0 - 0.45 * np.clip(np.abs(n_in), 0.0, 1.0)**2) * (
      1.0 - 0.12 * np.cos(2.0 * np.pi * uc / 3.5)**16)
  tones = [
      None,
      # The upper lip faces down, away from the light.
      np.full_like(n_in, 0.85 * lip),
      a.teeth * teeth_shade,
      # The cavity is darkest at the back, in the middle.
      a.cavity * lip * (0.8 + 0.4 * np.clip(np.abs(n_in), 0.0, 1.0)),
      # A tongue pushed forward (th, l) catches more light.
      a.tongue * lip * (1.0 + 0.35 * col("tongue")) * np.ones_like(n_in),
      0.85 * a.teeth * teeth_shade,
      np.full_like(n_in, lip),
      None,
  ]
  tones = [t if t is None else t[:, None, :].astype(np.float32)
           for t in tones]
  return ys, tones, (half_width * k)[:, :, None]


def _draw(skin, ys, tones, v, edge):
  """(F, H, W) float32 frames in the face's frame.

  Args:
    skin: (H, W) static skin.
    ys, tones: from `_contours`.
    v: (H, 1) canvas rows in px from the mouth centre.
    edge: width in px of the anti-aliased edges.
  """
  # Coverage by the region below each contour, in units of the edge width.
  rows = (v / edge + 0.5).astype(np.float32)[None]
  below = [np.clip(rows - (y / edge).astype(np.float32), 0.0, 1.0)
           for y in ys]
  mouth = below[0] - below[-1]
  frame = skin[None] * (1.0 - mouth)
  # Telescoping sum over the bands between the outer lip contours.
  for i, cover in enumerate(below):
    top, bottom = tones[i], tones[i + 1]
    if top is None:
      frame += cover * bottom
    elif bottom is None:
      frame -= cover * top
    else:
      frame += cover * (bottom - top)
  return frame


def _shade(frames, ys, half_width, u, v, a, k):
  """Adds in place the shading that moves with the lips.

  Args:
    frames: (F, H, W) canvas frames.
    ys, half_width: contours and mouth half-width from `_contours`.
    u, v: (1, W) and (H, 1) canvas coordinates in px.
    a: appearance.
    k: px per canonical px.
  """
  y_in_low, y_out_low = ys[-2], ys[-1]
  # The protruding lower lip shades the skin under it.
  width = np.clip(1.0 - (u / (1.15 * half_width))**2, 0.0, 1.0)
  under = np.exp(-((v[None] - y_out_low - 3.0 * k) / (3.0 * k))**2) * width
  # The lower lip faces up and catches the light along its middle.
  lower = y_out_low - y_in_low
  mid = y_in_low + 0.5 * lower
  gloss = np.exp(-((v[None] - mid) / (0.25 * lower + 0.5 * k))**2) * width
  # Mouth corners fold in.
  corners = (np.exp(-((np.abs(u) - half_width) / (1.8 * k))**2) *
             np.exp(-((v - _SEAM_Y * k) / (1.8 * k))**2))
  lip = a.skin * (1.0 - a.lip_darkness)
  frames *= 1.0 - 0.12 * under - 0.35 * corners
  frames += (a.lip_gloss * lip) * gloss


def render_mouth(phones, num_frames: int, appearance: Appearance,
                 rng: np.random.Generator, *, fps: float = 25, size: int = 88,
                 offset_frames: int = 0) -> np.ndarray:
  """Renders the mouth ROI video of a phone timeline.

  Args:
    phones: (phone, start_s, end_s) timeline, see `visemes.validate_timeline`.
    num_frames: F, number of video frames.
    appearance: the speaker's look, from `sample_appearance`.
    rng: source of all per-video randomness (head motion, lighting, camera
      sharpness, sensor noise); the same seed gives the same video.
    fps: video frame rate.
    size: ROI side in pixels.
    offset_frames: the video lags the audio by this many frames (may be
      negative), see `visemes.frame_times`.

  Returns:
    (F, size, size) uint8 grayscale frames.
  """
  if (not isinstance(size, (int, np.integer)) or isinstance(size, bool)
      or size < MIN_SIZE):
    raise ValueError(f"size must be an int >= {MIN_SIZE} px (a mouth needs "
                     f"room for lips and teeth), got {size!r}.")
  track = visemes.articulation_track(phones, num_frames, fps, offset_frames)
  a = appearance
  k = size / _CANONICAL_SIZE * a.roi_scale
  canvas = size + 2 * int(np.ceil(_MARGIN * size))
  centre = (canvas - 1) / 2.0
  coords = np.arange(canvas, dtype=np.float32) - centre
  u, v = coords[None, :], coords[:, None]

  # Per-video conditions, drawn in a fixed order.
  motion_sigma = rng.uniform(0.3, 0.8) * fps  # frames
  shift = rng.uniform(0.5, 2.0) * size / _CANONICAL_SIZE  # px
  angle = np.deg2rad(rng.uniform(1.0, 4.0))
  zoom = rng.uniform(0.01, 0.04)
  tx = a.offset_x * k + shift * _smooth_noise(rng, num_frames, motion_sigma)
  ty = a.offset_y * k + shift * _smooth_noise(rng, num_frames, motion_sigma)
  theta = angle * _smooth_noise(rng, num_frames, motion_sigma)
  scale = 1.0 + zoom * _smooth_noise(rng, num_frames, motion_sigma)
  light_sigma = rng.uniform(0.5, 1.5) * fps
  slope = rng.uniform(0.0, 0.25)
  # Bright skin under strong light would clip to white: cap the mean gain.
  mean_gain = min(rng.uniform(0.75, 1.2), 225.0 / (a.skin * (1.0 + slope)))
  gain = mean_gain * (1.0 + 0.05 * _smooth_noise(rng, num_frames, light_sigma))
  direction = rng.uniform(0, 2 * np.pi) + 0.4 * _smooth_noise(
      rng, num_frames, light_sigma)
  edge = rng.uniform(0.8, 1.8) * k
  noise = rng.uniform(0.5, 4.0)

  skin = _skin(a, u, v, k)
  ys, tones, half_width = _contours(a, track, u, k)
  grid = np.arange(size, dtype=np.float32) - (size - 1) / 2.0
  out = np.empty((num_frames, size, size), np.float32)
  # Chunks of frames keep the canvas temporaries small and in cache.
  for start in range(0, num_frames, _CHUNK):
    chunk = slice(start, start + _CHUNK)
    ys_chunk = [y[chunk] for y in ys]
    frames = _draw(skin, ys_chunk,
                   [t if t is None else t[chunk] for t in tones], v, edge)
    _shade(frames, ys_chunk, half_width[chunk], u, v, a, k)
    for f, frame in enumerate(frames, start):
      # Output pixel p reads the canvas at centre + R(-theta) (p - t) / scale,
      # p and t relative to the ROI centre.
      x = (grid[None, :] - tx[f]) / scale[f]
      y = (grid[:, None] - ty[f]) / scale[f]
      cos, sin = np.cos(theta[f]), np.sin(theta[f])
      src = np.stack([centre + cos * y - sin * x, centre + sin * y + cos * x])
      scipy.ndimage.map_coordinates(frame, src, out[f], order=1,
                                    mode="nearest", prefilter=False)

  # Light from a slowly turning direction: a gradient across the ROI.
  ramp = grid / (size / 2.0)
  gx = (slope * np.cos(direction)).astype(np.float32)[:, None, None]
  gy = (slope * np.sin(direction)).astype(np.float32)[:, None, None]
  out *= gain.astype(np.float32)[:, None, None] * (
      1.0 + gx * ramp[None, None, :] + gy * ramp[None, :, None])
  out += noise * rng.standard_normal(out.shape, dtype=np.float32)
  return np.clip(np.round(out), 0, 255).astype(np.uint8)


def expected_opening(phones, num_frames: int, fps: float = 25,
                     offset_frames: int = 0) -> np.ndarray:
  """(F,) float32 mouth-opening target of the timeline, 0 closed .. 1 wide."""
  return visemes.articulation_track(phones, num_frames, fps,
                                    offset_frames)["open"]


def mouth_opening(frames: np.ndarray) -> np.ndarray:
  """(F,) float32 mouth opening measured from pixels alone.

  The fraction of dark pixels (the mouth cavity) in the central region, after
  dividing out each frame's lighting: a plane fitted to its log intensity
  removes the gain and the gradient, and a pixel is dark relative to the
  frame's bright (skin) level.

  Args:
    frames: (F, H, W) grayscale frames, any numeric dtype.
  """
  frames = np.asarray(frames, np.float32)
  if frames.ndim != 3:
    raise ValueError(f"frames must be (F, H, W), got shape {frames.shape}.")
  num, h, w = frames.shape
  log = np.log(frames.reshape(num, -1) + 1.0)
  yy, xx = np.mgrid[0:h, 0:w]
  design = np.stack([np.ones(h * w), yy.ravel() / h, xx.ravel() / w], axis=1)
  plane = np.linalg.lstsq(design, log.T, rcond=None)[0].T @ design.T
  relative = np.exp(log - plane).reshape(num, h, w)
  centre = relative[:, int(0.2 * h):int(0.85 * h), int(0.2 * w):int(0.8 * w)]
  centre = centre.reshape(num, -1)
  bright = np.percentile(centre, 80, axis=1, keepdims=True)
  dark = np.clip((0.5 - centre / bright) / 0.15, 0.0, 1.0)
  return dark.mean(axis=1).astype(np.float32)


def contact_sheet(frames: np.ndarray, cols: int, *, pad: int = 2,
                  background: int = 255) -> np.ndarray:
  """Tiles (N, H, W) frames row by row into one uint8 2D image.

  Returns:
    (rows * (H + pad) - pad, cols * (W + pad) - pad) uint8.
  """
  frames = np.asarray(frames)
  if frames.ndim != 3 or cols < 1:
    raise ValueError(f"need (N, H, W) frames and cols >= 1, got shape "
                     f"{frames.shape} and cols={cols}.")
  n, h, w = frames.shape
  rows = -(-n // cols)
  sheet = np.full((rows * (h + pad) - pad, cols * (w + pad) - pad),
                  background, np.uint8)
  for i, frame in enumerate(np.clip(frames, 0, 255).astype(np.uint8)):
    r, c = divmod(i, cols)
    sheet[r * (h + pad):r * (h + pad) + h, c * (w + pad):c * (w + pad) + w] = (
        frame)
  return sheet


def save_png(path: str, image: np.ndarray) -> None:
  """Writes a 2D uint8 image as an 8-bit grayscale PNG (no imaging library)."""
  image = np.ascontiguousarray(image, np.uint8)
  if image.ndim != 2:
    raise ValueError(f"need a 2D image, got shape {image.shape}.")
  h, w = image.shape

  def chunk(kind, data):
    return (struct.pack(">I", len(data)) + kind + data +
            struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

  # Each scanline starts with filter type 0 (none).
  raw = np.concatenate([np.zeros((h, 1), np.uint8), image], axis=1).tobytes()
  with open(path, "wb") as f:
    f.write(b"\x89PNG\r\n\x1a\n")
    f.write(chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)))
    f.write(chunk(b"IDAT", zlib.compress(raw, 6)))
    f.write(chunk(b"IEND", b""))
