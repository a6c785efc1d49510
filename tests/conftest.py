"""A SynthAV `tiny` build shared by every test that reads data (built once, even under xdist)."""

import fcntl

import pytest

from avsep_jax.data.synthav import builder as builder_lib


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory, worker_id):
  """TFDS data dir holding synth_av/tiny. xdist workers share it through a file lock."""
  root = tmp_path_factory.getbasetemp()
  if worker_id != "master":
    root = root.parent  # the run's directory, shared by all its xdist workers
  data_dir = root / "synthav_tiny"
  with open(root / "synthav_tiny.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    builder_lib.build("tiny", str(data_dir))  # a no-op once prepared
    fcntl.flock(lock, fcntl.LOCK_UN)
  return str(data_dir)
