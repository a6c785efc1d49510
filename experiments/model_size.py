r"""Parameter count and compute cost of a config's model.

  python experiments/model_size.py --config=configs/6spk.py:lite [--seconds=4]

Prints parameters per component and GFLOPs per second of audio for one mixture with
every speaker slot filled, from XLA's cost analysis of the compiled forward pass.
The soft-DTW table is a loop whose body XLA counts once; its true cost
((T + F) * F * ~10 FLOPs per speaker) is well under 0.1 % of the total.
"""

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import config_flags

from avsep_jax import model as model_lib

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file[:variant].")
_SECONDS = flags.DEFINE_float("seconds", 4.0, "Audio length the cost is measured on.")


def count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def main(argv):
  del argv
  config = _CONFIG.value.model
  model = model_lib.AVSeparator(config)
  samples = int(_SECONDS.value * config.sample_rate)
  frames = int(round(_SECONDS.value * config.video_fps))
  s = config.num_speakers
  args = (jax.ShapeDtypeStruct((1, samples), jnp.float32),
          jax.ShapeDtypeStruct((1, s, frames, config.roi_size, config.roi_size),
                               jnp.uint8),
          jax.ShapeDtypeStruct((1, s), jnp.bool_))
  variables = jax.eval_shape(model.init, jax.random.key(0), *args)
  params = variables["params"]
  compiled = jax.jit(model.apply).lower(variables, *args).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  gflops_per_second = cost["flops"] / 1e9 / _SECONDS.value

  name = config_flags.get_config_filename(flags.FLAGS["config"])
  print(f"{name}: {s} speaker slots, compute dtype {config.dtype}")
  for name in params:
    print(f"  {name:16s} {count(params[name]) / 1e6:8.3f} M params")
  print(f"  {'total':16s} {count(params) / 1e6:8.3f} M params")
  print(f"  forward: {gflops_per_second:.2f} GFLOPs per second of audio "
        f"({_SECONDS.value:g} s input, {s} speakers)")


if __name__ == "__main__":
  flags.mark_flag_as_required("config")
  app.run(main)
