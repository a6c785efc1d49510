"""colabs/: each notebook runs headless from its jupytext `.py` without a cell error,
and each committed `.ipynb` is that `.py` without outputs.

The notebooks hold their own checks (`assert`s in their cells: kernel error bounds,
stream equal to offline, ...), so a wrong result fails the execution here. They run
with AVSEP_NOTEBOOK_SMALL=1 (their settings cells pick seconds-sized runs), on the
session's SynthAV tiny, in a temporary working directory each. Compiling is most of
their time: they share a persistent compilation cache, and XLA's CPU backend
optimisation is off (it halves compile times; each program runs a few steps only).
"""

import os
import pathlib

import jupytext
import nbformat
import pytest
from nbclient import NotebookClient

ROOT = pathlib.Path(__file__).resolve().parents[1]
COLABS = ROOT / "colabs"
# quickstart before separate_your_video: both train the same smoke model, and run in
# one process the second finds the first's compiled steps in the compilation cache.
NOTEBOOKS = ("quickstart", "separate_your_video", "attention_kernels",
             "export_and_streaming")


@pytest.fixture(scope="session")
def notebook_env(tiny_data_dir, tmp_path_factory):
  """Environment of the notebook kernels (they inherit the test process's)."""
  return {
      "AVSEP_NOTEBOOK_SMALL": "1",
      "AVSEP_NOTEBOOK_DATA_DIR": tiny_data_dir,
      "JAX_PLATFORMS": "cpu",
      "JAX_COMPILATION_CACHE_DIR": str(tmp_path_factory.mktemp("notebook_jax_cache")),
      "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
      "XLA_FLAGS": " ".join(filter(None, (os.environ.get("XLA_FLAGS"),
                                          "--xla_backend_optimization_level=0"))),
  }


def test_every_notebook_is_tested():
  assert sorted(p.stem for p in COLABS.glob("*.py")) == sorted(NOTEBOOKS)
  assert sorted(p.stem for p in COLABS.glob("*.ipynb")) == sorted(NOTEBOOKS)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_ipynb_is_the_py_without_outputs(name):
  source = jupytext.read(COLABS / f"{name}.py")
  paired = nbformat.read(COLABS / f"{name}.ipynb", as_version=4)
  nbformat.validate(paired)
  assert ([(c.cell_type, c.source) for c in paired.cells]
          == [(c.cell_type, c.source) for c in source.cells]), (
              f"colabs/{name}.ipynb differs from its .py: run "
              f"`jupytext --sync colabs/{name}.py`")
  assert paired.metadata["jupytext"]["formats"] == "ipynb,py:percent"
  for cell in paired.cells:
    if cell.cell_type == "code":
      assert cell.outputs == [] and cell.execution_count is None, (
          f"colabs/{name}.ipynb has outputs; clear them before committing")


@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_headless(name, notebook_env, tmp_path, monkeypatch):
  for key, value in notebook_env.items():
    monkeypatch.setenv(key, value)
  notebook = jupytext.read(COLABS / f"{name}.py")
  client = NotebookClient(notebook, timeout=600, kernel_name="python3",
                          resources={"metadata": {"path": str(tmp_path)}})
  client.execute()  # CellExecutionError names the failing cell and its traceback
