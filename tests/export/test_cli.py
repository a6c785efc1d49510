"""`python -m avsep_jax.export` on an untrained smoke checkpoint."""

import functools
import json
import os

import numpy as np
import pytest
import torch

from avsep_jax.export import convert

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def checkpoint(make_checkpoint):
  """An untrained 2-slot smoke checkpoint, as `configs/2spk.py:smoke` trains it."""
  return make_checkpoint("configs/2spk.py:smoke", "export_workdir")


@pytest.fixture(name="run_export")
def fixture_run_export(run_module):
  return functools.partial(run_module, "avsep_jax.export")


@pytest.mark.slow
def test_torch_export_and_bad_checkpoints(checkpoint, tmp_path, run_export):
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


@pytest.mark.slow
def test_static_int8_onnx_calibrated_on_validation_mixtures(checkpoint, tiny_data_dir,
                                                            tmp_path, capsys):
  import onnx
  from avsep_jax import separate
  from avsep_jax.export import onnx_export
  from avsep_jax.export.__main__ import main
  config, _ = separate.load_config(checkpoint)
  i8 = tmp_path / "int8.onnx"
  assert main(["--checkpoint", checkpoint, "--format", "onnx", "--quantize", "int8",
               "--calibration", "2", "--data_dir", tiny_data_dir,
               "--output", str(i8)]) == 0
  assert "int8 static" in capsys.readouterr().out
  ops = {n.op_type for n in onnx.load(str(i8)).graph.node}
  assert {"QuantizeLinear", "DequantizeLinear"} <= ops and "MatMulInteger" not in ops
  assert onnx_export.saturating_matmuls(i8) == []  # the same on processors without VNNI
  assert "ConvInteger" not in ops and "Conv" in ops  # the STFT stays float
  assert json.loads(onnx_export.read_config(i8).to_json()) == json.loads(
      config.model.to_json())

  [(mixture, video, mask)] = onnx_export.calibration_mixtures(config, 1, tiny_data_dir)
  assert mixture.shape == (1, round(config.segment_seconds * 16_000))
  mirror = convert.build_mirror(config.model, separate.load_model(checkpoint).params)
  with torch.no_grad():
    want = mirror(*(torch.from_numpy(np.asarray(a)) for a in (mixture, video, mask)))
  want = want.numpy()
  got = onnx_export.OnnxSeparator(i8)(mixture, video, mask)
  # Untrained weights on a real mixture; a scale or calibration bug gives < 10 dB.
  snr = 10 * np.log10(np.sum(want ** 2) / np.sum((got - want) ** 2))
  assert snr > 30, snr

  capsys.readouterr()
  assert main(["--checkpoint", checkpoint, "--format", "onnx", "--calibration", "2",
               "--output", str(tmp_path / "x.onnx")]) == 1
  assert "goes with --quantize int8" in capsys.readouterr().err
  assert main(["--checkpoint", checkpoint, "--format", "onnx", "--quantize", "int8",
               "--calibration", "2", "--data_dir", str(tmp_path / "none"),
               "--output", str(tmp_path / "x.onnx")]) == 1
  assert "no calibration data" in capsys.readouterr().err
  assert not (tmp_path / "x.onnx").exists()
