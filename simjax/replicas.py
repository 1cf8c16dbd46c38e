"""Seeds as replicas: every train state is a stack of R replicas on a leading axis.

Replica r is seed `first_seed + r`, with its own initialisation, dropout keys and data
order (R = 1 for a plain run). One jitted, `jax.vmap`ped step trains all of them at once,
so small models that leave an accelerator idle train R seeds for about the price of one.
Replica r of a stacked run computes what a single run with that seed computes (to float
tolerance: batching changes the order of floating-point sums).
"""

from __future__ import annotations

import os
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from simjax.errors import ConfigError, OutOfDeviceMemory, WorkdirError


def seed_list(first_seed: int, num_seeds: int) -> list[int]:
  if num_seeds < 1:
    raise ConfigError(f"num_seeds must be >= 1, got {num_seeds}", settings=("num_seeds",))
  return [first_seed + r for r in range(num_seeds)]


def from_config(config: dict[str, Any], workdir: str) -> list[int]:
  """The seeds of a trained workdir, from its config.json."""
  train = config["train"]
  if "num_seeds" not in train:
    raise WorkdirError(
      f"{workdir} was trained before simjax stacked seeds (its checkpoints hold one unstacked "
      "replica): retrain it with this version, or evaluate it with the version that trained it",
      workdir,
    )
  return seed_list(train["seed"], train["num_seeds"])


def stacked_keys(seeds: Sequence[int]) -> jax.Array:
  """PRNGKey(seed) of every replica, stacked: [R, 2]."""
  return jnp.stack([jax.random.PRNGKey(s) for s in seeds])


def init_replicas(init: Callable[[jax.Array], Any], seeds: Sequence[int]) -> tuple[Any, jax.Array]:
  """Every seed's initial variables, stacked, and its train-state RNG key: ([R, ...], [R, 2]).

  Seed s splits PRNGKey(s) into (init key, state key), as a single-seed run does. Each seed's
  variables come from one compiled, not vmapped, `init`: a jitted, vmapped LSTM init hangs
  XLA's CPU runtime (jax 0.10.2, 2+ replicas). Everything after init is vmapped.
  """
  compiled = jax.jit(init)
  keys = [jax.random.split(key) for key in stacked_keys(seeds)]
  variables = [compiled(init_key) for init_key, _ in keys]
  stacked = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *variables)
  return stacked, jnp.stack([state_key for _, state_key in keys])


def check_memory(create_state: Callable[[list[int]], Any], seeds: list[int]) -> None:
  """Refuses, before any work, more replicas than one device's memory can hold: their train
  states (parameters, optimizer state) and their gradients, activations not counted, so what
  this refuses can never fit. `create_state(seeds)` builds a stacked state; it runs
  abstractly here, for the first seed."""
  if len(seeds) < 2:
    return
  limit = device_memory_bytes()
  one = jax.eval_shape(lambda: create_state(seeds[:1]))
  size = lambda tree: sum(x.size * x.dtype.itemsize for x in jax.tree_util.tree_leaves(tree))
  per_replica = size(one) + size(one.params)  # the state, and a gradient per parameter
  need = per_replica * len(seeds)
  if limit and need > limit:
    raise OutOfDeviceMemory(
      len(seeds),
      f"their train states and gradients alone need {need / 2**30:.1f} GiB, {per_replica / 2**20:.1f} MiB "
      f"per replica; one {jax.devices()[0].platform.upper()} device has {limit / 2**30:.1f} GiB; "
      f"at most {max(1, limit // per_replica)} could fit",
    )


def device_memory_bytes() -> int | None:
  """One device's memory: what the accelerator reports, or the machine's RAM on CPU; None if unknown."""
  device = jax.devices()[0]
  stats = device.memory_stats() if device.platform != "cpu" else None
  if stats and stats.get("bytes_limit"):
    return int(stats["bytes_limit"])
  try:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
  except (ValueError, OSError, AttributeError):
    return None


def num_replicas(state: Any) -> int:
  return int(state.step.shape[0])


def replica(tree: Any, r: int) -> Any:
  """Replica r of a stacked pytree (arrays lose their leading axis)."""
  return jax.tree_util.tree_map(lambda x: x[r], tree)


def select(mask: np.ndarray, new: Any, old: Any) -> Any:
  """Per replica: `new` where mask[r], else `old` (e.g. each seed's best state so far)."""
  mask = jnp.asarray(mask)

  def pick(a, b):
    return jnp.where(mask.reshape((-1,) + (1,) * (a.ndim - 1)), a, b)

  return jax.tree_util.tree_map(pick, new, old)


def concatenate(trees: list[Any]) -> Any:
  """Stacked states of separately trained seeds -> one stacked state (replicas in order)."""
  # Leaf by leaf: each state carries its own (equal, but distinct) apply_fn and optimizer objects.
  leaves, treedef = jax.tree_util.tree_flatten(trees[0])
  others = [jax.tree_util.tree_leaves(tree) for tree in trees[1:]]
  return treedef.unflatten([jnp.concatenate(xs) for xs in zip(leaves, *others)])
