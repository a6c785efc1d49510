r"""Offline ONNX export of the lite model: soft-DTW alignment against interpolation.

  python experiments/benchmarks/onnx_alignment.py [--config=configs/2spk.py:lite] \
      [--seconds=2,6] [--runs=5] [--threads=2] [--json=/tmp/onnx_alignment.json]

For each alignment, `config.model` with fresh random weights (JAX init; latency does not
depend on their values) goes through the PyTorch mirror into one ONNX file
(`onnx_export.export_onnx`, dynamic batch and length). Reported per alignment: the
file's size, the export's wall time, and for each mixture length (batch 1, every slot
real) the onnxruntime latency (median of `--runs` after one warm-up; the alignments
are interleaved run by run, so machine load hits both alike) and the largest absolute
difference of the ONNX waveforms from the mirror's. `--threads` for onnxruntime and
torch.
"""

import json
import os
import tempfile
import time

from absl import app
from absl import flags
from absl import logging
import jax
import numpy as np
import torch
from ml_collections import config_flags

from avsep_jax.export import convert
from avsep_jax.export import onnx_export
from avsep_jax.model import AVSeparator

_CONFIG = config_flags.DEFINE_config_file("config", "configs/2spk.py:lite",
                                          "Run config; its `model` is exported.")
_SECONDS = flags.DEFINE_list("seconds", ["2", "6"], "Mixture lengths (s).")
_RUNS = flags.DEFINE_integer("runs", 5, "Timed runs per length and alignment.")
_THREADS = flags.DEFINE_integer("threads", 2, "onnxruntime intra-op and torch threads.")
_JSON = flags.DEFINE_string("json", None, "Also write the results here.")
ALIGNMENTS = ("interpolate", "soft_dtw")


def inputs(config, seconds, seed=0):
  rng = np.random.default_rng(seed)
  s = config.num_speakers
  samples = int(seconds * config.sample_rate)
  frames = samples * config.video_fps // config.sample_rate
  mixture = (0.1 * rng.standard_normal((1, samples))).astype(np.float32)
  video = rng.integers(0, 256, (1, s, frames, config.roi_size, config.roi_size), np.uint8)
  return mixture, video, np.ones((1, s), bool)


def export(config, path):
  """The mirror with fresh JAX-initialised weights, exported to `path`."""
  example = inputs(config, 0.4)
  variables = jax.jit(AVSeparator(config).init)(jax.random.PRNGKey(0), *example)
  mirror = convert.build_mirror(config, variables["params"])
  start = time.perf_counter()
  onnx_export.export_onnx(mirror, config, path)
  return mirror, time.perf_counter() - start


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # the exporter's optimiser logs every rewrite
  torch.set_num_threads(_THREADS.value)
  base = _CONFIG.value.model
  results = {}
  models = {}
  with tempfile.TemporaryDirectory() as tmp:
    for method in ALIGNMENTS:
      config = base.copy_and_resolve_references()
      config.fusion.alignment = method
      path = os.path.join(tmp, f"{method}.onnx")
      mirror, seconds = export(config, path)
      models[method] = (mirror, onnx_export.OnnxSeparator(path, threads=_THREADS.value))
      results[method] = {"file_mb": os.path.getsize(path) / 2**20, "export_s": seconds}
    for length in map(float, _SECONDS.value):
      data = inputs(base, length, seed=1)
      times = {method: [] for method in ALIGNMENTS}
      for method, (mirror, runner) in models.items():
        got = runner(*data)  # warm-up
        with torch.no_grad():
          want = mirror(*(torch.from_numpy(a) for a in data)).numpy()
        results[method][f"max_err_{length:g}s"] = float(np.abs(got - want).max())
      for _ in range(_RUNS.value):
        for method, (_, runner) in models.items():
          start = time.perf_counter()
          runner(*data)
          times[method].append(time.perf_counter() - start)
      for method in ALIGNMENTS:
        results[method][f"ms_{length:g}s"] = 1e3 * float(np.median(times[method]))
  for method, r in results.items():
    print(method, " ".join(f"{k}={v:.3g}" for k, v in r.items()))
  if _JSON.value:
    with open(_JSON.value, "w") as f:
      json.dump(results, f, indent=1)


if __name__ == "__main__":
  app.run(main)
