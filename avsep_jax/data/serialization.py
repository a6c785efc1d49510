"""Byte-reproducible TFDS records, whichever process or Beam worker serializes them.

TFDS writes each example as a tf.train.Example, whose features are a protobuf map.
Protobuf writes map entries in hash-table order, which differs between processes, so
the same examples would give different bytes on every build. Builders that wrap their
generation in `deterministic()` get the map in sorted key order instead. On Beam the
serializer object travels to the workers pickled, by reference to its class, so the
workers write the same bytes as a local build.
"""

import contextlib

from tensorflow_datasets.core import example_serializer
from tensorflow_datasets.core import split_builder


class SortedKeySerializer(example_serializer.ExampleSerializer):
  """tf.train.Example with its feature map serialized in sorted key order."""

  def serialize_example(self, example):
    return self.get_tf_example(example).SerializeToString(deterministic=True)


@contextlib.contextmanager
def deterministic():
  """Makes TFDS's split writers (plain and Beam) use `SortedKeySerializer` meanwhile."""
  original = split_builder.example_serializer.ExampleSerializer
  split_builder.example_serializer.ExampleSerializer = SortedKeySerializer
  try:
    yield
  finally:
    split_builder.example_serializer.ExampleSerializer = original
