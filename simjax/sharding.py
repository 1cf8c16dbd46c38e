"""Data parallelism over every local device with `jax.jit` + shardings (no pmap).

Batches are split along their first axis over a 1-D mesh named "data"; parameters and
optimizer state are replicated. XLA inserts the cross-device reductions, so losses,
gradients and BatchNorm statistics are those of the global batch.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from simjax.errors import BatchSizeError

DATA_AXIS = "data"


def data_mesh() -> Mesh:
  return Mesh(np.array(jax.local_devices()), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh, batch_axis: int = 0) -> NamedSharding:
  """Split along `batch_axis` (1 for [replicas, batch, ...] arrays of stacked seeds)."""
  return NamedSharding(mesh, PartitionSpec(*([None] * batch_axis), DATA_AXIS))


def check_batch_size(batch_size: int, mesh: Mesh) -> None:
  devices = mesh.devices.size
  if batch_size % devices:
    raise BatchSizeError(batch_size, devices)


def replicate(tree: Any, mesh: Mesh) -> Any:
  return jax.device_put(tree, replicated(mesh))


def shard_batch(batch: Any, mesh: Mesh, batch_axis: int = 0) -> Any:
  return jax.device_put(batch, batch_sharded(mesh, batch_axis))
