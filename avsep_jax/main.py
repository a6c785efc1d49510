r"""Trains and evaluates an audio-visual separator.

  python -m avsep_jax.main --config=configs/6spk.py[:lite] [--workdir=DIR] \
      [--config.key=value ...] [--mode=train|evaluate]

The config's `trainer` key picks how --mode=train trains: plainly (the default),
`distill` from a trained teacher (configs/distill.py, avsep_jax/distill.py), or
`lipread`: lip-reading pretraining of the visual encoder (configs/lipread.py,
avsep_jax/lipread.py); and how --mode=evaluate scores a checkpoint.

Several processes (one per host, or per GPU): add --coordinator_address=HOST:PORT
--num_processes=N --process_id=I, or let a launcher set them (JAX_* or SLURM variables;
see avsep_jax/distributed.py, experiments/launch_local.py and docs/scaling.md).

With no dataset given it uses SynthAV `small`, building it first when absent. Without
--workdir, runs go to workdirs/<config>_<variant>, so running the same command again
resumes.
"""

import os
import sys

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from avsep_jax import distill
from avsep_jax import distributed
from avsep_jax import lipread
from avsep_jax import train

# `config.trainer` picks the training loop (plain training when the key is absent).
TRAINERS = {"train": train.train_and_evaluate, "distill": distill.train_and_evaluate,
            "lipread": lipread.train_and_evaluate}
# How --mode=evaluate scores a checkpoint of each trainer (a distilled student is a
# separator like any other).
EVALUATORS = {"train": train.evaluate_checkpoint, "distill": train.evaluate_checkpoint,
              "lipread": lipread.evaluate_checkpoint}

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file[:variant].")
_WORKDIR = flags.DEFINE_string("workdir", None,
                                "Checkpoints, TensorBoard, eval JSON, config.json.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "evaluate"],
                          "train (and validate), or evaluate a checkpoint on test.")
_CHECKPOINT = flags.DEFINE_enum("checkpoint", "best", ["best", "latest"],
                                "Which checkpoint --mode=evaluate reads.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None,
    "host:port of process 0 for multi-process runs, or 'auto' (jax detects a TPU pod, "
    "Open MPI, ...). Default: $JAX_COORDINATOR_ADDRESS, then SLURM's variables.")
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", None, "Processes in the run. Default: $JAX_NUM_PROCESSES, SLURM.")
_PROCESS_ID = flags.DEFINE_integer(
    "process_id", None, "This process's index. Default: $JAX_PROCESS_ID, SLURM.")
_DISTRIBUTED_TIMEOUT = flags.DEFINE_float(
    "distributed_timeout_s", 60.0,
    "Seconds multi-process start-up may take before the run stops with an error.")


def default_workdir(config_arg: str) -> str:
  path, _, variant = config_arg.partition(":")
  name = os.path.splitext(os.path.basename(path))[0]
  return os.path.join("workdirs", f"{name}_{variant or 'full'}")


def check_writable(workdir: str):
  """Fails early, before any work, when the workdir cannot be written."""
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise PermissionError(f"workdir {workdir} cannot be created: {e.strerror}") from e
  if not os.access(workdir, os.W_OK | os.X_OK):
    raise PermissionError(f"workdir {workdir} is not writable")


def save_config(config, workdir: str):
  """Writes the run's resolved config (overrides applied) as `config.json` in the
  workdir, so that tools reading a checkpoint (`separate`) rebuild the same model."""
  path = os.path.join(workdir, "config.json")
  tmp = f"{path}.partial{os.getpid()}"
  with open(tmp, "w") as f:
    f.write(config.to_json_best_effort(indent=2, sort_keys=True))
  os.replace(tmp, path)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  try:
    cluster = distributed.resolve(_COORDINATOR.value, _NUM_PROCESSES.value,
                                  _PROCESS_ID.value)
    if cluster:
      distributed.initialize(cluster, timeout_s=_DISTRIBUTED_TIMEOUT.value)
  except distributed.DistributedError as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    os._exit(1)  # the other processes may still hold this one in a collective
  config = _CONFIG.value
  workdir = _WORKDIR.value or default_workdir(flags.FLAGS["config"].config_filename)
  try:
    check_writable(workdir)
    print(f"workdir: {os.path.abspath(workdir)}")
    # A GPU host whose jax has no CUDA plugin trains on its CPU without a word: say
    # which backend this is, before any work.
    print(f"backend: {jax.default_backend()}, {jax.device_count()} devices "
          f"({jax.devices()[0].device_kind}), {jax.process_count()} processes")
    logging.get_absl_handler().use_absl_log_file("log", workdir)
    trainer = config.get("trainer", "train")
    if trainer not in TRAINERS:
      raise ValueError(f"config.trainer must be one of {sorted(TRAINERS)}, "
                       f"got {trainer!r}")
    if _MODE.value == "train":
      if jax.process_index() == 0:
        save_config(config, workdir)
      TRAINERS[trainer](config, workdir)
    else:
      EVALUATORS[trainer](config, workdir, which=_CHECKPOINT.value)
  except (ValueError, FileNotFoundError, PermissionError,
          train.NonFiniteLossError) as e:
    # One line naming the problem; the traceback is in the workdir's log.
    logging.exception("run failed")
    logging.flush()
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    # Not sys.exit: Orbax's background reads of a rejected checkpoint would print
    # pages of asyncio noise at interpreter shutdown, burying the line above.
    os._exit(1)


if __name__ == "__main__":
  flags.mark_flag_as_required("config")
  app.run(main)
