"""Orbax checkpoints of the train state together with the data iterator's position
(a grain iterator's state, or the on-device mixer's step).

Keeps the last `keep` steps and the best by a validation metric (SI-SNRi, or SI-SNRi
under the best slot assignment for models whose slot order is arbitrary); restores the
newest step that reads back, reporting damaged ones, so a crash mid-save costs one
interval.
"""

import functools
import json
import logging
import math
import os

import flax
import grain
import jax
import ml_collections
import orbax.checkpoint as ocp


def config_from_json(text):
  """The ConfigDict a run's `config.json` (or a weights file's config) holds.

  JSON has no tuples, so its lists come back as the tuples the config files use
  (shapes such as `mesh_shape` and `channels` are tuples there).
  """
  def as_tuples(x):
    if isinstance(x, list):
      return tuple(as_tuples(v) for v in x)
    if isinstance(x, dict):
      return {k: as_tuples(v) for k, v in x.items()}
    return x
  return ml_collections.ConfigDict(as_tuples(json.loads(text)))


def _score(metrics, metric):
  # Steps saved between evaluations carry no score: they rank below every scored
  # step, so BestN can let them go (it keeps steps it cannot rank otherwise).
  return metrics.get(metric, -math.inf)


def manager(directory, *, keep: int, save_every: int, async_save: bool = True,
            metric: str = "si_snri"):
  """A CheckpointManager keeping the `keep` newest steps and the best by `metric`.

  `metric` is a key of the metrics `save` stores: 'si_snri', or 'si_snri_pit' for a
  model whose slot order is arbitrary (the audio-only baseline). `best_step()` is the
  step where it is highest (None before any evaluation); `best_fn` is what makes Orbax
  record each step's metrics.
  """
  score = functools.partial(_score, metric=metric)
  # With best_fn alone, max_to_keep keeps the best N and can delete the newest step;
  # this policy keeps both.
  policy = ocp.checkpoint_managers.AnyPreservationPolicy([
      ocp.checkpoint_managers.LatestN(keep),
      ocp.checkpoint_managers.BestN(get_metric_fn=score, n=1),
  ])
  options = ocp.CheckpointManagerOptions(
      save_interval_steps=save_every, preservation_policy=policy,
      best_fn=score, best_mode="max", enable_async_checkpointing=async_save)
  return ocp.CheckpointManager(directory, options=options)


def choose_step(mngr, which="best", metric="si_snri"):
  """(step, which) of the step where `metric` is highest, or of the newest when `which`
  is 'latest' or no step has that metric (runs shorter than one evaluation, or saved
  before the metric was stored); (None, which) if empty."""
  steps = sorted(mngr.all_steps())
  if not steps:
    return None, which
  if which == "best":
    scored = [(m[metric], s) for s in steps
              if isinstance(m := mngr.metrics(s), dict) and metric in m]
    if scored:
      return max(scored)[1], "best"
  return steps[-1], "latest"


def _is_grain(data_iter):
  return isinstance(data_iter, (grain.DatasetIterator, grain.DataLoaderIterator))


def _data_save_args(data_iter):
  """Grain iterators through grain's handler; any other iterator (the on-device
  mixer, `avsep_jax.data.device_mix`) as the JSON of its `get_state()`."""
  if _is_grain(data_iter):
    return grain.checkpoint.CheckpointSave(data_iter)
  return ocp.args.JsonSave(data_iter.get_state())


_KINDS = {"grain": "a grain iterator's position (config.input='grain')",
          "json": "an on-device mixer's step (config.input='device')"}


def _saved_data_kind(mngr, step):
  """'grain' or 'json': which handler wrote the step's iterator state (None if
  neither file is there: the restore reports the damage)."""
  path = os.path.join(str(mngr.directory), str(step), "data")
  names = os.listdir(path) if os.path.isdir(path) else []
  if any(n.startswith("process_") for n in names):
    return "grain"
  return "json" if "metadata" in names else None


def save(mngr, step, state, data_iter, *, metrics=None, force=False):
  """Saves state + iterator position (+ validation metrics, {"si_snri": dB,
  "si_snri_pit": dB}, when evaluated); returns whether a save started.

  `data_iter` is a grain iterator or any object with a JSON-able `get_state()` and a
  `set_state(state)` (the on-device mixer, whose state is its step).
  """
  return mngr.save(
      step,
      args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                              data=_data_save_args(data_iter)),
      metrics=metrics or {}, force=force)


def restore_latest(mngr, abstract_state, make_iter):
  """Restores the newest readable step.

  Args:
    mngr: the CheckpointManager.
    abstract_state: target pytree of ShapeDtypeStructs (with shardings).
    make_iter: () -> a fresh data iterator to position.

  Returns:
    (step, state, data_iter), or (None, None, None) when there is no checkpoint.

  Raises:
    ValueError: a step holds arrays of other shapes (written by another config) or
      the position of another kind of iterator (another `config.input`), or steps
      exist but none reads back.
  """
  steps = sorted(mngr.all_steps(), reverse=True)
  errors = []
  for step in steps:
    mismatch = _shape_mismatch(mngr, step, abstract_state)
    if mismatch:
      raise ValueError(f"checkpoint step {step} in {mngr.directory} does not fit this "
                       f"config (another model config?): {mismatch}")
    data_iter = make_iter()
    kind = "grain" if _is_grain(data_iter) else "json"
    saved = _saved_data_kind(mngr, step)
    if saved and saved != kind:
      raise ValueError(
          f"checkpoint step {step} in {mngr.directory} holds {_KINDS[saved]}, this run "
          f"needs {_KINDS[kind]}: resume with the config.input that wrote it")
    data_args = (grain.checkpoint.CheckpointRestore(data_iter) if kind == "grain"
                 else ocp.args.JsonRestore())
    try:
      restored = mngr.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state), data=data_args))
    except Exception as e:  # orbax raises many types for damaged or foreign steps
      logging.warning("checkpoint step %d unreadable (%s: %s); trying an older one",
                      step, type(e).__name__, str(e).splitlines()[0][:200])
      errors.append(f"step {step}: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
      continue
    if errors:
      _set_aside(mngr, [s for s in steps if s > step])
      logging.warning("resumed from step %d; newer damaged steps: %s", step, errors)
    if kind == "json":
      data_iter.set_state(restored["data"])
    return step, restored["state"], data_iter
  if steps:
    raise ValueError(f"no checkpoint in {mngr.directory} can be read: {errors[0]}")
  return None, None, None


def restore_params(mngr, step, target, key="params"):
  """One step's `key` ("params" or "ema_params") alone, for evaluation.

  Args:
    target: the params' ShapeDtypeStructs (with shardings).

  The rest of the state (optimizer moments, a distillation's projections) is not
  read, so any trainer's checkpoint of the same model restores.
  """
  item = {key: target}
  restored = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
      item=item, restore_args=ocp.checkpoint_utils.construct_restore_args(item),
      partial_restore=True)))
  return restored["state"][key]


def _shape_mismatch(mngr, step, abstract_state):
  """The first parameter whose saved shape differs from `abstract_state`'s, in words,
  or None. Unreadable metadata returns None: the restore reports the damage.

  Checked before restoring because Orbax's failed reads print pages of tracebacks
  from background threads.
  """
  path = os.path.join(str(mngr.directory), str(step), "state")
  try:
    saved = ocp.PyTreeCheckpointer().metadata(path).item_metadata.tree["params"]
  except Exception:  # damaged metadata: let the restore attempt report it
    return None
  return params_mismatch(saved, flax.serialization.to_state_dict(abstract_state.params))


def params_mismatch(saved, wanted):
  """The first leaf of `wanted` missing from `saved` or of another shape, in words
  ("params['a']['b'] is (32,) there, (48,) here"), or None when all fit. Top-level
  modules that differ are named first: they mean another architecture (a 'decoder',
  the magnitude-mask head, where the config has the band 'separator')."""
  if isinstance(saved, dict) and isinstance(wanted, dict):
    there, here = sorted(set(saved) - set(wanted)), sorted(set(wanted) - set(saved))
    if here:
      return (f"the checkpoint has modules {there} where the config has {here}: "
              "another architecture; load it with the config it was trained with")
  saved_shapes = {jax.tree_util.keystr(k): tuple(v.shape)
                  for k, v in jax.tree_util.tree_leaves_with_path(saved)}
  for key, leaf in jax.tree_util.tree_leaves_with_path(wanted):
    name = jax.tree_util.keystr(key)
    if name not in saved_shapes:
      return f"params{name} is not in the checkpoint"
    if saved_shapes[name] != tuple(leaf.shape):
      return f"params{name} is {saved_shapes[name]} there, {tuple(leaf.shape)} here"
  return None


def _set_aside(mngr, steps):
  """Renames damaged step directories to `<step>.damaged`: kept for inspection, out of
  the manager's way (the run will save those step numbers again)."""
  for step in steps:
    path = os.path.join(str(mngr.directory), str(step))
    os.replace(path, f"{path}.damaged")
  mngr.reload()
