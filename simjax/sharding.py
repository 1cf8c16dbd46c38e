"""Data parallelism over every device with `jax.jit` + shardings (no pmap).

Batches are split along their first axis over a 1-D mesh named "data"; parameters and
optimizer state are replicated. XLA inserts the cross-device reductions, so losses,
gradients and BatchNorm statistics are those of the global batch. In a multi-process run
(simjax.distributed) the mesh spans the devices of every process, and each process places
only its own devices' rows of a batch.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from simjax.errors import BatchSizeError

DATA_AXIS = "data"


def data_mesh() -> Mesh:
  """Every device of the run: this process's, and in a multi-process run all processes'."""
  return Mesh(np.array(jax.devices()), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh, batch_axis: int = 0) -> NamedSharding:
  """Split along `batch_axis` (1 for [replicas, batch, ...] arrays of stacked seeds)."""
  return NamedSharding(mesh, PartitionSpec(*([None] * batch_axis), DATA_AXIS))


def check_batch_size(batch_size: int, mesh: Mesh) -> None:
  devices = mesh.devices.size
  if batch_size % devices:
    raise BatchSizeError(batch_size, devices, processes=jax.process_count())


def replicate(tree: Any, mesh: Mesh) -> Any:
  """A copy of `tree` on every device of the mesh (the values must be the same in every process)."""
  return _put(tree, replicated(mesh))


def shard_batch(batch: Any, mesh: Mesh, batch_axis: int = 0) -> Any:
  """The global batch (host arrays, the same in every process) split over the mesh."""
  return _put(batch, batch_sharded(mesh, batch_axis))


def _put(tree: Any, sharding: NamedSharding) -> Any:
  """`jax.device_put`; with several processes each transfers only its own devices' parts
  (device_put would first check that every process holds the same whole array, gathering
  all of them)."""
  if jax.process_count() == 1:
    return jax.device_put(tree, sharding)
  return jax.tree_util.tree_map(
    lambda x: jax.make_array_from_callback(np.shape(x), sharding, lambda index: np.asarray(x)[index]), tree
  )


def fetch(tree: Any) -> Any:
  """Host (numpy) values of device arrays, also of those split over other processes' devices
  (gathered from every process: in a multi-process run every process must call this at the
  same point, as it does running the same program)."""
  if jax.process_count() == 1:
    return jax.device_get(tree)

  def get(x):
    if not isinstance(x, jax.Array) or x.is_fully_addressable or x.is_fully_replicated:
      return np.asarray(x)
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))

  return jax.tree_util.tree_map(get, tree)
