r"""Builds LRS2, LRS3 or VoxCeleb2 from a manual download directory.

  python -m avsep_jax.data.corpora --corpus lrs3 --manual_dir DIR --data_dir DIR \
      [--config main|pretrain] [--num_workers N] [--nobeam] \
      [--beam_pipeline_options=runner=FlinkRunner,flink_master=HOST:8081,...]

Generation runs on Apache Beam (the DirectRunner with --num_workers processes unless
--beam_pipeline_options name another runner); --nobeam uses a local worker pool.

Prints where the dataset went, its clips and speakers per split, the clips skipped (no
face, missing, unreadable) and how long it took. Errors print one `error:` line.
"""

import os
import sys
import time

from absl import app, flags

from avsep_jax.data import corpora

_CORPUS = flags.DEFINE_enum("corpus", None, sorted(corpora.BUILDERS), "Which corpus.")
_MANUAL_DIR = flags.DEFINE_string("manual_dir", None,
                                  "The corpus as downloaded and extracted (official "
                                  "layout; see each builder's instructions).")
_DATA_DIR = flags.DEFINE_string("data_dir", os.path.expanduser("~/tensorflow_datasets"),
                                "TFDS data directory to build into.")
_CONFIG = flags.DEFINE_string("config", None,
                              "Builder config: main (default) or pretrain (LRS2/LRS3).")
_WORKERS = flags.DEFINE_integer("num_workers", os.cpu_count() or 2,
                                "Processes running the face pipeline (0: this one).")
_BEAM = flags.DEFINE_boolean("beam", True, "Generate through Apache Beam.")
_BEAM_OPTIONS = flags.DEFINE_string(
    "beam_pipeline_options", None,
    "Comma-separated Beam pipeline options, as `tfds build` takes them, e.g. "
    "runner=DataflowRunner,project=P,region=R,temp_location=gs://B/tmp.")


def main(argv):
  del argv
  start = time.perf_counter()
  try:
    builder = corpora.build(_CORPUS.value, os.path.expanduser(_MANUAL_DIR.value),
                            os.path.expanduser(_DATA_DIR.value), _CONFIG.value,
                            _WORKERS.value, _BEAM.value, _BEAM_OPTIONS.value)
  except (FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  seconds = time.perf_counter() - start
  meta = builder.info.metadata
  print(f"{builder.name}/{builder.builder_config.name}: {builder.data_dir}")
  for split, info in sorted(builder.info.splits.items()):
    print(f"  {split}: {info.num_examples} clips, {meta['speakers'].get(split)} "
          f"speakers, skipped {meta['skipped'].get(split) or 'none'}")
  print(f"  took {seconds:.1f} s")


if __name__ == "__main__":
  flags.mark_flags_as_required(["corpus", "manual_dir"])
  app.run(main)
