"""results.json of many seeds: each seed's numbers, their mean, std, min and max."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from flax import traverse_util


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


def _flatten_numbers(tree: dict[str, Any]) -> dict[str, float]:
  flat = traverse_util.flatten_dict(tree, sep=".")
  return {k: float(v) for k, v in flat.items() if _is_number(v)}


def _is_number(value: Any) -> bool:
  return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
