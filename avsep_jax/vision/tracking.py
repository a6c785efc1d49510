"""Face tracks across frames: association, gap bridging, smoothing.

Online association, frame by frame: every open track predicts its box and landmarks in
the new frame (constant velocity from its last two detections, so two faces that cross
keep their identities), and detections are assigned to tracks by the Hungarian method on
a cost of (1 - IoU) plus the mean landmark distance in units of the face size. A pair is
allowed only if its IoU or its landmark distance passes a gate. A track that misses more
than `max_gap` frames is closed; shorter gaps are filled afterwards by linear
interpolation. Finally boxes and landmarks are smoothed with the lip-reading recipe's
centred moving average (12 frames: the window shrinks symmetrically at a track's ends).
"""

import dataclasses

import numpy as np
import scipy.optimize


@dataclasses.dataclass(frozen=True)
class TrackerConfig:
  """Association and post-processing settings.

  Attributes:
    min_iou: a detection may join a track if its IoU with the prediction is at least
      this ...
    max_landmark_distance: ... or its mean landmark distance, divided by the face size
      (sqrt of the predicted box area), is at most this.
    max_gap: missed frames a track survives; gaps up to this are interpolated.
    min_detections: tracks detected in fewer frames are dropped (spurious detections).
    smooth_window: frames of the centred moving average (0 or 1: no smoothing).
    min_score: detections below this score are ignored.
  """

  min_iou: float = 0.3
  max_landmark_distance: float = 0.25
  max_gap: int = 6
  min_detections: int = 3
  smooth_window: int = 12
  min_score: float = 0.5


@dataclasses.dataclass
class Track:
  """One face over the whole video (F frames), smoothed.

  Attributes:
    track_id: order of first appearance.
    boxes: (F, 4) x1, y1, x2, y2; held constant before the first and after the last
      detection.
    landmarks: (F, 5, 2), same convention as `retinaface.Detections`.
    scores: (F,) detection score, 0 where not detected.
    detected: (F,) bool, detected in that frame.
    present: (F,) bool, between the first and last detection (bridged gaps included).
  """

  track_id: int
  boxes: np.ndarray
  landmarks: np.ndarray
  scores: np.ndarray
  detected: np.ndarray
  present: np.ndarray

  @property
  def num_detections(self):
    return int(self.detected.sum())

  @property
  def visibility(self):
    """Fraction of the video's frames in which the face was detected."""
    return float(self.detected.mean()) if len(self.detected) else 0.0

  @property
  def first_frame(self):
    return int(np.argmax(self.present))

  @property
  def last_frame(self):
    return int(len(self.present) - 1 - np.argmax(self.present[::-1]))

  def summary(self):
    """JSON-ready description (frames, visibility, mean box)."""
    return {
        "track_id": self.track_id, "first_frame": self.first_frame,
        "last_frame": self.last_frame, "detected_frames": self.num_detections,
        "visibility": round(self.visibility, 4),
        "mean_score": round(float(self.scores[self.detected].mean()), 4),
        "mean_box": [round(float(v), 1) for v in self.boxes[self.present].mean(axis=0)]}


class _OpenTrack:
  """A track while it is being built: the detections it was given, by frame."""

  def __init__(self, track_id, frame, box, score, landmarks):
    self.track_id = track_id
    self.frames, self.boxes, self.scores, self.landmarks = [], [], [], []
    self.add(frame, box, score, landmarks)

  def add(self, frame, box, score, landmarks):
    self.frames.append(frame)
    self.boxes.append(np.asarray(box, np.float64))
    self.scores.append(float(score))
    self.landmarks.append(np.asarray(landmarks, np.float64))

  def predict(self, frame):
    """Box and landmarks extrapolated to `frame` at the last observed velocity."""
    if len(self.frames) < 2:
      return self.boxes[-1], self.landmarks[-1]
    dt = self.frames[-1] - self.frames[-2]
    ahead = frame - self.frames[-1]
    vb = (self.boxes[-1] - self.boxes[-2]) / dt
    vl = (self.landmarks[-1] - self.landmarks[-2]) / dt
    return self.boxes[-1] + vb * ahead, self.landmarks[-1] + vl * ahead


def box_iou(a, b):
  """(N, 4) x (M, 4) boxes -> (N, M) IoU, in numpy (tracking runs on the host)."""
  lo = np.maximum(a[:, None, :2], b[None, :, :2])
  hi = np.minimum(a[:, None, 2:], b[None, :, 2:])
  inter = np.prod(np.clip(hi - lo, 0, None), axis=-1)
  area_a = np.prod(np.clip(a[:, 2:] - a[:, :2], 0, None), axis=-1)
  area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0, None), axis=-1)
  union = area_a[:, None] + area_b[None, :] - inter
  return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def _pair_costs(tracks, frame, boxes, landmarks, config):
  """(T, D) assignment costs; np.inf where the gate forbids the pair."""
  preds = [t.predict(frame) for t in tracks]
  pb = np.stack([p[0] for p in preds])
  pl = np.stack([p[1] for p in preds])
  iou = box_iou(pb, boxes)
  size = np.sqrt(np.clip(np.prod(pb[:, 2:] - pb[:, :2], axis=-1), 1e-6, None))
  dist = np.linalg.norm(pl[:, None] - landmarks[None], axis=-1).mean(-1) / size[:, None]
  allowed = (iou >= config.min_iou) | (dist <= config.max_landmark_distance)
  return np.where(allowed, (1.0 - iou) + dist, np.inf)


def _centred_mean(x, present, window):
  """Centred moving average over the present frames, shrinking at the ends."""
  if window <= 1:
    return x
  half = window // 2
  out = x.copy()
  idx = np.flatnonzero(present)
  lo, hi = idx[0], idx[-1]
  seg = x[lo:hi + 1]
  csum = np.concatenate([np.zeros((1,) + seg.shape[1:]), np.cumsum(seg, axis=0)])
  n = len(seg)
  for i in range(n):
    m = min(half, i, n - 1 - i)
    out[lo + i] = (csum[i + m + 1] - csum[i - m]) / (2 * m + 1)
  return out


def _densify(track, num_frames, config):
  """Dense, gap-interpolated, edge-held, smoothed arrays of a built track."""
  frames = np.asarray(track.frames)
  boxes, lms = np.stack(track.boxes), np.stack(track.landmarks)
  t = np.arange(num_frames)
  flat = np.concatenate([boxes, lms.reshape(len(frames), -1)], axis=1)
  # np.interp holds the end values outside [first, last]: the recipe's edge copy.
  dense = np.stack([np.interp(t, frames, flat[:, j]) for j in range(flat.shape[1])], 1)
  detected = np.zeros(num_frames, bool)
  detected[frames] = True
  present = (t >= frames[0]) & (t <= frames[-1])
  dense = _centred_mean(dense, present, config.smooth_window)
  dense[t < frames[0]] = dense[frames[0]]
  dense[t > frames[-1]] = dense[frames[-1]]
  scores = np.zeros(num_frames, np.float32)
  scores[frames] = track.scores
  return Track(track_id=track.track_id, boxes=dense[:, :4].astype(np.float32),
               landmarks=dense[:, 4:].reshape(num_frames, 5, 2).astype(np.float32),
               scores=scores, detected=detected, present=present)


def track_faces(detections, config=TrackerConfig()):
  """Links per-frame detections into face tracks.

  Args:
    detections: a sequence over frames of (boxes (n, 4), scores (n,), landmarks
      (n, 5, 2)) tuples, e.g. `[dets.frame(i) for i in range(len(dets))]`.
    config: a `TrackerConfig`.

  Returns:
    list of `Track` (each spanning all F frames), in order of first appearance.
  """
  num_frames = len(detections)
  open_tracks, closed = [], []
  next_id = 0
  for frame, (boxes, scores, landmarks) in enumerate(detections):
    keep = np.asarray(scores) >= config.min_score
    boxes = np.asarray(boxes, np.float64)[keep]
    scores = np.asarray(scores)[keep]
    landmarks = np.asarray(landmarks, np.float64)[keep]
    still_open = []
    for t in open_tracks:
      (still_open if frame - t.frames[-1] <= config.max_gap + 1 else closed).append(t)
    open_tracks = still_open
    matched = set()
    if open_tracks and len(boxes):
      cost = _pair_costs(open_tracks, frame, boxes, landmarks, config)
      finite = np.where(np.isfinite(cost), cost, 1e9)
      rows, cols = scipy.optimize.linear_sum_assignment(finite)
      for r, c in zip(rows, cols):
        if np.isfinite(cost[r, c]):
          open_tracks[r].add(frame, boxes[c], scores[c], landmarks[c])
          matched.add(c)
    for c in range(len(boxes)):
      if c not in matched:
        open_tracks.append(_OpenTrack(next_id, frame, boxes[c], scores[c], landmarks[c]))
        next_id += 1
  built = sorted(closed + open_tracks, key=lambda t: t.track_id)
  return [_densify(t, num_frames, config) for t in built
          if len(t.frames) >= config.min_detections]


def select_tracks(tracks, max_tracks):
  """Keeps the `max_tracks` most visible tracks.

  Args:
    tracks: list of `Track`.
    max_tracks: how many to keep (None: all).

  Returns:
    (kept, dropped): kept sorted by detected frames (then mean score), most visible
    first; dropped in the same order.
  """
  ranked = sorted(tracks, key=lambda t: (-t.num_detections,
                                         -float(t.scores[t.detected].mean()), t.track_id))
  if max_tracks is None:
    return ranked, []
  return ranked[:max_tracks], ranked[max_tracks:]
