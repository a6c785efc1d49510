"""Multi-process training on one machine: 2 processes x 2 simulated CPU devices through
jax.distributed (gloo), started by experiments/launch_local.py, against test_train's
1-process reference run; a killed process, the resumed run, and start-up errors."""

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from avsep_jax import distributed
from test_train import assert_gradients_close, assert_trees_close, command, env, losses, params, reference, steps  # pylint: disable=g-bad-import-order,unused-import

ROOT = pathlib.Path(__file__).resolve().parents[1]
LAUNCHER = [sys.executable, str(ROOT / "experiments" / "launch_local.py")]
# The reference run's steps, batches and checkpoints on mesh data 2 x fsdp 2; validation
# (which changes neither params nor the data order) at the last step alone.
COMMON = ("--config.total_steps=4", "--config.eval_every_steps=100",
          "--config.checkpoint_every_steps=2", "--config.mesh_shape=(2,2,1)")


def free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def launcher(workdir, data_dir, *overrides):
  """The launcher running `command(...)`'s main arguments in 2 processes x 2 devices."""
  main_args = command(workdir, data_dir, *COMMON, *overrides)[3:]  # drop python -m main
  return subprocess.Popen(
      LAUNCHER + ["--num_processes=2", "--devices_per_process=2", "--grace_s=3", "--",
                  *main_args],
      cwd=ROOT, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_two_processes_match_one_survive_a_kill_and_resume(tiny_data_dir, reference,
                                                          tmp_path):
  # The reference (one process, one device; the same schedule and global batches) is
  # made before the launch, not alongside: a process slowed by a third one could reach
  # the first collective over gloo's 30 s rendezvous after its peer.
  one, two = reference, tmp_path / "two"
  proc = launcher(two, tiny_data_dir)
  first = proc.stdout.readline()  # launch_local: coordinator ...; process 0 pid N, ...
  pids = [int(p.split()[-1]) for p in first.split(";")[1].split(",")]
  deadline = time.time() + 400
  while (time.time() < deadline and proc.poll() is None
         and not (two / "checkpoints" / "2").exists()):
    time.sleep(0.05)
  assert proc.poll() is None, proc.communicate()
  os.kill(pids[1], signal.SIGKILL)
  out, err = proc.communicate(timeout=60)

  # The launcher names the dead process and stops the other.
  assert proc.returncode != 0
  assert f"process 1 (pid {pids[1]}) was killed by SIGKILL" in err, err[-3000:]
  assert err.strip().splitlines()[-1] == (
      "launch_local: error: process 1 of 2 was killed by SIGKILL (exit code -9)")
  with pytest.raises(ProcessLookupError):
    os.kill(pids[0], 0)
  # Every step directory that exists is complete: it restores, with both processes'
  # data iterator positions. (Unfinished saves stay in *.orbax-checkpoint-tmp-*.)
  saved = steps(two)
  assert 2 in saved and 4 not in saved, saved
  for step in saved:
    params(two, step)
    data = two / "checkpoints" / str(step) / "data"
    assert {"process_0-of-2.json", "process_1-of-2.json"} <= {
        p.name for p in data.iterdir()}

  # Same losses as one process with four devices up to the kill ...
  a = losses(one)
  b = losses(two)
  assert {1, 2} <= set(b), b
  np.testing.assert_allclose([b[s] for s in (1, 2)], [a[s] for s in (1, 2)], rtol=2e-4)
  assert_trees_close(params(two, 2), params(one, 2), atol=2e-5)
  assert_gradients_close(two, one, 2)

  # ... and after resuming from the last checkpoint.
  proc = launcher(two, tiny_data_dir)
  out, err = proc.communicate(timeout=600)
  assert proc.returncode == 0, err[-3000:]
  assert "[p0] resumed from" in out and "[p1] resumed from" in out, out[-3000:]
  assert f"at step {max(saved)}" in out
  b = losses(two)
  np.testing.assert_allclose([b[s] for s in (3, 4)], [a[s] for s in (3, 4)], rtol=2e-4)
  assert_trees_close(params(two, 4), params(one, 4), atol=2e-5)
  assert_gradients_close(two, one, 4)
  # Validation at the last step scores both processes' shards: every process reports
  # the one-process run's figures, over the same number of speakers.
  lines = {p: [l for l in out.splitlines() if l.startswith(f"[p{p}] step 4: validation")]
           for p in (0, 1)}
  assert len(lines[0]) == 1 and lines[0][0][5:] == lines[1][0][5:], lines
  want, got = (json.loads((w / "eval" / "validation_4.json").read_text())["summary"]["all"]
               for w in (one, two))
  for metric in ("si_snri", "sdri"):
    assert got[metric]["n"] == want[metric]["n"]
    np.testing.assert_allclose(got[metric]["mean"], want[metric]["mean"], atol=1e-3)


TIMEOUT_S = 6  # --distributed_timeout_s of the start-up error tests


def _main(workdir, data_dir, *flags):
  """A trainer process with its output in files (read when it has exited)."""
  workdir.mkdir(parents=True)
  out, err = (open(workdir / name, "w") for name in ("out.txt", "err.txt"))
  with out, err:
    return subprocess.Popen(
        command(workdir, data_dir, f"--distributed_timeout_s={TIMEOUT_S}", *flags),
        cwd=ROOT, env=env(devices=2), stdout=out, stderr=err, text=True)


def _wait(procs, tmp_path, limit_s=600):
  """{name: (seconds from start to exit, last line of stderr)} of `_main` processes
  started in tmp_path / name; each must exit with 1."""
  started, done = time.monotonic(), {}
  while len(done) < len(procs) and time.monotonic() - started < limit_s:
    for name, proc in procs.items():
      if name not in done and proc.poll() is not None:
        done[name] = time.monotonic() - started
    time.sleep(0.05)
  for proc in procs.values():
    if proc.poll() is None:
      proc.kill()
  assert done.keys() == procs.keys(), f"still running after {limit_s} s: " + ", ".join(
      procs.keys() - done.keys())
  result = {}
  for name, proc in procs.items():
    err = (tmp_path / name / "err.txt").read_text()
    assert proc.returncode == 1, (name, err[-3000:])
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: "), (name, err[-3000:])
    result[name] = done[name], last
  return result


@pytest.mark.slow
def test_start_up_errors_are_one_line_and_bounded(tiny_data_dir, tmp_path):
  """Every way start-up can fail ends in one `error:` line, and within the timeout.

  All processes start at once, so they share the machine's load; "within the timeout"
  is measured against the processes that fail while reading their flags, right after
  the imports: a loaded machine slows the imports, not the timeout.
  """
  def address():
    return f"--coordinator_address=127.0.0.1:{free_port()}"

  lonely, mismatch, short = address(), address(), address()
  flags = {
      # Process 1 with no coordinator listening.
      "lonely": (lonely, "--num_processes=2", "--process_id=1"),
      # An id out of range, and an incomplete description: caught with the flags.
      "out_of_range": (lonely, "--num_processes=2", "--process_id=2"),
      "incomplete": (lonely,),
      # Process 1 told 3 processes, the coordinator 2: both stop, naming the counts.
      "mismatch_0": (mismatch, "--num_processes=2", "--process_id=0"),
      "mismatch_1": (mismatch, "--num_processes=3", "--process_id=1"),
      # The coordinator told 3, its one peer 2: nobody completes start-up.
      "short_0": (short, "--num_processes=3", "--process_id=0"),
      "short_1": (short, "--num_processes=2", "--process_id=1"),
  }
  result = _wait({name: _main(tmp_path / name, tiny_data_dir, *f)
                  for name, f in flags.items()}, tmp_path)
  lines = {name: line for name, (_, line) in result.items()}
  assert "no coordinator answered at 127.0.0.1" in lines["lonely"]
  assert "--process_id 2 is out of range for 2 processes" in lines["out_of_range"]
  assert "needs --num_processes" in lines["incomplete"]
  for name in ("mismatch_0", "mismatch_1"):
    assert "process 0 says 2, process 1 says 3" in lines[name], lines[name]
  for name in ("short_0", "short_1"):
    assert f"start-up did not complete within {TIMEOUT_S} s" in lines[name], lines[name]
  # A process that waits stops at most one timeout after its imports (twice for
  # slack, plus 20 s for a peer's slower imports or a busy machine's scheduling).
  imports = max(result["out_of_range"][0], result["incomplete"][0])
  for name, (seconds, _) in result.items():
    assert seconds < imports + 2 * TIMEOUT_S + 20, (name, seconds, imports)


def test_resolve_reads_flags_then_environment_then_slurm():
  assert distributed.resolve(environ={}) is None
  c = distributed.resolve("h:1", 2, 1, environ={"JAX_NUM_PROCESSES": "5"})
  assert (c.coordinator_address, c.num_processes, c.process_id, c.source) == (
      "h:1", 2, 1, "flags")
  c = distributed.resolve(environ={"JAX_COORDINATOR_ADDRESS": "h:2",
                                   "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "3"})
  assert (c.num_processes, c.process_id, c.source) == (4, 3, "environment")
  slurm = {"SLURM_JOB_ID": "4097", "SLURM_NTASKS": "8", "SLURM_PROCID": "5",
           "SLURM_STEP_NODELIST": "gpu[017-020,031],cpu1"}
  c = distributed.resolve(environ=slurm)
  assert (c.coordinator_address, c.num_processes, c.process_id) == ("gpu017:61441", 8, 5)
  c = distributed.resolve(environ=slurm | {"JAX_COORDINATOR_PORT": "1234"})
  assert c.coordinator_address == "gpu017:1234"
  assert distributed.resolve(environ=slurm | {"SLURM_NTASKS": "1"}) is None
  assert distributed.resolve("auto").coordinator_address == "auto"
  for args, message in [(("h:1", 2, 2), "out of range"), (("h", 2, 0), "host:port"),
                        (("h:1", 0, 0), "at least 1"), (("h:1", None, 0), "--num_processes")]:
    with pytest.raises(distributed.DistributedError, match=message):
      distributed.resolve(*args, environ={})
  with pytest.raises(distributed.DistributedError, match="must be an integer"):
    distributed.resolve(environ={"JAX_COORDINATOR_ADDRESS": "h:2",
                                 "JAX_NUM_PROCESSES": "two", "JAX_PROCESS_ID": "0"})


def test_launcher_stops_everyone_when_one_fails_or_on_sigterm(tmp_path):
  # Process 1 exits 3 at once; process 0 would sleep a minute.
  script = tmp_path / "worker.py"
  script.write_text("import os, sys, time\n"
                    "if os.environ['JAX_PROCESS_ID'] == '1':\n"
                    "  print('bye', flush=True); sys.exit(3)\n"
                    "time.sleep(60)\n")
  started = time.time()
  out = subprocess.run(LAUNCHER + ["--num_processes=2", "--grace_s=1", "--module=worker"],
                       cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(tmp_path)),
                       capture_output=True, text=True, timeout=60)
  assert time.time() - started < 30
  assert out.returncode == 3
  assert "[p1] bye" in out.stdout
  assert out.stderr.strip().splitlines()[-1] == (
      "launch_local: error: process 1 of 2 exited with code 3")

  # SIGTERM to the launcher reaches both children.
  script.write_text("import time\nprint('up', flush=True)\ntime.sleep(60)\n")
  proc = subprocess.Popen(LAUNCHER + ["--num_processes=2", "--module=worker"],
                          cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(tmp_path)),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  first = proc.stdout.readline()
  pids = [int(p.split()[-1]) for p in first.split(";")[1].split(",")]
  for _ in range(2):
    assert proc.stdout.readline().endswith("up\n")
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=30)
  assert proc.returncode == 128 + signal.SIGTERM
  assert "SIGTERM received; stopping 2 processes" in err
  for pid in pids:
    with pytest.raises(ProcessLookupError):
      os.kill(pid, 0)
