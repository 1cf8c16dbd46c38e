"""Many seeds of one configuration: replicas stacked on a leading axis, and their summary.

Every train state in simjax is a stack of R replicas (R = --num_seeds, 1 for a plain
run): replica r is seed `first_seed + r`, with its own initialisation, dropout keys and
data order. One jitted, `jax.vmap`ped step trains all of them at once, so small models
that leave an accelerator idle train R seeds for about the price of one. Replica r of a
stacked run computes what a single run with seed `first_seed + r` computes (to float
tolerance: batching changes the order of floating-point sums).
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np


def seed_list(first_seed: int, num_seeds: int) -> list[int]:
  if num_seeds < 1:
    raise ValueError(f"num_seeds must be >= 1, got {num_seeds}")
  return [first_seed + r for r in range(num_seeds)]


def from_config(config: dict[str, Any], workdir: str) -> list[int]:
  """The seeds of a trained workdir, from its config.json."""
  train = config["train"]
  if "num_seeds" not in train:
    raise ValueError(
      f"{workdir} was trained before simjax stacked seeds (its checkpoints hold one unstacked "
      "replica): retrain it with this version, or evaluate it with the version that trained it"
    )
  return seed_list(train["seed"], train["num_seeds"])


def stacked_keys(seeds: Sequence[int]) -> jax.Array:
  """PRNGKey(seed) of every replica, stacked: [R, 2]."""
  return jnp.stack([jax.random.PRNGKey(s) for s in seeds])


def init_replicas(init: Callable[[jax.Array], Any], seed_list: Sequence[int]) -> tuple[Any, jax.Array]:
  """Every seed's initial variables, stacked, and its train-state RNG key: ([R, ...], [R, 2]).

  Seed s splits PRNGKey(s) into (init key, state key), as a single-seed run does. Each seed's
  variables come from one compiled, not vmapped, `init`: a jitted, vmapped LSTM init hangs
  XLA's CPU runtime (jax 0.10.2, 2+ replicas). Everything after init is vmapped.
  """
  compiled = jax.jit(init)
  keys = [jax.random.split(key) for key in stacked_keys(seed_list)]
  variables = [compiled(init_key) for init_key, _ in keys]
  stacked = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *variables)
  return stacked, jnp.stack([state_key for _, state_key in keys])


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


def is_resource_exhausted(error: BaseException) -> bool:
  return "RESOURCE_EXHAUSTED" in str(error) or "Out of memory" in str(error)


@contextlib.contextmanager
def explain_out_of_memory(num_seeds: int):
  """Turns a device out-of-memory error of a stacked run into advice (see out_of_memory_error)."""
  try:
    yield
  except jax.errors.JaxRuntimeError as e:
    if num_seeds > 1 and is_resource_exhausted(e):
      raise out_of_memory_error(num_seeds, e) from None
    raise


def out_of_memory_error(num_seeds: int, error: BaseException) -> MemoryError:
  first_line = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
  return MemoryError(
    f"{num_seeds} stacked replicas do not fit in device memory ({first_line}): rerun with "
    "--sequential_seeds (the same seeds one after another, same results to float tolerance) "
    "or fewer --num_seeds"
  )


# --------------------------------------------------------------------------------------
# Results of many seeds
# --------------------------------------------------------------------------------------
def combine(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
  """results.json fields of a multi-seed run.

  {"per_seed": [...], "seeds": [...], "summary": {"test.pearson": {"mean", "std", "min", "max",
  "n"}, ...}} plus, at the top level, every per-seed number averaged over seeds (kept as it is
  where all seeds agree, so a one-seed run reads exactly like the seed's own results).
  std is the sample standard deviation (ddof=1; 0 for one seed).
  """
  merged = _mean_tree(per_seed)
  merged.pop("seed", None)
  return {
    **merged,
    "seeds": [r["seed"] for r in per_seed],
    "per_seed": per_seed,
    "summary": summary(per_seed),
  }


def summary(per_seed: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
  flat = [_flatten_numbers(r) for r in per_seed]
  keys = [k for k in flat[0] if k != "seed" and all(k in f for f in flat)]
  return {k: stats([f[k] for f in flat]) for k in keys}


def stats(values: Sequence[float]) -> dict[str, float]:
  values = np.asarray(values, np.float64)
  finite = values[np.isfinite(values)]
  n = len(values)
  return {
    "mean": float(np.mean(values)),
    "std": float(np.std(values, ddof=1)) if n > 1 else 0.0,
    "min": float(np.min(values)),
    "max": float(np.max(values)),
    "n": n,
    **({} if len(finite) == n else {"non_finite": n - len(finite)}),
  }


def mean_std_text(values: Sequence[float], fmt: str = ".3f") -> str:
  s = stats(values)
  return f"{s['mean']:{fmt}} ± {s['std']:{fmt}}" if s["n"] > 1 else f"{s['mean']:{fmt}}"


def _mean_tree(items: list[Any]) -> Any:
  first = items[0]
  if isinstance(first, dict):
    return {k: _mean_tree([item[k] for item in items]) for k in first if all(k in i for i in items)}
  if _is_number(first):
    if all(item == first for item in items):
      return first
    return float(np.mean(items))
  if isinstance(first, list) and first and all(isinstance(i, list) and len(i) == len(first) for i in items):
    try:
      return np.mean(np.asarray(items, np.float64), axis=0).tolist()
    except (TypeError, ValueError):
      return first if all(i == first for i in items) else items
  return first if all(item == first for item in items) else items


def _flatten_numbers(tree: dict[str, Any], prefix: str = "") -> dict[str, float]:
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(_flatten_numbers(value, f"{prefix}{key}."))
    elif _is_number(value):
      flat[f"{prefix}{key}"] = float(value)
  return flat


def _is_number(value: Any) -> bool:
  return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def train(
  seed_list: Sequence[int],
  workdir: str,
  *,
  sequential: bool,
  run_one: Callable[[int, str], dict[str, Any]],
  run_stacked: Callable[[], dict[str, Any]],
) -> dict[str, Any]:
  """How every task trains its seeds: stacked in one program (`run_stacked()`), or with
  `sequential`, one after another (`run_one(seed, seed_workdir)`, see run_sequentially)."""
  from simjax.checkpoints import ConfigMismatchError

  if sequential and len(seed_list) > 1:
    return run_sequentially(run_one, seed_list, workdir)
  if sequential_seed_dirs(workdir):
    raise ConfigMismatchError(
      f"{workdir} holds a --sequential_seeds run: use a new --workdir for stacked seeds"
    )
  with explain_out_of_memory(len(seed_list)):
    return run_stacked()


def run_sequentially(
  run_one: Callable[[int, str], dict[str, Any]], seed_list: Sequence[int], workdir: str
) -> dict[str, Any]:
  """The seeds one after another (`run_one(seed, workdir)` trains one seed), each in
  <workdir>/seed_<s> (so each resumes on its own), then the combined results.json and
  metrics.jsonl in `workdir`, laid out like those of a stacked run."""
  from simjax import run_records
  from simjax.checkpoints import CONFIG_FILE, ConfigMismatchError

  if os.path.exists(os.path.join(workdir, CONFIG_FILE)):
    raise ConfigMismatchError(
      f"{workdir} holds a run with stacked seeds: use a new --workdir for --sequential_seeds"
    )
  os.makedirs(workdir, exist_ok=True)
  seed_dirs = [os.path.join(workdir, f"seed_{s}") for s in seed_list]
  runs = [run_one(s, d) for s, d in zip(seed_list, seed_dirs)]
  combined = combine([run["per_seed"][0] for run in runs])
  results = {
    k: v for k, v in runs[0].items() if k not in combined and k not in ("seeds", "per_seed", "summary")
  }
  results.update(combined)
  results["train_seconds"] = float(sum(run["train_seconds"] for run in runs))
  results["compile_seconds"] = float(
    sum(run.get("compile_seconds") or 0.0 for run in runs)
  )  # each seed's own
  results["sequential_seeds"] = [os.path.basename(d) for d in seed_dirs]
  rows = _merge_rows([run_records.read_metrics(d) for d in seed_dirs])
  with open(os.path.join(workdir, run_records.METRICS_FILE), "w") as f:
    for row in rows:
      f.write(json.dumps(row, sort_keys=True) + "\n")
  run_records.write_json(os.path.join(workdir, run_records.RESULTS_FILE), results)
  return results


def sequential_seed_dirs(workdir: str) -> list[str] | None:
  """The seed_<s> workdirs of a --sequential_seeds run, in seed order; None for other workdirs."""
  path = os.path.join(workdir, "results.json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    names = json.load(f).get("sequential_seeds")
  return [os.path.join(workdir, name) for name in names] if names else None


def concatenate(trees: list[Any]) -> Any:
  """Stacked states of separately trained seeds -> one stacked state (replicas in order)."""
  # Leaf by leaf: each state carries its own (equal, but distinct) apply_fn and optimizer objects.
  leaves, treedef = jax.tree_util.tree_flatten(trees[0])
  others = [jax.tree_util.tree_leaves(tree) for tree in trees[1:]]
  return treedef.unflatten([jnp.concatenate(xs) for xs in zip(leaves, *others)])


def _merge_rows(rows_by_seed: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
  """Epoch rows of seeds trained one after another, merged like a stacked run's rows
  (mean under each name, every seed's value under "per_seed"; epoch seconds add up)."""
  merged = []
  for epoch_rows in zip(*rows_by_seed):
    per_seed = {key: [r["per_seed"][key][0] for r in epoch_rows] for key in epoch_rows[0]["per_seed"]}
    merged.append(
      {
        "epoch": epoch_rows[0]["epoch"],
        **{k: float(np.mean(v)) for k, v in per_seed.items()},
        "epoch_seconds": float(sum(r["epoch_seconds"] for r in epoch_rows)),
        "compile_seconds": float(sum(r.get("compile_seconds", 0.0) for r in epoch_rows)),
        "per_seed": per_seed,
      }
    )
  return merged
