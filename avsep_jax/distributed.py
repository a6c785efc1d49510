"""Multi-process start-up: who the processes are, checked, then jax.distributed.

Where the three facts come from, first match wins:

  1. flags: --coordinator_address=HOST:PORT --num_processes=N --process_id=I
  2. the environment a launcher sets: JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES,
     JAX_PROCESS_ID (experiments/launch_local.py sets these)
  3. SLURM (srun): SLURM_NTASKS, SLURM_PROCID, and the first host of
     SLURM_STEP_NODELIST (or SLURM_JOB_NODELIST) on port JAX_COORDINATOR_PORT (default
     derived from SLURM_JOB_ID, as jax does)

`--coordinator_address=auto` leaves everything to jax's own cluster detection (Cloud
TPU pod slices, Open MPI, Kubernetes). With none of these, the run is one process and
nothing is initialised.

jax's coordination client aborts the process with a page of C++ log when start-up
fails, or waits for a missing process until its timeout; `initialize` turns both into
one `error:` line within `timeout_s`.
"""

import dataclasses
import logging
import os
import re
import socket
import sys
import threading
import time

import jax
from jax.experimental import multihost_utils
import numpy as np

ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"
ENV_PORT = "JAX_COORDINATOR_PORT"
AUTO = "auto"


class DistributedError(RuntimeError):
  """The processes' description is wrong or they could not meet; one line, for users."""


@dataclasses.dataclass(frozen=True)
class Cluster:
  """This process's place in a multi-process run.

  Attributes:
    coordinator_address: 'host:port' of process 0's coordination service, or 'auto'
      (jax detects everything; the counts below are then None).
    num_processes: processes in the run.
    process_id: this process's index in [0, num_processes).
    source: where the values came from ('flags', 'environment', 'SLURM', 'auto'), for
      error messages.
  """

  coordinator_address: str
  num_processes: int | None
  process_id: int | None
  source: str


def resolve(coordinator_address=None, num_processes=None, process_id=None,
            environ=None) -> Cluster | None:
  """The run's Cluster from flags, then JAX_* variables, then SLURM; None for one
  process. Flags override the environment one value at a time.

  Raises:
    DistributedError: values are incomplete, malformed or out of range.
  """
  environ = os.environ if environ is None else environ
  if coordinator_address == AUTO:
    return Cluster(AUTO, None, None, "auto")
  given = dict(coordinator_address=coordinator_address, num_processes=num_processes,
               process_id=process_id)
  from_env = {"coordinator_address": environ.get(ENV_COORDINATOR),
              "num_processes": environ.get(ENV_NUM_PROCESSES),
              "process_id": environ.get(ENV_PROCESS_ID)}
  names = {"coordinator_address": ("--coordinator_address", ENV_COORDINATOR),
           "num_processes": ("--num_processes", ENV_NUM_PROCESSES),
           "process_id": ("--process_id", ENV_PROCESS_ID)}
  if any(v is not None for v in given.values()):
    source = "flags"
  elif any(v is not None for v in from_env.values()):
    source = "environment"
  elif _slurm_tasks(environ) > 1:
    return _from_slurm(environ)
  else:
    return None
  values = {k: given[k] if given[k] is not None else from_env[k] for k in given}
  missing = [f"{names[k][0]} (or {names[k][1]})" for k, v in values.items() if v is None]
  if missing:
    raise DistributedError(f"a multi-process run needs {', '.join(missing)} as well")
  num = _as_int(values["num_processes"], "--num_processes")
  pid = _as_int(values["process_id"], "--process_id")
  return _checked(values["coordinator_address"], num, pid, source)


def _slurm_tasks(environ) -> int:
  if "SLURM_JOB_ID" not in environ or "SLURM_PROCID" not in environ:
    return 0
  return _as_int(environ.get("SLURM_NTASKS", "1"), "SLURM_NTASKS")


def _from_slurm(environ) -> Cluster:
  nodelist = environ.get("SLURM_STEP_NODELIST") or environ.get("SLURM_JOB_NODELIST")
  if not nodelist:
    raise DistributedError("SLURM_NTASKS > 1 but neither SLURM_STEP_NODELIST nor "
                           "SLURM_JOB_NODELIST is set: run the job step with srun")
  port = environ.get(ENV_PORT) or str(
      _as_int(environ["SLURM_JOB_ID"], "SLURM_JOB_ID") % 4096 + 61440)
  return _checked(f"{first_host(nodelist)}:{port}",
                  _as_int(environ["SLURM_NTASKS"], "SLURM_NTASKS"),
                  _as_int(environ["SLURM_PROCID"], "SLURM_PROCID"), "SLURM")


def first_host(nodelist: str) -> str:
  """The first host of a SLURM node list: 'gpu[003-007,9],cpu1' -> 'gpu003'."""
  match = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist.strip())
  if not match:
    raise DistributedError(f"cannot read a host from SLURM node list {nodelist!r}")
  prefix, ranges = match.groups()
  if not ranges:
    return prefix
  return prefix + re.split(r"[,-]", ranges, maxsplit=1)[0]


def parse_address(address: str) -> tuple[str, int]:
  """'host:port' (or '[v6]:port') -> (host, port), checked."""
  host, sep, port = address.rpartition(":")
  host = host.strip("[]")
  if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
    raise DistributedError(f"coordinator address {address!r} is not host:port with a "
                           f"port in 1..65535")
  return host, int(port)


def _as_int(value, name) -> int:
  if isinstance(value, int):
    return value
  try:
    return int(str(value).strip())
  except ValueError:
    raise DistributedError(f"{name} must be an integer, got {value!r}") from None


def _checked(address, num, pid, source) -> Cluster:
  parse_address(address)
  if num < 1:
    raise DistributedError(f"--num_processes must be at least 1, got {num} ({source})")
  if not 0 <= pid < num:
    raise DistributedError(f"--process_id {pid} is out of range for {num} processes: "
                           f"ids run 0..{num - 1} ({source})")
  return Cluster(address, num, pid, source)


def initialize(cluster: Cluster, *, timeout_s: float = 60.0,
               heartbeat_timeout_s: int = 100):
  """Joins the run: gloo CPU collectives, jax.distributed.initialize, then a check
  that every process was told the same process count.

  Args:
    cluster: from `resolve`.
    timeout_s: how long start-up may take, waiting for the coordinator and the other
      processes included. Past it, prints one `error:` line and exits the process
      with status 1: jax's client would abort with a page of C++ log, or wait.
    heartbeat_timeout_s: after start-up, how long the coordinator waits for a silent
      process before stopping all of them (jax's default 100 s).

  Raises:
    DistributedError: the coordinator's port is taken, no coordinator answered, or
      the processes disagree on the process count.
  """
  if "JAX_CPU_COLLECTIVES_IMPLEMENTATION" not in os.environ:
    # Without cross-process CPU collectives each process would compute alone.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  deadline = time.monotonic() + timeout_s
  if cluster.coordinator_address == AUTO:
    with _watchdog(timeout_s, f"jax.distributed.initialize() (automatic cluster "
                              f"detection) did not finish within {timeout_s:g} s"):
      jax.distributed.initialize(initialization_timeout=int(timeout_s) + 30,
                                 heartbeat_timeout_seconds=heartbeat_timeout_s)
      jax.devices()
    return
  host, port = parse_address(cluster.coordinator_address)
  me = f"process {cluster.process_id} of {cluster.num_processes}"
  if cluster.process_id == 0:
    _check_port_free(port, me)
  else:
    _wait_for_coordinator(host, port, deadline, me, timeout_s)
  left = max(deadline - time.monotonic(), 1.0)
  with _watchdog(left, f"{me} reached the coordinator at {cluster.coordinator_address} "
                       f"but start-up did not complete within {timeout_s:g} s: start "
                       f"all {cluster.num_processes} processes, each with the same "
                       f"--num_processes and its own --process_id"):
    # jax's own timeout is longer, so the watchdog's one line comes first.
    jax.distributed.initialize(cluster.coordinator_address, cluster.num_processes,
                               cluster.process_id, initialization_timeout=int(left) + 30,
                               heartbeat_timeout_seconds=heartbeat_timeout_s)
    jax.devices()  # the backend's topology exchange happens here
    _no_compile_cache_on_cpu()
    _check_agreement(cluster)


def _no_compile_cache_on_cpu():
  """Turns the persistent compilation cache off for multi-process CPU runs.

  jax reads and writes that cache in process 0 only, so process 0 loads a program
  while the others compile it; a gap over gloo's fixed 30 s rendezvous then fails the
  first collective ('Gloo context initialization failed: DEADLINE_EXCEEDED').
  """
  if jax.process_count() > 1 and jax.default_backend() == "cpu":
    if jax.config.jax_compilation_cache_dir:
      logging.warning("persistent compilation cache off: in a multi-process CPU run "
                      "only process 0 would use it")
    jax.config.update("jax_enable_compilation_cache", False)


def _check_port_free(port, me):
  """Process 0 binds the port; a taken one would abort inside jax."""
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
      s.bind(("", port))
    except OSError as e:
      raise DistributedError(f"{me} cannot serve as coordinator: port {port} is in use "
                             f"({e.strerror}); pick another port") from None


def _wait_for_coordinator(host, port, deadline, me, timeout_s):
  while True:
    try:
      with socket.create_connection((host, port), timeout=1.0):
        return
    except OSError as e:
      if time.monotonic() >= deadline:
        raise DistributedError(
            f"no coordinator answered at {host}:{port} within {timeout_s:g} s ({me}; "
            f"last error: {e.strerror or e}): is process 0 running on {host}, with that "
            f"port?") from None
      time.sleep(0.2)


def _check_agreement(cluster):
  """Every process declared the count the coordinator runs with.

  A process told a larger count than process 0 still joins (the coordinator's count
  wins) and would silently train on a different sharding than it was asked for.
  """
  declared = np.asarray(multihost_utils.process_allgather(
      np.array([cluster.num_processes, cluster.process_id], np.int32)))
  counts = declared[:, 0].tolist()
  if any(c != jax.process_count() for c in counts):
    said = ", ".join(f"process {int(p)} says {int(c)}" for c, p in declared)
    raise DistributedError(f"processes disagree on the process count ({said}; the "
                           f"coordinator runs {jax.process_count()}): give every "
                           f"process the same --num_processes")


class _watchdog:
  """Context manager: if the block runs past `seconds`, print `error: message` and
  exit the process with status 1 (the block is stuck in C++, unreachable by Python
  exceptions)."""

  def __init__(self, seconds, message):
    self._timer = threading.Timer(seconds, self._fire, args=(message,))
    self._timer.daemon = True

  @staticmethod
  def _fire(message):
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(1)

  def __enter__(self):
    self._timer.start()
    return self

  def __exit__(self, *exc):
    self._timer.cancel()
    return False
