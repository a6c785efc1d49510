r"""Input pipeline throughput against the model's training step, on this machine.

  python experiments/benchmarks/input_pipeline.py --data_dir=/tmp/tfds [--dataset=synthav/tiny]

Measures batches/s of the mixing pipeline (batch 8, 6 speakers, 4 s, video
augmentation on) and steps/s of a forward+backward+AdamW step of the `smoke` and
`lite` models on the same batch shape; prints the median of --repeats timings of each.
The pipeline keeps up when its batches/s exceed the model's steps/s.
"""

import itertools
import time

from absl import app
from absl import flags
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from avsep_jax import model as model_lib
from avsep_jax import signal
from avsep_jax.data import pipeline
from avsep_jax.data.synthav import builder as builder_lib

_DATA_DIR = flags.DEFINE_string("data_dir", "/tmp/tfds", "TFDS data dir.")
_DATASET = flags.DEFINE_string("dataset", "synthav/tiny", "Dataset to mix from.")
_BATCH = flags.DEFINE_integer("batch_size", 8, "Mixtures per batch.")
_SPEAKERS = flags.DEFINE_integer("speakers", 6, "Speakers per mixture (and slots).")
_SECONDS = flags.DEFINE_float("seconds", 4.0, "Mixture length.")
_BATCHES = flags.DEFINE_integer("batches", 20, "Batches per pipeline timing.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timings per measurement (median).")
_VARIANTS = flags.DEFINE_list("variants", ["smoke", "lite"], "Model variants to time.")


def pipeline_rate():
  config = pipeline.MixConfig(max_speakers=_SPEAKERS.value, min_speakers=_SPEAKERS.value,
                              segment_seconds=_SECONDS.value)
  rates = []
  for r in range(_REPEATS.value):
    ds = pipeline.make_dataset(_DATASET.value, "train", _DATA_DIR.value, config,
                               batch_size=_BATCH.value, seed=r, augment_video=True)
    it = iter(ds)
    next(it)  # warm-up: opens files, compiles the augmentation
    start = time.perf_counter()
    for _ in itertools.islice(it, _BATCHES.value):
      pass
    rates.append(_BATCHES.value / (time.perf_counter() - start))
  return float(np.median(rates)), next(iter(ds))


def train_step_rate(variant, batch):
  config = model_lib.model_config(variant, num_speakers=_SPEAKERS.value)
  model = model_lib.AVSeparator(config)
  args = (batch["mixture"], batch["video"], batch["speaker_mask"])
  params = nn.unbox(model.init(jax.random.key(0), *args))
  opt = optax.adamw(1e-4)
  state = (params, opt.init(params))

  @jax.jit
  def step(state, batch, key):
    params, opt_state = state

    def loss_fn(p):
      out, _ = model.apply(p, batch["mixture"], batch["video"], batch["speaker_mask"],
                           train=True, rngs={"dropout": key})
      per = -signal.si_snr(out, batch["sources"])
      return jnp.sum(per * batch["speaker_mask"]) / jnp.sum(batch["speaker_mask"])

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = opt.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), loss

  state, loss = step(state, batch, jax.random.key(1))
  loss.block_until_ready()
  times = []
  for r in range(_REPEATS.value):
    start = time.perf_counter()
    state, loss = step(state, batch, jax.random.key(r))
    loss.block_until_ready()
    times.append(time.perf_counter() - start)
  return 1.0 / float(np.median(times))


def main(argv):
  del argv
  family, config = _DATASET.value.split("/")
  if family == "synthav":
    builder_lib.build(config, _DATA_DIR.value)
  rate, batch = pipeline_rate()
  print(f"device: {jax.devices()[0].device_kind}, {jax.device_count()} device(s)")
  print(f"pipeline: {rate:.2f} batches/s  (batch {_BATCH.value}, {_SPEAKERS.value} "
        f"speakers, {_SECONDS.value:g} s, augmentation on, median of {_REPEATS.value})")
  for variant in _VARIANTS.value:
    print(f"train step {variant}: {train_step_rate(variant, batch):.3f} steps/s "
          f"(median of {_REPEATS.value})")


if __name__ == "__main__":
  app.run(main)
