"""Evaluation metrics computed on the host in float64, by scipy.stats."""

from __future__ import annotations

import numpy as np
import scipy.stats


def mse(predictions, targets) -> float:
  predictions, targets = _as_pair(predictions, targets)
  return float(np.mean((predictions - targets) ** 2))


def pearson(predictions, targets) -> float:
  """Pearson's r; NaN when either side is constant (correlation is undefined then)."""
  x, y = _as_pair(predictions, targets)
  if _either_constant(x, y):
    return float("nan")
  return float(scipy.stats.pearsonr(x, y).statistic)


def spearman(predictions, targets) -> float:
  """Spearman's rho (ties share their average rank); NaN when either side is constant."""
  x, y = _as_pair(predictions, targets)
  if _either_constant(x, y):
    return float("nan")
  return float(scipy.stats.spearmanr(x, y).statistic)


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


def _either_constant(x: np.ndarray, y: np.ndarray) -> bool:
  # Checked here rather than left to scipy, which warns (ConstantInputWarning) and refuses a single value.
  return bool(np.all(x == x[0]) or np.all(y == y[0]))
