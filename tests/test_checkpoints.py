"""Checkpoint retention: the newest `keep` steps and the best by a validation metric
(SI-SNRi, or SI-SNRi under the best slot assignment) survive."""

import grain
import numpy as np

from avsep_jax import checkpoints


def test_keeps_newest_and_best_and_chooses_the_best(tmp_path):
  mngr = checkpoints.manager(str(tmp_path), keep=2, save_every=1, async_save=False)
  scores = {1: 1.0, 2: 5.0, 3: None, 4: 2.0, 5: None, 6: 0.5, 7: None}
  it = iter(grain.MapDataset.range(10).to_iter_dataset())
  for step, score in scores.items():
    metrics = None if score is None else {"si_snri": score}
    checkpoints.save(mngr, step, {"x": np.full(3, step, np.float32)}, it,
                     metrics=metrics)
  mngr.wait_until_finished()
  assert sorted(mngr.all_steps()) == [2, 6, 7]
  assert checkpoints.choose_step(mngr, "best") == (2, "best")
  assert checkpoints.choose_step(mngr, "latest") == (7, "latest")
  mngr.close()

  # Reopened (as `--mode=evaluate` and `separate` do), the scores are still there.
  reopened = checkpoints.manager(str(tmp_path), keep=2, save_every=1)
  assert checkpoints.choose_step(reopened, "best") == (2, "best")
  reopened.close()


def test_unscored_run_falls_back_to_latest(tmp_path):
  mngr = checkpoints.manager(str(tmp_path), keep=3, save_every=1, async_save=False)
  assert checkpoints.choose_step(mngr, "best") == (None, "best")
  it = iter(grain.MapDataset.range(10).to_iter_dataset())
  for step in (1, 2):
    checkpoints.save(mngr, step, {"x": np.zeros(2, np.float32)}, it)
  mngr.wait_until_finished()
  assert checkpoints.choose_step(mngr, "best") == (2, "latest")
  mngr.close()


def test_best_by_the_best_assignment_metric(tmp_path):
  """A model whose slot order is arbitrary (audio only) ranks by si_snri_pit: the step
  best by plain SI-SNRi is let go."""
  mngr = checkpoints.manager(str(tmp_path), keep=1, save_every=1, async_save=False,
                             metric="si_snri_pit")
  scores = {1: (0.5, 0.6), 2: (-0.2, 2.0), 3: (0.1, 1.0), 4: (-0.5, 0.3)}
  it = iter(grain.MapDataset.range(10).to_iter_dataset())
  for step, (plain, pit) in scores.items():
    checkpoints.save(mngr, step, {"x": np.zeros(2, np.float32)}, it,
                     metrics={"si_snri": plain, "si_snri_pit": pit})
  mngr.wait_until_finished()
  assert sorted(mngr.all_steps()) == [2, 4]
  assert checkpoints.choose_step(mngr, "best", "si_snri_pit") == (2, "best")
  assert checkpoints.choose_step(mngr, "best", "si_snr") == (4, "latest")  # not stored
  mngr.close()


def test_config_round_trips_through_json_with_its_tuples():
  """A run's config.json (as main.py writes it) reads back equal to the config file's,
  tuples included (the model's shapes, the mesh)."""
  from avsep_jax import separate
  config, _ = separate.load_config(None, "configs/6spk.py:lite")
  back = checkpoints.config_from_json(config.to_json_best_effort())
  assert back.to_dict() == config.to_dict()
  assert isinstance(back.mesh_shape, tuple)
