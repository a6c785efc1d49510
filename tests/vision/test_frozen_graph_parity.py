"""Optional: the Flax port against the frozen graph run live by TensorFlow, on real photos.

Runs only where tensorflow is importable; the always-running tests compare against the
graph's recorded output instead (test_retinaface.py). To run it:

    pip install tensorflow-cpu==2.21.0
    python -m pytest -n 0 tests/vision/test_frozen_graph_parity.py
"""

import numpy as np
import pytest
import vision_images

tf = pytest.importorskip("tensorflow")
frozen_graph_tf = pytest.importorskip("frozen_graph_tf")


def _variants():
  """The shared photos plus edits the recorded fixture does not cover."""
  import skimage.transform  # pylint: disable=import-outside-toplevel
  a = vision_images.astronaut()
  rotated = (skimage.transform.rotate(a, 15, mode="edge") * 255).round().astype(np.uint8)
  out = {name: make() for name, make in vision_images.IMAGES.items()}
  out.update({
      "astronaut_rotated": rotated,
      "astronaut_dark": (a * 0.6).astype(np.uint8),
      "astronaut_crop_300x320": np.ascontiguousarray(a[40:340, 100:420]),
      "camera_mirrored": np.ascontiguousarray(vision_images.camera()[:, ::-1]),
      "three_faces": np.concatenate([a, vision_images.camera(), a[:, ::-1]], axis=1),
  })
  return out


@pytest.fixture(scope="module")
def graph():
  return frozen_graph_tf.FrozenGraph()


@pytest.mark.parametrize("name", sorted(_variants()))
def test_port_agrees_with_tensorflow(face_detector, graph, name):
  image = _variants()[name]
  rows = graph(image)
  boxes, scores, landmarks = face_detector(image).frame(0)
  assert len(boxes) == len(rows), name
  np.testing.assert_allclose(boxes, rows[:, :4], atol=0.5)
  # The port sorts each landmark pair by x; the graph's order is the same for these faces.
  np.testing.assert_allclose(landmarks.reshape(-1, 10), rows[:, 4:14], atol=0.5)
  np.testing.assert_allclose(scores, rows[:, 15], atol=1e-3)
