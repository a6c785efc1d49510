"""Shared fixtures: a SynthAV `tiny` build (built once, even under xdist), untrained
training checkpoints of any config, and the command-line runner of the CLI tests; one
persistent compilation cache for the whole run."""

import fcntl
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

import jax
import pytest

from avsep_jax.data.synthav import builder as builder_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Files whose tests take minutes (`make test` prints them under --durations). They run
# first: xdist hands tests out in collection order, and a minutes-long test collected
# near the end keeps one worker busy after the other has run out of work.
LONG_FIRST = ("test_multiprocess.py", "test_distill.py", "test_train.py",
              "test_learning.py")


def pytest_configure(config):
  """One persistent compilation cache per run, shared by the xdist workers and by every
  process they start: trainer runs in different processes compile the same programs (a
  smoke-config run of test_train takes 22 s of CPU with the cache warm, 77 s cold).
  Made fresh for each run, so a clean clone's timings stay honest. Programs compiled in
  under jax's default 1 s are not stored: storing them too gave no faster warm run."""
  if not hasattr(config, "workerinput"):  # the controller, or a run without xdist
    cache = tempfile.mkdtemp(prefix="avsep_jax_compile_cache_")
    config.add_cleanup(lambda: shutil.rmtree(cache, ignore_errors=True))
    os.environ["JAX_COMPILATION_CACHE_DIR"] = cache  # inherited by workers, subprocesses
  # jax read the environment when this file imported it: before the line above here.
  jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])


def pytest_collection_modifyitems(items):
  """Longest files first (a stable sort: each file keeps its own order)."""
  rank = {name: i for i, name in enumerate(LONG_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(LONG_FIRST)))


@pytest.fixture(scope="session")
def run_once(tmp_path_factory, worker_id):
  """once(name, make) -> the run's directory `name`, filled by make(directory) once per
  test session, by whichever xdist worker asks first (the others wait for it)."""
  root = tmp_path_factory.getbasetemp()
  if worker_id != "master":
    root = root.parent  # the run's directory, shared by all its xdist workers

  def once(name, make):
    path = root / name
    with open(root / f"{name}.lock", "w") as lock:
      fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
      if not (root / f"{name}.done").exists():
        path.mkdir(exist_ok=True)
        make(path)
        (root / f"{name}.done").touch()
    return path

  return once


@pytest.fixture(scope="session")
def tiny_data_dir(run_once):
  """TFDS data dir holding synth_av/tiny."""
  return str(run_once("synthav_tiny", lambda path: builder_lib.build("tiny", str(path))))


@pytest.fixture(scope="session")
def make_checkpoint(tmp_path_factory):
  """make(config, name) -> a training workdir holding an untrained checkpoint of
  `config` (a ConfigDict, or 'configs/<file>.py:variant' relative to the repo; step 0,
  as the trainer writes it) and its config.json."""
  import grain  # pylint: disable=g-import-not-at-top
  from avsep_jax import checkpoints, parallel, separate, train  # pylint: disable=g-import-not-at-top
  from avsep_jax import main as main_lib  # pylint: disable=g-import-not-at-top
  from avsep_jax.model import AVSeparator  # pylint: disable=g-import-not-at-top

  def make(config, name):
    if isinstance(config, str):
      config, _ = separate.load_config(None, os.path.join(ROOT, config))
    workdir = str(tmp_path_factory.mktemp(name))
    mesh = parallel.make_mesh(config.mesh_shape, config.mesh_axes)
    rules = tuple(tuple(r) for r in config.logical_axis_rules)
    optimizer, _ = train.make_optimizer(config)
    state, _, _ = train.create_train_state(config, AVSeparator(config.model), optimizer,
                                           mesh, rules)
    mngr = checkpoints.manager(os.path.join(workdir, "checkpoints"), keep=1,
                               save_every=1, async_save=False)
    checkpoints.save(mngr, 0, state, iter(grain.MapDataset.range(1).to_iter_dataset()),
                     force=True)
    mngr.wait_until_finished()
    mngr.close()
    main_lib.save_config(config, workdir)
    return workdir

  return make


@pytest.fixture(scope="session")
def run_module():
  """run(module, *args) -> the CompletedProcess of `python -m module args` (text
  output captured, not checked) run from the repository root on the CPU."""

  def run(module, *args, timeout=300):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], check=False,
                          capture_output=True, text=True, cwd=ROOT, env=env,
                          timeout=timeout)

  return run
