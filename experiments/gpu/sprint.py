r"""The GPU visit in one command: environment, data, training, evaluation and timings.

  # On the GPU machine, from the repository root (wheels from `make gpu-wheels`):
  python3 experiments/gpu/sprint.py --out=$OUT --smoke --minutes=3.5  # catch failures
  python3 experiments/gpu/sprint.py --out=$OUT [--minutes=8.5] [--steps=N]
  # One 10-minute command holds either the timings or a useful training run well,
  # not both (BENCHMARKS.md, "GPU sprint"); with two calls:
  python3 experiments/gpu/sprint.py --out=$OUT --skip=data,train,evaluate,weights
  python3 experiments/gpu/sprint.py --out=$OUT --skip=kernels,mfu --steps=2500
  # Every stage at toy size on a CPU, in about a minute (the test suite runs this):
  python experiments/gpu/sprint.py --out=/tmp/sprint --dry_run

Stages, in order; each runs in a process of its own with a share of the wall-clock
budget, and a failure (or a timeout) is recorded and the next stage still runs:

  wheels    installs .gpu_wheels/*.whl offline into a private folder (GPU image only)
  env       device, versions, bf16 matrix-product TFLOP/s and copy GB/s measured
  data      SynthAV `small` (and `tiny`, for the reference figure) on every core;
            runs on the CPU while the two timing stages below use the GPU
  kernels   experiments/benchmarks/attention.py: Pallas flash attention against cuDNN
            and XLA, checked against reference_attention first
  mfu       experiments/benchmarks/train_throughput.py: one train step of the `full`
            6-speaker model, MFU from XLA's FLOP count
  train     python -m avsep_jax.main on the config (default: `lite`, 6 slots, bf16,
            a GPU batch, mixtures made on the device), stopped by SIGTERM (the trainer
            saves and exits) when its share of the budget is spent
  evaluate  --mode=evaluate on the test split at 2..6 speakers
  weights   python -m avsep_jax.pretrained: the trained weights as a shipped-weights
            file, scored on the reference mixtures

DIR receives at most 8 files of at most 16 MiB: sprint.json (every figure and each
stage's status), sprint.log (every stage's output) and weights.safetensors.
"""

import argparse
import datetime
import glob
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Where the wheels are installed on the GPU machine (nothing there installs from the
# network; --no-deps: the image's own numpy, protobuf, ... are kept).
SITE = "/tmp/avsep_sprint_site"
# H200 (and H100 SXM) dense bf16 peak, the MFU denominator.
PEAK_BF16_TFLOPS = 989.0
# Figures of the whole visit, in the order a reader looks for them.
OUTPUT_FILES = ("sprint.json", "sprint.log", "weights.safetensors")


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", required=True, help="output folder (at most 8 files)")
  parser.add_argument("--minutes", type=float, default=8.5,
                      help="wall-clock budget of the whole sprint (a command may run "
                           "10 minutes, the machine's start and the copies not counted)")
  parser.add_argument("--smoke", action="store_true",
                      help="every stage at toy size on this machine's accelerator: a "
                           "short first call that catches failures")
  parser.add_argument("--dry_run", action="store_true",
                      help="--smoke on the CPU, Pallas kernels interpreted")
  parser.add_argument("--config", default=None,
                      help="config to train (default: configs/6spk.py:lite, or "
                           "configs/2spk.py:smoke with --dry_run)")
  parser.add_argument("--batch_size", type=int, default=None,
                      help="global batch (default 32; the config's with --dry_run)")
  parser.add_argument("--steps", type=int, default=None,
                      help="training steps the schedule decays over (default: what "
                           "the train share of the budget holds at --steps_per_second)")
  parser.add_argument("--steps_per_second", type=float, default=6.0,
                      help="expected training speed, only to size --steps")
  parser.add_argument("--input", choices=("device", "grain"), default="device",
                      help="where training mixtures are made")
  parser.add_argument("--data_dir", default=None,
                      help="TFDS data dir (default: DIR-independent /tmp/avsep_tfds); "
                           "built there when absent")
  parser.add_argument("--workdir", default=None,
                      help="training workdir (default /tmp/avsep_sprint_run)")
  parser.add_argument("--wheels", default=os.path.join(ROOT, ".gpu_wheels"),
                      help="folder of wheels to install first (skipped if absent)")
  parser.add_argument("--skip", default="",
                      help="comma-separated stages to leave out")
  return parser.parse_args(argv)


class Sprint:
  """Runs stages as subprocesses against one deadline and records what they give."""

  def __init__(self, args):
    self.args = args
    self.start = time.monotonic()
    self.deadline = self.start + 60 * args.minutes
    os.makedirs(args.out, exist_ok=True)
    self.log = open(os.path.join(args.out, "sprint.log"), "a", buffering=1)
    self.figures = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(
        timespec="seconds"), "command": shlex.join(sys.argv), "dry_run": args.dry_run,
        "smoke": args.smoke, "minutes": args.minutes, "stages": {}}
    self.env = dict(os.environ, PYTHONUNBUFFERED="1")
    self.env["PYTHONPATH"] = os.pathsep.join(
        p for p in (ROOT, self.env.get("PYTHONPATH")) if p)
    # Each stage owns the GPU in turn; none may take 75 % of it up front while the
    # data stage's workers (CPU) or the next stage start.
    self.env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
    if args.dry_run:
      self.env["JAX_PLATFORMS"] = "cpu"

  def left(self):
    return self.deadline - time.monotonic()

  def say(self, text):
    line = f"[sprint {time.monotonic() - self.start:6.1f}s] {text}"
    print(line, flush=True)
    self.log.write(line + "\n")

  def record(self, stage, **fields):
    self.figures["stages"].setdefault(stage, {}).update(fields)
    self.write()

  def write(self):
    path = os.path.join(self.args.out, "sprint.json")
    with open(path + ".partial", "w") as f:
      json.dump(self.figures, f, indent=1, default=str)
    os.replace(path + ".partial", path)

  def spawn(self, stage, cmd, env=None):
    """Starts `cmd`, its output copied line by line into the log and stdout."""
    self.say(f"{stage}: {shlex.join(cmd)}")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env or self.env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, errors="replace",
                            start_new_session=True)

    def copy():
      for line in proc.stdout:
        self.log.write(f"[{stage}] {line}")
        sys.stdout.write(f"[{stage}] {line}")
      sys.stdout.flush()

    thread = threading.Thread(target=copy, daemon=True)
    thread.start()
    proc.copier = thread
    proc.started = time.monotonic()
    return proc

  def finish(self, stage, proc, timeout):
    """Waits up to `timeout` s; then SIGTERM (the trainer saves and exits), then
    SIGKILL 60 s later. Records status, seconds and exit code."""
    status = "ok"
    try:
      proc.wait(timeout=max(timeout, 1))
    except subprocess.TimeoutExpired:
      status = "timeout"
      self.say(f"{stage}: out of time, SIGTERM")
      os.killpg(proc.pid, signal.SIGTERM)
      try:
        proc.wait(timeout=60)
      except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    proc.copier.join(timeout=5)
    if status == "ok" and proc.returncode:
      status = "failed"
    seconds = time.monotonic() - proc.started
    self.say(f"{stage}: {status} (exit {proc.returncode}) in {seconds:.1f} s")
    self.record(stage, status=status, seconds=round(seconds, 1),
                returncode=proc.returncode)
    return status

  def run(self, stage, cmd, timeout, env=None):
    if stage in self.args.skip.split(","):
      self.record(stage, status="skipped")
      return "skipped"
    try:
      return self.finish(stage, self.spawn(stage, cmd, env), timeout)
    except OSError as e:
      self.say(f"{stage}: could not start: {e}")
      self.record(stage, status="failed", error=str(e))
      return "failed"

  def read_json(self, stage, path, key):
    """Copies a stage's JSON output into the figures under `key`."""
    try:
      with open(path) as f:
        self.record(stage, **{key: json.load(f)})
    except (OSError, ValueError) as e:
      self.record(stage, **{f"{key}_error": str(e)})


def install_wheels(sprint):
  """pip install --no-index of the carried wheels into SITE, then on PYTHONPATH."""
  wheels = sorted(glob.glob(os.path.join(sprint.args.wheels, "*.whl")))
  if sprint.args.dry_run or not wheels:
    sprint.record("wheels", status="skipped",
                  reason="dry run" if sprint.args.dry_run else "no wheels folder")
    return
  status = sprint.run("wheels", [sys.executable, "-m", "pip", "install", "-q",
                                 "--no-index", "--no-deps", "--no-compile",
                                 "--no-cache-dir", "--upgrade", "--target", SITE,
                                 *wheels], timeout=120)
  if status == "ok":
    sprint.env["PYTHONPATH"] = os.pathsep.join((SITE, sprint.env["PYTHONPATH"]))


def environment_stage(small):
  """Runs in its own process: prints one JSON line of the device and its peaks."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  versions = {}
  for name in ("jax", "jaxlib", "flax", "optax", "orbax.checkpoint", "grain",
               "tensorflow_datasets", "numpy"):
    try:
      module = __import__(name, fromlist=["__version__"])
      versions[name] = getattr(module, "__version__", "?")
    except ImportError as e:
      versions[name] = f"missing ({e})"
  device = jax.devices()[0]
  info = {"backend": jax.default_backend(), "device_kind": device.device_kind,
          "device_count": jax.device_count(), "python": sys.version.split()[0],
          "versions": versions}
  try:
    info["nvidia_smi"] = subprocess.run(
        ["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
         "--format=csv,noheader"], capture_output=True, text=True,
        timeout=30).stdout.strip()
  except (OSError, subprocess.TimeoutExpired):
    info["nvidia_smi"] = None

  def timed(fn, *args, repeats=10):
    jax.block_until_ready(fn(*args))
    start = time.perf_counter()
    for _ in range(repeats):
      out = fn(*args)
    jax.block_until_ready(out)
    return (time.perf_counter() - start) / repeats

  n = 512 if small else 8192
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.bfloat16)
  seconds = timed(jax.jit(lambda x: x @ x), a)
  info["matmul_bf16"] = {"n": n, "tflops": 2 * n**3 / seconds / 1e12}
  count = 2**20 if small else 2**30
  x = jnp.ones((count,), jnp.float32)
  seconds = timed(jax.jit(lambda x: x * 1.0001), x)
  # Bytes read and written, as the image's measured 4.3 TB/s counts them.
  info["copy"] = {"bytes": 8 * count, "gb_per_s": 8 * count / seconds / 1e9}
  print("ENV " + json.dumps(info), flush=True)


def plan(args):
  """The config, overrides and sizes of this sprint."""
  if args.smoke or args.dry_run:
    batch_size = args.batch_size or 2
    return {"config": args.config or "configs/2spk.py:smoke",
            "dataset": "synthav/tiny", "batch_size": batch_size,
            "steps": args.steps or 2, "evals": 1, "test_examples": 4,
            "attention": ["--seq_lens=128", "--head_dims=64", "--tokens=256",
                          "--model_dim=128", "--repeats=2", "--check_max_t=128",
                          "--masks=window"]
                         + (["--interpret", "--impls=pallas,xla"] if args.dry_run
                            else ["--impls=pallas,cudnn,xla"]),
            # On an accelerator, the speed of the full sprint's training step: what
            # sizes its --steps. On the CPU, the train stage's own step, which that
            # stage then reads back from the compilation cache.
            "mfu": (["--config=configs/2spk.py", "--variants=smoke", "--steps=2",
                     f"--batch_size={batch_size}"]
                    if args.dry_run else
                    ["--config=configs/6spk.py", "--variants=lite", "--batch_size=32",
                     "--dtype=bfloat16", "--steps=5"])}
  train_minutes = 0.45 * args.minutes
  return {"config": args.config or "configs/6spk.py:lite",
          "dataset": "synthav/small", "batch_size": args.batch_size or 32,
          "steps": args.steps or int(train_minutes * 60 * args.steps_per_second),
          "evals": 4, "test_examples": 100,
          "attention": ["--seq_lens=4096,16384,32768,1024", "--head_dims=64,128",
                        "--repeats=3", "--impls=pallas,cudnn,xla"],
          "mfu": ["--config=configs/6spk.py", "--variants=full", "--steps=5",
                  f"--peak_tflops={PEAK_BF16_TFLOPS}"]}


def main(argv=None):
  args = parse_args(argv)
  if args.dry_run and args.minutes == 8.5:
    # A ceiling, not a target: stages get shares of the budget, and on a CPU shared
    # with other work (the test suite's other worker) their compiles can take minutes.
    args.minutes = 30.0
  sprint = Sprint(args)
  p = plan(args)
  sprint.figures["plan"] = p
  data_dir = os.path.abspath(args.data_dir or "/tmp/avsep_tfds")
  workdir = os.path.abspath(args.workdir or "/tmp/avsep_sprint_run")
  py = sys.executable
  # Stages compile the same programs (validation's predict, then evaluation's; the
  # weights tool's two scorings): one persistent cache for all of them.
  sprint.env["JAX_COMPILATION_CACHE_DIR"] = workdir + "_xla_cache"
  budget = 60 * args.minutes
  skipped = set(args.skip.split(","))
  training = not {"train", "evaluate"} <= skipped
  # Shares of the budget, measured on an H200 (BENCHMARKS.md, "GPU sprint"): the
  # kernel table and the `full` model's compile each need minutes; evaluation's
  # first batch (compile + grain start) needs more than a minute. Without training,
  # the timing stages take the whole budget.
  shares = ({"kernels": 0.22, "mfu": 0.15, "after_train": 0.3, "weights": 0.1}
            if training else {"kernels": 0.6, "mfu": 0.35})

  # -------------------------------------------------------------------- wheels, env
  install_wheels(sprint)
  small = args.smoke or args.dry_run
  sprint.run("env", [py, __file__, "--env_stage"] + (["--smoke"] if small else []),
             timeout=120)
  with open(os.path.join(args.out, "sprint.log")) as f:
    for line in f:
      if line.startswith("[env] ENV "):
        sprint.record("env", **json.loads(line[len("[env] ENV "):]))

  # ----------------------------------------------------------- data, on the CPU cores
  cpu_env = dict(sprint.env, JAX_PLATFORMS="cpu")
  data_cmd = [py, "-c", (
      "import sys; from avsep_jax.data.synthav import builder; "
      "[builder.build(n, sys.argv[1]) for n in sys.argv[2:]]"),
      data_dir, p["dataset"].split("/")[1]] + (["tiny"] if p["dataset"] != "synthav/tiny"
                                                else [])
  data = None
  if "data" not in args.skip.split(","):
    data = sprint.spawn("data", data_cmd, env=cpu_env)

  # ------------------------------------------------------- kernels and MFU (GPU)
  attention_json = os.path.join(workdir + "_attention.json")
  sprint.run("kernels", [py, "experiments/benchmarks/attention.py",
                         f"--json={attention_json}", *p["attention"]],
             timeout=shares["kernels"] * budget)
  sprint.read_json("kernels", attention_json, "table")
  mfu_json = workdir + "_mfu.json"
  sprint.run("mfu", [py, "experiments/benchmarks/train_throughput.py",
                     f"--json={mfu_json}", *p["mfu"]],
             timeout=shares["mfu"] * budget)
  sprint.read_json("mfu", mfu_json, "rows")
  if data is not None:
    sprint.finish("data", data, timeout=max(sprint.left() - 0.5 * budget, 30))

  # ----------------------------------------------------------------------- training
  overrides = [f"--config.data_dir={data_dir}", f"--config.dataset={p['dataset']}",
               f"--config.batch_size={p['batch_size']}",
               f"--config.test_examples={p['test_examples']}",
               "--config.eval_pesq_stoi=False"]
  train_overrides = overrides + [
      f"--config.total_steps={p['steps']}", f"--config.input={args.input}",
      f"--config.eval_every_steps={max(p['steps'] // p['evals'], 1)}",
      f"--config.checkpoint_every_steps={max(p['steps'] // p['evals'], 1)}"]
  if not (args.smoke or args.dry_run):
    # A schedule sized to the run. Smoke runs keep the config's, whose warmup outlasts
    # them: their train step is then the very program the mfu stage compiled, read
    # back from the compilation cache instead of compiled again.
    train_overrides += [
        f"--config.warmup_steps={min(max(p['steps'] // 10, 1), 2000)}",
        "--config.model.dtype=bfloat16"]
  main_cmd = [py, "-m", "avsep_jax.main", f"--config={p['config']}",
              f"--workdir={workdir}"]
  sprint.run("train", main_cmd + train_overrides,
             timeout=sprint.left() - shares.get("after_train", 0) * budget)
  curve = {}
  for path in glob.glob(os.path.join(workdir, "eval", "validation_*.json")):
    with open(path) as f:
      scores = json.load(f)["summary"]["all"]
    step = int(os.path.basename(path)[len("validation_"):-len(".json")])
    curve[step] = scores.get("si_snri", {}).get("mean")
  sprint.record("train", validation_si_snri=dict(sorted(curve.items())),
                command=shlex.join(main_cmd + train_overrides))

  # --------------------------------------------------------------------- evaluation
  sprint.run("evaluate", main_cmd + overrides + ["--mode=evaluate"],
             timeout=sprint.left() - shares.get("weights", 0) * budget)
  tests = sorted(glob.glob(os.path.join(workdir, "eval", "test_*.json")),
                 key=os.path.getmtime)
  if tests:
    sprint.read_json("evaluate", tests[-1], "test")

  # ------------------------------------------------------------------------ weights
  weights = os.path.join(args.out, "weights.safetensors")
  cmd = [py, "-m", "avsep_jax.pretrained", f"--checkpoint={workdir}",
         f"--data_dir={data_dir}", f"--output={weights}",
         f"--trained_by={sprint.figures['command']}"]
  if tests:
    cmd.append(f"--test_json={tests[-1]}")
  sprint.run("weights", cmd, timeout=max(sprint.left(), 60))
  if os.path.isfile(weights):
    sprint.record("weights", bytes=os.path.getsize(weights))

  sprint.figures["seconds"] = round(time.monotonic() - sprint.start, 1)
  sprint.write()
  sprint.say("stages: " + ", ".join(f"{k} {v.get('status')}"
                                    for k, v in sprint.figures["stages"].items()))
  extra = sorted(set(os.listdir(args.out)) - set(OUTPUT_FILES))
  if extra:
    sprint.say(f"unexpected files in {args.out}: {extra}")
  return 0


if __name__ == "__main__":
  if "--env_stage" in sys.argv:
    environment_stage(small="--smoke" in sys.argv)
  else:
    sys.exit(main())
