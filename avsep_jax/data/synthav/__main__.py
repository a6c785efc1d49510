r"""Builds SynthAV offline.

  python -m avsep_jax.data.synthav --config=tiny --data_dir=/tmp/tfds
  python -m avsep_jax.data.synthav --config=large --data_dir=DIR \
      [--beam_pipeline_options=runner=DataflowRunner,project=P,...]

`large` generates on Apache Beam (the DirectRunner with --num_workers processes unless
--beam_pipeline_options name another runner), `tiny` and `small` in a local worker
pool; --beam / --nobeam force either.

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
_BEAM = flags.DEFINE_boolean("beam", None,
                             "Generate through Apache Beam (default: the config's "
                             "choice, Beam for large, or Beam when "
                             "--beam_pipeline_options are given).")
_BEAM_OPTIONS = flags.DEFINE_string(
    "beam_pipeline_options", None,
    "Comma-separated Beam pipeline options, as `tfds build` takes them, e.g. "
    "runner=DataflowRunner,project=P,region=R,temp_location=gs://B/tmp.")


def _du(path):
  return sum(os.path.getsize(os.path.join(d, f))
             for d, _, files in os.walk(path) for f in files)


def main(argv):
  del argv
  prepared = os.path.join(sources.dataset_dir(f"synthav/{_CONFIG.value}", _DATA_DIR.value),
                          str(builder_lib.SynthAV.VERSION), "dataset_info.json")
  reused = os.path.isfile(prepared)
  start = time.perf_counter()
  builder = builder_lib.build(_CONFIG.value, _DATA_DIR.value, _WORKERS.value,
                              _BEAM.value, _BEAM_OPTIONS.value)
  seconds = time.perf_counter() - start
  counts = {k: v.num_examples for k, v in builder.info.splits.items()}
  print(f"SynthAV {_CONFIG.value}: {builder.data_dir}")
  print(f"  utterances per split: {counts}")
  print(f"  size on disk: {_du(builder.data_dir) / 2**20:.1f} MiB")
  print(f"  took {seconds:.1f} s" + (" (it was already built)" if reused else ""))


if __name__ == "__main__":
  app.run(main)
