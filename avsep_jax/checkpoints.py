"""Orbax checkpoints of the train state together with the grain iterator state.

Keeps the last `keep` steps and the best by validation SI-SNRi; restores the newest step
that reads back, reporting damaged ones, so a crash mid-save costs one interval.
"""

import logging
import os

import grain
import orbax.checkpoint as ocp


def manager(directory, *, keep: int, save_every: int, async_save: bool = True):
  """A CheckpointManager keeping the `keep` newest steps and the best by SI-SNRi."""
  # With best_fn alone, max_to_keep keeps the best N and can delete the newest step;
  # this policy keeps both.
  policy = ocp.checkpoint_managers.AnyPreservationPolicy([
      ocp.checkpoint_managers.LatestN(keep),
      ocp.checkpoint_managers.BestN(get_metric_fn=lambda m: m["si_snri"], n=1),
  ])
  options = ocp.CheckpointManagerOptions(
      save_interval_steps=save_every, preservation_policy=policy,
      enable_async_checkpointing=async_save)
  return ocp.CheckpointManager(directory, options=options)


def save(mngr, step, state, data_iter, *, metrics=None, force=False):
  """Saves state + iterator position; returns whether a save started."""
  return mngr.save(
      step,
      args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                              data=grain.checkpoint.CheckpointSave(data_iter)),
      metrics=metrics, force=force)


def restore_latest(mngr, abstract_state, make_iter):
  """Restores the newest readable step.

  Args:
    mngr: the CheckpointManager.
    abstract_state: target pytree of ShapeDtypeStructs (with shardings).
    make_iter: () -> a fresh data iterator to position.

  Returns:
    (step, state, data_iter), or (None, None, None) when there is no checkpoint.

  Raises:
    ValueError: steps exist but none reads back (e.g. written by another config).
  """
  steps = sorted(mngr.all_steps(), reverse=True)
  errors = []
  for step in steps:
    data_iter = make_iter()
    try:
      restored = mngr.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state),
          data=grain.checkpoint.CheckpointRestore(data_iter)))
    except Exception as e:  # orbax raises many types for damaged or foreign steps
      logging.warning("checkpoint step %d unreadable (%s: %s); trying an older one",
                      step, type(e).__name__, str(e).splitlines()[0][:200])
      errors.append(f"step {step}: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
      continue
    if errors:
      _set_aside(mngr, [s for s in steps if s > step])
      logging.warning("resumed from step %d; newer damaged steps: %s", step, errors)
    return step, restored["state"], restored["data"]
  if steps:
    raise ValueError(f"no checkpoint in {mngr.directory} can be restored for this "
                     f"config: {errors[0]}")
  return None, None, None


def restore_state(mngr, step, abstract_state):
  """The train state of one step, without the data iterator (for evaluation)."""
  restored = mngr.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract_state)))
  return restored["state"]


def _set_aside(mngr, steps):
  """Renames damaged step directories to `<step>.damaged`: kept for inspection, out of
  the manager's way (the run will save those step numbers again)."""
  for step in steps:
    path = os.path.join(str(mngr.directory), str(step))
    os.replace(path, f"{path}.damaged")
  mngr.reload()
