"""The GPU sprint runs every stage at toy size on the CPU, and what it needs travels.

The sprint runs for real only where a GPU is lent, rarely and against the clock, so its
dry run is in the suite: a stage that breaks here would waste that window.
"""

import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
STAGES = ("env", "kernels", "mfu", "data", "train", "evaluate", "weights")
# Packages the GPU image lacks and the wheels leave out: training, data generation and
# the weights file must not import them.
ABSENT_ON_GPU = ("av", "pesq", "pystoi")


@pytest.mark.slow
def test_dry_run_runs_every_stage_and_writes_what_comes_back(tiny_data_dir, tmp_path):
  out = tmp_path / "out"
  proc = subprocess.run(
      [sys.executable, "experiments/gpu/sprint.py", f"--out={out}", "--dry_run",
       f"--data_dir={tiny_data_dir}", f"--workdir={tmp_path / 'run'}"],
      cwd=ROOT, capture_output=True, text=True, timeout=2400)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  figures = json.loads((out / "sprint.json").read_text())
  stages = figures["stages"]
  assert {s: stages[s]["status"] for s in STAGES} == {s: "ok" for s in STAGES}, (
      proc.stdout[-5000:])
  # What may come back from the machine: at most 8 files of at most 16 MiB.
  files = sorted(os.listdir(out))
  assert files == ["sprint.json", "sprint.log", "weights.safetensors"]
  assert all((out / f).stat().st_size <= 16 * 2**20 for f in files)

  assert stages["env"]["backend"] == "cpu" and stages["env"]["matmul_bf16"]["tflops"] > 0
  rows = stages["kernels"]["table"]["rows"]
  assert {r["impl"] for r in rows} == {"pallas", "xla"}
  # Each implementation was checked against reference_attention before it was timed.
  assert all(r["check_status"] == "ok" and r["fwd_bwd_status"] == "ok" for r in rows)
  assert stages["mfu"]["rows"][0]["xla_flops_per_step"] > 0
  assert stages["train"]["validation_si_snri"], "no validation during training"
  test = stages["evaluate"]["test"]
  assert test["split"] == "test" and "2" in test["summary"]
  assert stages["weights"]["bytes"] == (out / "weights.safetensors").stat().st_size


def test_training_path_imports_nothing_the_gpu_image_lacks():
  """main (train, evaluate, distill), SynthAV generation and the weights tool import
  with PyAV, pesq and pystoi made unimportable."""
  code = (
      "import importlib, sys\n"
      "class Block:\n"
      "  def find_spec(self, name, path=None, target=None):\n"
      f"    if name.split('.')[0] in {ABSENT_ON_GPU!r}:\n"
      "      raise ImportError(f'{name} is not on the GPU image')\n"
      "sys.meta_path.insert(0, Block())\n"
      "for m in ('avsep_jax.main', 'avsep_jax.data.synthav.builder',\n"
      "          'avsep_jax.pretrained.__main__', 'avsep_jax.distill'):\n"
      "  importlib.import_module(m)\n")
  proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                        text=True, timeout=300, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert proc.returncode == 0, proc.stderr[-3000:]
