"""Phones to visemes to articulation tracks: what the lips do over time.

The phone -> viseme table follows the Microsoft SAPI 5.3/5.4 viseme set (IDs
0-21, "based on the Disney 13 visemes"; learn.microsoft.com ee431873 and
ms720881), written here with ARPAbet names (SAPI `h` = ARPAbet `hh`). It keeps
apart what a renderer must draw differently and coarser tables merge (Lee &
Yook 2002 puts th/dh with t/d/s/z and l with k/g): tongue between the teeth
(17), tongue tip up (14), lower lip under the teeth (18), lips closed (21).

No published table gives numbers for the shapes, so the per-viseme articulation
targets below are hand-set from the articulatory descriptions of Jeffers &
Barley (1971) ("lips together", "lip to teeth", "lips puckered", ...).

Co-articulation follows the dominance model of Cohen & Massaro (1993): every
phone pulls the articulators towards its targets with a strength that is its
dominance times a Gaussian-blurred indicator of its time span, and the track
is the dominance-weighted mean of the targets. Strongly visible gestures (lip
closure, lip-teeth contact, rounding) dominate their neighbours, so a 40 ms
/b/ between two /aa/ still closes the lips, while weakly visible ones (/k/,
/hh/) take the shape of the surrounding vowels.
"""

from typing import Iterable, Sequence

import numpy as np
import scipy.special

# Articulation parameters, all in [0, 1]. `open`: jaw and lip aperture.
# `spread`: lip corners pulled back (wider mouth). `round`: lips rounded and
# protruded (narrower mouth, round opening). `upper_teeth`, `lower_teeth`: how
# much of the teeth shows inside the opening. `tuck`: lower lip drawn under the
# upper teeth (f, v). `tongue`: how much tongue shows (tip between the teeth
# for th/dh). `press`: lips pressed together (p, b, m).
PARAMS = ("open", "spread", "round", "upper_teeth", "lower_teeth", "tuck",
          "tongue", "press")

SILENCE = "sil"

# SAPI viseme ID per phone.
PHONE_TO_VISEME = {
    SILENCE: 0,
    "ae": 1, "ah": 1,
    "aa": 2,
    "ao": 3,
    "ey": 4, "eh": 4, "uh": 4,
    "er": 5,
    "y": 6, "iy": 6, "ih": 6,
    "w": 7, "uw": 7,
    "ow": 8,
    "aw": 9,
    "oy": 10,
    "ay": 11,
    "hh": 12,
    "r": 13,
    "l": 14,
    "s": 15, "z": 15,
    "sh": 16, "ch": 16, "jh": 16, "zh": 16,
    "th": 17, "dh": 17,
    "f": 18, "v": 18,
    "d": 19, "t": 19, "n": 19,
    "k": 20, "g": 20, "ng": 20,
    "p": 21, "b": 21, "m": 21,
}

NUM_VISEMES = 22

# (dominance, targets in PARAMS order) per SAPI viseme. Visemes 8-11 are the
# onsets of diphthongs; the glide is in _GLIDES.
VISEMES = {
    #     dom   open spread round uteeth lteeth tuck tongue press
    0: (1.0, (0.00, 0.00, 0.00, 0.00, 0.00, 0.0, 0.00, 0.0)),  # silence: rest
    1: (1.5, (0.65, 0.35, 0.00, 0.60, 0.30, 0.0, 0.25, 0.0)),  # ae ah
    2: (1.5, (1.00, 0.10, 0.05, 0.50, 0.20, 0.0, 0.20, 0.0)),  # aa
    3: (1.5, (0.75, 0.00, 0.55, 0.30, 0.10, 0.0, 0.10, 0.0)),  # ao
    4: (1.5, (0.50, 0.45, 0.00, 0.65, 0.35, 0.0, 0.25, 0.0)),  # ey eh uh
    5: (1.5, (0.30, 0.05, 0.50, 0.35, 0.10, 0.0, 0.00, 0.0)),  # er
    6: (1.5, (0.25, 0.90, 0.00, 0.85, 0.60, 0.0, 0.10, 0.0)),  # y iy ih
    7: (3.0, (0.15, 0.00, 1.00, 0.00, 0.00, 0.0, 0.00, 0.0)),  # w uw
    8: (1.5, (0.50, 0.00, 0.70, 0.25, 0.05, 0.0, 0.05, 0.0)),  # ow
    9: (1.5, (0.85, 0.15, 0.05, 0.50, 0.20, 0.0, 0.20, 0.0)),  # aw
    10: (1.5, (0.70, 0.00, 0.60, 0.30, 0.10, 0.0, 0.10, 0.0)),  # oy
    11: (1.5, (0.95, 0.15, 0.00, 0.50, 0.20, 0.0, 0.20, 0.0)),  # ay
    12: (0.5, (0.40, 0.20, 0.00, 0.40, 0.20, 0.0, 0.15, 0.0)),  # hh
    13: (1.5, (0.25, 0.00, 0.60, 0.30, 0.05, 0.0, 0.00, 0.0)),  # r
    14: (1.2, (0.35, 0.20, 0.00, 0.70, 0.30, 0.0, 0.70, 0.0)),  # l
    15: (2.5, (0.12, 0.60, 0.00, 1.00, 1.00, 0.0, 0.00, 0.0)),  # s z
    16: (2.5, (0.20, 0.00, 0.65, 0.90, 0.80, 0.0, 0.00, 0.0)),  # sh ch jh zh
    17: (3.0, (0.22, 0.30, 0.00, 0.90, 0.20, 0.0, 1.00, 0.0)),  # th dh
    18: (5.0, (0.06, 0.20, 0.00, 1.00, 0.00, 1.0, 0.00, 0.0)),  # f v
    19: (0.7, (0.22, 0.30, 0.00, 0.75, 0.50, 0.0, 0.30, 0.0)),  # d t n
    20: (0.6, (0.30, 0.20, 0.00, 0.45, 0.30, 0.0, 0.15, 0.0)),  # k g ng
    21: (8.0, (0.00, 0.05, 0.05, 0.00, 0.00, 0.0, 0.00, 1.0)),  # p b m
}

# Diphthongs: (viseme the phone ends on, fraction of the phone spent gliding).
_GLIDES = {"ay": (6, 0.45), "aw": (7, 0.45), "oy": (6, 0.45),
           "ow": (7, 0.4), "ey": (6, 0.4)}

# Standard deviation of the co-articulation kernel: its FWHM is 47 ms, about
# one short phone, so neighbours blend but a 100 ms vowel reaches its target.
COARTICULATION_SIGMA_S = 0.02

# Tolerated mismatch between a phone's start and the previous phone's end:
# float32 rounding of times within minutes, far below a video frame.
_CONTIGUITY_TOL_S = 1e-4


def validate_timeline(phones: Iterable) -> list[tuple[str, float, float]]:
  """Checks a phone timeline and returns it as a list of (str, float, float).

  Args:
    phones: (phone, start_s, end_s) triples, contiguous and in time order;
      phones in lowercase ARPAbet without stress digits, or 'sil'. Names may
      be bytes (as read back from TFDS). An empty timeline is all silence.

  Raises:
    ValueError: naming the first offending entry.
  """
  out = []
  for i, entry in enumerate(phones):
    try:
      phone, start, end = entry
    except (TypeError, ValueError):
      raise ValueError(f"phone {i}: expected a (phone, start_s, end_s) triple, "
                       f"got {entry!r}.") from None
    if isinstance(phone, bytes):
      phone = phone.decode()
    if phone not in PHONE_TO_VISEME:
      raise ValueError(
          f"phone {i}: unknown phone {phone!r}; expected lowercase ARPAbet "
          f"without stress digits or {SILENCE!r}.")
    start, end = float(start), float(end)
    if not (np.isfinite(start) and np.isfinite(end)):
      raise ValueError(f"phone {i} ({phone!r}): non-finite time "
                       f"{start}..{end}.")
    if end < start:
      raise ValueError(f"phone {i} ({phone!r}): ends at {end} s before it "
                       f"starts at {start} s (unsorted timeline?).")
    if out and abs(start - out[-1][2]) > _CONTIGUITY_TOL_S:
      raise ValueError(
          f"phone {i} ({phone!r}): starts at {start} s but phone {i - 1} "
          f"ends at {out[-1][2]} s; the timeline must be contiguous and "
          "sorted.")
    out.append((phone, start, end))
  return out


def frame_times(num_frames: int, fps: float = 25,
                offset_frames: int = 0) -> np.ndarray:
  """(F,) float64 times in seconds shown by each video frame.

  `offset_frames = k` means the video lags the audio by k frames: frame f
  shows the articulation at (f - k + 0.5) / fps, the middle of its frame
  period k frames earlier.
  """
  if (not isinstance(num_frames, (int, np.integer))
      or isinstance(num_frames, bool) or num_frames <= 0):
    raise ValueError(f"num_frames must be a positive int, got {num_frames!r}.")
  if not fps > 0:
    raise ValueError(f"fps must be positive, got {fps!r}.")
  if not isinstance(offset_frames, (int, np.integer)):
    raise ValueError(f"offset_frames must be an int, got {offset_frames!r}.")
  return (np.arange(num_frames) - offset_frames + 0.5) / fps


def frame_visemes(phones: Sequence, num_frames: int, fps: float = 25,
                  offset_frames: int = 0) -> np.ndarray:
  """(F,) int32 SAPI viseme id shown by each video frame: that of the phone spanning
  the frame's time (`frame_times`, so the video's lag is applied), silence (0) outside
  the timeline. What a lip reader learns to read; diphthongs keep their onset's id."""
  timeline = validate_timeline(phones)
  t = frame_times(num_frames, fps, offset_frames)
  if not timeline:
    return np.zeros(num_frames, np.int32)
  starts = np.asarray([s for _, s, _ in timeline])
  ends = np.asarray([e for _, _, e in timeline])
  ids = np.asarray([PHONE_TO_VISEME[p] for p, _, _ in timeline], np.int32)
  # The first phone ending after t (zero-length phones are never chosen).
  index = np.minimum(np.searchsorted(ends, t, side="right"), len(timeline) - 1)
  inside = (t >= starts[0]) & (t < ends[-1])
  return np.where(inside, ids[index], PHONE_TO_VISEME[SILENCE]).astype(np.int32)


def _segments(timeline):
  """Splits the timeline into target segments, diphthongs in two.

  Returns:
    starts, ends: (S,) seconds; silence before and after the timeline is
      included, as (-inf, t0) and (tN, inf).
    dominance: (S,).
    targets: (S, len(PARAMS)).
  """
  t0 = timeline[0][1] if timeline else 0.0
  tn = timeline[-1][2] if timeline else 0.0
  rest = VISEMES[PHONE_TO_VISEME[SILENCE]]
  segments = [(-np.inf, t0, *rest)]
  for phone, start, end in timeline:
    dominance, targets = VISEMES[PHONE_TO_VISEME[phone]]
    if phone in _GLIDES:
      glide_to, fraction = _GLIDES[phone]
      middle = end - fraction * (end - start)
      # The glide keeps the diphthong's dominance: an /ay/ is one vowel
      # gesture, also where it reaches the shape of /iy/.
      segments += [(start, middle, dominance, targets),
                   (middle, end, dominance, VISEMES[glide_to][1])]
    else:
      segments.append((start, end, dominance, targets))
  segments.append((tn, np.inf, *rest))
  starts, ends, dominance, targets = (np.asarray(x) for x in zip(*segments))
  return starts, ends, dominance, targets


def articulation_track(phones: Sequence, num_frames: int, fps: float = 25,
                       offset_frames: int = 0) -> dict[str, np.ndarray]:
  """Articulation parameters per video frame, co-articulated.

  Args:
    phones: (phone, start_s, end_s) timeline, see `validate_timeline`.
    num_frames: F, number of video frames.
    fps: video frame rate.
    offset_frames: video lag in frames, see `frame_times`. Times outside the
      timeline are silence (mouth at rest).

  Returns:
    {name: (F,) float32 in [0, 1]} for every name in PARAMS.
  """
  timeline = validate_timeline(phones)
  t = frame_times(num_frames, fps, offset_frames)
  starts, ends, dominance, targets = _segments(timeline)
  # Mass of a Gaussian centred on each frame time that falls on each segment:
  # the smoothed indicator of the segment, (F, S).
  sigma = COARTICULATION_SIGMA_S
  mass = (scipy.special.ndtr((ends[None] - t[:, None]) / sigma) -
          scipy.special.ndtr((starts[None] - t[:, None]) / sigma))
  weights = mass * dominance[None]
  track = (weights @ targets) / weights.sum(axis=1, keepdims=True)
  return {name: track[:, i].astype(np.float32)
          for i, name in enumerate(PARAMS)}
