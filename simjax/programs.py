"""Programs: every program a run compiles, with abstract inputs, so it can be compiled anywhere.

A task's `programs(...)` function builds the same jitted functions its runs compile, with
`jax.ShapeDtypeStruct` inputs placed on a given mesh instead of arrays. The checks in
simjax.deviceless compile them for devices that are not here (a TPU or GPU topology), and
read their memory and cost; the runs themselves compile the very same functions with
their data.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
from jax.sharding import Sharding


@dataclasses.dataclass(frozen=True)
class Program:
  """One jitted program and the abstract inputs a run gives it."""

  name: str  # e.g. "train_step", "epoch", "predict_tta=flip"
  fn: Callable  # the jax.jit-wrapped function (not compiled)
  args: tuple  # ShapeDtypeStructs with shardings (and static values where the function takes them)
  #: How many times per epoch a run executes what XLA's cost analysis counts for one call: a
  #: program whose body is a loop is counted once per call, its loop body once (e.g. a fused
  #: epoch: its steps; an evaluation scanning its batches: the batches).
  counted_per_epoch: int = 1


def abstract_state(create: Callable[[list[int]], Any], num_seeds: int, sharding: Sharding) -> Any:
  """The stacked train state `create(seeds)` builds for `num_seeds` seeds, as ShapeDtypeStructs
  placed with `sharding`: traced, never computed."""
  return abstract(jax.eval_shape(lambda: create(list(range(num_seeds)))), sharding)


def abstract(tree: Any, sharding: Sharding) -> Any:
  """`tree`'s arrays (or shapes) as ShapeDtypeStructs placed with `sharding`."""
  return jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)
