r"""Runs N cooperating training processes on this machine, as a cluster would.

  python experiments/launch_local.py --num_processes=2 --devices_per_process=2 -- \
      --config=configs/2spk.py:smoke --workdir=/tmp/mp --config.mesh_shape='(2,2,1)'

Everything after `--` goes to `python -m avsep_jax.main` (or --module). Each process
gets JAX_COORDINATOR_ADDRESS (127.0.0.1 and a free port), JAX_NUM_PROCESSES and
JAX_PROCESS_ID, and with --devices_per_process that many simulated CPU devices. Its
output comes back line by line prefixed `[pI]`.

If a process fails (non-zero exit or a signal), the launcher names it and its exit
code, stops the others (SIGTERM, then SIGKILL after --grace_s: the survivors are
usually stuck in a collective waiting for the dead one) and exits non-zero. Ctrl-C or
SIGTERM to the launcher stops all of them the same way.
"""

import argparse
import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
import time

PREFIX = "launch_local:"


def free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def process_env(base, *, address, num_processes, process_id, devices):
  """The environment of process `process_id`: base + coordinates (+ CPU devices)."""
  env = dict(base)
  env.update(JAX_COORDINATOR_ADDRESS=address, JAX_NUM_PROCESSES=str(num_processes),
             JAX_PROCESS_ID=str(process_id), PYTHONUNBUFFERED="1")
  if devices:
    flags = [f for f in env.get("XLA_FLAGS", "").split()
             if not f.startswith("--xla_force_host_platform_device_count")]
    env["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={devices}"])
    env["JAX_PLATFORMS"] = "cpu"
  return env


def describe_exit(code: int) -> str:
  if code < 0:
    try:
      return f"was killed by {signal.Signals(-code).name} (exit code {code})"
    except ValueError:
      return f"was killed by signal {-code} (exit code {code})"
  return f"exited with code {code}"


def _die_with_parent():
  """In the child: SIGKILL when the launcher dies, even by SIGKILL (Linux only)."""
  try:
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
  except (OSError, AttributeError):
    pass


def _forward(stream, out, prefix, lock):
  # tqdm redraws with '\r': each redraw becomes its own prefixed line.
  for line in iter(stream.readline, ""):
    for part in line.replace("\r", "\n").splitlines():
      if part.strip():
        with lock:
          out.write(f"{prefix}{part}\n")
          out.flush()
  stream.close()


def stop_all(procs, grace_s):
  """SIGTERM every running process, then SIGKILL those still running after grace_s."""
  for p in procs:
    if p.poll() is None:
      p.send_signal(signal.SIGTERM)
  deadline = time.monotonic() + grace_s
  while time.monotonic() < deadline and any(p.poll() is None for p in procs):
    time.sleep(0.05)
  for p in procs:
    if p.poll() is None:
      p.kill()
  for p in procs:
    p.wait()


def launch(command, *, num_processes, devices=None, port=None, grace_s=10.0,
           poll_s=0.05, out=None, err=None) -> int:
  """Starts `command` num_processes times and supervises them; returns the exit status
  (0 when all succeed)."""
  out, err = out or sys.stdout, err or sys.stderr
  address = f"127.0.0.1:{port or free_port()}"
  lock = threading.Lock()
  stop = {"signal": None}

  def on_signal(signum, _):
    stop["signal"] = signum

  previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
  procs, threads = [], []
  try:
    for i in range(num_processes):
      env = process_env(os.environ, address=address, num_processes=num_processes,
                        process_id=i, devices=devices)
      # Own session: a terminal's Ctrl-C reaches the launcher only, which stops the
      # children in order instead of each tearing down mid-collective.
      procs.append(subprocess.Popen(command, env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True, bufsize=1,
                                    start_new_session=True, preexec_fn=_die_with_parent))
    with lock:
      out.write(f"{PREFIX} coordinator {address}; "
                + ", ".join(f"process {i} pid {p.pid}" for i, p in enumerate(procs))
                + "\n")
      out.flush()
    for i, p in enumerate(procs):
      for stream, dest in ((p.stdout, out), (p.stderr, err)):
        t = threading.Thread(target=_forward, args=(stream, dest, f"[p{i}] ", lock),
                             daemon=True)
        t.start()
        threads.append(t)

    while True:
      if stop["signal"] is not None:
        name = signal.Signals(stop["signal"]).name
        _say(err, lock, f"{name} received; stopping {num_processes} processes")
        stop_all(procs, grace_s)
        return 128 + stop["signal"]
      codes = [p.poll() for p in procs]
      failed = [(i, c) for i, c in enumerate(codes) if c not in (None, 0)]
      if failed:
        i, code = failed[0]
        running = sum(c is None for c in codes)
        _say(err, lock, f"process {i} (pid {procs[i].pid}) {describe_exit(code)}; "
                        f"stopping the {running} still running")
        stop_all(procs, grace_s)
        _join(threads)
        _say(err, lock, f"error: process {i} of {num_processes} {describe_exit(code)}")
        return code if code > 0 else 128 - code
      if all(c == 0 for c in codes):
        _join(threads)
        return 0
      time.sleep(poll_s)
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
    for s, handler in previous.items():
      signal.signal(s, handler)


def _join(threads):
  for t in threads:
    t.join(timeout=5)


def _say(err, lock, message):
  with lock:
    err.write(f"{PREFIX} {message}\n")
    err.flush()


def main(argv):
  if "--" in argv:
    split = argv.index("--")
    own, rest = argv[:split], argv[split + 1:]
  else:
    own, rest = argv, []
  parser = argparse.ArgumentParser(
      description=__doc__.split("\n\n")[0],
      usage="%(prog)s --num_processes=N [--devices_per_process=D] -- MAIN_ARGS...")
  parser.add_argument("--num_processes", type=int, required=True)
  parser.add_argument("--devices_per_process", type=int, default=None,
                      help="simulated CPU devices per process (sets XLA_FLAGS)")
  parser.add_argument("--port", type=int, default=None,
                      help="coordinator port (default: a free one)")
  parser.add_argument("--grace_s", type=float, default=10.0,
                      help="seconds between SIGTERM and SIGKILL when stopping")
  parser.add_argument("--module", default="avsep_jax.main",
                      help="python -m MODULE for each process")
  args = parser.parse_args(own)
  if args.num_processes < 1:
    parser.error("--num_processes must be at least 1")
  if args.devices_per_process is not None and args.devices_per_process < 1:
    parser.error("--devices_per_process must be at least 1")
  command = [sys.executable, "-m", args.module, *rest]
  return launch(command, num_processes=args.num_processes,
                devices=args.devices_per_process, port=args.port, grace_s=args.grace_s)


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
