r"""Builds SynthAV offline.

  python -m avsep_jax.data.synthav --config=tiny --data_dir=/tmp/tfds

Prints where the dataset went, its size on disk and how long it took.
"""

import os
import time

from absl import app
from absl import flags

from avsep_jax.data import sources
from avsep_jax.data.synthav import builder as builder_lib

_CONFIG = flags.DEFINE_enum("config", "small", [c.name for c in builder_lib.BUILDER_CONFIGS],
                            "Which SynthAV size to build.")
_DATA_DIR = flags.DEFINE_string("data_dir", os.path.expanduser("~/tensorflow_datasets"),
                                "TFDS data directory to build into.")
_WORKERS = flags.DEFINE_integer("num_workers", os.cpu_count() or 2,
                                "Processes synthesizing and rendering utterances.")


def _du(path):
  return sum(os.path.getsize(os.path.join(d, f))
             for d, _, files in os.walk(path) for f in files)


def main(argv):
  del argv
  prepared = os.path.join(sources.dataset_dir(f"synthav/{_CONFIG.value}", _DATA_DIR.value),
                          str(builder_lib.SynthAV.VERSION), "dataset_info.json")
  reused = os.path.isfile(prepared)
  start = time.perf_counter()
  builder = builder_lib.build(_CONFIG.value, _DATA_DIR.value, _WORKERS.value)
  seconds = time.perf_counter() - start
  counts = {k: v.num_examples for k, v in builder.info.splits.items()}
  print(f"SynthAV {_CONFIG.value}: {builder.data_dir}")
  print(f"  utterances per split: {counts}")
  print(f"  size on disk: {_du(builder.data_dir) / 2**20:.1f} MiB")
  print(f"  took {seconds:.1f} s" + (" (it was already built)" if reused else ""))


if __name__ == "__main__":
  app.run(main)
