r"""Training input on this machine: the grain pipeline against on-device mixing.

  python experiments/benchmarks/input_paths.py --data_dir=/tmp/tfds \
      [--config=configs/6spk.py:smoke] [--config.batch_size=4] [--steps=10 --repeats=5]

For each `config.input` ('grain', then 'device') it times, with the trainer's own
pieces (`train.train_input`, `parallel.global_batch`, `train.make_train_step`):
  - batches alone: the next global batch ready on the devices (grain: mixed on the
    host, then copied; device: mixed inside jit, already there);
  - whole train steps as `train.fit` runs them: next batch, global_batch, the jitted
    update, the metrics' host transfer.
Each figure is the median of --repeats timings of --steps batches (or steps), in ms,
after one untimed call that compiles and opens files. The dataset (default
`synthav/tiny`) is built into --data_dir when missing.
"""

import platform
import subprocess
import time

from absl import app
from absl import flags
import jax
from ml_collections import config_flags
import numpy as np

from avsep_jax import parallel
from avsep_jax import train
from avsep_jax.model import AVSeparator

_CONFIG = config_flags.DEFINE_config_file("config", "configs/6spk.py:smoke",
                                          "Training config (file[:variant]).")
_DATA_DIR = flags.DEFINE_string("data_dir", "/tmp/tfds", "TFDS data dir.")
_DATASET = flags.DEFINE_string("dataset", "synthav/tiny", "Dataset to mix from.")
_STEPS = flags.DEFINE_integer("steps", 10, "Batches or steps per timing.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timings per figure (median).")


def processor():
  """lscpu's model name, and which of avx512f / avx512_vnni / avx_vnni it has."""
  try:
    text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
  except (OSError, subprocess.CalledProcessError):
    return platform.processor() or "unknown"
  fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
  name = fields.get("Model name", "unknown").strip()
  flags_ = set(fields.get("Flags", "").split())
  has = [f for f in ("avx512f", "avx512_vnni", "avx_vnni") if f in flags_]
  return f"{name} ({', '.join(has) or 'no avx512/vnni'})"


def median_ms(run, steps, repeats):
  """Median over `repeats` of the time per call of `run(steps)`, in ms."""
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    run(steps)
    times.append((time.perf_counter() - start) / steps)
  return 1e3 * float(np.median(times))


def time_input(config, data_dir, batch_sharding, state, train_step):
  """(ms per batch, ms per train step, state) for `config.input`."""
  make_iter = train.train_input(config, data_dir, batch_sharding)
  it = make_iter()

  def batches(n):
    for _ in range(n):
      batch = parallel.global_batch(next(it), batch_sharding)
    jax.block_until_ready(batch)

  def steps(n):
    nonlocal state
    for _ in range(n):
      state, metrics = train_step(state, parallel.global_batch(next(it), batch_sharding))
      jax.device_get(metrics)  # as fit does: the step's one host transfer

  batches(1)
  batch_ms = median_ms(batches, _STEPS.value, _REPEATS.value)
  steps(1)
  step_ms = median_ms(steps, _STEPS.value, _REPEATS.value)
  return batch_ms, step_ms, state


def main(argv):
  del argv
  config = _CONFIG.value
  config.dataset, config.data_dir = _DATASET.value, _DATA_DIR.value
  mesh, rules, batch_sharding = train.make_mesh(config)
  data_dir = train.ensure_dataset(config)
  model = AVSeparator(config.model)
  optimizer, schedule = train.make_optimizer(config)
  state, _, shardings = train.create_train_state(config, model, optimizer, mesh, rules)
  train_step = train.make_train_step(config, model, optimizer, schedule, shardings,
                                     batch_sharding)
  print(f"processor: {processor()}; jax {jax.__version__}, {jax.device_count()} "
        f"{jax.default_backend()} device(s)")
  print(f"config: batch "
        f"{config.batch_size}, {config.min_speakers}..{config.max_speakers} speakers in "
        f"{config.model.num_speakers} slots, {config.segment_seconds} s, augment_video "
        f"{config.augment_video}, {config.dataset}; median of {_REPEATS.value} x "
        f"{_STEPS.value}")
  print("| input | batch ready on device (ms) | whole train step (ms) |")
  print("| --- | ---: | ---: |")
  for source in ("grain", "device"):
    config.input = source
    batch_ms, step_ms, state = time_input(config, data_dir, batch_sharding, state,
                                          train_step)
    print(f"| {source} | {batch_ms:.1f} | {step_ms:.1f} |", flush=True)


if __name__ == "__main__":
  app.run(main)
