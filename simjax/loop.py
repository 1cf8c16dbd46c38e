"""The epoch loop every task uses: train, evaluate on dev, checkpoint, log, resume.

A task supplies what differs: `epoch_plan(epoch)` (the epoch's batches, its step and, as an
optional fast path, the whole epoch as one program), `epoch_metrics(steps)` and
`evaluate(state)`. This module owns what must be identical for all tasks: running the steps
(skipping to the step a resumed epoch reached, polling for a stop after each step, stacking
the metrics, the progress bar, whether the epoch ended: `run_epoch`), resuming
from the latest checkpoint (a killed run restarted with the same command ends with the
same numbers), stopping on request in the middle of an epoch with a checkpoint of the
step reached (a preemption), each seed's best-on-dev checkpoint, reduce-on-plateau,
stopping on a non-finite loss without losing the last good checkpoint, and metrics.jsonl
/ TensorBoard rows. `simjax.run` calls it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import math
import time
from typing import Any, Callable, Iterable, NoReturn

import jax
import jax.numpy as jnp
import numpy as np

from simjax import distributed, optim, replicas, sharding
from simjax.checkpoints import CheckpointStore, abstract_state
from simjax.compilation import CompileClock
from simjax.errors import ConfigError, Preempted, TrainingDiverged, WorkdirError
from simjax.run_records import MetricsLog


@dataclasses.dataclass(frozen=True)
class EpochPlan:
  """One epoch of training as a task describes it (`Task.epoch_plan`); `run_epoch` runs it.

  The batches' order must depend only on (seed, epoch): a resumed run replays the epoch from
  any step. Each step's metrics are [R] per name (R stacked replicas), "loss" among them.
  """

  steps: int  # the epoch's steps
  # Each step's input, from the epoch's first step on; iterated lazily (a generator), so the
  # steps a resumed epoch skips cost little.
  batches: Iterable[Any]
  step: Callable[[Any, Any], tuple[Any, dict[str, Any]]]  # (state, batch) -> (state, metrics)
  # Optional fast path: (state) -> (state, {name: [steps, R]}), the whole epoch as one program
  # (no host round trip between steps; a stop request waits for its end). A resumed epoch that
  # stopped in the middle is finished with `step`.
  fused: Callable[[Any], tuple[Any, dict[str, Any]]] | None = None
  place: Callable[[Any], Any] | None = None  # optional: puts the state where the programs expect it


@dataclasses.dataclass
class EpochResult:
  """What `run_epoch` did: the state after its last step, and each of its steps' metrics
  [steps run, R] per name. "loss" is required (the first non-finite one is reported); the
  task's epoch_metrics turns the whole epoch's steps into the logged values."""

  state: Any  # R stacked replicas (see simjax.replicas)
  step_metrics: dict[str, np.ndarray]  # [steps run, R] per name, e.g. {"loss": ..., "accuracy": ...}
  # True: the epoch's last step ran. A stop request then waits for the epoch's evaluation and
  # checkpoint; otherwise (False, or None: not known) the step reached is saved mid-epoch.
  complete: bool | None = None


class StopRequest:
  """A request to stop training cleanly (e.g. set by a SIGTERM handler): `fit` lets the task
  finish the step in progress, saves a checkpoint of that step and raises errors.Preempted;
  the rerun resumes from that step and ends as an uninterrupted run would.

  `honoured` tells a signal handler whether a fit is running that will act on a request
  (elsewhere, nothing is lost by stopping at once). Calling the object says whether a stop
  was requested: tasks check it after every step."""

  def __init__(self):
    self.requested, self.reason, self.honoured = False, "", False

  def request(self, reason: str = "stop requested") -> None:
    self.requested, self.reason = True, reason

  def __call__(self) -> bool:
    return self.requested

  @contextlib.contextmanager
  def honouring(self):
    before, self.honoured = self.honoured, True
    try:
      yield
    finally:
      self.honoured = before


# (total steps, description) -> tqdm-like: update(n), close(); or None: no bar this time
ProgressBar = Callable[[int, str], Any]


def run_epoch(
  plan: EpochPlan,
  state: Any,
  *,
  start_step: int = 0,
  stop: Callable[[], bool] = lambda: False,
  progress: ProgressBar | None = None,
  description: str = "epoch",
) -> EpochResult:
  """The steps `start_step`, `start_step + 1`, ... of `plan` (the fused program when starting
  at 0 and the plan has one), returning after a step once `stop()` is true. `progress` counts
  the steps computed (a fused epoch's all at once, when its program ends)."""
  if plan.place is not None:
    state = plan.place(state)
  bar = progress(plan.steps, description) if progress is not None else None
  try:
    if plan.fused is not None and start_step == 0:
      state, metrics = plan.fused(state)
      metrics = sharding.fetch(metrics)  # waits for the program's end
      if bar is not None:
        bar.update(plan.steps)
      return EpochResult(state, {k: np.asarray(v) for k, v in metrics.items()}, complete=True)
    if bar is not None and start_step:
      bar.update(start_step)
    done = []
    for batch in itertools.islice(plan.batches, start_step, None):
      state, metrics = plan.step(state, batch)
      if bar is not None and done:  # the step before: counted once computed (one step stays queued)
        jax.block_until_ready(done[-1])
        bar.update(1)
      done.append(metrics)
      if stop():
        break
    if bar is not None and done:
      jax.block_until_ready(done[-1])
      bar.update(1)
  finally:
    if bar is not None:
      bar.close()
  done = sharding.fetch(done)
  steps = {name: np.stack([np.asarray(m[name]) for m in done]) for name in done[0]} if done else {}
  return EpochResult(state, steps, complete=start_step + len(done) == plan.steps)


@dataclasses.dataclass(frozen=True)
class Hooks:
  """What the caller of a run watches and steers, all optional: every metrics row
  (`on_epoch`), a line on what the run did besides training (`on_note`: stopped early, a
  finished run found), a stop request (e.g. set by a SIGTERM handler) and a progress bar
  within epochs."""

  on_epoch: Callable[[dict[str, Any]], None] = lambda row: None
  on_note: Callable[[str], None] = lambda line: None
  stop: StopRequest | None = None
  progress: ProgressBar | None = None


@dataclasses.dataclass(frozen=True)
class Selection:
  """Which dev metric picks the best checkpoint, and which one drives the plateau."""

  best_metric: str | None  # key in the evaluate() dicts, e.g. "pearson"; None: keep no best checkpoint
  higher_is_better: bool = True
  plateau_metric: str | None = None  # e.g. "mse" (lower is better); None: no plateau
  eval_name: str = "dev"  # prefix of the evaluated split's metrics in the logged rows


@dataclasses.dataclass(frozen=True)
class FitResult:
  """What `fit` leaves: the last state and the run's record (also in every checkpoint's meta)."""

  state: Any  # the last epoch's state, R stacked replicas
  epochs: int  # epochs done
  history: list[dict[str, Any]]  # the metrics.jsonl rows
  best: list[dict[str, Any] | None]  # per replica: {"epoch", "step", "metric", "value"}; None if no best
  train_seconds: float  # all epochs' training, all replicas together
  compile_seconds: float  # JAX compile time during the epochs (part of train_seconds)

  @classmethod
  def from_meta(cls, state: Any, meta: dict[str, Any]) -> "FitResult":
    return cls(
      state=state,
      epochs=meta["epoch"],
      history=meta["history"],
      best=meta["best"],
      train_seconds=meta["train_seconds"],
      compile_seconds=meta.get("compile_seconds", 0.0),  # older runs lack it
    )


def fit(
  state: Any,
  *,
  store: CheckpointStore,
  epochs: int,
  epoch_plan: Callable[[int], EpochPlan],
  epoch_metrics: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]],
  evaluate: Callable[[Any], list[dict[str, float]]],
  selection: Selection,
  seeds: list[int],
  plateau: optim.optax.GradientTransformationExtraArgs | None = None,
  early_stop_patience: int = 0,
  hooks: Hooks = Hooks(),
) -> FitResult:
  """Trains until `epochs` are done (resuming if the workdir has a checkpoint), or, with
  `early_stop_patience` N > 0, until no replica's best epoch is among the last N (see `stalled`).

  `state` stacks one replica per seed; `epoch_plan(epoch)` describes an epoch's training
  (`run_epoch` runs it, from the step a stopped epoch reached, returning early once a stop is
  requested on `hooks.stop`); `epoch_metrics` turns an epoch's step metrics into its logged
  train metrics; `evaluate` returns one metrics dict per replica; `hooks.on_note` gets one line
  when the run stops early. Each replica has its own best epoch and plateau; the "best"
  checkpoint stacks every replica at its own best epoch. Rows: see `_epoch_row`; their
  "compile_seconds" is JAX's compile time during the epoch's training and evaluation (a task
  that compiles on first use pays it inside "epoch_seconds").
  The checkpoints' JSON meta holds {"epoch", "history", "best" (one per replica),
  "train_seconds", "compile_seconds"} (a FitResult), and mid-epoch (a `stop`) "partial".
  """
  stop = hooks.stop if hooks.stop is not None else StopRequest()
  log = MetricsLog(store.workdir)
  try:
    state, meta, best_state, partial = _resume(state, store, selection, len(seeds), epochs)
    log.reset(meta["history"])
    # Compiled once: run eagerly, optax's plateau update would recompile every epoch.
    advance_plateau = jax.jit(
      jax.vmap(lambda plateau_state, value: optim.advance_plateau(plateau, plateau_state, value))
    )
    for row in meta["history"]:
      hooks.on_epoch(row)
    # One process alone: a request stops the epoch after the step in progress. Several processes
    # (simjax.distributed) must stop at the same step: they agree at the end of each epoch.
    single = distributed.process_count() == 1
    stopped = functools.partial(_stop_agreed, stop, single)
    check_early_stopping(selection, early_stop_patience)
    last_fused_seconds = None  # how long the last epoch run as one program took (progress bar)
    with stop.honouring():
      for epoch in range(meta["epoch"] + 1, epochs + 1):
        # Also on a resumed run; an epoch stopped in the middle is finished first (its state is
        # not an epoch's end, and the rerun may have been given less patience).
        if partial is None and stalled(meta["best"], meta["epoch"], early_stop_patience):
          hooks.on_note(_early_stop_note(meta["epoch"], epochs, selection, early_stop_patience))
          break
        if stopped():  # between epochs: the latest checkpoint holds everything done
          raise Preempted(stop.reason, epoch=epoch - 1, steps_done=None, saved_step=store.latest_step())
        plan = epoch_plan(epoch)
        fused = plan.fused is not None and partial is None
        state, steps, dev, epoch_seconds, compile_seconds = _train_and_evaluate_epoch(
          state, epoch, partial, meta, plan=plan, evaluate=evaluate, selection=selection, store=store,
          seeds=seeds, stop=stop, stopped=stopped, single=single, progress=hooks.progress,
          description=_epoch_description(epoch, fused, last_fused_seconds),
        )  # fmt: skip
        last_fused_seconds = epoch_seconds if fused else last_fused_seconds
        partial = None
        row = _epoch_row(epoch, epoch_metrics(steps), dev, state, selection, epoch_seconds, compile_seconds)
        if plateau is not None and selection.plateau_metric is not None:
          values = jnp.asarray([d[selection.plateau_metric] for d in dev], jnp.float32)
          state = state.replace(plateau_state=advance_plateau(state.plateau_state, values))
        improved, best_state = _update_best(meta["best"], best_state, state, dev, epoch, selection)
        meta["epoch"], meta["train_seconds"] = epoch, meta["train_seconds"] + epoch_seconds
        meta["history"].append(row)
        meta["compile_seconds"] = meta.get("compile_seconds", 0.0) + compile_seconds  # older runs lack it
        # before the log: see MetricsLog.reset
        store.save(int(state.step[0]), state, meta, best_state=best_state if improved.any() else None)
        log.write(row)
        hooks.on_epoch(row)
      if stopped():  # during the last epoch's evaluation or save: all is saved
        raise Preempted(stop.reason, epoch=meta["epoch"], steps_done=None, saved_step=store.latest_step())
    return FitResult.from_meta(state, meta)
  finally:
    log.close()


def _epoch_description(epoch: int, fused: bool, last_fused_seconds: float | None) -> str:
  """The progress bar's: an epoch run as one program shows no steps until its end, so it says
  so, and how long the last such epoch took."""
  if not fused:
    return f"epoch {epoch}"
  last = f" (the last took {last_fused_seconds:.1f} s)" if last_fused_seconds is not None else ""
  return f"epoch {epoch}: one compiled program{last}"


def _stop_agreed(stop: StopRequest, single: bool) -> bool:
  """Whether to stop: one process alone reads its own request; several processes stop together
  as soon as any of them was asked to (every process calls this at the same points)."""
  if single:
    return stop.requested
  agreed = distributed.any_process(stop.requested)
  if agreed and not stop.requested:
    stop.request("a stop request of another process")
  return agreed


def _train_and_evaluate_epoch(state, epoch, partial, meta, *, plan, evaluate, selection, store, seeds,
                              stop, stopped, single, progress, description):  # fmt: skip
  """One epoch's training from the step a partial checkpoint reached (if any), its finite-loss
  check and its dev evaluation; a stop request in the middle saves the step reached and raises
  Preempted. Returns (state, the epoch's step metrics, dev metrics, seconds, compile seconds)."""
  done = _steps_from_json(partial["step_metrics"]) if partial else None
  earlier_seconds = (partial["seconds"], partial["compile_seconds"]) if partial else (0.0, 0.0)
  start_step = len(done["loss"]) if done else 0
  first_step = int(state.step[0]) - start_step  # read now: the epoch may donate `state`'s buffers
  with CompileClock() as compile_clock:
    start = time.perf_counter()
    # Several processes stop together, at the end of an epoch (see `stopped`).
    result = run_epoch(plan, state, start_step=start_step, stop=stop if single else lambda: False,
                       progress=progress, description=description)  # fmt: skip
    jax.block_until_ready(result.state)
    epoch_seconds = earlier_seconds[0] + time.perf_counter() - start  # the checks below: not timed
    steps = _concatenate_steps(done, result.step_metrics)
    _check_finite(steps["loss"], result.state, first_step=first_step, epoch=epoch, store=store, seeds=seeds)
    state = result.state
    if stopped() and not result.complete:  # save the step reached, evaluate on the rerun
      compile_seconds = earlier_seconds[1] + compile_clock.seconds
      _save_partial_and_stop(store, state, meta, epoch, steps, epoch_seconds, compile_seconds, stop)
    dev = evaluate(state)
    _check_finite_metrics(dev, epoch=epoch, eval_name=selection.eval_name, store=store, seeds=seeds)
  return state, steps, dev, epoch_seconds, earlier_seconds[1] + compile_clock.seconds


def _early_stop_note(epoch: int, epochs: int, selection: Selection, patience: int) -> str:
  return (
    f"stopped early after epoch {epoch} of {epochs}: no seed improved "
    f"{selection.eval_name} {selection.best_metric} for {patience} epoch{'s' if patience > 1 else ''}"
  )


def _resume(state: Any, store: CheckpointStore, selection: Selection, replicas_count: int, epochs: int):
  """(state, meta, best state, partial epoch) from the workdir's latest checkpoint, or a fresh
  start; refuses fewer epochs than a checkpoint holds."""
  meta = {
    "epoch": 0,
    "history": [],
    "best": [None] * replicas_count,
    "train_seconds": 0.0,
    "compile_seconds": 0.0,
  }
  best_state = None
  restored = store.restore_latest(abstract_state(state))
  if restored is not None:
    state, meta = restored
    if selection.best_metric is not None and any(meta["best"]):
      best = store.restore_best(abstract_state(state))
      if best is None:
        raise WorkdirError(
          f"{store.workdir}/best is missing, though its checkpoints record a best epoch: the run's "
          "best epoch cannot be reported; restore best/ from a copy, or train again in a new workdir",
          store.workdir,
        )
      best_state = best[0]
  partial = meta.pop("partial", None)  # a checkpoint saved in the middle of this epoch
  if partial is not None and partial["epoch"] > epochs:
    raise ConfigError(
      f"{store.workdir} stopped in the middle of epoch {partial['epoch']}: train at least "
      f"{partial['epoch']} epochs to finish it (asked for {epochs})",
      settings=("epochs",),
    )
  if meta["epoch"] > epochs:  # reported as it is, it would be recorded as a run of `epochs` epochs
    raise ConfigError(
      f"{store.workdir} holds a run trained for {meta['epoch']} epochs already: train at least "
      f"{meta['epoch']} epochs there (asked for {epochs})",
      settings=("epochs",),
    )
  return state, meta, best_state, partial


def _save_partial_and_stop(
  store, state, meta, epoch, steps, epoch_seconds, compile_seconds, stop
) -> NoReturn:
  """A stop in the middle of an epoch: checkpoints the step reached with the epoch's steps so
  far (the rerun continues from the next step), then raises Preempted."""
  saved_step = int(state.step[0])
  meta["partial"] = {
    "epoch": epoch,
    "step_metrics": _steps_to_json(steps),
    "seconds": epoch_seconds,
    "compile_seconds": compile_seconds,
  }
  store.save(saved_step, state, meta)
  raise Preempted(stop.reason, epoch=epoch, steps_done=len(steps["loss"]), saved_step=saved_step)


def _epoch_row(epoch, train_metrics, dev, state, selection, epoch_seconds, compile_seconds) -> dict[str, Any]:
  """An epoch's metrics.jsonl row: the mean over replicas under each name, every replica's
  value under "per_seed"."""
  per_seed = {
    **{k: [float(v) for v in values] for k, values in train_metrics.items()},
    **{f"{selection.eval_name}_{k}": [d[k] for d in dev] for k in dev[0]},
    "learning_rate_scale": [float(x) for x in np.asarray(state.plateau_state.scale)],
  }
  return {
    "epoch": epoch,
    **{k: float(np.mean(v)) for k, v in per_seed.items()},
    "epoch_seconds": epoch_seconds,
    "compile_seconds": compile_seconds,
    "per_seed": per_seed,
  }


def _update_best(best, best_state, state, dev, epoch, selection):
  """Each replica's best epoch on `selection.best_metric` (updated in `best`, one entry per
  replica) and the stacked best state; returns (which replicas improved, best state)."""
  improved = np.zeros(len(best), bool)
  if selection.best_metric is None:
    return improved, best_state
  for r, d in enumerate(dev):
    value = d[selection.best_metric]
    if best[r] is None or _better(value, best[r]["value"], selection.higher_is_better):
      improved[r] = True
      best[r] = {"epoch": epoch, "step": int(state.step[r]), "metric": selection.best_metric, "value": value}
  if improved.any():
    # A copy, never `state` itself: a task may donate the state's buffers to the next epoch.
    best_state = (
      jax.tree_util.tree_map(jnp.copy, state)
      if best_state is None
      else replicas.select(improved, state, best_state)
    )
  return improved, best_state


def check_early_stopping(selection: Selection, patience: int) -> None:
  """Early stopping watches the dev metric that picks the best epoch: refused without one."""
  if patience > 0 and selection.best_metric is None:
    raise ConfigError(
      "early stopping needs a dev metric that picks the best epoch; this task keeps none",
      settings=("early_stop_patience",),
    )


def stalled(best: list[dict[str, Any] | None], epoch: int, patience: int) -> bool:
  """Early stopping: after `epoch`, no replica has improved its best dev metric for `patience`
  epochs (0: never stop early). The replicas train together, so all of them must have
  stalled; a run that stops is a prefix of the full run, so each replica's best epoch, and
  everything reported at it, is the one the full run would have had, unless it improves again
  after `patience` epochs."""
  return patience > 0 and all(b is not None and epoch - b["epoch"] >= patience for b in best)


def mean_of_steps(step_metrics: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Each step metric's mean over the epoch's steps as "train_<name>" [R]: the usual epoch_metrics."""
  return {f"train_{name}": np.mean(values, axis=0) for name, values in step_metrics.items()}


def _concatenate_steps(
  earlier: dict[str, np.ndarray] | None, later: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
  later = {k: np.asarray(v) for k, v in later.items()}
  if earlier is None:
    return later
  # An epoch resumed with no steps left runs none (no metrics): the earlier steps are all.
  return {k: np.concatenate([e, later[k].astype(e.dtype)]) if k in later else e for k, e in earlier.items()}


def _steps_to_json(step_metrics: dict[str, np.ndarray]) -> dict[str, Any]:
  """Exact: a float32 (or float64) value survives JSON as the same number."""
  return {k: {"dtype": str(v.dtype), "values": v.tolist()} for k, v in step_metrics.items()}


def _steps_from_json(saved: dict[str, Any]) -> dict[str, np.ndarray]:
  return {k: np.asarray(v["values"], dtype=v["dtype"]) for k, v in saved.items()}


def _check_finite_metrics(
  dev: list[dict[str, float]], *, epoch: int, eval_name: str, store: CheckpointStore, seeds: list[int]
) -> None:
  """An evaluation metric that is NaN or infinite stops the run like a NaN loss, before
  anything of this epoch is saved: the loss can stay finite while the model has collapsed
  (constant predictions leave a correlation undefined)."""
  for r, metrics in enumerate(dev):
    for name, value in metrics.items():
      if not math.isfinite(value):
        seed_text = f" (seed {seeds[r]})" if len(seeds) > 1 else ""
        raise TrainingDiverged(
          f"{eval_name} {name} became {value} in epoch {epoch}{seed_text}: the model's predictions "
          "are constant or not finite (it collapsed)",
          epoch=epoch,
          seed=seeds[r] if len(seeds) > 1 else None,
          kept_step=store.latest_step(),
        )


def _better(value: float, best: float, higher_is_better: bool) -> bool:
  if math.isnan(value):
    return False
  if math.isnan(best):
    return True
  return value > best if higher_is_better else value < best


def _check_finite(
  step_losses: np.ndarray,
  state: Any,
  *,
  first_step: int,
  epoch: int,
  store: CheckpointStore,
  seeds: list[int],
) -> None:
  """Raises before a non-finite loss or parameter could reach a checkpoint."""
  step_losses = np.asarray(step_losses).reshape(len(step_losses), -1)
  bad = np.argwhere(~np.isfinite(step_losses))
  seed_text = lambda r: f" (seed {seeds[r]})" if len(seeds) > 1 else ""
  if bad.size:
    step, r = bad[0]
    what = (
      f"loss became {step_losses[step, r]} at step {first_step + int(step) + 1} (epoch {epoch}){seed_text(r)}"
    )
  else:
    finite = np.ones(len(seeds), bool)
    for x in jax.tree_util.tree_leaves(state.params):
      finite &= np.asarray(jnp.all(jnp.isfinite(x.reshape(x.shape[0], -1)), axis=1))
    if finite.all():
      return
    r = int(np.flatnonzero(~finite)[0])
    what = f"parameters became non-finite in epoch {epoch}{seed_text(r)}"
  raise TrainingDiverged(
    what, epoch=epoch, seed=seeds[int(r)] if len(seeds) > 1 else None, kept_step=store.latest_step()
  )
