"""The trainer end to end on the smoke config and tiny SynthAV, in subprocesses.

Each run is `python -m avsep_jax.main`, exactly as a user types it. One reference run
serves every test that compares with it or starts from its checkpoints, and the run's
persistent compilation cache (tests/conftest.py) keeps the repeated compiles cheap.
"""

import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from tensorboard.backend.event_processing import event_accumulator

ROOT = pathlib.Path(__file__).resolve().parents[1]
VERSION = "1.1.0"  # SynthAV's, as built by the tiny_data_dir fixture


def test_run_facts_name_the_cue_and_the_data(tiny_data_dir):
  from avsep_jax import separate, train  # pylint: disable=g-import-not-at-top
  from avsep_jax.data.synthav import builder  # pylint: disable=g-import-not-at-top
  assert str(builder.SynthAV.VERSION) == VERSION
  config, _ = separate.load_config(None, str(ROOT / "configs/2spk.py:smoke"))
  assert train.run_facts(config, tiny_data_dir) == {
      "cue": "lips", "dataset": "synthav/tiny", "dataset_version": VERSION,
      "visual_init": None}
  config.oracle_cue = True
  assert train.run_facts(config, tiny_data_dir)["cue"] == "oracle"
  config.oracle_cue_lagged = True
  assert train.run_facts(config, tiny_data_dir)["cue"] == "oracle_lagged"
  audio_only, _ = separate.load_config(None, str(ROOT / "configs/2spk.py:audio_only"))
  audio_only.dataset = "synthav/nowhere"
  facts = train.run_facts(audio_only, tiny_data_dir)
  assert facts["cue"] == "none" and facts["dataset_version"] is None


def test_the_lagged_cue_is_the_activity_as_the_video_shows_it():
  from avsep_jax import train  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  activity = rng.random((2, 3, 9)).astype(np.float32)
  offsets = np.array([[2, -2, 0], [1, -1, 0]])
  got = np.asarray(train.lagged(activity, offsets))
  for b in range(2):
    for s in range(3):
      for f in range(9):  # frame f of a video lagging by k shows audio frame f - k
        want = activity[b, s, min(max(f - offsets[b, s], 0), 8)]
        assert got[b, s, f] == want, (b, s, f)


def test_the_alignment_loss_measures_the_distance_to_the_true_lag():
  from avsep_jax import separate, train  # pylint: disable=g-import-not-at-top
  from avsep_jax.model import alignment  # pylint: disable=g-import-not-at-top
  config, _ = separate.load_config(None, str(ROOT / "configs/2spk.py:smoke"))
  t, f = 64, 16  # 0.64 s
  m = config.model
  straight = alignment.video_to_audio_matrix(t, f, hop_length=m.stft_scales[0][2],
                                             sample_rate=m.sample_rate, fps=m.video_fps)
  weights = np.broadcast_to(straight, (1, 2, t, f))
  offsets = np.array([[0, 2]])
  got = np.asarray(train.alignment_loss(config, weights, offsets))
  # A plain loop: the expected video frame of each audio frame against the true one.
  for s, k in enumerate(offsets[0]):
    errors = []
    for i in range(t):
      expected = sum(straight[i, j] * j for j in range(f))
      errors.append((expected - min(max(expected + k, 0), f - 1)) ** 2)
    np.testing.assert_allclose(got[0, s], np.mean(errors), rtol=1e-5, atol=1e-6)
  assert got[0, 0] == 0 and got[0, 1] > 3  # the straight map is 2 frames off slot 1
  # An alignment that puts each audio frame two video frames later scores (near) 0.
  moved = np.zeros((t, f), np.float32)
  for i in range(t):
    p = min(max(straight[i] @ np.arange(f) + 2, 0), f - 1)
    lo = int(np.floor(p))
    hi = min(lo + 1, f - 1)
    moved[i, lo] += 1 - (p - lo)
    moved[i, hi] += p - lo
  right = train.alignment_loss(config, moved[None, None], offsets[:, 1:])
  assert float(right[0, 0]) < 1e-8


# The reference run's schedule: 4 steps, validation and a checkpoint every 2.
REFERENCE = ("--config.total_steps=4", "--config.eval_every_steps=2",
             "--config.checkpoint_every_steps=2")

pytestmark = pytest.mark.slow  # every test here starts trainer processes


def command(workdir, data_dir, *overrides, config="configs/2spk.py:smoke"):
  return [sys.executable, "-m", "avsep_jax.main", f"--config={ROOT / config}",
          f"--workdir={workdir}", f"--config.data_dir={data_dir}",
          "--config.segment_seconds=1.0", "--config.batch_size=4",
          "--config.log_every_steps=1", "--config.eval_examples=4",
          "--config.augment_video=False", *overrides]


def env(devices=1):
  """The environment of a trainer process (the compilation cache's directory comes from
  the test run's own environment)."""
  e = dict(os.environ)
  e["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  e["JAX_PLATFORMS"] = "cpu"
  return e


def run(cmd, devices=1, check=True):
  result = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT,
                          env=env(devices), timeout=600)
  if check and result.returncode:
    raise AssertionError(f"exit {result.returncode}\n{result.stdout}\n{result.stderr}")
  return result


@pytest.fixture(scope="session")
def reference(run_once, tiny_data_dir):
  """The workdir of one 1-device run with REFERENCE's schedule (its stdout in
  stdout.txt), made once per session. Tests read it, or copy what they change."""

  def make(workdir):
    out = run(command(workdir, tiny_data_dir, *REFERENCE))
    (workdir / "stdout.txt").write_text(out.stdout)

  return run_once("train_reference", make)


def copy_checkpoints(workdir, to, steps_kept):
  """`to`: a workdir holding `workdir`'s checkpoints of `steps_kept` alone."""
  for step in steps_kept:
    shutil.copytree(pathlib.Path(workdir) / "checkpoints" / str(step),
                    pathlib.Path(to) / "checkpoints" / str(step))


def losses(workdir):
  """{step: train loss} from the run's TensorBoard events."""
  acc = event_accumulator.EventAccumulator(str(pathlib.Path(workdir) / "tensorboard"))
  acc.Reload()
  return {e.step: e.value for e in acc.Scalars("train/loss")}


def steps(workdir):
  path = pathlib.Path(workdir) / "checkpoints"
  return sorted(int(p.name) for p in path.iterdir() if p.name.isdigit())


def state(workdir, step):
  """A checkpoint's train state as nested dicts and lists of numpy arrays, whatever
  devices wrote it."""
  path = str(pathlib.Path(workdir) / "checkpoints" / str(step) / "state")
  checkpointer = ocp.PyTreeCheckpointer()
  tree = checkpointer.metadata(path).item_metadata.tree
  as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
  return checkpointer.restore(path, restore_args=as_numpy)


def params(workdir, step):
  return state(workdir, step)["params"]


def first(tree, key):
  """The first value under `key` in nested dicts and lists (depth first), or None."""
  if isinstance(tree, dict) and key in tree:
    return tree[key]
  children = tree.values() if isinstance(tree, dict) else (
      tree if isinstance(tree, (list, tuple)) else ())
  return next((f for f in (first(c, key) for c in children) if f is not None), None)


def flat(tree, prefix=""):
  """{"a/b/kernel": array} of nested dicts."""
  if not isinstance(tree, dict):
    return {prefix: np.asarray(tree)}
  return {k: v for name, sub in tree.items() for k, v in flat(sub, f"{prefix}/{name}").items()}


def assert_gradients_close(workdir, reference_workdir, step):
  """Adam's first moments of the two runs' params at `step` agree.

  Gradients, not params: while the schedule warms up, the updates are far below any
  tolerance on the params (smoke: lr 0 at step 1, 1.5e-7 at step 2), and Adam's update
  is about lr x sign(gradient), which the rounding of sums over devices flips where a
  gradient is near 0. Adam's first moment is linear in the gradients, so its difference
  between device layouts is the rounding of sums split across devices, carried through
  the network: measured 3.6e-4 of its norm (4 devices in 2 processes against 1, step 2;
  1.6e-3 of the worst parameter's). A batch split wrongly across devices, a gradient
  averaged over the wrong count or a parameter's gradient left out is off by O(1):
  the bounds, 1e-2 overall and 0.1 per parameter, sit between the two.
  """
  a, b = (flat(first(state(w, step)["opt_state"], "mu"))
          for w in (workdir, reference_workdir))
  assert a.keys() == b.keys() and a
  va, vb = (np.concatenate([g[k].ravel() for k in sorted(a)]) for g in (a, b))
  assert np.linalg.norm(vb) > 0
  relative = np.linalg.norm(va - vb) / np.linalg.norm(vb)
  assert relative < 1e-2, relative
  for k in a:
    norm = np.linalg.norm(b[k])
    if norm:  # some parameters get no gradient in the first steps (gates at 0)
      relative = np.linalg.norm(a[k] - b[k]) / norm
      assert relative < 0.1, (k, relative)
    else:
      np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def assert_trees_close(a, b, atol):
  if isinstance(a, dict):
    assert a.keys() == b.keys()
    for k in a:
      assert_trees_close(a[k], b[k], atol)
  else:
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=atol)


def assert_trees_equal(a, b):
  if isinstance(a, dict):
    assert a.keys() == b.keys()
    for k in a:
      assert_trees_equal(a[k], b[k])
  else:
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_short_run_writes_checkpoints_events_and_eval_json(reference):
  stdout = (reference / "stdout.txt").read_text()
  assert f"workdir: {reference}" in stdout
  assert 4 in steps(reference) and 2 in steps(reference)
  assert sorted(losses(reference)) == [1, 2, 3, 4]
  acc = event_accumulator.EventAccumulator(str(reference / "tensorboard"),
                                           size_guidance={"images": 0, "audio": 0})
  acc.Reload()
  tags = acc.Tags()
  assert "eval/si_snri" in tags["scalars"]
  assert any(t.endswith("_mask") for t in tags["images"])
  assert any(t.endswith("_separated") for t in tags["audio"])
  summary = json.loads((reference / "eval" / "validation_4.json").read_text())
  assert summary["step"] == 4 and np.isfinite(summary["summary"]["all"]["si_snri"]["mean"])
  # What the score depends on besides the weights.
  assert (summary["cue"], summary["dataset"]) == ("lips", "synthav/tiny")
  assert summary["dataset_version"] == VERSION and summary["visual_init"] is None


def test_eight_devices_match_one_and_params_are_sharded(tiny_data_dir, reference,
                                                        tmp_path):
  # The reference's first 2 steps (its schedule does not depend on total_steps: smoke's
  # warmup is longer than any test run), with validation and a checkpoint at the last
  # step alone; two updates show a sharded gradient or optimizer state gone wrong.
  out8 = run(command(tmp_path, tiny_data_dir, "--config.total_steps=2",
                     "--config.eval_every_steps=100", "--config.checkpoint_every_steps=100",
                     "--config.mesh_shape=(2,2,2)"), devices=8)
  a, b = losses(reference), losses(tmp_path)
  assert sorted(a) == [1, 2, 3, 4] and sorted(b) == [1, 2]
  np.testing.assert_allclose([b[s] for s in b], [a[s] for s in b], rtol=2e-4)
  assert_trees_close(params(tmp_path, 2), params(reference, 2), atol=2e-5)
  assert_gradients_close(tmp_path, reference, 2)

  def param_line(stdout):
    line = next(l for l in stdout.splitlines() if l.startswith("params:"))
    total, on_device = (float(x) for x in re.findall(r"([\d.]+) MB", line))
    return total, on_device

  total1, device1 = param_line((reference / "stdout.txt").read_text())
  total8, device8 = param_line(out8.stdout)
  assert total1 == total8 == device1
  # fsdp 2 x tensor 2: sharded kernels hold a quarter per device; norms, biases and
  # convolutions stay replicated.
  assert device8 < 0.5 * total8, (device8, total8)


def test_sigkill_and_restart_gives_the_same_params_and_data(tiny_data_dir, reference,
                                                            tmp_path):
  proc = subprocess.Popen(command(tmp_path, tiny_data_dir, *REFERENCE), cwd=ROOT,
                          env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 300
  while time.time() < deadline and not (tmp_path / "checkpoints" / "2").exists():
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert 4 not in steps(tmp_path), "killed too late to test anything"
  out = run(command(tmp_path, tiny_data_dir, *REFERENCE))
  assert "resumed from" in out.stdout
  assert_trees_equal(params(tmp_path, 4), params(reference, 4))
  a, b = losses(reference), losses(tmp_path)
  np.testing.assert_allclose([b[s] for s in (3, 4)], [a[s] for s in (3, 4)], rtol=1e-6)


def test_sigterm_saves_the_current_step(tiny_data_dir, tmp_path):
  proc = subprocess.Popen(
      command(tmp_path, tiny_data_dir, "--config.total_steps=1000",
              "--config.eval_every_steps=1000", "--config.checkpoint_every_steps=1000"),
      cwd=ROOT, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True)
  deadline = time.time() + 300
  while time.time() < deadline and not (tmp_path / "checkpoints" / "1").exists():
    time.sleep(0.05)
  time.sleep(1.0)
  proc.send_signal(signal.SIGTERM)
  stdout, _ = proc.communicate(timeout=300)
  assert proc.returncode == 0
  line = next(l for l in stdout.splitlines() if l.startswith("SIGTERM: saved step"))
  step = int(line.split()[3])
  assert step > 1 and steps(tmp_path)[-1] == step


def test_truncated_latest_checkpoint_falls_back(tiny_data_dir, reference, tmp_path):
  copy_checkpoints(reference, tmp_path, (2, 4))
  for f in (tmp_path / "checkpoints" / "4" / "state").rglob("*"):
    if f.is_file():
      f.write_bytes(f.read_bytes()[: len(f.read_bytes()) // 2])
  out = run(command(tmp_path, tiny_data_dir, *REFERENCE))
  assert "resumed from" in out.stdout and "at step 2" in out.stdout
  assert (tmp_path / "checkpoints" / "4.damaged").is_dir()
  assert 4 in steps(tmp_path)
  # Steps 3 and 4 redone from step 2 give the reference's params.
  assert_trees_equal(params(tmp_path, 4), params(reference, 4))


def test_bad_input_gets_one_clear_line_and_keeps_the_workdir(tiny_data_dir, reference,
                                                             tmp_path):
  out = run(command(tmp_path, tiny_data_dir, "--config.no_such_key=3"), check=False)
  assert out.returncode != 0 and "no_such_key" in out.stderr

  out = run(command(tmp_path / "e", tiny_data_dir, "--config.eval_examples=1"),
            check=False)
  assert out.returncode == 1
  last = out.stderr.strip().splitlines()[-1]
  assert last.startswith("error:") and "eval_examples (1)" in last, last

  out = run(command(tmp_path / "c", tiny_data_dir, "--config.oracle_cue_steps=10",
                    "--config.model.decoder.activity_cue=False"), check=False)
  assert out.returncode == 1
  assert "model.decoder.activity_cue=True" in out.stderr.strip().splitlines()[-1]

  blocked = tmp_path / "a_file"
  blocked.write_text("")
  out = run(command(blocked / "run", tiny_data_dir), check=False)
  assert out.returncode == 1
  assert out.stderr.strip().splitlines()[-1].startswith("error: workdir")

  copy_checkpoints(reference, tmp_path / "w", (4,))
  before = sorted(p.name for p in (tmp_path / "w" / "checkpoints").iterdir())
  # Another model width: the saved params cannot fill this state.
  out = run(command(tmp_path / "w", tiny_data_dir, "--config.total_steps=6",
                    "--config.model.audio.d_model=48"), check=False)
  assert out.returncode == 1
  last = out.stderr.strip().splitlines()[-1]
  assert last.startswith("error: checkpoint step 4") and "does not fit" in last, last
  # The first param that differs is named with both shapes (all widths follow d_model).
  assert re.search(r"params\['\w+'\].* is \(32,\) there, \(48,\) here", last), last
  assert len(out.stderr.strip().splitlines()) < 20, out.stderr
  assert sorted(p.name for p in (tmp_path / "w" / "checkpoints").iterdir()) == before


def test_evaluate_mode_prints_a_table_per_speaker_count(tiny_data_dir, make_checkpoint):
  # An untrained checkpoint as the trainer writes it: the table's rows do not depend on
  # training, and a 6-speaker training run would compile a train step for nothing.
  workdir = pathlib.Path(make_checkpoint("configs/6spk.py:smoke", "evaluate_mode"))
  out = run(command(workdir, tiny_data_dir, "--mode=evaluate", "--config.test_examples=4",
                    config="configs/6spk.py:smoke"))
  rows = [l.split()[0] for l in out.stdout.splitlines() if l.strip()[:1].isdigit()
          or l.strip().startswith("all")]
  assert rows == ["2", "3", "4", "5", "6", "all"], out.stdout
  # No step holds validation scores, so the default (best) falls back to the newest.
  summary = json.loads((workdir / "eval" / "test_latest_0.json").read_text())
  assert summary["split"] == "test" and set(summary["summary"]) >= {"2", "6", "all"}
  assert summary["checkpoint_dir"] == str(workdir / "checkpoints")
  assert summary["cue"] == "lips" and summary["dataset_version"] == VERSION


def test_nonfinite_losses_stop_the_run_naming_step_and_checkpoint(tiny_data_dir, tmp_path):
  # A huge learning rate makes every loss after the first update non-finite.
  out = run(command(tmp_path, tiny_data_dir, "--config.total_steps=20",
                    "--config.learning_rate=1e30", "--config.warmup_steps=0",
                    "--config.max_nonfinite_steps=3", "--config.eval_every_steps=100",
                    "--config.checkpoint_every_steps=1"), check=False)
  assert out.returncode == 1
  last = out.stderr.strip().splitlines()[-1]
  assert "3 non-finite losses in a row up to step" in last, last
  assert "last good checkpoint: step" in last, last
  acc_losses = losses(tmp_path)
  assert np.isfinite(acc_losses[1]) and not np.isfinite(acc_losses[max(acc_losses)])
