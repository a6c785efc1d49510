"""`python -m avsep_jax.export` on an untrained smoke checkpoint."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from avsep_jax.export import convert

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def checkpoint(make_checkpoint):
  """An untrained 2-slot smoke checkpoint, as `configs/2spk.py:smoke` trains it."""
  return make_checkpoint("configs/2spk.py:smoke", "export_workdir")


def run_export(*args):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", "avsep_jax.export", *map(str, args)],
                        check=False, capture_output=True, text=True, cwd=ROOT, env=env,
                        timeout=300)


def test_torch_export_and_bad_checkpoints(checkpoint, tmp_path):
  out = tmp_path / "model.safetensors"
  result = run_export("--checkpoint", checkpoint, "--format", "torch", "--output", out)
  assert result.returncode == 0, result.stderr
  model, cfg = convert.load_safetensors(out)
  s = cfg.num_speakers
  mixture = torch.zeros(1, 3_200)
  video = torch.zeros(1, s, 5, cfg.roi_size, cfg.roi_size, dtype=torch.uint8)
  with torch.no_grad():
    y = model(mixture, video, torch.ones(1, s, dtype=torch.bool))
  assert y.shape == (1, s, 3_200) and np.all(np.isfinite(y.numpy()))

  cases = [
      (["--checkpoint", tmp_path, "--format", "torch"], "not a training workdir"),
      (["--checkpoint", checkpoint, "--format", "torch", "--config",
        f"{ROOT}/configs/2spk.py:lite"], "does not fit"),
      (["--checkpoint", checkpoint, "--format", "torch", "--quantize", "int8"],
       "onnx only"),
  ]
  for args, message in cases:
    result = run_export(*args, "--output", tmp_path / "x.out")
    assert result.returncode == 1
    assert message in result.stderr.strip().splitlines()[-1], result.stderr
    assert not (tmp_path / "x.out").exists()
