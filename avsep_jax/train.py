"""train_and_evaluate(config, workdir): the training loop, top to bottom.

Sections: Mesh, Input, Model, Shard, Update, then `fit`'s Checkpoint, Evals, Loop,
which other trainers (`avsep_jax.distill`) share. Everything a run writes goes to
`workdir`: Orbax step directories (train state + data iterator), a TensorBoard events
file and evaluation JSON.
"""

import functools
import os
import signal as os_signal
import time
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import tqdm

from avsep_jax import checkpoints
from avsep_jax import evaluation
from avsep_jax import loading
from avsep_jax import parallel
from avsep_jax import signal
from avsep_jax import summaries
from avsep_jax import visual_cache
from avsep_jax.data import device_mix
from avsep_jax.data import pipeline
from avsep_jax.data import sources
from avsep_jax.data.synthav import builder as synthav_builder
from avsep_jax.model import AVSeparator
from avsep_jax.model import alignment as alignment_lib


@flax.struct.dataclass
class TrainState:
  """Everything the update step changes. `bad_steps` counts non-finite steps in a row."""

  step: jax.Array
  params: Any
  opt_state: Any
  ema_params: Any
  bad_steps: jax.Array

  @property
  def trainable(self):
    """What the optimizer updates (and `opt_state` holds moments of)."""
    return self.params

  def with_trainable(self, trainable):
    return self.replace(params=trainable)


class NonFiniteLossError(RuntimeError):
  """Too many non-finite losses in a row."""


def ensure_dataset(config) -> str:
  """Builds SynthAV unless it is already prepared (then a no-op); returns the data dir."""
  data_dir = os.path.expanduser(config.get("data_dir") or "~/tensorflow_datasets")
  family, name = sources.parse_name(config.dataset)
  if family == "synth_av":
    synthav_builder.build(name, data_dir)
  return data_dir


def mix_config(config, num_speakers=None, same_count_per=None) -> pipeline.MixConfig:
  """Mixtures of `num_speakers` (or the config's range), padded to the model's slots;
  `same_count_per` consecutive ones share a speaker count (see `compact_slots`)."""
  noise = config.get("noise_snr_db")
  return pipeline.MixConfig(
      min_speakers=num_speakers or config.min_speakers,
      max_speakers=num_speakers or config.max_speakers,
      slots=config.model.num_speakers, segment_seconds=config.segment_seconds,
      gain_db=tuple(config.gain_db), noise_snr_db=tuple(noise) if noise else None,
      same_count_per=same_count_per)


# Batch entries with a speaker-slot axis (axis 1).
SLOT_KEYS = ("sources", "video", "visual_features", "speaker_mask", "av_offset")


def compact_slots(batch):
  """The batch without the slots that none of its mixtures uses: (B, S, ...) ->
  (B, n, ...), n its most speakers. With `config.compact_slots` every training batch
  has one speaker count, so padded slots cost nothing; the step compiles once per n.
  Exact: absent slots never change the others' outputs (tests/model/test_avsep.py)."""
  n = max(1, int(np.max(np.sum(batch["speaker_mask"], axis=1))))
  return {k: v[:, :n] if k in SLOT_KEYS else v for k, v in batch.items()}


def make_optimizer(config):
  """(AdamW after global-norm clipping, the learning-rate schedule).

  With `config.visual_init` the visual encoder keeps its own rate: frozen when
  `config.visual_learning_rate` is 0 (its updates are zero, and `frozen_visual` stops
  its gradient, so no backward pass runs through it), else that peak rate on the same
  warmup and cosine.
  """
  def schedule_to(peak):
    return optax.warmup_cosine_decay_schedule(
        0.0, peak, config.warmup_steps, max(config.total_steps, config.warmup_steps + 1))

  schedule = schedule_to(config.learning_rate)
  adamw = optax.adamw(schedule, weight_decay=config.weight_decay)
  if config.get("visual_init"):
    visual_rate = config.get("visual_learning_rate", 0.0)
    visual = (optax.adamw(schedule_to(visual_rate), weight_decay=config.weight_decay)
              if visual_rate else optax.set_to_zero())
    adamw = optax.multi_transform(
        {"rest": adamw, "visual": visual},
        lambda params: {k: "visual" if k == "visual_encoder" else "rest" for k in params})
  return optax.chain(optax.clip_by_global_norm(config.grad_clip_norm), adamw), schedule


def is_frozen_visual(config) -> bool:
  """Whether the visual encoder is pretrained and frozen (`config.visual_init` with
  `visual_learning_rate` 0)."""
  return bool(config.get("visual_init")) and not config.get("visual_learning_rate", 0.0)


def frozen_visual(config, params):
  """`params` with the visual encoder's gradient stopped when it is pretrained and
  frozen (`config.visual_init` with `visual_learning_rate` 0): XLA then drops the
  encoder's backward pass, about a third of `lite`'s step."""
  if not is_frozen_visual(config):
    return params
  return params | {"visual_encoder": jax.lax.stop_gradient(params["visual_encoder"])}


def load_visual_init(config, state, shardings):
  """`state` with its visual encoder (params and EMA) from `config.visual_init`, or
  `state` itself when that is unset. The optimizer's moments start at zero either way."""
  path = config.get("visual_init")
  if not path:
    return state
  if "visual_encoder" not in state.params:
    raise ValueError("visual_init needs a model with a visual encoder "
                     "(audio_only has none)")
  wanted = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                        state.params["visual_encoder"])
  params, source = loading.load_visual_encoder(os.path.expanduser(path), wanted)
  params = jax.device_put(params, shardings.params["visual_encoder"])
  rate = config.get("visual_learning_rate", 0.0)
  if jax.process_index() == 0:
    print(f"visual encoder from {source}, "
          + (f"fine-tuned at peak rate {rate:g}" if rate else "frozen"))
  state = state.replace(params=state.params | {"visual_encoder": params})
  if config.ema_decay:
    state = state.replace(ema_params=state.ema_params | {"visual_encoder": params})
  return state


def separation_loss(config, out, aux, batch):
  """Negative SI-SNR (+ weighted MR-STFT and lip-activity losses) over real speakers.

  Returns the total and its parts {name: scalar}, each averaged over real speakers.
  """
  mask = batch["speaker_mask"]
  parts = {"neg_si_snr": -signal.si_snr(out, batch["sources"])}
  if config.stft_loss_weight:
    parts["stft"] = signal.multi_resolution_stft_loss(out, batch["sources"])
  if config.activity_loss_weight:
    m = config.model
    parts["activity"] = signal.activity_loss(
        aux["activity_logits"],
        signal.activity_targets(batch["sources"], m.sample_rate // m.video_fps))
  if config.get("alignment_loss_weight"):
    parts["alignment"] = alignment_loss(config, aux["alignment"], batch["av_offset"])
  pit_weight = config.pit_weight
  weights = {"neg_si_snr": 1.0 - pit_weight, "stft": config.stft_loss_weight,
             "activity": config.activity_loss_weight, "pit": pit_weight,
             "alignment": config.get("alignment_loss_weight", 0.0)}
  count = jnp.maximum(jnp.sum(mask), 1)
  parts = {k: jnp.sum(jnp.where(mask, v, 0.0)) / count for k, v in parts.items()}
  if pit_weight:
    # The best assignment of slots to speakers: lets the decoder learn to separate
    # before the video has learned which voice is whose.
    per_example, _ = signal.pit_loss(out, batch["sources"], mask)
    parts["pit"] = jnp.mean(per_example)
  return sum(weights[k] * v for k, v in parts.items()), parts


def uses_visual_cache(config) -> bool:
  """Whether training reads cached frame features instead of running the visual CNN:
  `config.visual_cache` with a frozen pretrained encoder and host ('grain') input
  (device mixing keeps the video on the device and runs the encoder)."""
  return (config.get("visual_cache", False) and is_frozen_visual(config)
          and config.model.get("use_video", True)
          and config.get("input", "grain") == "grain")


def prepare_visual_cache(config, data_dir, state):
  """(directory, expected) of the frozen encoder's feature cache, built where missing
  (`avsep_jax.visual_cache`), or None when training runs the encoder live."""
  if not uses_visual_cache(config):
    return None
  return visual_cache.ensure(config.model, state.params["visual_encoder"],
                             config.dataset, data_dir)


def _split_features(cache, split):
  return None if cache is None else visual_cache.SplitFeatures(*cache, split)


def alignment_loss(config, weights, offsets):
  """(B, S) mean squared distance, in video frames, between the video frame that the
  fusion's alignment `weights` (B, S, T, F) expects for each audio frame and the one
  that shows it: the frame-rate map's, moved by the slot's audio-video offset
  `offsets` (B, S) (frame f shows the audio of frame f - offset; see `lagged`)."""
  m = config.model
  t, f = weights.shape[-2:]
  position = np.arange(f, dtype=np.float32)
  base = alignment_lib.video_to_audio_matrix(
      t, f, hop_length=m.stft_scales[0][2], sample_rate=m.sample_rate,
      fps=m.video_fps) @ position                                     # (T,)
  target = jnp.clip(base + offsets[..., None], 0, f - 1)              # (B, S, T)
  expected = jnp.einsum("bstf,f->bst", weights.astype(jnp.float32), position)
  return jnp.mean((expected - target) ** 2, axis=-1)


def train_iterator(config, data_dir, cache=None):
  """This process's training batches from the first (a grain iterator: checkpoints
  hold its position); with cached frame features (`prepare_visual_cache`) in place of
  video when `cache` is given."""
  same = config.batch_size if config.get("compact_slots") else None
  ds = pipeline.make_dataset(
      config.dataset, "train", data_dir, mix_config(config, same_count_per=same),
      batch_size=config.batch_size // jax.process_count(), seed=config.seed,
      augment_video=config.get("augment_video", True),
      shard_index=jax.process_index(), shard_count=jax.process_count(),
      visual_features=_split_features(cache, "train"))
  return iter(ds.map(compact_slots) if same else ds)


def train_input(config, data_dir, batch_sharding, cache=None):
  """() -> a fresh training iterator at the first batch, by `config.input`.

  'grain': `train_iterator`, host-local numpy batches. 'device': global batches mixed
  on the devices, already laid out by `batch_sharding`; the train split is loaded
  into device memory once, here, not once per iterator (resuming may build several).
  """
  if config.get("input", "grain") == "device":
    return device_mix.make_iterator_factory(
        config.dataset, data_dir, mix_config(config), batch_size=config.batch_size,
        seed=config.seed, augment_video=config.get("augment_video", True),
        sharding=batch_sharding)
  return functools.partial(train_iterator, config, data_dir, cache)


def validation_batches(config, data_dir, cache=None):
  """This process's share of the same `config.eval_examples` validation mixtures at
  every evaluation (with cached frame features in place of video given `cache`)."""
  return pipeline.make_dataset(
      config.dataset, "validation", data_dir, mix_config(config),
      batch_size=config.batch_size // jax.process_count(), seed=config.seed + 7,
      num_examples=config.eval_examples, shard_index=jax.process_index(),
      shard_count=jax.process_count(), visual_features=_split_features(cache, "validation"))


def model_inputs(batch) -> dict:
  """The model's visual input from a batch: video, or cached frame features."""
  if "visual_features" in batch:
    return {"video": None, "visual_features": batch["visual_features"]}
  return {"video": batch["video"]}


def oracle_cue(config, batch):
  """The true per-slot activity as the decoder's cue when `config.oracle_cue` (a
  diagnostic: separation given a perfect slot cue); else None (the lips' estimate)."""
  if not config.oracle_cue:
    return None
  activity = _true_activity(config, batch)
  if config.get("oracle_cue_lagged"):
    activity = lagged(activity, batch["av_offset"])
  return activity


def lagged(activity, offsets):
  """(B, S, F) per-video-frame activity as each slot's video shows it, lagging the
  audio by `offsets` (B, S) frames (SynthAV's convention: frame f shows the audio of
  frame f - offset); the ends repeat the nearest frame."""
  frames = activity.shape[-1]
  index = jnp.clip(jnp.arange(frames) - offsets[..., None], 0, frames - 1)
  return jnp.take_along_axis(activity, index, axis=-1)


def curriculum_cue(config, batch, step, rng):
  """Training cue under the oracle-cue curriculum: (cue (B, S, F), share (B,)) or
  (oracle_cue(config, batch), None) when `config.oracle_cue_steps` is 0.

  Each example takes the true activity with probability 1 - step / oracle_cue_steps
  (floored at 0) and the lips' estimate otherwise, so the decoder learns to separate
  from a reliable cue first and hands over to the lips as it falls.
  """
  if not config.oracle_cue_steps or config.oracle_cue:
    return oracle_cue(config, batch), None
  p = jnp.maximum(1.0 - step / config.oracle_cue_steps, 0.0)
  share = jax.random.bernoulli(rng, p, batch["speaker_mask"].shape[:1])
  return _true_activity(config, batch), share.astype(jnp.float32)


def _true_activity(config, batch):
  m = config.model
  return signal.activity_targets(batch["sources"], m.sample_rate // m.video_fps)


def init_batch(config):
  """One all-zero example of the model's input shapes: what init needs, no data read."""
  m = config.model
  frames = int(round(config.segment_seconds * m.video_fps))
  samples = frames * m.sample_rate // m.video_fps
  return {
      "mixture": jnp.zeros((1, samples), jnp.float32),
      "video": jnp.zeros((1, m.num_speakers, frames, m.roi_size, m.roi_size), jnp.uint8),
      "speaker_mask": jnp.ones((1, m.num_speakers), bool),
  }


def create_train_state(config, model, optimizer, mesh, rules):
  """Initial train state created sharded: eval_shape, then a jitted init.

  Returns:
    state (plain arrays, sharded), abstract (ShapeDtypeStructs with shardings, the
    restore target) and shardings (the state's NamedSharding tree).
  """

  example = init_batch(config)

  def init_state(rng):
    variables = model.init(rng, example["mixture"], example["video"],
                           example["speaker_mask"])
    params = variables["params"]
    return TrainState(
        step=jnp.zeros((), jnp.int32), params=params,
        opt_state=optimizer.init(params),
        ema_params=params if config.ema_decay else None,
        bad_steps=jnp.zeros((), jnp.int32))

  return shard_init(init_state, jax.random.key(config.seed), mesh, rules)


def shard_init(init_state, rng, mesh, rules):
  """Creates `init_state(rng)` sharded by its params' logical axis names: eval_shape,
  then a jitted init whose outputs land on their devices (never whole on one).

  Returns:
    (state, abstract, shardings) as `create_train_state` describes.
  """
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    boxed = jax.eval_shape(init_state, rng)
    shardings = parallel.state_shardings(boxed, mesh, rules)
    state = jax.jit(lambda r: nn.unbox(init_state(r)), out_shardings=shardings)(rng)
  abstract = jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
      nn.unbox(boxed), shardings)
  return state, abstract, shardings


def make_train_step(config, model, optimizer, schedule, shardings, batch_sharding):
  """One jitted update with donated state: (state, batch) -> (state, metrics).

  A step whose loss or gradient is not finite leaves params and optimizer state as
  they were and increments `bad_steps`.
  """

  @functools.partial(jax.jit, in_shardings=(shardings, batch_sharding),
                     out_shardings=(shardings, None), donate_argnums=(0,))
  def train_step(state, batch):
    rng, cue_rng = jax.random.split(
        jax.random.fold_in(jax.random.key(config.seed), state.step))
    cue, share = curriculum_cue(config, batch, state.step, cue_rng)

    def loss_fn(params):
      params = frozen_visual(config, params)
      out, aux = model.apply({"params": params}, batch["mixture"],
                             speaker_mask=batch["speaker_mask"], train=True,
                             rngs={"dropout": rng}, activity_cue=cue, oracle_share=share,
                             **model_inputs(batch))
      return separation_loss(config, out, aux, batch)

    (loss, parts), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    state, metrics = apply_gradients(config, optimizer, schedule, state, loss, grads)
    return state, metrics | {f"loss_{k}": v for k, v in parts.items()}

  return train_step


def apply_gradients(config, optimizer, schedule, state, loss, grads):
  """The optimizer step on `state.trainable`, guarded against non-finite values.

  Args:
    state: a `TrainState` (or a dataclass extending it).
    loss: scalar; grads: its gradient with respect to `state.trainable`.

  Returns:
    (state, metrics): the updated state (params and optimizer state as they were,
    `bad_steps` + 1, when the loss or the gradient is not finite; EMA of
    `state.params`) and {"loss", "grad_norm", "learning_rate", "nonfinite",
    "bad_steps"}.
  """
  grad_norm = optax.tree.norm(grads)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.trainable)
  new = state.with_trainable(optax.apply_updates(state.trainable, updates))
  ema = state.ema_params
  if config.ema_decay:
    ema = optax.incremental_update(new.params, ema, 1.0 - config.ema_decay)
  ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  new = new.replace(step=state.step + 1, opt_state=opt_state, ema_params=ema,
                    bad_steps=jnp.zeros((), jnp.int32))
  old = state.replace(step=state.step + 1, bad_steps=state.bad_steps + 1)
  state = jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)
  return state, {"loss": loss, "grad_norm": grad_norm,
                 "learning_rate": schedule(state.step),
                 "nonfinite": 1 - ok.astype(jnp.int32), "bad_steps": state.bad_steps}


def make_predict(config, model, param_shardings, batch_sharding):
  """Jitted inference: (params, batch) -> (waveforms (B, S, T), main-scale masks)."""

  @functools.partial(jax.jit, in_shardings=(param_shardings, batch_sharding))
  def predict(params, batch):
    out, aux = model.apply({"params": params}, batch["mixture"],
                           speaker_mask=batch["speaker_mask"],
                           activity_cue=oracle_cue(config, batch), **model_inputs(batch))
    return out, aux["masks"][str(config.model.stft_scales[0][0])]

  return predict


def check_config(config):
  """Raises ValueError naming the first setting that cannot run."""
  if config.batch_size % jax.process_count():
    raise ValueError(f"batch_size {config.batch_size} does not divide over "
                     f"{jax.process_count()} processes")
  source = config.get("input", "grain")
  if source not in ("grain", "device"):
    raise ValueError(f"input {source!r} is not one of 'grain', 'device'")
  if source == "device" and jax.process_count() > 1:
    # Each process would mix the whole global batch; grain shards it by process.
    raise ValueError(f"input 'device' runs on one process, this run has "
                     f"{jax.process_count()}: use input='grain'")
  if config.eval_examples < config.batch_size:
    # Evaluation batches are whole batches: fewer examples would score nothing.
    raise ValueError(f"eval_examples ({config.eval_examples}) must be at least "
                     f"batch_size ({config.batch_size})")
  if (config.oracle_cue or config.oracle_cue_steps) and not config.model.decoder.activity_cue:
    # Without the decoder's cue input the true activity would silently go unused.
    raise ValueError("oracle_cue / oracle_cue_steps need model.decoder.activity_cue=True")


def make_mesh(config):
  """(mesh, logical-axis rules, batch sharding) from the config."""
  mesh = parallel.make_mesh(config.mesh_shape, config.mesh_axes)
  rules = tuple(tuple(r) for r in config.logical_axis_rules)
  return mesh, rules, parallel.batch_sharding(mesh, rules)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str):
  """Trains `config` in `workdir`, resuming from its latest checkpoint."""
  # ----------------------------------------------------------------------- Mesh
  check_config(config)
  mesh, rules, batch_sharding = make_mesh(config)

  # ---------------------------------------------------------------------- Input
  data_dir = ensure_dataset(config)

  # ---------------------------------------------------------------------- Model
  model = AVSeparator(config.model)
  optimizer, schedule = make_optimizer(config)

  # ---------------------------------------------------------------------- Shard
  state, abstract, shardings = create_train_state(config, model, optimizer, mesh, rules)
  state = load_visual_init(config, state, shardings)
  cache = prepare_visual_cache(config, data_dir, state)
  if jax.process_index() == 0:
    print(f"params: {parallel.nbytes(state.params) / 1e6:.3f} MB, "
          f"{parallel.nbytes_on(state.params, jax.devices()[0]) / 1e6:.3f} MB on "
          f"device 0 (mesh {dict(mesh.shape)})")

  # --------------------------------------------------------------------- Update
  train_step = make_train_step(config, model, optimizer, schedule, shardings,
                               batch_sharding)
  predict = make_predict(config, model, shardings.params, batch_sharding)

  return fit(config, workdir, batch_sharding, state, abstract, train_step,
             train_input(config, data_dir, batch_sharding, cache),
             separation_validator(config, workdir, data_dir, batch_sharding, predict,
                                  cache))


def run_facts(config, data_dir) -> dict:
  """What a score depends on besides the weights, for the evaluation JSON: the cue the
  slots were given ('lips'; 'oracle': the true activity; 'oracle_lagged': the same as
  the video shows it, `lagged`; or 'none' for audio only),
  the dataset and its prepared version, and the pretrained encoder, if any."""
  if not config.model.get("use_video", True):
    cue = "none"
  else:
    cue = "lips"
    if config.get("oracle_cue"):
      cue = "oracle_lagged" if config.get("oracle_cue_lagged") else "oracle"
  return {"cue": cue, "dataset": config.dataset,
          "dataset_version": sources.dataset_version(config.dataset, data_dir),
          "visual_init": config.get("visual_init")}


def separation_validator(config, workdir, data_dir, batch_sharding, predict, cache=None):
  """`fit`'s validation for separators: SI-SNRi and friends on the same
  `config.eval_examples` validation mixtures every time, written as
  eval/validation_<step>.json, TensorBoard scalars and audio examples.

  Args:
    predict: (params, global batch) -> (waveforms (B, S, T), main-scale masks).
    cache: the frozen encoder's feature cache (`prepare_visual_cache`), or None.

  Returns:
    validate(params, step, writer) -> (a line to print, {metric: value} stored with
    the checkpoint); `writer` is None on every process but the first.
  """

  def validate(params, step, writer):
    records = []
    first = None
    for batch in validation_batches(config, data_dir, cache):
      out, masks = predict(params, parallel.global_batch(batch, batch_sharding))
      out, masks = parallel.local_rows(out), parallel.local_rows(masks)
      records += evaluation.score_batch(out, batch["sources"], batch["mixture"],
                                        batch["speaker_mask"],
                                        pesq_stoi=config.eval_pesq_stoi)
      if first is None:
        first = (batch, out, masks)
    summary = evaluation.summarize(evaluation.gather(records))
    if writer:
      evaluation.write_json(os.path.join(workdir, "eval", f"validation_{step}.json"),
                            summary, step=step, split="validation",
                            visual_features="cached" if cache else "live",
                            **run_facts(config, data_dir))
      writer.scalars(step, {f"eval/{k}": v["mean"] for k, v in summary["all"].items()})
      writer.examples(step, *first, sample_rate=config.model.sample_rate)
    scores = summary["all"]
    line = (f"validation SI-SNRi {scores['si_snri']['mean']:.2f} dB "
            f"({scores['si_snri_pit']['mean']:.2f} under the best assignment)")
    return line, {k: scores[k]["mean"] for k in ("si_snri", "si_snri_pit")}

  return validate


def fit(config, workdir, batch_sharding, state, abstract, train_step, make_train_iter,
        validate):
  """Checkpoint, Evals, Loop: every trainer's loop once its state and step exist.

  Resumes from the workdir's newest readable step, runs `train_step` up to
  `config.total_steps`, validates every `eval_every_steps`, checkpoints state and data
  iterator every `checkpoint_every_steps`, and on SIGTERM saves the current step and
  returns.

  Args:
    config: the run's config (`total_steps`, `eval_every_steps`, `best_metric`, ...).
    workdir: checkpoints/, tensorboard/ and eval/ go here.
    batch_sharding: NamedSharding of a global batch.
    state: the initial state, sharded: a `TrainState` (or a dataclass extending it).
    abstract: its restore target (ShapeDtypeStructs with shardings).
    train_step: (state, global batch) -> (state, {name: scalar}) with at least
      "loss" and "bad_steps".
    make_train_iter: () -> a fresh training iterator at the first batch (for
      separators, `train_input`); its state is checkpointed when it has one.
    validate: (params, step, writer) -> (line, {metric: value}), as
      `separation_validator` returns; `config.best_metric` is one of the metrics.

  Returns:
    The last state.
  """
  workdir = os.path.abspath(workdir)
  is_main = jax.process_index() == 0

  # ----------------------------------------------------------------- Checkpoint
  ckpt_dir = os.path.join(workdir, "checkpoints")
  mngr = checkpoints.manager(ckpt_dir, keep=config.get("keep_checkpoints", 3),
                             save_every=config.checkpoint_every_steps,
                             metric=config.best_metric)
  start, restored, train_iter = checkpoints.restore_latest(mngr, abstract, make_train_iter)
  if restored is not None:
    state = restored
    print(f"resumed from {ckpt_dir} at step {start}")
  else:
    start, train_iter = 0, make_train_iter()

  # ---------------------------------------------------------------------- Evals
  writer = summaries.Writer(workdir) if is_main else None

  # ----------------------------------------------------------------------- Loop
  stop = {"sigterm": False}
  previous = os_signal.signal(os_signal.SIGTERM, lambda *_: stop.update(sigterm=True))
  step = start
  bar = tqdm.tqdm(total=config.total_steps, initial=start, disable=not is_main,
                  unit="step", dynamic_ncols=True)
  try:
    tick, tick_step = time.perf_counter(), step
    while step < config.total_steps:
      batch = next(train_iter)
      state, metrics = train_step(state, parallel.global_batch(batch, batch_sharding))
      step += 1
      metrics = jax.device_get(metrics)  # the step's one host transfer
      bad = int(metrics["bad_steps"])
      if bad >= config.max_nonfinite_steps:
        raise NonFiniteLossError(
            f"{bad} non-finite losses in a row up to step {step}; last good "
            f"checkpoint: step {mngr.latest_step()} in {ckpt_dir}")
      now = time.perf_counter()
      rate = (step - tick_step) / max(now - tick, 1e-9)
      bar.update(1)
      bar.set_postfix(loss=f"{float(metrics['loss']):.3f}", steps_s=f"{rate:.2f}")
      if writer and (step % config.get("log_every_steps", 10) == 0 or step == 1):
        writer.scalars(step, {f"train/{k}": float(v) for k, v in metrics.items()}
                       | {"train/steps_per_second": rate})
        tick, tick_step = now, step
      scores = None
      if step % config.eval_every_steps == 0 or step == config.total_steps:
        line, scores = validate(state.ema_params if config.ema_decay else state.params,
                                step, writer)
        bar.write(f"step {step}: {line}")
      if stop["sigterm"]:
        checkpoints.save(mngr, step, state, train_iter, force=True)
        mngr.wait_until_finished()
        bar.write(f"SIGTERM: saved step {step} in {ckpt_dir}; exiting")
        return state
      checkpoints.save(mngr, step, state, train_iter, metrics=scores,
                       force=step == config.total_steps)
    return state
  finally:
    os_signal.signal(os_signal.SIGTERM, previous)
    bar.close()
    mngr.wait_until_finished()
    mngr.close()
    if writer:
      writer.close()


def restore_for_evaluation(config, workdir, which, abstract):
  """(manager, step, which, params) of the best (or latest) step of `workdir`: its EMA
  params when the run keeps them; `abstract` is the state's restore target. The
  caller closes the manager."""
  mngr = checkpoints.manager(os.path.join(workdir, "checkpoints"), keep=1 << 30,
                             save_every=1, metric=config.best_metric)
  step, which = checkpoints.choose_step(mngr, which, config.best_metric)
  if step is None:
    raise FileNotFoundError(f"no checkpoint in {workdir}/checkpoints to evaluate")
  key = "ema_params" if config.ema_decay else "params"
  return mngr, step, which, checkpoints.restore_params(mngr, step, getattr(abstract, key),
                                                       key)


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str,
                        which: str = "best"):
  """Scores the best (or latest) checkpoint on the test split per speaker count.

  Prints a table and writes eval/test_<which>_<step>.json in the workdir.
  """
  mesh, rules, batch_sharding = make_mesh(config)
  local_batch = config.batch_size // jax.process_count()
  data_dir = ensure_dataset(config)
  model = AVSeparator(config.model)
  optimizer, _ = make_optimizer(config)
  counts = range(min(2, config.max_speakers), config.max_speakers + 1)

  def test_data(n):
    return pipeline.make_dataset(
        config.dataset, "test", data_dir, mix_config(config, n), batch_size=local_batch,
        seed=config.seed + 11, num_examples=config.test_examples,
        shard_index=jax.process_index(), shard_count=jax.process_count())

  _, abstract, shardings = create_train_state(config, model, optimizer, mesh, rules)
  mngr, step, which, params = restore_for_evaluation(config, workdir, which, abstract)
  predict = make_predict(config, model, shardings.params, batch_sharding)
  records = []
  for n in counts:
    for batch in tqdm.tqdm(test_data(n), desc=f"test, {n} speakers", unit="batch"):
      out, _ = predict(params, parallel.global_batch(batch, batch_sharding))
      records += evaluation.score_batch(parallel.local_rows(out), batch["sources"],
                                        batch["mixture"], batch["speaker_mask"],
                                        pesq_stoi=config.eval_pesq_stoi)
  summary = evaluation.summarize(evaluation.gather(records))
  print(f"test split, checkpoint step {step} ({which}):")
  print(evaluation.format_table(summary))
  if jax.process_index() == 0:
    path = os.path.join(workdir, "eval", f"test_{which}_{step}.json")
    evaluation.write_json(path, summary, step=step, split="test", checkpoint=which,
                          checkpoint_dir=os.path.join(os.path.abspath(workdir),
                                                      "checkpoints"),
                          **run_facts(config, data_dir))
    print(f"wrote {path}")
  mngr.close()
  return summary
