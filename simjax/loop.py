"""The epoch loop every task uses: train, evaluate on dev, checkpoint, log, resume.

A task supplies `train_epoch(state, epoch)` and `evaluate(state)`; this module owns what
must be identical for all tasks: resuming from the latest checkpoint (a killed run
restarted with the same command ends with the same numbers), the best-on-dev
checkpoint, reduce-on-plateau, stopping on a non-finite loss without losing the last good
checkpoint, and metrics.jsonl / TensorBoard rows.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from simjax import optim
from simjax.checkpoints import CheckpointStore
from simjax.run_records import MetricsLog


class TrainingDiverged(RuntimeError):
  """The loss became NaN or infinite."""


@dataclasses.dataclass
class EpochResult:
  state: Any
  step_losses: np.ndarray  # one loss per train step, to find the first bad step
  metrics: dict[str, float]  # logged as-is, e.g. {"train_mse": ...}


@dataclasses.dataclass(frozen=True)
class Selection:
  """Which dev metric picks the best checkpoint, and which one drives the plateau."""

  best_metric: str | None  # key in the evaluate() dict, e.g. "pearson"; None: keep no best checkpoint
  higher_is_better: bool = True
  plateau_metric: str | None = None  # e.g. "mse" (lower is better); None: no plateau
  eval_name: str = "dev"  # prefix of the evaluated split's metrics in the logged rows


def fit(
  state: Any,
  *,
  store: CheckpointStore,
  epochs: int,
  train_epoch: Callable[[Any, int], EpochResult],
  evaluate: Callable[[Any], dict[str, float]],
  selection: Selection,
  plateau: optim.optax.GradientTransformationExtraArgs | None = None,
  on_epoch: Callable[[dict[str, Any]], None] = lambda row: None,
) -> tuple[Any, dict[str, Any]]:
  """Trains until `epochs` are done (resuming if the workdir has a checkpoint).

  Returns the final state and checkpoint meta: {"epoch", "history", "best", "train_seconds"}.
  """
  log = MetricsLog(store.workdir)
  try:
    meta = {"epoch": 0, "history": [], "best": None, "train_seconds": 0.0}
    restored = store.restore_latest(abstract_state(state))
    if restored is not None:
      state, meta = restored
    log.reset(meta["history"])
    # Compiled once: run eagerly, optax's plateau update would recompile every epoch.
    advance_plateau = jax.jit(
      lambda plateau_state, value: optim.advance_plateau(plateau, plateau_state, value)
    )
    for row in meta["history"]:
      on_epoch(row)

    for epoch in range(meta["epoch"] + 1, epochs + 1):
      first_step = int(state.step)  # read now: train_epoch may donate `state`'s buffers
      start = time.perf_counter()
      result = train_epoch(state, epoch)
      jax.block_until_ready(result.state)
      epoch_seconds = time.perf_counter() - start  # the check below compiles on first use: not timed
      _check_finite(result.step_losses, result.state, first_step=first_step, epoch=epoch, store=store)
      state = result.state
      dev = evaluate(state)
      row = {
        "epoch": epoch,
        **result.metrics,
        **{f"{selection.eval_name}_{k}": v for k, v in dev.items()},
        "learning_rate_scale": float(state.plateau_state.scale),
        "epoch_seconds": epoch_seconds,
      }
      if plateau is not None and selection.plateau_metric is not None:
        state = state.replace(
          plateau_state=advance_plateau(state.plateau_state, dev[selection.plateau_metric])
        )
      value = dev.get(selection.best_metric, float("nan"))
      is_best = selection.best_metric is not None and (
        meta["best"] is None or _better(value, meta["best"]["value"], selection.higher_is_better)
      )
      if is_best:
        meta["best"] = {
          "epoch": epoch,
          "step": int(state.step),
          "metric": selection.best_metric,
          "value": value,
        }
      meta["epoch"] = epoch
      meta["history"].append(row)
      meta["train_seconds"] += epoch_seconds
      store.save(int(state.step), state, meta, is_best=is_best)  # before the log: see MetricsLog.reset
      log.write(row)
      on_epoch(row)
    return state, meta
  finally:
    log.close()


def _better(value: float, best: float, higher_is_better: bool) -> bool:
  if math.isnan(value):
    return False
  if math.isnan(best):
    return True
  return value > best if higher_is_better else value < best


def _check_finite(
  step_losses: np.ndarray, state: Any, *, first_step: int, epoch: int, store: CheckpointStore
) -> None:
  """Raises before a non-finite loss or parameter could reach a checkpoint."""
  bad = np.flatnonzero(~np.isfinite(step_losses))
  if bad.size:
    what = f"loss became {step_losses[bad[0]]} at step {first_step + int(bad[0]) + 1} (epoch {epoch})"
  elif not all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree_util.tree_leaves(state.params)):
    what = f"parameters became non-finite in epoch {epoch} (steps {first_step + 1}-{int(state.step)})"
  else:
    return
  kept = store.latest_step()
  kept_text = (
    f"the last good checkpoint (step {kept}) is kept" if kept is not None else "no checkpoint was written yet"
  )
  raise TrainingDiverged(
    f"{what}; {kept_text}; lower --learning_rate or set --grad_clip_norm in a new --workdir "
    "(a workdir with checkpoints resumes only with its own settings)"
  )


def abstract_state(state: Any) -> Any:
  # Keep each array's sharding, so restored arrays land where the live ones are.
  def abstract(x):
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding) if isinstance(x, jax.Array) else x

  return jax.tree_util.tree_map(abstract, state)
