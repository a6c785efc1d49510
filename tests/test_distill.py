"""Distillation (avsep_jax.distill): the step on 8 devices against the CLI on one, the
loss terms against NumPy, learning on one batch, the CLI's outputs and its error lines.

Two subprocesses started together do the heavy work once per test session, whichever
xdist worker asks first (the others wait on a file lock): `_driver` below (`python -m
tests.test_distill`) runs the step on 8 simulated devices, and the CLI trains two steps
on one. The teacher is an untrained smoke checkpoint: distillation only needs its
outputs fixed.
"""

import fcntl
import json
import os
import pathlib
import pickle
import re
import subprocess
import sys

import jax
import numpy as np
import optax
import pytest
from tensorboard.backend.event_processing import event_accumulator

from avsep_jax import checkpoints
from avsep_jax import distill
from avsep_jax import parallel
from avsep_jax import separate
from avsep_jax import train
from avsep_jax.model import AVSeparator

ROOT = pathlib.Path(__file__).resolve().parents[1]
STEPS = 8  # driver steps on its one batch
# Both runs' settings: the driver's first step and the CLI's see the same batch.
OVERRIDES = {"batch_size": 4, "segment_seconds": 1.0, "learning_rate": 3e-3,
             "warmup_steps": 0, "oracle_cue_steps": 0, "augment_video": False}


def _env(devices):
  e = dict(os.environ)
  e["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  e["JAX_PLATFORMS"] = "cpu"
  return e


def _start(cmd, devices=1):
  return subprocess.Popen(cmd, cwd=ROOT, env=_env(devices), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)


def _finish(proc, check=True):
  stdout, stderr = proc.communicate(timeout=600)
  if check and proc.returncode:
    raise AssertionError(f"exit {proc.returncode}\n{stdout}\n{stderr}")
  return proc.returncode, stdout, stderr


def _cli(workdir, teacher, data_dir, *overrides):
  return [sys.executable, "-m", "avsep_jax.main",
          f"--config={ROOT / 'configs/distill.py'}:smoke", f"--workdir={workdir}",
          f"--config.data_dir={data_dir}",
          *([f"--config.teacher_workdir={teacher}"] if teacher else []),
          *(f"--config.{k}={v}" for k, v in OVERRIDES.items()), *overrides]


def _keyed(tree):
  return {jax.tree_util.keystr(k): np.asarray(v)
          for k, v in jax.tree_util.tree_leaves_with_path(tree)}


def _driver(teacher_dir, data_dir, steps, out_path):
  """`steps` distillation steps on the CLI's first batch; pickles what tests check.

  Writes {"losses": loss per step, "metrics": step 1's, "student": params after step
  1, "first_moment": the student's Adam first moment after step 1, "teacher": teacher
  params after all steps, "teacher_shards": {leaf: (shape, [shard shapes])},
  "teacher_bytes": (total, on device 0), "before": the batch and both models' outputs,
  tokens and projections before step 1}.
  """
  config, _ = separate.load_config(None, str(ROOT / "configs/distill.py:smoke"))
  config.update(OVERRIDES)
  config.update(teacher_workdir=teacher_dir, data_dir=data_dir, total_steps=steps,
                mesh_shape=(2, 2, 2))
  mesh, rules, batch_sharding = train.make_mesh(config)
  teacher = distill.load_teacher(config, mesh, rules)
  student = AVSeparator(config.model)
  projections = distill.FeatureProjections(tuple(config.distill.features),
                                           teacher.config.model.audio.d_model)
  optimizer, schedule = train.make_optimizer(config)
  state, _, shardings = distill.create_distill_state(config, student, projections,
                                                     optimizer, mesh, rules)
  step = distill.make_distill_step(config, student, projections, teacher, optimizer,
                                   schedule, shardings, batch_sharding)
  host = next(train.train_iterator(config, data_dir))
  inputs = (host["mixture"], host["video"], host["speaker_mask"])

  @jax.jit
  def forward(params, teacher_params):
    return (student.apply({"params": params}, *inputs),
            teacher.model.apply({"params": teacher_params}, *inputs))

  (out, aux), (t_out, t_aux) = forward(state.params, teacher.params)
  main = str(config.model.stft_scales[0][0])
  before = {"batch": host, "student": np.asarray(out), "teacher": np.asarray(t_out),
            "student_mask": np.asarray(aux["masks"][main]),
            "teacher_mask": np.asarray(t_aux["masks"][main]),
            "projections": jax.tree.map(np.asarray, state.projections),
            **{f"student_{k}": np.asarray(aux[k]) for k in distill.FEATURES},
            **{f"teacher_{k}": np.asarray(t_aux[k]) for k in distill.FEATURES}}
  batch = parallel.global_batch(host, batch_sharding)
  losses, metrics, student_params, first_moment = [], None, None, None
  for i in range(steps):
    state, m = step(state, teacher.params, batch)
    losses.append(float(m["loss"]))
    if i == 0:
      metrics = {k: float(v) for k, v in m.items()}
      student_params = _keyed(state.params)
      first_moment = _keyed(optax.tree_utils.tree_get(state.opt_state, "mu")["params"])
  with open(out_path, "wb") as f:
    pickle.dump({
        "losses": losses, "metrics": metrics, "student": student_params,
        "first_moment": first_moment,
        "teacher": _keyed(teacher.params), "before": before,
        "teacher_bytes": (parallel.nbytes(teacher.params),
                          parallel.nbytes_on(teacher.params, jax.devices()[0])),
        "teacher_shards": {
            jax.tree_util.keystr(k): (v.shape, [s.data.shape for s in v.addressable_shards])
            for k, v in jax.tree_util.tree_leaves_with_path(teacher.params)},
    }, f)


def _once(tmp_path_factory, worker_id, name, make):
  """make(directory) once per test session, whichever xdist worker comes first."""
  root = tmp_path_factory.getbasetemp()
  if worker_id != "master":
    root = root.parent  # the run's directory, shared by its workers
  path = root / name
  with open(root / f"{name}.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not (path / "done").exists():
      path.mkdir(exist_ok=True)
      make(path)
      (path / "done").touch()
    fcntl.flock(lock, fcntl.LOCK_UN)
  return path


@pytest.fixture(scope="session")
def teacher(make_checkpoint, tmp_path_factory, worker_id):
  def make(path):
    (path / "workdir").write_text(make_checkpoint("configs/2spk.py:smoke",
                                                  "distill_teacher"))
  return (_once(tmp_path_factory, worker_id, "distill_teacher", make)
          / "workdir").read_text()


@pytest.fixture(scope="session")
def runs(teacher, tiny_data_dir, tmp_path_factory, worker_id):
  """{"driver": the driver's pickle (8 devices), "cli": the CLI's workdir (1 device),
  "stdout": the CLI's stdout}."""

  def make(path):
    driver = _start([sys.executable, "-m", "tests.test_distill", teacher,
                     tiny_data_dir, str(STEPS), str(path / "driver.pkl")], devices=8)
    cli = _start(_cli(path / "cli", teacher, tiny_data_dir, "--config.total_steps=2",
                      "--config.eval_every_steps=2", "--config.checkpoint_every_steps=1",
                      "--config.eval_examples=4", "--config.log_every_steps=1"))
    results = [_finish(proc, check=False) for proc in (cli, driver)]
    for code, stdout, stderr in results:
      assert code == 0, f"exit {code}\n{stdout}\n{stderr}"
    (path / "stdout").write_text(results[0][1])

  path = _once(tmp_path_factory, worker_id, "distill_runs", make)
  with open(path / "driver.pkl", "rb") as f:
    return {"driver": pickle.load(f), "cli": path / "cli",
            "stdout": (path / "stdout").read_text()}


def _scalars(workdir):
  """{tag: {step: value}} of a run's TensorBoard scalars."""
  acc = event_accumulator.EventAccumulator(str(workdir / "tensorboard"))
  acc.Reload()
  return {t: {e.step: e.value for e in acc.Scalars(t)} for t in acc.Tags()["scalars"]}


@pytest.mark.slow
def test_eight_devices_match_one_and_the_teacher_is_sharded_and_unchanged(
    runs, teacher):
  # Here, not at the top: this module also runs as the 8-device driver's script
  # (`python -m tests.test_distill`), where test_train is not importable.
  from test_train import first, state  # pylint: disable=g-import-not-at-top
  eight, scalars = runs["driver"], _scalars(runs["cli"])
  for name in ("loss", "loss_output", "loss_mask", "loss_feature", "loss_supervised"):
    np.testing.assert_allclose(eight["metrics"][name], scalars[f"train/{name}"][1],
                               rtol=2e-4, atol=1e-5, err_msg=name)
  np.testing.assert_allclose(eight["metrics"]["grad_norm"], scalars["train/grad_norm"][1],
                             rtol=2e-4)
  saved_state = state(runs["cli"], 1)
  one = _keyed(saved_state["params"])
  assert one.keys() == eight["student"].keys()
  # Gradients, not updates: Adam's first update is about lr * sign(gradient), so where
  # a gradient is near 0 (mask bins near Nyquist) the rounding of the 8-way sums flips
  # it, 2 lr apart, on as many weights as the processor's rounding decides (96 of
  # 45,352 on an AVX2 EPYC, 45 with AVX-512). Adam's first moment after one step is
  # (1 - b1) x the clipped gradient: linear in the gradient, so its 8-vs-1 difference
  # is the 8-way sums' rounding: measured 4e-6 (AVX-512) and 6e-6 (AVX2-only) of the
  # gradient's norm, at most 6e-5 of any one parameter's, while a batch split wrongly
  # across devices, or a parameter's gradient left out, is off by O(1).
  g1 = _keyed(first(saved_state["opt_state"], "mu")["params"])
  g8 = eight["first_moment"]
  assert g1.keys() == g8.keys()
  flat1, flat8 = (np.concatenate([g[k].ravel() for k in sorted(g1)]) for g in (g1, g8))
  relative = np.linalg.norm(flat8 - flat1) / np.linalg.norm(flat1)
  assert relative < 1e-3, relative
  for k, v in g1.items():
    relative = np.linalg.norm(g8[k] - v) / np.linalg.norm(v)
    assert relative < 1e-2, (k, relative)
  # And the update follows from the gradient the same way: where |g| is more than 10
  # times the largest 8-vs-1 difference d, Adam's g / (|g| + eps) moves by at most
  # d eps / (|g| + eps)^2 <= 1/40 whatever eps, so those weights agree within 0.05 lr;
  # only weights with |g| <= 10 d may flip.
  lr = OVERRIDES["learning_rate"]
  d = np.max(np.abs(flat8 - flat1))
  for k, v in one.items():
    sure = np.abs(g1[k]) > 10 * d
    np.testing.assert_allclose(eight["student"][k][sure], v[sure], rtol=0,
                               atol=0.05 * lr, err_msg=k)

  # fsdp 2 x tensor 2: most 2-D kernels hold a quarter per device.
  quartered = [k for k, (shape, parts) in eight["teacher_shards"].items()
               if len(shape) == 2 and len(parts) == 8
               and all(4 * p[0] * p[1] == shape[0] * shape[1] for p in parts)]
  assert len(quartered) > 5, eight["teacher_shards"]
  total, on_device0 = eight["teacher_bytes"]
  assert on_device0 < 0.5 * total, (on_device0, total)

  saved = _keyed(separate.load_model(teacher, "latest").params)
  assert eight["teacher"].keys() == saved.keys()
  for k, v in saved.items():  # after STEPS updates of the student
    np.testing.assert_array_equal(eight["teacher"][k], v, err_msg=k)


def _numpy_si_snr(estimate, reference):
  """Le Roux et al. 2019, in float64: the estimate's projection on the reference
  against the rest, both zero-mean."""
  estimate = estimate.astype(np.float64) - estimate.mean()
  reference = reference.astype(np.float64) - reference.mean()
  target = (estimate @ reference) / (reference @ reference) * reference
  return 10 * np.log10(np.sum(target ** 2) / np.sum((estimate - target) ** 2))


@pytest.mark.slow
def test_loss_terms_equal_independent_computations(runs):
  b, m = runs["driver"]["before"], runs["driver"]["metrics"]
  real = np.asarray(b["batch"]["speaker_mask"])

  # Output: the textbook SI-SNR of the student's waveform to the teacher's.
  si_snr = [_numpy_si_snr(b["student"][i, s], b["teacher"][i, s])
            for i, s in zip(*np.nonzero(real))]
  np.testing.assert_allclose(m["loss_output"], -np.mean(si_snr), atol=2e-3)

  diff = np.abs(b["student_mask"] - b["teacher_mask"]).mean(axis=(-1, -2))
  np.testing.assert_allclose(m["loss_mask"], diff[real].mean(), rtol=1e-4)

  for name in ("audio_tokens", "speaker_tokens"):
    p = b["projections"][name]
    projected = b[f"student_{name}"] @ p["kernel"] + p["bias"]
    target = b[f"teacher_{name}"]
    error = (((projected - target) ** 2).sum(axis=(-1, -2))
             / (target ** 2).sum(axis=(-1, -2)))
    expected = error.mean() if error.ndim == 1 else error[real].mean()
    np.testing.assert_allclose(m[f"loss_feature_{name}"], expected, rtol=1e-4)
  assert m["loss_feature"] > 0.1  # random projections do not already match

  weights = {"supervised": 1.0, "output": 1.0, "mask": 10.0, "feature": 1.0}
  np.testing.assert_allclose(
      m["loss"], sum(w * m[f"loss_{k}"] for k, w in weights.items()), rtol=1e-5)


@pytest.mark.slow
def test_distillation_loss_falls_on_one_batch(runs):
  losses = runs["driver"]["losses"]
  assert len(losses) == STEPS and np.all(np.isfinite(losses))
  assert losses[-1] < losses[0] - 1.0, losses


@pytest.mark.slow
def test_cli_writes_a_student_checkpoint_that_separate_loads(runs):
  assert re.search(r"^teacher: step 0 \(latest, params\) of .*distill_teacher",
                   runs["stdout"], re.M), runs["stdout"]
  scalars = _scalars(runs["cli"])
  assert sorted(scalars["train/loss"]) == [1, 2]
  assert {"train/loss_feature_audio_tokens", "train/loss_feature_speaker_tokens",
          "train/loss_supervised_neg_si_snr", "eval/si_snri"} <= scalars.keys()
  summary = json.loads((runs["cli"] / "eval" / "validation_2.json").read_text())
  assert np.isfinite(summary["summary"]["all"]["si_snri"]["mean"])
  loaded = separate.load_model(str(runs["cli"]), "latest")
  assert loaded.step == 2 and loaded.config.model.audio.d_model == 16
  # --mode=evaluate's restore reads the params alone, past the projections.
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device),
                        separate.abstract_params(loaded.config))
  mngr = checkpoints.manager(str(runs["cli"] / "checkpoints"), keep=1 << 30,
                             save_every=1)
  params = checkpoints.restore_params(mngr, 2, target)
  mngr.close()
  for k, v in _keyed(loaded.params).items():
    np.testing.assert_array_equal(_keyed(params)[k], v, err_msg=k)


def _teacher_with(tmp_path, teacher, name, *, config=True, steps=True, **model):
  """A workdir holding the teacher's config.json with `model` keys changed
  ("audio.d_model"; or no config.json) and its checkpoints (or none)."""
  path = tmp_path / name
  path.mkdir()
  if config:
    values = json.loads((pathlib.Path(teacher) / "config.json").read_text())
    for key, value in model.items():
      *parents, leaf = key.split(".")
      node = values["model"]
      for p in parents:
        node = node[p]
      node[leaf] = value
    (path / "config.json").write_text(json.dumps(values))
  if steps:
    (path / "checkpoints").symlink_to(pathlib.Path(teacher) / "checkpoints")
  else:
    (path / "checkpoints").mkdir()
  return str(path)


@pytest.mark.slow
@pytest.mark.parametrize("case, expected", [
    ("none", r"^distillation needs a teacher: pass --config.teacher_workdir=DIR"),
    ("missing", r"^teacher: no such checkpoint directory: .*nowhere$"),
    ("no_config", r"^teacher: .* has no config.json: name the teacher's config with "
                  r"--config.teacher_config="),
    ("no_steps", r"^teacher: no checkpoint steps in .*no_steps/checkpoints$"),
    ("wider", r"^teacher: checkpoint step 0 in .* does not fit the config from "
              r".*config.json: params\['\w+'\].* is \(32,\) there, \(48,\) here$"),
    ("slots", r"^teacher and student must read the same batches: the teacher's "
              r"model.num_speakers is 6, the student's 2$"),
])
def test_bad_teacher_is_named_in_one_line(teacher, tmp_path, case, expected):
  workdirs = {
      "none": lambda: None,
      "missing": lambda: str(tmp_path / "nowhere"),
      "no_config": lambda: _teacher_with(tmp_path, teacher, case, config=False),
      "no_steps": lambda: _teacher_with(tmp_path, teacher, case, steps=False),
      "wider": lambda: _teacher_with(tmp_path, teacher, case, **{"audio.d_model": 48}),
      "slots": lambda: _teacher_with(tmp_path, teacher, case, num_speakers=6),
  }
  config, _ = separate.load_config(None, str(ROOT / "configs/distill.py:smoke"))
  config.teacher_workdir = workdirs[case]()
  mesh, rules, _ = train.make_mesh(config)
  with pytest.raises(ValueError) as error:
    distill.check_distill_config(config)
    distill.load_teacher(config, mesh, rules)
  message = str(error.value)
  assert re.search(expected, message) and "\n" not in message, message


@pytest.mark.slow
def test_cli_with_an_incompatible_teacher_exits_with_one_error_line(
    teacher, tiny_data_dir, tmp_path):
  wider = _teacher_with(tmp_path, teacher, "wider", **{"audio.d_model": 48})
  code, _, stderr = _finish(_start(_cli(tmp_path / "run", wider, tiny_data_dir)),
                            check=False)
  lines = stderr.strip().splitlines()
  assert code == 1, stderr
  assert re.match(r"error: teacher: checkpoint step 0 in .* does not fit", lines[-1]), (
      lines[-1])
  assert len(lines) < 20, stderr
  assert not (tmp_path / "run" / "checkpoints").exists()


if __name__ == "__main__":
  _driver(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4])
