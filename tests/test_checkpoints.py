"""Checkpoint retention: the newest `keep` steps and the best by SI-SNRi survive."""

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
