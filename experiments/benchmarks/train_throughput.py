r"""Training throughput per config variant: steps/s, examples/s and, on a GPU, MFU.

  python experiments/benchmarks/train_throughput.py --config=configs/2spk.py \
      --variants=smoke,lite [--batch_size=4] [--seconds=2] [--steps=5] \
      [--speakers=2,3,4,5,6 [--compact]] [--visual=scratch,frozen,cached]

Times the trainer's own jitted step (`train.make_train_step`, donated state, on the
config's mesh) on a fixed synthetic batch, so the input pipeline is not measured (see
input_pipeline.py for it). Prints the median of --steps timed steps after one warm-up
step. `--speakers` times batches with that many real speakers in the config's slots,
padded (as a batch of mixed counts runs), or with `--compact` in only that many slots
(`config.compact_slots`: one count per batch, padded slots dropped). `--visual` times
the visual encoder learned with the rest ('scratch'), pretrained and frozen (its
forward pass only, `config.visual_init`), or frozen with its frame features read from
the cache in place of video ('cached': `avsep_jax.visual_cache`, no visual CNN).
Model FLOPs utilisation = XLA's FLOP count of the step / step time / peak FLOP/s
of the device (--peak_tflops, e.g. 989 for H100 bf16 dense); CPUs print none.
"""

import importlib.util
import json
import time

from absl import app
from absl import flags
import jax
import numpy as np

from avsep_jax import parallel
from avsep_jax import train
from avsep_jax.model import AVSeparator

_CONFIG = flags.DEFINE_string("config", "configs/2spk.py", "Config file (no variant).")
_VARIANTS = flags.DEFINE_list("variants", ["smoke", "lite"], "Variants to time.")
_BATCH = flags.DEFINE_integer("batch_size", None, "Global batch; default: the config's.")
_SECONDS = flags.DEFINE_float("seconds", None, "Segment length; default: the config's.")
_STEPS = flags.DEFINE_integer("steps", 5, "Timed steps (median reported).")
_PEAK = flags.DEFINE_float("peak_tflops", None, "Device peak TFLOP/s for MFU.")
_JSON = flags.DEFINE_string("json", None, "Also write each variant's figures here.")
_DTYPE = flags.DEFINE_string("dtype", None, "Compute dtype; default: the variant's.")
_SPEAKERS = flags.DEFINE_list("speakers", None, "Real speakers per batch to time "
                              "(default: every slot filled).")
_COMPACT = flags.DEFINE_bool("compact", False, "Drop the padded slots (train.compact_slots).")
_VISUAL = flags.DEFINE_list("visual", ["scratch"], "Visual encoder modes to time: "
                            "scratch, frozen, cached.")
VISUAL_MODES = ("scratch", "frozen", "cached")


def load_config(path, variant):
  spec = importlib.util.spec_from_file_location("benchmark_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(variant)


def synthetic_batch(config, rng, speakers=None, cached=False):
  """A batch shaped like the pipeline's, `speakers` real ones (default: all slots);
  with frame features in place of video when `cached`."""
  b, s = config.batch_size, config.model.num_speakers
  n = speakers or s
  frames = int(round(config.segment_seconds * config.model.video_fps))
  t = frames * config.model.sample_rate // config.model.video_fps
  size = config.model.roi_size
  sources = (0.05 * rng.standard_normal((b, s, t))).astype(np.float32)
  sources[:, n:] = 0.0
  if cached:
    visual = {"visual_features": rng.standard_normal(
        (b, s, frames, config.model.visual.d_model)).astype(np.float32)}
  else:
    visual = {"video": rng.integers(0, 256, (b, s, frames, size, size), dtype=np.uint8)}
  return visual | {
      "mixture": sources.sum(1),
      "sources": sources,
      "speaker_mask": np.arange(s)[None].repeat(b, 0) < n,
      "av_offset": np.zeros((b, s), np.int32),
      "num_speakers": np.full((b,), n, np.int32),
  }


def measure(config, speakers=None, compact=False, visual="scratch"):
  mesh = parallel.make_mesh(config.mesh_shape, config.mesh_axes)
  rules = tuple(tuple(r) for r in config.logical_axis_rules)
  batch_sharding = parallel.batch_sharding(mesh, rules)
  model = AVSeparator(config.model)
  optimizer, schedule = train.make_optimizer(config)
  if visual != "scratch":
    config = config.copy_and_resolve_references()
    config.visual_init = "timed"  # frozen; create_train_state loads nothing
    config.visual_learning_rate = 0.0
  host_batch = synthetic_batch(config, np.random.default_rng(0), speakers,
                               cached=visual == "cached")
  if compact:
    host_batch = train.compact_slots(host_batch)
  state, _, shardings = train.create_train_state(config, model, optimizer, mesh, rules)
  step = train.make_train_step(config, model, optimizer, schedule, shardings,
                               batch_sharding)
  batch = parallel.global_batch(host_batch, batch_sharding)
  cost = step.lower(state, batch).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  state, metrics = step(state, batch)
  jax.block_until_ready(metrics)
  times = []
  for _ in range(_STEPS.value):
    start = time.perf_counter()
    state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - start)
  return float(np.median(times)), float(cost.get("flops", 0.0))


def main(argv):
  del argv
  device = jax.devices()[0]
  print(f"device: {device.device_kind} x {jax.device_count()}")
  rows = []
  unknown = set(_VISUAL.value) - set(VISUAL_MODES)
  if unknown:
    raise app.UsageError(f"--visual: {sorted(unknown)} not in {VISUAL_MODES}")
  for variant in _VARIANTS.value:
    config = load_config(_CONFIG.value, variant)
    if _BATCH.value:
      config.batch_size = _BATCH.value
    if _SECONDS.value:
      config.segment_seconds = _SECONDS.value
    if _DTYPE.value:
      config.model.dtype = _DTYPE.value
    for visual in _VISUAL.value:
      for speakers in [int(n) for n in _SPEAKERS.value or [0]]:
        rows.append(_report(config, variant, speakers or None, device, visual))
  if _JSON.value:
    with open(_JSON.value, "w") as f:
      json.dump(rows, f, indent=1)


def _report(config, variant, speakers, device, visual):
  """Times one setting, prints its line and returns its JSON row."""
  seconds, flops = measure(config, speakers, _COMPACT.value, visual)
  slots = speakers if speakers and _COMPACT.value else config.model.num_speakers
  line = (f"{_CONFIG.value}:{variant}: batch {config.batch_size} x "
          f"{speakers or slots} speakers in {slots} slots x "
          f"{config.segment_seconds:g} s, visual {visual}: "
          f"{1 / seconds:.3f} steps/s, {config.batch_size / seconds:.2f} examples/s, "
          f"{flops / seconds / 1e12:.3f} TFLOP/s")
  mfu = None
  if _PEAK.value:
    mfu = flops / seconds / (_PEAK.value * 1e12 * jax.device_count())
    line += f", MFU {mfu:.1%}"
  print(line + f" (median of {_STEPS.value})", flush=True)
  return {"config": f"{_CONFIG.value}:{variant}", "batch_size": config.batch_size,
          "speakers": speakers or slots, "slots": slots,
          "segment_seconds": config.segment_seconds, "dtype": config.model.dtype,
          "visual": visual,
          "step_seconds": seconds,
          "xla_flops_per_step": flops, "tflops": flops / seconds / 1e12,
          "peak_tflops": _PEAK.value, "mfu": mfu, "devices": jax.device_count(),
          "device": device.device_kind, "median_of": _STEPS.value}


if __name__ == "__main__":
  app.run(main)
