"""Fixtures shared by the vision tests: the detector with the imported weights."""

import json
import os
import sys

import pytest

# Helper modules beside the tests (real photos, the TF reference runner).
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

REFERENCE_JSON = os.path.join(os.path.dirname(__file__), "data", "frozen_graph_reference.json")


@pytest.fixture(scope="session")
def face_detector():
  """FaceDetector with the frozen graph's weights (converted once and cached)."""
  from avsep_jax.vision import retinaface  # pylint: disable=import-outside-toplevel
  return retinaface.FaceDetector(batch_size=2)


@pytest.fixture(scope="session")
def frozen_graph_reference():
  """{photo name: [faces]} recorded from the frozen graph run by TensorFlow."""
  with open(REFERENCE_JSON) as f:
    return json.load(f)
