"""Lip-reading pretraining: the separator's visual encoder learns per-frame visemes.

  python -m avsep_jax.main --config=configs/lipread.py:lite --workdir=DIR
  python -m avsep_jax.main --config=configs/lipread.py:lite --workdir=DIR --mode=evaluate

Then a separator starts from it with `--config.visual_init=DIR` (frozen by default;
`train.load_visual_init`). The trainer is `train.fit`, with its checkpoints, resuming,
SIGTERM handling and TensorBoard; this module supplies the model (`LipReader`), the
input (`data.lipread`: mouth clips labelled from the phone timelines, held-out voices
in validation and test), the loss (cross-entropy per frame) and the validation (frame
accuracy against chance: always answering the most frequent class).
"""

import functools
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import tqdm

from avsep_jax import evaluation
from avsep_jax import parallel
from avsep_jax import train
from avsep_jax.data import lipread as data_lib
from avsep_jax.data import sources
from avsep_jax.model.lipreader import LipReader


def make_model(config) -> LipReader:
  return LipReader(config.model, num_classes=data_lib.NUM_CLASSES)


def clip_frames(config) -> int:
  return max(1, int(round(config.segment_seconds * config.model.video_fps)))


def check_config(config):
  """Raises ValueError naming the first setting that cannot run."""
  if config.batch_size % jax.process_count():
    raise ValueError(f"batch_size {config.batch_size} does not divide over "
                     f"{jax.process_count()} processes")
  if config.eval_examples < config.batch_size:
    raise ValueError(f"eval_examples ({config.eval_examples}) must be at least "
                     f"batch_size ({config.batch_size})")
  if config.get("input", "grain") != "grain":
    raise ValueError("lip-reading pretraining reads clips through grain: input='grain'")


def clips(config, data_dir, split, *, num_examples=None, seed_offset=0):
  """This process's batches of labelled clips of `split` (endless when
  `num_examples` is None)."""
  return data_lib.make_dataset(
      config.dataset, split, data_dir, frames=clip_frames(config),
      batch_size=config.batch_size // jax.process_count(),
      seed=config.seed + seed_offset, num_examples=num_examples,
      augment_video=split == "train" and config.get("augment_video", True),
      shard_index=jax.process_index(), shard_count=jax.process_count())


def data_facts(config, data_dir) -> dict:
  """The dataset and its prepared version, for the evaluation JSON."""
  return {"dataset": config.dataset,
          "dataset_version": sources.dataset_version(config.dataset, data_dir)}


def frame_loss(logits, labels):
  """Mean cross-entropy over frames: (B, F, C) logits, (B, F) int labels."""
  return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))


def create_train_state(config, model, optimizer, mesh, rules):
  """As `train.create_train_state`, for the lip reader."""
  m = config.model
  video = jnp.zeros((1, clip_frames(config), m.roi_size, m.roi_size), jnp.uint8)

  def init_state(rng):
    params = model.init(rng, video)["params"]
    return train.TrainState(
        step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params),
        ema_params=params if config.ema_decay else None,
        bad_steps=jnp.zeros((), jnp.int32))

  return train.shard_init(init_state, jax.random.key(config.seed), mesh, rules)


def make_train_step(config, model, optimizer, schedule, shardings, batch_sharding):
  """One jitted update: (state, batch) -> (state, metrics incl. frame accuracy)."""

  @functools.partial(jax.jit, in_shardings=(shardings, batch_sharding),
                     out_shardings=(shardings, None), donate_argnums=(0,))
  def train_step(state, batch):
    rng = jax.random.fold_in(jax.random.key(config.seed), state.step)

    def loss_fn(params):
      logits = model.apply({"params": params}, batch["video"], train=True,
                           rngs={"dropout": rng})
      return frame_loss(logits, batch["visemes"]), logits

    (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    state, metrics = train.apply_gradients(config, optimizer, schedule, state, loss, grads)
    accuracy = jnp.mean(jnp.argmax(logits, -1) == batch["visemes"])
    return state, metrics | {"frame_accuracy": accuracy}

  return train_step


def make_predict(model, param_shardings, batch_sharding):
  """Jitted inference: (params, batch) -> (B, F) predicted classes."""

  @functools.partial(jax.jit, in_shardings=(param_shardings, batch_sharding))
  def predict(params, batch):
    return jnp.argmax(model.apply({"params": params}, batch["video"]), axis=-1)

  return predict


def score(predicted, labels) -> dict:
  """Frame accuracy and chance (the most frequent true class's share) of (N, F)
  predicted and true classes, with per-class recall."""
  predicted, labels = np.asarray(predicted).ravel(), np.asarray(labels).ravel()
  counts = np.bincount(labels, minlength=data_lib.NUM_CLASSES)
  hits = np.bincount(labels[predicted == labels], minlength=data_lib.NUM_CLASSES)
  with np.errstate(invalid="ignore", divide="ignore"):
    recall = np.where(counts > 0, hits / counts, np.nan)
  return {"frame_accuracy": float(np.mean(predicted == labels)),
          "chance": float(counts.max() / counts.sum()),
          "frames": int(labels.size),
          "recall_per_class": [None if np.isnan(r) else float(r) for r in recall]}


def gather_predictions(predict, params, batches, batch_sharding, desc=None):
  """(predicted, labels), each (N, F) numpy, over every process's batches."""
  predicted, labels = [], []
  for batch in tqdm.tqdm(batches, desc=desc, unit="batch", disable=desc is None):
    out = predict(params, parallel.global_batch(batch, batch_sharding))
    predicted.append(parallel.local_rows(out))
    labels.append(batch["visemes"])
  return (parallel.gather_rows(np.concatenate(predicted).astype(np.int32)),
          parallel.gather_rows(np.concatenate(labels).astype(np.int32)))


def validator(config, workdir, data_dir, batch_sharding, predict):
  """`train.fit`'s validation for the lip reader: frame accuracy on the same
  validation clips (voices never seen in training) every time."""

  def validate(params, step, writer):
    batches = clips(config, data_dir, "validation", num_examples=config.eval_examples,
                    seed_offset=7)
    scores = score(*gather_predictions(predict, params, batches, batch_sharding))
    if writer:
      evaluation.write_json(os.path.join(workdir, "eval", f"validation_{step}.json"),
                            scores, step=step, split="validation",
                            **data_facts(config, data_dir))
      writer.scalars(step, {"eval/frame_accuracy": scores["frame_accuracy"],
                            "eval/chance": scores["chance"]})
    line = (f"validation frame accuracy {scores['frame_accuracy']:.3f} "
            f"(chance {scores['chance']:.3f}, {scores['frames']} frames)")
    return line, {"frame_accuracy": scores["frame_accuracy"]}

  return validate


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str):
  """Pretrains `config.model`'s visual encoder in `workdir`, resuming if it can."""
  # ----------------------------------------------------------------------- Mesh
  check_config(config)
  mesh, rules, batch_sharding = train.make_mesh(config)

  # ---------------------------------------------------------------------- Input
  data_dir = train.ensure_dataset(config)

  # ---------------------------------------------------------------------- Model
  model = make_model(config)
  optimizer, schedule = train.make_optimizer(config)

  # ---------------------------------------------------------------------- Shard
  state, abstract, shardings = create_train_state(config, model, optimizer, mesh, rules)
  if jax.process_index() == 0:
    print(f"params: {parallel.nbytes(state.params) / 1e6:.3f} MB (mesh {dict(mesh.shape)})")

  # --------------------------------------------------------------------- Update
  train_step = make_train_step(config, model, optimizer, schedule, shardings,
                               batch_sharding)
  predict = make_predict(model, shardings.params, batch_sharding)

  return train.fit(config, workdir, batch_sharding, state, abstract, train_step,
                   lambda: iter(clips(config, data_dir, "train")),
                   validator(config, workdir, data_dir, batch_sharding, predict))


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str,
                        which: str = "best"):
  """Frame accuracy of the best (or latest) checkpoint on the test split's voices;
  writes eval/test_<which>_<step>.json."""
  mesh, rules, batch_sharding = train.make_mesh(config)
  data_dir = train.ensure_dataset(config)
  model = make_model(config)
  optimizer, _ = train.make_optimizer(config)
  _, abstract, shardings = create_train_state(config, model, optimizer, mesh, rules)
  mngr, step, which, params = train.restore_for_evaluation(config, workdir, which,
                                                            abstract)
  predict = make_predict(model, shardings.params, batch_sharding)
  batches = clips(config, data_dir, "test", num_examples=config.test_examples,
                  seed_offset=11)
  scores = score(*gather_predictions(predict, params, batches, batch_sharding,
                                     desc="test clips"))
  print(f"test split, checkpoint step {step} ({which}): frame accuracy "
        f"{scores['frame_accuracy']:.3f}, chance {scores['chance']:.3f} "
        f"({scores['frames']} frames)")
  if jax.process_index() == 0:
    path = os.path.join(workdir, "eval", f"test_{which}_{step}.json")
    evaluation.write_json(path, scores, step=step, split="test", checkpoint=which,
                          **data_facts(config, data_dir))
    print(f"wrote {path}")
  mngr.close()
  return scores
