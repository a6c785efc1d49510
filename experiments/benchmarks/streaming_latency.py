r"""Per-step compute and end-to-end latency of streaming models on CPU.

  python experiments/benchmarks/streaming_latency.py [--seconds=5] [--rounds=3] \
      [--speakers=2,6] [--step_ms=20] [--engines=onnx,onnx_int8,onnx_int8_static,torch,jax] \
      [--variants=stream,lite] [--realtime] [--json=/tmp/streaming_latency.json]

For each variant and speaker count, the model (fresh random weights: latency does not
depend on their values) is exported once, then every engine streams the same
`--seconds` of random mixture and mouth video step by step
(`avsep_jax.stream.driver.drive`): per-step compute of the audio steps p50 / p95 / p99
over the steps after a warm-up, the video frames' step (each encoded on arrival, off
the audio steps' critical path) p50 / p95, the real-time factor ((audio + video
compute) / audio duration), and end-to-end latency p50 / p95. As fast as possible
(the default), end to end = step + overlap-add delay (win - hop) + look-ahead (0) +
compute; with `--realtime` the input arrives on the wall clock, as from a microphone
and camera, and end to end is measured from the arrival of a step's oldest output
sample to that output being ready (so it also holds any video frame encoded in the
step's way). Engines are interleaved round by round and each figure is the median
over rounds. Threads: 2 (this machine's cores) everywhere.

Variants: `stream` (lite made causal with the magnitude-mask decoder); any other
`variants.VARIANTS` name is made causal (`variants.make_causal`, its 100-frame
window), e.g. `lite`: the band separator as trained, streaming.

Engines: `onnx` (f32, onnxruntime), `onnx_int8` (dynamic INT8 MatMuls),
`onnx_int8_static` (QDQ INT8 MatMuls calibrated on streaming states of random inputs),
`torch` (the PyTorch step modules, eager), `jax` (the JAX step functions, jit).
"""

import json
import os
import platform
import tempfile
import time

from absl import app
from absl import flags
import flax.linen as nn
import jax
import numpy as np
import torch

from avsep_jax.export import onnx_export
from avsep_jax.export import torch_stream
from avsep_jax.model import AVSeparator
from avsep_jax.model import variants
from avsep_jax.stream import driver
from avsep_jax.stream import engine
from avsep_jax.stream import onnx_engine

_SECONDS = flags.DEFINE_float("seconds", 5.0, "Audio streamed per engine and round.")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Interleaved rounds; medians are reported.")
_WARMUP = flags.DEFINE_integer("warmup_steps", 10, "Steps left out of the statistics.")
_SPEAKERS = flags.DEFINE_list("speakers", ["2", "6"], "Speaker slot counts.")
_STEP_MS = flags.DEFINE_float("step_ms", 20.0, "Audio per step (ms).")
_ENGINES = flags.DEFINE_list(
    "engines", ["onnx", "onnx_int8", "onnx_int8_static", "torch", "jax"], "Engines.")
_VARIANTS = flags.DEFINE_list(
    "variants", ["stream"], "Model variants; one not causal is made causal.")
_REALTIME = flags.DEFINE_bool(
    "realtime", False, "Feed the input at real-time pace; latency on the wall clock.")
_JSON = flags.DEFINE_string("json", None, "Also write the results here.")


def stream_config(variant, num_speakers):
  """`config.model` of `variant`, made causal when it is not."""
  config = variants.model_config(variant, num_speakers=num_speakers)
  if not config.causal:
    variants.make_causal(config)
  config.dropout_rate = 0.0
  return config


def cpu_model():
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown"


def inputs(config, seconds, seed=0):
  rng = np.random.default_rng(seed)
  s = config.num_speakers
  samples = int(seconds * config.sample_rate)
  mixture = (0.05 * rng.normal(size=(1, samples))).astype(np.float32)
  frames = samples * config.video_fps // config.sample_rate + 1
  video = rng.integers(0, 256, (1, s, frames, config.roi_size, config.roi_size),
                       dtype=np.uint8)
  return mixture, video, np.ones((1, s), bool)


def build_engines(config, params, names, directory, step_ms):
  """{name: streamer} for the requested engines (ONNX exports written to directory)."""
  built = {}
  calibration = [inputs(config, 2.0, seed=s)[:3] for s in (1, 2)]
  for name in names:
    if name == "jax":
      built[name] = engine.Streamer(config, params, step_ms=step_ms)
    elif name == "torch":
      built[name] = torch_stream.TorchStreamer(config, params, step_ms=step_ms)
    elif name.startswith("onnx"):
      quantize = {"onnx": None, "onnx_int8": "dynamic",
                  "onnx_int8_static": "static"}[name]
      path = os.path.join(directory, name)
      onnx_export.export_stream(config, params, path, step_ms=step_ms,
                                quantize=quantize,
                                calibration=calibration if quantize == "static" else None)
      built[name] = onnx_engine.OnnxStreamer(path, threads=2)
    else:
      raise ValueError(f"unknown engine {name!r}")
  return built


def main(argv):
  del argv
  torch.set_num_threads(2)
  results = {"date": time.strftime("%Y-%m-%d"), "cpu": cpu_model(),
             "cores": os.cpu_count(), "step_ms": _STEP_MS.value,
             "seconds": _SECONDS.value, "rounds": _ROUNDS.value,
             "realtime": _REALTIME.value, "rows": []}
  print(f"{results['date']}, {results['cpu']} ({results['cores']} cores), "
        f"step {_STEP_MS.value:g} ms, {_SECONDS.value:g} s x {_ROUNDS.value} rounds"
        f"{', real-time pace' if _REALTIME.value else ''}")
  for variant, s in [(v, int(s)) for v in _VARIANTS.value for s in _SPEAKERS.value]:
    config = stream_config(variant, s)
    mixture, video, mask = inputs(config, _SECONDS.value)
    samples = _SECONDS.value * config.sample_rate
    step = int(_STEP_MS.value * config.sample_rate / 1000)
    mixture = mixture[:, :int(samples // step * step)]
    params = nn.unbox(jax.jit(AVSeparator(config).init)(
        jax.random.key(0), mixture[:, :16000], video[:, :, :25], mask))["params"]
    with tempfile.TemporaryDirectory() as tmp:
      engines = build_engines(config, params, _ENGINES.value, tmp, _STEP_MS.value)
      per_round = {name: [] for name in engines}
      for _ in range(_ROUNDS.value):
        for name, streamer in engines.items():
          _, compute, latency, video_s = driver.drive(streamer, mixture, video, mask,
                                                      realtime=_REALTIME.value)
          w = _WARMUP.value
          per_round[name].append((compute[w:], latency[w:], video_s[w // 2:]))
    for name, rounds in per_round.items():
      stat = lambda i, q: float(np.median([np.percentile(r[i], q) for r in rounds]))
      audio_s = len(rounds[0][0]) * step / config.sample_rate
      row = {
          "variant": variant, "decoder": config.decoder.get("kind", "masks"),
          "engine": name, "speakers": s,
          "compute_ms": {f"p{q}": round(1000 * stat(0, q), 3) for q in (50, 95, 99)},
          "end_to_end_ms": {f"p{q}": round(1000 * stat(1, q), 2) for q in (50, 95)},
          "end_to_end_ms_p95": round(1000 * stat(1, 95), 2),
          "video_frame_ms": {f"p{q}": round(1000 * stat(2, q), 3) for q in (50, 95)},
          "real_time_factor": round(float(np.median(
              [np.sum(r[0]) + np.mean(r[2]) * len(r[0]) * step * config.video_fps
               / config.sample_rate for r in rounds])) / audio_s, 4),
          "step_ms": _STEP_MS.value,
          "overlap_add_delay_ms": 1000 * engines[name].delay / config.sample_rate,
      }
      results["rows"].append(row)
      c, v, e = row["compute_ms"], row["video_frame_ms"], row["end_to_end_ms"]
      print(f"{variant} ({row['decoder']}) S={s} {name:17s} audio step p50/p95/p99 "
            f"{c['p50']:6.2f} {c['p95']:6.2f} {c['p99']:6.2f} ms   video frame p50/p95 "
            f"{v['p50']:6.2f} {v['p95']:6.2f} ms   RTF {row['real_time_factor']:.3f}   "
            f"end-to-end p50/p95 {e['p50']:.1f} {e['p95']:.1f} ms")
  if _JSON.value:
    with open(_JSON.value, "w") as f:
      json.dump(results, f, indent=1)


if __name__ == "__main__":
  app.run(main)
