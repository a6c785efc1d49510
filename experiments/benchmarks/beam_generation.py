r"""SynthAV generation rate: the plain worker pool against Beam's DirectRunner.

  python experiments/benchmarks/beam_generation.py --speakers=8,4,4,3 \
      --utterances=6,3,3,2 --num_workers=2 --repeats=3

Builds a slice of SynthAV `large` (its first speakers of each split, a few utterances
each: the same voices and seeds as `large`) into fresh directories, --repeats times per
path, and prints examples/s (median) of each path: the plain generator with
--num_workers pool processes, and Beam's DirectRunner with --num_workers worker
processes (`direct_running_mode=multi_processing`). Also checks that the two paths
wrote byte-identical records in the same order (shard boundaries may differ: TFDS
cuts shards by count on one path and by key range on the other).
"""

import pathlib
import tempfile
import time

from absl import app
from absl import flags
from array_record.python import array_record_data_source
import numpy as np

from avsep_jax.data import beam as beam_lib
from avsep_jax.data.synthav import builder as builder_lib

_SPEAKERS = flags.DEFINE_list("speakers", ["8", "4", "4", "3"],
                              "Speakers per split: train, validation, test, test_flite.")
_UTTERANCES = flags.DEFINE_list("utterances", ["6", "3", "3", "2"],
                                "Utterances per speaker, per split.")
_WORKERS = flags.DEFINE_integer("num_workers", 2, "Processes of either path.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Builds per path (median).")


def build(config, data_dir, use_beam):
  """Seconds to build `config` into `data_dir`, and the builder."""
  builder = builder_lib.SynthAV(config=config, data_dir=data_dir,
                                file_format="array_record",
                                num_workers=_WORKERS.value, use_beam=use_beam)
  download_config = beam_lib.download_config(num_workers=_WORKERS.value) if use_beam else None
  start = time.perf_counter()
  builder.download_and_prepare(download_config=download_config)
  return time.perf_counter() - start, builder


def records(builder):
  """{split: [serialized record, in file order]} of a build."""
  root = pathlib.Path(builder.data_dir)
  out = {}
  for split in builder.info.splits:
    paths = sorted(str(p) for p in root.glob(f"*-{split}.array_record-*"))
    source = array_record_data_source.ArrayRecordDataSource(paths)
    out[split] = [source[i] for i in range(len(source))]
  return out


def main(argv):
  del argv
  large = next(c for c in builder_lib.BUILDER_CONFIGS if c.name == "large")
  config = builder_lib.make_config(
      "large_slice", "The first speakers of large.",
      [int(n) for n in _SPEAKERS.value], [int(n) for n in _UTTERANCES.value])
  config.seed = large.seed
  results, outputs = {}, {}
  with tempfile.TemporaryDirectory() as tmp:
    for r in range(_REPEATS.value):
      for use_beam in (False, True):
        seconds, builder = build(config, f"{tmp}/{r}_{use_beam}", use_beam)
        examples = sum(s.num_examples for s in builder.info.splits.values())
        results.setdefault(use_beam, []).append(examples / seconds)
        outputs[use_beam] = records(builder)
    identical = outputs[False] == outputs[True]
  print(f"SynthAV large slice: {examples} examples, {_WORKERS.value} workers, "
        f"{_REPEATS.value} builds per path")
  for use_beam, rates in results.items():
    name = "Beam DirectRunner" if use_beam else "plain pool"
    print(f"  {name:18s} {np.median(rates):.2f} examples/s (median; all: "
          f"{', '.join(f'{x:.2f}' for x in rates)})")
  print(f"  byte-identical records: {identical}")


if __name__ == "__main__":
  app.run(main)
