r"""Training examples/s with 1, 2 and 4 cooperating processes on this machine.

  python experiments/benchmarks/scaling.py --data_dir=/tmp/tfds [--processes=1,2,4] \
      [--devices=4] [--config=configs/2spk.py:smoke] [--steps=8] [--skip=3] \
      [--json_out=scaling.json]

Each run is `experiments/launch_local.py --num_processes=N --devices_per_process=D/N`
training the config for --steps steps on a fixed global batch (mesh: all devices on the
data axis), so the total simulated device count stays --devices and only the split into
processes (and gloo collectives between them) changes. examples/s comes from process
0's TensorBoard wall times of train/loss after the first --skip steps (compilation).
On one CPU machine the processes share its cores: the figures show what the
multi-process machinery costs, not a speed-up.
"""

import json
import os
import pathlib
import platform
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags
from tensorboard.backend.event_processing import event_accumulator

ROOT = pathlib.Path(__file__).resolve().parents[2]

_CONFIG = flags.DEFINE_string("config", "configs/2spk.py:smoke", "Config[:variant].")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data dir (built if absent).")
_PROCESSES = flags.DEFINE_list("processes", ["1", "2", "4"], "Process counts to time.")
_DEVICES = flags.DEFINE_integer("devices", 4, "Simulated CPU devices in all.")
_BATCH = flags.DEFINE_integer("batch_size", 8, "Global batch (divisible by --devices).")
_STEPS = flags.DEFINE_integer("steps", 8, "Training steps per run.")
_SKIP = flags.DEFINE_integer("skip", 3, "First steps left out of the timing.")
_SECONDS = flags.DEFINE_float("segment_seconds", 1.0, "Mixture length.")
_JSON = flags.DEFINE_string("json_out", None, "Also write the results here.")
_OVERRIDES = flags.DEFINE_multi_string("override", [], "Extra --config.k=v for main.")


def time_run(num_processes, workdir):
  """Trains one run; returns {processes, devices_per_process, examples_per_s, ...}."""
  per_process = _DEVICES.value // num_processes
  main_args = [
      f"--config={ROOT / _CONFIG.value}", f"--workdir={workdir}",
      f"--config.total_steps={_STEPS.value}", f"--config.batch_size={_BATCH.value}",
      f"--config.segment_seconds={_SECONDS.value}", "--config.log_every_steps=1",
      f"--config.eval_every_steps={10 * _STEPS.value}",
      f"--config.checkpoint_every_steps={10 * _STEPS.value}",
      f"--config.eval_examples={_BATCH.value}", "--config.mesh_shape=(-1,1,1)",
      *(f"--config.{o}" if not o.startswith("--") else o for o in _OVERRIDES.value)]
  if _DATA_DIR.value:
    main_args.append(f"--config.data_dir={_DATA_DIR.value}")
  command = [sys.executable, str(ROOT / "experiments" / "launch_local.py"),
             f"--num_processes={num_processes}", f"--devices_per_process={per_process}",
             "--", *main_args]
  start = time.perf_counter()
  result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
  wall = time.perf_counter() - start
  if result.returncode:
    sys.exit(f"error: {num_processes} processes failed (exit {result.returncode}):\n"
             + "\n".join(result.stderr.splitlines()[-15:]))
  acc = event_accumulator.EventAccumulator(str(pathlib.Path(workdir) / "tensorboard"))
  acc.Reload()
  times = {e.step: e.wall_time for e in acc.Scalars("train/loss")}
  first, last = _SKIP.value, _STEPS.value
  if first not in times or last not in times or last <= first:
    sys.exit(f"error: need train/loss at steps {first} and {last}; got {sorted(times)}")
  seconds = times[last] - times[first]
  return {"processes": num_processes, "devices_per_process": per_process,
          "global_batch": _BATCH.value, "timed_steps": last - first,
          "examples_per_s": (last - first) * _BATCH.value / seconds,
          "steps_per_s": (last - first) / seconds, "run_wall_s": wall}


def cpu_name():
  try:
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("model name"):
        return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown"


def main(argv):
  del argv
  counts = [int(p) for p in _PROCESSES.value]
  for n in counts:
    if _DEVICES.value % n or _BATCH.value % _DEVICES.value:
      sys.exit(f"error: --devices {_DEVICES.value} must divide over {n} processes and "
               f"--batch_size {_BATCH.value} over the devices")
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    for n in counts:
      rows.append(time_run(n, os.path.join(tmp, f"p{n}")))
      r = rows[-1]
      print(f"{n} process(es): {r['examples_per_s']:.2f} examples/s", flush=True)
  print(f"\n{_CONFIG.value}, global batch {_BATCH.value}, {_DEVICES.value} simulated CPU "
        f"devices in all, {os.cpu_count()} cores ({cpu_name()})")
  print("| processes | devices/process | examples/s | steps/s | run wall s |")
  print("| --- | --- | --- | --- | --- |")
  for r in rows:
    print(f"| {r['processes']} | {r['devices_per_process']} | {r['examples_per_s']:.2f} "
          f"| {r['steps_per_s']:.3f} | {r['run_wall_s']:.0f} |")
  if _JSON.value:
    meta = {"config": _CONFIG.value, "devices": _DEVICES.value, "cpu": cpu_name(),
            "cores": os.cpu_count(), "date": time.strftime("%Y-%m-%d"), "rows": rows}
    pathlib.Path(_JSON.value).write_text(json.dumps(meta, indent=2))
    print(f"wrote {_JSON.value}")


if __name__ == "__main__":
  app.run(main)
