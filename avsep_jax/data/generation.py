"""What SynthAV and the real-corpus builders share about generating: two runners, one result.

Every example comes from one per-example function. A builder runs it either in a
plain Python generator (a local worker pool) or in an Apache Beam pipeline (its
`_generate_examples` returns a `beam.PTransform`, which TFDS runs on the runner of
`DownloadConfig(beam_runner=..., beam_options=...)`: DirectRunner here, Dataflow,
Spark or Flink at scale). Both paths give the same keys and, with records serialized
in sorted key order, byte-identical records.

Which path: the builder's `use_beam` argument when given; otherwise Beam when the
config says so (`config.beam`, e.g. SynthAV `large`) or when the caller passed a Beam
runner or options (`DownloadConfig(beam_runner=..., beam_options=...)`).

The data directory may be a bucket (gs://, s3://; through etils.epath and fsspec):
ArrayRecord writes only local files, so each shard is written to a local temporary
file and then copied there.
"""

import os
import shutil
import tempfile

from etils import epath
import tensorflow_datasets as tfds
from tensorflow_datasets.core import writer as writer_lib

from avsep_jax.data import serialization


class StagingExampleWriter(writer_lib.ExampleWriter):
  """TFDS's shard writer, through a local file when the shard's path is remote."""

  def write(self, path, examples):
    if "://" not in os.fspath(path):
      return super().write(path, examples)
    with tempfile.TemporaryDirectory() as tmp:
      local = os.path.join(tmp, epath.Path(path).name)
      positions = super().write(local, examples)
      with open(local, "rb") as src, epath.Path(path).open("wb") as dst:
        shutil.copyfileobj(src, dst, 16 << 20)
    return positions


class BeamOptionalBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """A GeneratorBasedBuilder that generates with a worker pool or with Beam."""

  def __init__(self, *, num_workers: int = 2, use_beam: bool | None = None, **kwargs):
    """Chooses the generation path.

    Args:
      num_workers: processes of the plain path's pool (0: this process).
      use_beam: True or False forces a path; None chooses as the module says.
      **kwargs: for `tfds.core.GeneratorBasedBuilder`.
    """
    super().__init__(**kwargs)
    self.num_workers = num_workers
    self._use_beam = use_beam
    self._beam_requested = False

  @property
  def uses_beam(self) -> bool:
    """Whether `download_and_prepare` will generate through Beam."""
    if self._use_beam is not None:
      return self._use_beam
    return bool(getattr(self.builder_config, "beam", False)) or self._beam_requested

  def _generate_splits(self, dl_manager, download_config):
    # Seen here, before `_split_generators` chooses each split's generator.
    self._beam_requested = (download_config.beam_runner is not None
                            or download_config.beam_options is not None)
    return super()._generate_splits(dl_manager, download_config)

  def _download_and_prepare(self, dl_manager, download_config):
    with serialization.deterministic():
      super()._download_and_prepare(dl_manager, download_config)

  def _example_writer(self):
    return StagingExampleWriter(file_format=self.info.file_format)
