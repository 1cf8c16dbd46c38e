"""Evaluation metrics computed on the host in float64 (they must match scipy.stats)."""

from __future__ import annotations

import numpy as np


def mse(predictions, targets) -> float:
  predictions, targets = _as_pair(predictions, targets)
  return float(np.mean((predictions - targets) ** 2))


def pearson(predictions, targets) -> float:
  """Pearson's r; NaN when either side is constant (correlation is undefined then)."""
  x, y = _as_pair(predictions, targets)
  x = x - x.mean()
  y = y - y.mean()
  denominator = np.sqrt(np.sum(x * x) * np.sum(y * y))
  if denominator == 0:
    return float("nan")
  return float(np.clip(np.sum(x * y) / denominator, -1.0, 1.0))


def average_ranks(values) -> np.ndarray:
  """1-based ranks; tied values share the mean of their ranks (scipy's 'average')."""
  values = np.asarray(values, np.float64)
  order = np.argsort(values, kind="mergesort")
  sorted_values = values[order]
  # Start index of each run of equal values in the sorted order.
  starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
  ends = np.r_[starts[1:], len(values)]
  run_ranks = (starts + ends + 1) / 2.0  # mean of ranks starts+1 .. ends
  ranks = np.empty(len(values), np.float64)
  ranks[order] = np.repeat(run_ranks, ends - starts)
  return ranks


def spearman(predictions, targets) -> float:
  x, y = _as_pair(predictions, targets)
  return pearson(average_ranks(x), average_ranks(y))


def regression_metrics(predictions, targets) -> dict[str, float]:
  return {
    "mse": mse(predictions, targets),
    "pearson": pearson(predictions, targets),
    "spearman": spearman(predictions, targets),
  }


def _as_pair(predictions, targets) -> tuple[np.ndarray, np.ndarray]:
  x = np.asarray(predictions, np.float64).ravel()
  y = np.asarray(targets, np.float64).ravel()
  if x.shape != y.shape or x.size == 0:
    raise ValueError(f"need two equally long, non-empty arrays; got {x.size} and {y.size} values")
  return x, y
