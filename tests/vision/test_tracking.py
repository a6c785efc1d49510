"""Face tracking on synthetic detections: association, gaps, crossings, smoothing."""

import numpy as np

from avsep_jax.vision import tracking


def _face(cx, cy, size=60.0):
  """(box, landmarks) of an upright face of `size` pixels centred at (cx, cy)."""
  s = size
  box = np.array([cx - s / 2, cy - s / 2, cx + s / 2, cy + s / 2])
  rel = np.array([[-0.2, -0.15], [0.2, -0.15], [0.0, 0.05], [-0.17, 0.22], [0.17, 0.22]])
  return box, np.array([cx, cy]) + rel * s


def _frames(faces_per_frame):
  """[(boxes, scores, landmarks)] from lists of (cx, cy) per frame."""
  out = []
  for faces in faces_per_frame:
    made = [_face(*f) for f in faces]
    boxes = np.array([m[0] for m in made]).reshape(-1, 4)
    lms = np.array([m[1] for m in made]).reshape(-1, 5, 2)
    out.append((boxes, np.full(len(made), 0.99), lms))
  return out


def _centres(track):
  return (track.boxes[:, :2] + track.boxes[:, 2:]) / 2


def test_two_faces_keep_their_tracks_whatever_the_detection_order():
  rng = np.random.default_rng(0)
  frames = []
  for _ in range(20):
    faces = [(100.0, 100.0), (300.0, 120.0)]
    rng.shuffle(faces)
    frames.append(faces)
  tracks = tracking.track_faces(_frames(frames))
  assert len(tracks) == 2
  for t in tracks:
    assert t.detected.all() and t.present.all()
    assert np.ptp(_centres(t), axis=0).max() < 1e-6
  assert sorted(round(c) for c in (_centres(t)[0, 0] for t in tracks)) == [100, 300]


def test_gap_is_bridged_by_interpolation():
  """A face moving right at 3 px/frame, missed for 4 frames: one track, gap filled."""
  xs = 50.0 + 3.0 * np.arange(30)
  frames = [[] if 10 <= i < 14 else [(x, 80.0)] for i, x in enumerate(xs)]
  (track,) = tracking.track_faces(_frames(frames))
  assert track.present.all()
  assert not track.detected[10:14].any() and track.detected.sum() == 26
  # Linear motion is a fixed point of interpolation and of the centred moving average.
  np.testing.assert_allclose(_centres(track)[:, 0], xs, atol=1e-4)
  np.testing.assert_allclose(track.landmarks[12], _face(xs[12], 80.0)[1], atol=1e-4)


def test_long_gap_splits_the_track():
  frames = [[] if 10 <= i < 25 else [(100.0, 100.0)] for i in range(40)]
  tracks = tracking.track_faces(_frames(frames), tracking.TrackerConfig(max_gap=6))
  assert len(tracks) == 2
  assert tracks[0].last_frame == 9 and tracks[1].first_frame == 25
  # Outside its span a track holds its edge values and is marked absent.
  assert not tracks[0].present[10:].any()
  np.testing.assert_allclose(tracks[0].boxes[30], tracks[0].boxes[9])


def test_two_crossing_faces_keep_their_identities():
  """Faces swap sides; while they overlap the detector sees only the front one."""
  n = 41
  a = np.linspace(40, 360, n)      # moves right
  b = np.linspace(360, 40, n)      # moves left
  frames = []
  for i in range(n):
    overlap = abs(a[i] - b[i]) < 40
    frames.append([(a[i], 100.0)] if overlap else [(a[i], 100.0), (b[i], 104.0)])
  assert sum(len(f) == 1 for f in frames) >= 3
  tracks = tracking.track_faces(_frames(frames))
  assert len(tracks) == 2
  right_mover = min(tracks, key=lambda t: _centres(t)[0, 0])
  left_mover = max(tracks, key=lambda t: _centres(t)[0, 0])
  np.testing.assert_allclose(_centres(right_mover)[:, 0], a, atol=0.5)
  np.testing.assert_allclose(_centres(left_mover)[:, 0], b, atol=0.5)
  assert left_mover.present.all() and not left_mover.detected.all()


def test_smoothing_reduces_landmark_jitter():
  rng = np.random.default_rng(1)
  dets = _frames([[(200.0, 150.0)]] * 50)
  noisy = [(b, s, lm + rng.normal(0, 2.0, lm.shape)) for b, s, lm in dets]
  (track,) = tracking.track_faces(noisy)
  truth = _face(200.0, 150.0)[1]
  err_raw = np.std(np.stack([d[2][0] for d in noisy]) - truth)
  err_smooth = np.std(track.landmarks[6:-6] - truth)
  assert err_smooth < 0.5 * err_raw


def test_spurious_detections_are_dropped():
  frames = [[(100.0, 100.0)] + ([(400.0, 300.0)] if i == 7 else []) for i in range(20)]
  (track,) = tracking.track_faces(_frames(frames))
  assert track.detected.all()


def test_select_tracks_keeps_the_most_visible():
  frames = [[(60.0, 60.0)] * (i < 10) + [(200.0, 60.0)] + [(340.0, 60.0)] * (i < 20)
            for i in range(30)]
  tracks = tracking.track_faces(_frames(frames))
  assert len(tracks) == 3
  kept, dropped = tracking.select_tracks(tracks, 2)
  assert [t.num_detections for t in kept] == [30, 20]
  assert [t.num_detections for t in dropped] == [10]
  assert tracking.select_tracks(tracks, None)[1] == []
