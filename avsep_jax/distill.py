r"""Knowledge distillation: a trained, frozen teacher guides a smaller student.

  python -m avsep_jax.main --config=configs/distill.py:lite --workdir=DIR \
      --config.teacher_workdir=TEACHER_WORKDIR

One jitted step runs the teacher and the student on the same batch and updates the
student on a weighted sum of terms, each averaged over real speakers:

  supervised  the trainer's loss against the true sources (`train.separation_loss`)
  output      negative SI-SNR (dB) of the student's waveforms to the teacher's
  mask        mean absolute difference of the main-scale masks
  feature     squared error of the student's fused audio-visual tokens, mapped to the
              teacher's width by learned projections, relative to the teacher tokens'
              energy (mean over `config.distill.features`)

Weights are `config.distill.*_weight`; 0 switches a term off and skips its compute.

The teacher is a training workdir: its model config comes from its `config.json` (or
`config.teacher_config`); its best (EMA when kept) parameters are placed on the
student's mesh by the same logical-axis rules, enter the step as an input, never leave
it as an output and have no optimizer state. The student's state is the trainer's
`TrainState` plus the projections, so its checkpoints read back wherever a trainer's do
(`separate`, `export`); checkpoints, validation, summaries and SIGTERM handling are the
trainer's own (`train.fit`).
"""

import dataclasses
import functools
import os
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from avsep_jax import parallel
from avsep_jax import loading
from avsep_jax import signal
from avsep_jax import train
from avsep_jax.model import AVSeparator
from avsep_jax.model import layers

# Feature points, keys of the model's aux dict: the fusion's outputs, which the decoder
# reads (the audio memory, (B, T, d), and each slot's query stream, (B, S, T, d)).
FEATURES = ("audio_tokens", "speaker_tokens")
# Model settings a teacher shares with its student: both read the same batches.
_SHARED_INPUTS = ("num_speakers", "sample_rate", "video_fps", "roi_size")
_WEIGHTS = ("supervised_weight", "output_weight", "mask_weight", "feature_weight")


@flax.struct.dataclass
class DistillState(train.TrainState):
  """The student's TrainState plus `projections` ({feature: Dense params}, student
  width -> teacher width), trained with it: `opt_state` covers both."""

  projections: Any

  @property
  def trainable(self):
    return {"params": self.params, "projections": self.projections}

  def with_trainable(self, trainable):
    return self.replace(params=trainable["params"],
                        projections=trainable["projections"])


@dataclasses.dataclass(frozen=True)
class Teacher:
  """A trained model restored for distillation.

  Attributes:
    model: its AVSeparator.
    params: its parameters, sharded on the student's mesh.
    shardings: their NamedShardings.
    config: the teacher run's config (`config.model` is its model's).
    source: "step N (best|latest) of DIR", for the log.
  """

  model: AVSeparator
  params: Any
  shardings: Any
  config: ml_collections.ConfigDict
  source: str


class FeatureProjections(nn.Module):
  """One linear map per feature point to the teacher's token width.

  Attributes:
    names: feature points (keys of the input dict).
    width: the teacher's token width.
  """

  names: tuple[str, ...]
  width: int

  @nn.compact
  def __call__(self, features):
    """{name: (..., d_student)} -> {name: (..., width)} float32 for each of `names`."""
    return {name: layers.dense(self.width, (layers.EMBED, None), name=name,
                               dtype=jnp.float32, param_dtype=jnp.float32)(
                                   features[name].astype(jnp.float32))
            for name in self.names}


# ---------------------------------------------------------------------------- Losses


def _speaker_mean(values, speaker_mask):
  """(B, S) values -> their mean over real speakers."""
  count = jnp.maximum(jnp.sum(speaker_mask), 1)
  return jnp.sum(jnp.where(speaker_mask, values, 0.0)) / count


def _common_frames(student, teacher):
  """Both (..., T, d) arrays cut to their common frame count.

  A causal student frames T // hop frames, a centred teacher 1 + T // hop; frame t
  of either ends within a quarter hop of the other's, so the first frames pair up.
  """
  t = min(student.shape[-2], teacher.shape[-2])
  # Complex masks (the band separator's) stay complex: a float32 cast would keep only
  # their real parts.
  complex_ = jnp.iscomplexobj(student) or jnp.iscomplexobj(teacher)
  dtype = jnp.complex64 if complex_ else jnp.float32
  return student[..., :t, :].astype(dtype), teacher[..., :t, :].astype(dtype)


def output_loss(student, teacher, speaker_mask):
  """Negative SI-SNR (dB) of the student's waveforms to the teacher's.

  Args:
    student, teacher: (B, S, T) waveforms.
    speaker_mask: (B, S) bool.

  Returns:
    Scalar, mean over real speakers.
  """
  return _speaker_mean(-signal.si_snr(student, teacher), speaker_mask)


def mask_loss(student, teacher, speaker_mask):
  """Mean absolute difference (the modulus, for complex masks) of masks (B, S, T_s, F)
  and (B, S, T_t, F) over their common frames, averaged over real speakers."""
  student, teacher = _common_frames(student, teacher)
  return _speaker_mean(jnp.mean(jnp.abs(student - teacher), axis=(-2, -1)),
                       speaker_mask)


def feature_loss(projected, teacher, speaker_mask):
  """||projected - teacher||^2 / ||teacher||^2 per example (audio tokens) or speaker.

  Relative, so a term's weight means the same whatever the teacher's token scale.

  Args:
    projected: (B, T_s, d) or (B, S, T_s, d), the student's tokens at the teacher's
      width d.
    teacher: (B, T_t, d) or (B, S, T_t, d).
    speaker_mask: (B, S) bool.

  Returns:
    Scalar: mean over examples, or over real speakers for per-speaker tokens.
  """
  projected, teacher = _common_frames(projected, teacher)
  error = (jnp.sum((projected - teacher) ** 2, axis=(-2, -1))
           / (jnp.sum(teacher ** 2, axis=(-2, -1)) + 1e-8))
  if error.ndim == 1:
    return jnp.mean(error)
  return _speaker_mean(error, speaker_mask)


def distillation_loss(config, batch, student, teacher):
  """The weighted sum of the terms whose weight is not 0.

  Args:
    config: the run's config (`distill.*`, and the trainer's loss settings).
    batch: the global batch (sources (B, S, T), speaker_mask (B, S), ...).
    student: (waveforms, aux, projected features) of the student.
    teacher: (waveforms, aux) of the teacher.

  Returns:
    (total, {term: scalar}); the supervised term's own parts as `supervised_<part>`.
  """
  w = config.distill
  (out, aux, projected), (t_out, t_aux) = student, teacher
  speaker_mask = batch["speaker_mask"]
  main_scale = str(config.model.stft_scales[0][0])
  terms, parts = {}, {}
  if w.supervised_weight:
    terms["supervised"], supervised = train.separation_loss(config, out, aux, batch)
    parts.update({f"supervised_{k}": v for k, v in supervised.items()})
  if w.output_weight:
    terms["output"] = output_loss(out, t_out, speaker_mask)
  if w.mask_weight:
    terms["mask"] = mask_loss(aux["masks"][main_scale], t_aux["masks"][main_scale],
                              speaker_mask)
  if w.feature_weight:
    for name in w.features:
      parts[f"feature_{name}"] = feature_loss(projected[name], t_aux[name],
                                              speaker_mask)
    terms["feature"] = sum(parts[f"feature_{n}"] for n in w.features) / len(w.features)
  total = sum(w[f"{k}_weight"] * v for k, v in terms.items())
  return total, terms | parts


# ----------------------------------------------------------------------------- Setup


def check_distill_config(config):
  """Raises ValueError naming the first distillation setting that cannot run."""
  if not config.get("teacher_workdir"):
    raise ValueError("distillation needs a teacher: pass "
                     "--config.teacher_workdir=DIR (a training workdir)")
  w = config.distill
  if any(w[k] < 0 for k in _WEIGHTS):
    raise ValueError(f"distill weights must be >= 0, got "
                     f"{ {k: w[k] for k in _WEIGHTS} }")
  if not any(w[k] for k in _WEIGHTS):
    raise ValueError("every distill.*_weight is 0: nothing to train on")
  unknown = set(w.features) - set(FEATURES)
  if unknown or (w.feature_weight and not w.features):
    raise ValueError(f"distill.features must name some of {FEATURES}, got "
                     f"{tuple(w.features)}")


def load_teacher(config, mesh, rules) -> Teacher:
  """Restores the teacher of `config.teacher_workdir` onto `mesh`.

  Every process reads the parameters and keeps only its own devices' shards, so a
  multi-host run needs the workdir on every host (as the trainer's checkpoints do).

  Raises:
    ValueError: no teacher workdir, no config, no checkpoint, parameters that do not
      fit the teacher's config, or a teacher that reads other inputs than the student.
  """
  workdir, config_arg = config.teacher_workdir, config.get("teacher_config")
  try:
    if not config_arg:
      root, _ = loading.checkpoint_paths(workdir)
      if not os.path.isfile(os.path.join(root, "config.json")):
        raise loading.CheckpointError(
            f"{root} has no config.json: name the teacher's config with "
            f"--config.teacher_config=configs/<file>.py[:variant]")
    loaded = loading.load_model(workdir, config.get("teacher_which", "best"),
                                 config_arg)
  except loading.CheckpointError as e:
    raise ValueError(f"teacher: {e}") from None
  t, s = loaded.config.model, config.model
  for key in _SHARED_INPUTS:
    if t[key] != s[key]:
      raise ValueError(f"teacher and student must read the same batches: the teacher's "
                       f"model.{key} is {t[key]}, the student's {s[key]}")
  w = config.distill
  if ((w.mask_weight or w.feature_weight)
      and tuple(t.stft_scales[0]) != tuple(s.stft_scales[0])):
    raise ValueError(f"mask and feature terms pair frames of the main STFT scale, which "
                     f"differs (teacher {tuple(t.stft_scales[0])}, student "
                     f"{tuple(s.stft_scales[0])}): set their weights to 0")

  model = AVSeparator(t)
  example = train.init_batch(config)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    boxed = jax.eval_shape(lambda r: model.init(
        r, example["mixture"], example["video"], example["speaker_mask"])["params"],
                           jax.random.key(0))
  shardings = parallel.state_shardings(boxed, mesh, rules)
  params = jax.tree.map(
      lambda x, s: jax.make_array_from_callback(x.shape, s, lambda index: x[index]),
      loaded.params, shardings)
  return Teacher(model=model, params=params, shardings=shardings, config=loaded.config,
                 source=f"step {loaded.step} ({loaded.which}, {loaded.params_key}) of "
                        f"{loaded.checkpoint_dir}")


def create_distill_state(config, student, projections, optimizer, mesh, rules):
  """The student's initial state, created sharded (see `train.create_train_state`).

  The student's parameters come from the same key as the trainer's, so a distilled
  and a plainly trained student of one config start from the same weights.

  Returns:
    (state, abstract, shardings) of a `DistillState`.
  """
  example = train.init_batch(config)
  width = config.model.audio.d_model  # both feature points have the audio width

  def init_state(rng):
    params = student.init(rng, example["mixture"], example["video"],
                          example["speaker_mask"])["params"]
    tokens = {name: jnp.zeros((1, width), jnp.float32) for name in projections.names}
    proj = projections.init(jax.random.fold_in(rng, 1), tokens).get("params", {})
    return DistillState(
        step=jnp.zeros((), jnp.int32), params=params,
        opt_state=optimizer.init({"params": params, "projections": proj}),
        ema_params=params if config.ema_decay else None,
        bad_steps=jnp.zeros((), jnp.int32), projections=proj)

  return train.shard_init(init_state, jax.random.key(config.seed), mesh, rules)


def make_distill_step(config, student, projections, teacher, optimizer, schedule,
                      shardings, batch_sharding):
  """One jitted update of the student with donated state:
  (state, teacher params, batch) -> (state, metrics).

  The teacher runs as at inference (no dropout; its own lips give the slot cue) and
  outside the differentiated function: its parameters get no gradient.
  """

  @functools.partial(jax.jit, in_shardings=(shardings, teacher.shardings, batch_sharding),
                     out_shardings=(shardings, None), donate_argnums=(0,))
  def distill_step(state, teacher_params, batch):
    rng, cue_rng = jax.random.split(
        jax.random.fold_in(jax.random.key(config.seed), state.step))
    cue, share = train.curriculum_cue(config, batch, state.step, cue_rng)
    inputs = (batch["mixture"], batch["video"], batch["speaker_mask"])
    teacher_out = teacher.model.apply({"params": teacher_params}, *inputs)

    def loss_fn(trainable):
      out, aux = student.apply({"params": trainable["params"]}, *inputs, train=True,
                               rngs={"dropout": rng}, activity_cue=cue,
                               oracle_share=share)
      projected = projections.apply({"params": trainable["projections"]}, aux)
      return distillation_loss(config, batch, (out, aux, projected), teacher_out)

    (loss, parts), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.trainable)
    state, metrics = train.apply_gradients(config, optimizer, schedule, state, loss,
                                           grads)
    return state, metrics | {f"loss_{k}": v for k, v in parts.items()}

  return distill_step


# ------------------------------------------------------------------------------ Loop


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str):
  """Distills `config.teacher_workdir` into the student `config.model` in `workdir`,
  resuming from the workdir's latest checkpoint."""
  # ----------------------------------------------------------------------- Mesh
  train.check_config(config)
  check_distill_config(config)
  mesh, rules, batch_sharding = train.make_mesh(config)
  is_main = jax.process_index() == 0

  # -------------------------------------------------------------------- Teacher
  teacher = load_teacher(config, mesh, rules)
  if is_main:
    print(f"teacher: {teacher.source}; {parallel.nbytes(teacher.params) / 1e6:.3f} MB, "
          f"{parallel.nbytes_on(teacher.params, jax.devices()[0]) / 1e6:.3f} MB on "
          f"device 0")

  # ---------------------------------------------------------------------- Input
  data_dir = train.ensure_dataset(config)

  # ---------------------------------------------------------------------- Model
  student = AVSeparator(config.model)
  names = tuple(config.distill.features) if config.distill.feature_weight else ()
  projections = FeatureProjections(names, teacher.config.model.audio.d_model)
  optimizer, schedule = train.make_optimizer(config)

  # ---------------------------------------------------------------------- Shard
  state, abstract, shardings = create_distill_state(config, student, projections,
                                                    optimizer, mesh, rules)
  if is_main:
    print(f"params: {parallel.nbytes(state.params) / 1e6:.3f} MB, "
          f"{parallel.nbytes_on(state.params, jax.devices()[0]) / 1e6:.3f} MB on "
          f"device 0 (mesh {dict(mesh.shape)})")

  # --------------------------------------------------------------------- Update
  distill_step = make_distill_step(config, student, projections, teacher, optimizer,
                                   schedule, shardings, batch_sharding)
  predict = train.make_predict(config, student, shardings.params, batch_sharding)

  def train_step(state, batch):
    return distill_step(state, teacher.params, batch)

  return train.fit(config, workdir, batch_sharding, state, abstract, train_step,
                   train.train_input(config, data_dir, batch_sharding),
                   train.separation_validator(config, workdir, data_dir, batch_sharding,
                                              predict))
