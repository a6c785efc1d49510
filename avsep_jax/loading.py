"""Models ready to separate: the weights that ship with the code, or one step of a
training workdir, with the config that builds their model.

Everything that runs a trained model (`separate`, `stream`, `export`, distillation,
`pretrained`) loads it here, so none of them imports another's command-line tool (and
training hosts need no video libraries).
"""

import dataclasses
import importlib.util
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from avsep_jax import checkpoints
from avsep_jax import pretrained
from avsep_jax.model import AVSeparator


class CheckpointError(ValueError):
  """The checkpoint directory or its config cannot give a model."""


# --------------------------------------------------------------------------- Config


def load_config(workdir, config_arg=None):
  """The run's config: `config_arg` ('path.py[:variant]') or the workdir's config.json.

  Returns:
    (ConfigDict, where it came from).
  """
  if config_arg:
    path, _, variant = config_arg.partition(":")
    if not os.path.isfile(path):
      raise CheckpointError(f"no such config file: {path}")
    spec = importlib.util.spec_from_file_location("separate_config", path)
    module = importlib.util.module_from_spec(spec)
    try:
      spec.loader.exec_module(module)
      config = module.get_config(variant) if variant else module.get_config()
    except Exception as e:  # a config file can raise anything
      raise CheckpointError(f"config {config_arg} failed to load: "
                            f"{type(e).__name__}: {e}") from e
    return config, config_arg
  path = os.path.join(workdir, "config.json")
  if not os.path.isfile(path):
    raise CheckpointError(
        f"{workdir} has no config.json (runs before the trainer wrote one); pass the "
        f"run's config with --config=configs/<file>.py[:variant]")
  try:
    with open(path) as f:
      return checkpoints.config_from_json(f.read()), path
  except (OSError, ValueError) as e:
    raise CheckpointError(f"cannot read {path}: {e}") from e


def checkpoint_paths(path):
  """(workdir, checkpoints dir) from a training workdir or its `checkpoints/` folder."""
  path = os.path.abspath(path)
  if not os.path.isdir(path):
    raise CheckpointError(f"no such checkpoint directory: {path}")
  if os.path.isdir(os.path.join(path, "checkpoints")):
    return path, os.path.join(path, "checkpoints")
  if os.path.basename(path) == "checkpoints":
    return os.path.dirname(path), path
  raise CheckpointError(f"{path} is not a training workdir (it has no checkpoints/ "
                        f"folder)")


# ---------------------------------------------------------------------- Checkpoint


@dataclasses.dataclass
class LoadedModel:
  """A model ready to separate.

  Attributes:
    config: the run's config (`config.model` is the model's).
    params: the restored parameters.
    step: checkpoint step.
    which: 'best' or 'latest' (what was asked; 'latest' when no step has a metric),
      or 'shipped' for the weights that ship with the code.
    params_key: 'ema_params' or 'params'.
    checkpoint_dir: the checkpoints folder, or the shipped weights' file.
    config_source: where the config came from.
  """
  config: object
  params: object
  step: int
  which: str
  params_key: str
  checkpoint_dir: str
  config_source: str

  @property
  def num_slots(self):
    return int(self.config.model.num_speakers)


def _choose_step(ckpt_dir, which, metric):
  """(step, which) of the step with the best validation `metric`, or the newest."""
  mngr = checkpoints.manager(ckpt_dir, keep=1 << 30, save_every=1, async_save=False,
                             metric=metric)
  try:
    step, which = checkpoints.choose_step(mngr, which, metric)
    if step is None:
      raise CheckpointError(f"no checkpoint steps in {ckpt_dir}")
    return step, which
  finally:
    mngr.close()


def abstract_params(config):
  """The model's params as ShapeDtypeStructs (no compute, no data)."""
  m = config.model
  frames = 25
  samples = frames * m.sample_rate // m.video_fps
  variables = jax.eval_shape(
      AVSeparator(m).init, jax.random.key(0), jnp.zeros((1, samples), jnp.float32),
      jnp.zeros((1, m.num_speakers, frames, m.roi_size, m.roi_size), jnp.uint8),
      jnp.ones((1, m.num_speakers), bool))
  return nn.unbox(variables["params"])


def load_shipped(path=pretrained.DEFAULT):
  """The weights that ship with the code (`avsep_jax.pretrained`) as a LoadedModel."""
  try:
    config, params, card = pretrained.load(path)
  except (OSError, ValueError) as e:
    raise CheckpointError(str(e)) from e
  wanted = abstract_params(config)
  mismatch = checkpoints.params_mismatch(params, wanted)
  if mismatch:
    raise CheckpointError(f"{path} does not fit its own config: {mismatch}")
  params = jax.tree.map(lambda a, w: np.asarray(a, dtype=w.dtype), params, wanted)
  return LoadedModel(config=config, params=params, step=int(card["step"]),
                     which="shipped", params_key=card["params_key"],
                     checkpoint_dir=path, config_source=path)


def load_model(checkpoint, which="best", config_arg=None):
  """Restores the parameters of one checkpoint step (EMA ones when present).

  Args:
    checkpoint: a training workdir or its checkpoints/ folder; None for the weights
      that ship with the code (`load_shipped`; `which` does not apply and
      `config_arg` must be None).
    which: 'best' (highest validation SI-SNRi, else the newest) or 'latest'.
    config_arg: optional 'configs/<file>.py[:variant]' replacing the workdir's config.

  Returns:
    `LoadedModel`.

  Raises:
    CheckpointError: no such workdir, no config, no step, or params of another model.
  """
  if checkpoint is None:
    if config_arg:
      raise CheckpointError("--config describes a --checkpoint; the shipped weights "
                            "carry their own config")
    return load_shipped()
  workdir, ckpt_dir = checkpoint_paths(checkpoint)
  config, config_source = load_config(workdir, config_arg)
  # Runs from before `best_metric` existed ranked their steps by SI-SNRi.
  step, which = _choose_step(ckpt_dir, which, config.get("best_metric", "si_snri"))
  key, params = _restore_params(ckpt_dir, step, abstract_params(config),
                                f"the config from {config_source}")
  return LoadedModel(config=config, params=params, step=step, which=which,
                     params_key=key, checkpoint_dir=ckpt_dir,
                     config_source=config_source)


def _restore_params(ckpt_dir, step, wanted, what, module=None):
  """(key, numpy params) of one step: its EMA params when it has them, else its params;
  only `module`'s subtree when given. Checks the saved shapes against `wanted`
  (ShapeDtypeStructs) first, naming `what` they should fit."""
  path = os.path.join(ckpt_dir, str(step), "state")
  checkpointer = ocp.PyTreeCheckpointer()
  try:
    saved = checkpointer.metadata(path).item_metadata.tree
  except Exception as e:  # orbax raises many types for damaged or foreign steps
    raise CheckpointError(f"checkpoint step {step} in {ckpt_dir} cannot be read "
                          f"({type(e).__name__}: {str(e).splitlines()[0][:200]})") from e
  key = "ema_params" if saved.get("ema_params") else "params"
  if not saved.get(key):
    raise CheckpointError(f"checkpoint step {step} in {ckpt_dir} holds no params")
  saved = saved[key]
  if module is not None:
    if module not in saved:
      raise CheckpointError(f"checkpoint step {step} in {ckpt_dir} has no {module!r} "
                            f"(its modules: {sorted(saved)})")
    saved = saved[module]
  mismatch = checkpoints.params_mismatch(saved, wanted)
  if mismatch:
    raise CheckpointError(
        f"checkpoint step {step} in {ckpt_dir} does not fit {what}: {mismatch}")
  item = wanted if module is None else {module: wanted}
  as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item)
  try:
    restored = checkpointer.restore(path, args=ocp.args.PyTreeRestore(
        item={key: item}, restore_args={key: as_numpy}, partial_restore=True))
  except Exception as e:  # orbax raises many types for damaged steps
    raise CheckpointError(f"checkpoint step {step} in {ckpt_dir} cannot be read "
                          f"({type(e).__name__}: {str(e).splitlines()[0][:200]})") from e
  restored = restored[key] if module is None else restored[key][module]
  return key, jax.tree.map(lambda a, w: np.asarray(a, dtype=w.dtype), restored, wanted)


def load_visual_encoder(path, wanted, which="best"):
  """A trained visual encoder for a separator to start from (`config.visual_init`).

  Args:
    path: a lip-reading workdir (`configs/lipread.py`), or any separator's workdir or
      weights file: all of them hold a `visual_encoder`.
    wanted: the receiving model's `visual_encoder` params, as ShapeDtypeStructs.
    which: 'best' (by the run's own validation metric) or 'latest'.

  Returns:
    (numpy params, a description of where they came from).

  Raises:
    CheckpointError: nothing readable at `path`, no visual encoder in it, or one of
      other shapes (naming the first parameter that differs).
  """
  if os.path.isfile(path):
    loaded = load_shipped(path)
    if "visual_encoder" not in loaded.params:
      raise CheckpointError(f"{path} has no visual encoder (an audio-only model)")
    mismatch = checkpoints.params_mismatch(loaded.params["visual_encoder"], wanted)
    if mismatch:
      raise CheckpointError(f"the visual encoder in {path} does not fit this model's: "
                            f"{mismatch}")
    return loaded.params["visual_encoder"], f"{path} (step {loaded.step})"
  workdir, ckpt_dir = checkpoint_paths(path)
  config, _ = load_config(workdir)
  step, which = _choose_step(ckpt_dir, which, config.get("best_metric", "si_snri"))
  _, params = _restore_params(ckpt_dir, step, wanted, "this model's visual encoder",
                              module="visual_encoder")
  return params, f"{ckpt_dir} step {step} ({which})"


def make_separate_fn(loaded):
  """Jitted (mixture (B, T), video (B, S, F, H, W), mask (B, S)) -> (B, S, T)."""
  model = AVSeparator(loaded.config.model)
  params = jax.device_put(loaded.params)

  @jax.jit
  def apply(params, mixture, video, mask):
    out, _ = model.apply({"params": params}, mixture, video, mask)
    return out

  return lambda mixture, video, mask: np.asarray(apply(params, mixture, video, mask))
