"""Mesh, logical-axis rules and sharding helpers (jit + named shardings; no pmap)."""

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import NamedSharding


def make_mesh(shape, axes):
  """A device mesh from the config; one -1 in `shape` takes all remaining devices.

  Axes are `Auto`: Linen's logical constraints are sharding hints, which explicit
  axes (jax.make_mesh's default) would turn into hard assertions.
  """
  shape = list(shape)
  n = jax.device_count()
  if shape.count(-1) > 1:
    raise ValueError(f"mesh_shape {tuple(shape)} may hold at most one -1")
  if -1 in shape:
    known = int(np.prod([s for s in shape if s != -1]))
    if n % known:
      raise ValueError(f"mesh_shape {tuple(shape)} does not divide {n} devices")
    shape[shape.index(-1)] = n // known
  if int(np.prod(shape)) != n:
    raise ValueError(f"mesh_shape {tuple(shape)} needs {int(np.prod(shape))} devices, "
                     f"{n} are present")
  return jax.make_mesh(tuple(shape), tuple(axes),
                       axis_types=(jax.sharding.AxisType.Auto,) * len(axes))


def batch_sharding(mesh, rules):
  """Sharding of a batch: leading axis over the mesh axes that 'batch' maps to."""
  return NamedSharding(mesh, nn.logical_to_mesh_axes(("batch",), rules))


def state_shardings(abstract_state, mesh, rules):
  """Shardings for a (boxed) abstract train state from its logical axis names."""
  spec = nn.get_partition_spec(abstract_state)
  return nn.logical_to_mesh_sharding(spec, mesh, rules)


def global_batch(local_batch, sharding):
  """Host-local numpy batch -> global jax.Arrays sharded along the batch axis.

  Arrays already laid out by `sharding` (batches mixed on the devices) pass through:
  copying them to the host and back would cost what on-device mixing saves.
  """
  def to_global(x):
    if isinstance(x, jax.Array) and x.sharding.is_equivalent_to(sharding, x.ndim):
      return x
    return jax.make_array_from_process_local_data(sharding, np.asarray(x))

  return jax.tree.map(to_global, local_batch)


def local_rows(x):
  """The rows of a batch-sharded global array that belong to this process, as numpy.

  With one process that is the whole array; with several, the process's own slice of
  the batch, matching the host-local batch it fed in.
  """
  if jax.process_count() == 1:
    return np.asarray(x)
  shards = sorted(x.addressable_shards, key=lambda s: s.index[0].start or 0)
  rows, seen = [], set()
  for shard in shards:
    start = shard.index[0].start or 0
    if start not in seen:  # replicas along non-batch mesh axes hold the same rows
      seen.add(start)
      rows.append(np.asarray(shard.data))
  return np.concatenate(rows)


def gather_rows(rows):
  """Every process's (N_p, K) host rows, concatenated in process order: (sum N_p, K).

  Processes may hold different row counts (e.g. speakers scored in mixtures of 2..6).
  With one process, `rows` itself.
  """
  if jax.process_count() == 1:
    return rows
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  counts = np.asarray(multihost_utils.process_allgather(np.array([len(rows)]), tiled=True))
  padded = np.zeros((counts.max(),) + rows.shape[1:], rows.dtype)
  padded[:len(rows)] = rows
  every = np.asarray(multihost_utils.process_allgather(padded))  # (P, max N_p, K)
  return np.concatenate([every[p, :n] for p, n in enumerate(counts)])


def nbytes(tree):
  """Bytes of all arrays in a pytree, counted once (as if unsharded)."""
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))


def nbytes_on(tree, device):
  """Bytes of a pytree's shards that live on `device`: what sharding saves."""
  return sum(s.data.nbytes for x in jax.tree.leaves(tree)
             for s in x.addressable_shards if s.device == device)
