"""One run module for every task: what is the same for all of them, written once.

    results = run.train_and_evaluate(task, RunConfig(epochs=3, num_seeds=5), "workdirs/x")

`train_and_evaluate` trains the seeds of `config` (stacked into one program, or one after
another in <workdir>/seed_<s>), guards the workdir against another configuration, records
provenance, checkpoints and resumes, keeps each seed's best epoch, stops on NaN with the
last good checkpoint kept, and writes metrics.jsonl, TensorBoard events, run_info.json and
results.json. `load_trained` and `evaluate_trained` serve eval and predict from a workdir.
A task (simjax/tasks/base.py) supplies only what differs.

Workdir:  config.json     what the checkpoints were trained as (see Task.run_config)
          data.json       the data the run trains on, as its first start read it
          run_info.json   flags, data provenance, versions, device, git, command (at the start)
          metrics.jsonl   one row per epoch (tensorboard/ mirrors it)
          checkpoints/    the latest N;   best/  each seed's best epoch (if the task selects)
          results.json    the final numbers, per seed and summarized
          eval.json       from eval (eval_<settings>.json: an evaluation with other settings)
          earlier/epochs_<N>/  the records of the run finished after N epochs, before it trained on

The record rule: a finished run's results.json describes exactly what was trained and evaluated,
and no rerun rewrites it. Every setting but where the data is (the task's free data fields) is in
config.json, so a resume or rerun with another one is refused; the data itself is checked against
data.json (splits, rows, checksums, the leakage check). A rerun of a finished run with its own
settings returns its record unchanged; more epochs (or more early-stopping patience) train on and
keep the earlier records in earlier/; anything else is refused (FinishedRunError). Evaluating a
trained run another way writes a record of its own (eval).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import re
import shutil
from typing import Any, Callable

import jax
import numpy as np
from flax import traverse_util

from simjax import distributed, loop, optim, replicas, run_records, settings, sharding, summary, workdir_lock
from simjax.checkpoints import (
  CONFIG_FILE,
  CheckpointStore,
  abstract_state,
  read_config,
  restore_for_inference,
)
from simjax.compilation import CompileClock
from simjax.errors import (
  DataMismatchError,
  FinishedRunError,
  OutOfDeviceMemory,
  WorkdirError,
)
from simjax.run_config import RunConfig
from simjax.tasks.base import Prepared, Task

EVAL_FILE = "eval.json"
DATA_FILE = "data.json"
EARLIER_DIR = "earlier"
SEED_DIR = "seed_{}"
# Data record keys that say where the data is, not what it is (its checksums say that): a run
# may find its data elsewhere.
DATA_LOCATIONS = ("data_dir",)


def train_and_evaluate(
  task: Task,
  config: RunConfig,
  workdir: str,
  *,
  flags: dict[str, Any] | None = None,
  command: str | None = None,
  on_epoch: Callable[[dict[str, Any]], None] = lambda row: None,
  stop: loop.StopRequest | None = None,
  on_note: Callable[[str], None] = lambda line: None,
  progress: loop.ProgressBar | None = None,
) -> dict[str, Any]:
  """Trains (or resumes) `task` in `workdir`; returns (and writes) results.json.

  With several seeds, results.json holds each seed's results and their summary (see
  simjax.summary). `flags` and `command` are recorded as given; `on_epoch` sees every
  metrics row; `on_note` gets a line on what the run did besides training (stopped early, a
  finished run found, earlier records kept). A request on `stop` (e.g. from a SIGTERM
  handler) ends training after the step in progress with a checkpoint of it and raises
  errors.Preempted; rerunning resumes. `progress(total, description)` may return a tqdm-like
  bar (update(n), close()) that counts each epoch's steps. A finished run is never rewritten (see the module's
  record rule): rerun with its own settings, it returns its results.json as it is.
  """
  records = _Records(flags or {}, command, loop.Hooks(on_epoch, on_note, stop, progress))
  loop.check_early_stopping(task.selection, config.early_stop_patience)  # before any file is written
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise WorkdirError(f"workdir {workdir} is a file, not a folder", workdir)
  new_workdir = not _has_files(workdir)
  try:
    with _lock(workdir):  # one run at a time writes here
      if config.sequential_seeds and config.num_seeds > 1:
        return _train_sequentially(task, config, workdir, records)
      if sequential_seed_dirs(workdir):
        raise WorkdirError(f"{workdir} holds a run whose seeds were trained one after another", workdir)
      try:
        return _train_stacked(task, config, workdir, records, new_workdir)
      except jax.errors.JaxRuntimeError as e:
        if config.num_seeds > 1 and _is_resource_exhausted(e):
          raise OutOfDeviceMemory(config.num_seeds, _first_line(e)) from None
        raise
  finally:
    if new_workdir and not _has_files(workdir) and distributed.is_primary():  # e.g. data missing:
      with contextlib.suppress(OSError):  # leave no empty workdir behind
        os.rmdir(workdir)  # only if empty: another process's new lock keeps it


@dataclasses.dataclass(frozen=True)
class _Records:
  """What a run records as given (the flags and command line, with the provenance, in
  run_info.json and results.json), and its caller's hooks (simjax.loop.Hooks)."""

  flags: dict[str, Any]
  command: str | None
  hooks: loop.Hooks


@contextlib.contextmanager
def _lock(workdir: str, **kwargs):
  """The workdir's lock (simjax.workdir_lock). In a multi-process run process 0 holds it for
  all, and every process learns whether it could: if not, process 0 raises its error and the
  others a WorkdirError saying so, instead of waiting for it in their next collective."""
  with contextlib.ExitStack() as stack:
    writable, error = True, None
    if distributed.is_primary():
      try:
        writable = stack.enter_context(workdir_lock.hold(workdir, **kwargs))
      except Exception as e:  # e.g. WorkdirLocked: another run trains there
        error = e
    if distributed.any_process(error is not None):
      if error is not None:
        raise error
      raise WorkdirError(
        f"process 0 could not take the lock of {workdir} (its own error line says why)", workdir
      )
    yield writable


def _empty(workdir: str) -> None:
  """Removes what `workdir` holds but its lock (the lock's holder removes that), and the
  workdir itself if nothing is left (a seed_<s> folder has no lock of its own). In a
  multi-process run, process 0 does it."""
  if not distributed.is_primary():
    return
  for name in set(os.listdir(workdir)) - {workdir_lock.LOCK_FILE}:
    path = os.path.join(workdir, name)
    if os.path.isdir(path):
      shutil.rmtree(path)
    else:
      os.remove(path)
  with contextlib.suppress(OSError):
    os.rmdir(workdir)


def _has_files(workdir: str) -> bool:
  """Whether `workdir` holds anything but (maybe) its lock."""
  return os.path.isdir(workdir) and bool(set(os.listdir(workdir)) - {workdir_lock.LOCK_FILE})


def _train_stacked(
  task: Task, config: RunConfig, workdir: str, records: _Records, new_workdir: bool
) -> dict[str, Any]:
  """`new_workdir`: whether the caller found `workdir` empty (then a failed start removes it)."""
  seeds = config.seeds
  os.makedirs(workdir, exist_ok=True)
  store = CheckpointStore(workdir, keep=config.keep_checkpoints)
  try:
    # A workdir without checkpoints (say, a run that diverged in its first epoch) takes the
    # new settings; one with checkpoints only resumes with the settings it was trained with.
    resuming = store.latest_step() is not None
    finished = _read_json(os.path.join(workdir, run_records.RESULTS_FILE))
    if finished is not None and not resuming:  # before prepare, which may write (e.g. a vocabulary)
      raise WorkdirError(
        f"{workdir} holds the results of a finished run but none of its checkpoints: train in a new "
        "workdir (training here would replace that record)",
        workdir,
      )
    try:
      prepared = task.prepare(workdir, config, resuming=resuming)
      # before any is built
      replicas.check_memory(functools.partial(task.create_train_state, prepared=prepared), seeds)
    except Exception:
      if new_workdir:  # e.g. data missing, too many seeds: leave no empty workdir behind (this call made it)
        store.close()
        _empty(workdir)
      raise
    store.guard_config(
      workdir_config(task, config, prepared), replace=not resuming, recorded=_recorded_settings(workdir, task)
    )
    data_info = _guard_data(workdir, prepared.info, resuming=resuming, finished=finished)
    if finished is not None:
      if not _trains_on(workdir, finished, config):  # the same run asked again: its record stands
        if os.path.exists(os.path.join(workdir, run_records.METRICS_FILE)):
          for row in run_records.read_metrics(workdir):
            records.hooks.on_epoch(row)
        records.hooks.on_note(
          f"{workdir} holds this run, finished ({_finished_text(finished)}); its results.json "
          f"(recorded {finished.get('recorded_at', '?')}) stands as it is: nothing to train"
        )
        return finished
      kept = _keep_earlier_records(workdir, finished)
      records.hooks.on_note(
        f"the run in {workdir} finished after {finished['epochs']} epochs; training on to "
        f"{config.epochs}: its records so far are kept in {kept}"
      )
    run_records.write_json(
      os.path.join(workdir, run_records.RUN_INFO_FILE),
      {"flags": records.flags, "data": data_info, **run_records.provenance(records.command)},
    )
    state = task.create_train_state(seeds, prepared)
    with CompileClock() as ahead_of_time:
      prepared = task.compile(prepared, state)
    fit = _fit(task, prepared, config, state, store, records.hooks)
    selects = task.selection.best_metric is not None
    final_state = store.restore_best(abstract_state(fit.state))[0] if selects else fit.state
  finally:
    store.close()
  per_seed, extras = task.report(prepared, final_state, fit)
  results = _results(task, config, fit, (per_seed, extras), ahead_of_time.seconds, data_info, records)
  run_records.write_json(os.path.join(workdir, run_records.RESULTS_FILE), results)
  return results


def _fit(task: Task, prepared: Prepared, config: RunConfig, state, store: CheckpointStore, hooks: loop.Hooks):
  """The epochs (simjax.loop.fit) with the task's parts; the plateau metric only where the
  schedule is reduce-on-plateau."""
  plateau_active = task.optim.lr_schedule == "plateau"
  return loop.fit(
    state,
    store=store,
    epochs=config.epochs,
    epoch_plan=functools.partial(task.epoch_plan, prepared),
    epoch_metrics=task.epoch_metrics,
    evaluate=functools.partial(task.evaluate, prepared),
    selection=dataclasses.replace(
      task.selection, plateau_metric=task.selection.plateau_metric if plateau_active else None
    ),
    seeds=config.seeds,
    plateau=optim.plateau_transform(task.optim),
    early_stop_patience=config.early_stop_patience,
    hooks=hooks,
  )


def _results(task: Task, config: RunConfig, fit, report, ahead_of_time_seconds, data_info, records):
  """results.json: each seed's numbers and their summary (`report`: the task's), timings,
  settings and provenance."""
  selects = task.selection.best_metric is not None
  per_seed_metrics, extras = report
  per_seed = [
    {"seed": s, **metrics, **({"best_epoch": fit.best[r]["epoch"]} if selects else {})}
    for r, (s, metrics) in enumerate(zip(config.seeds, per_seed_metrics))
  ]
  results = {
    **summary.combine(per_seed),
    "epochs": fit.epochs,
    **(
      {"early_stop": {"patience": config.early_stop_patience, "stopped": fit.epochs < config.epochs}}
      if config.early_stop_patience > 0
      else {}
    ),
    "train_seconds": fit.train_seconds,  # all seeds together; compilation on first use included
    # Time JAX spent compiling: ahead of time (not part of train_seconds) plus on first use
    # during the epochs (part of train_seconds). Near 0 on a rerun with a compilation cache.
    "compile_seconds": ahead_of_time_seconds + fit.compile_seconds,
    **extras,
    **({"evaluation": evaluation} if (evaluation := task.evaluation()) else {}),
    "data": data_info,
    "run_settings": dataclasses.asdict(config),  # what was asked: epochs, patience, seeds...
    "flags": records.flags,
    **run_records.provenance(records.command),
  }
  return results


# --------------------------------------------------------------------------------------
# The record rule: what a rerun may change
# --------------------------------------------------------------------------------------
def _read_json(path: str) -> dict[str, Any] | None:
  """A record of a workdir (None if it has none); a damaged one is one error naming it."""
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      return json.load(f)
  except ValueError as e:  # truncated or edited by hand: never trained or evaluated over
    raise WorkdirError(
      f"{path} is not a readable record ({e}): restore it from a copy, or move it away",
      os.path.dirname(path),
    ) from None


def _guard_data(
  workdir: str, data_info: dict[str, Any], *, resuming: bool, finished: dict[str, Any] | None
) -> dict[str, Any]:
  """data.json: the data the run trains on (splits, rows, checksums, the leakage check: the
  task's data record), written at its first start. A resumed run must read the same data,
  wherever both records say something (where the data is never counts), or is refused; what
  it returns, and results.json records, is the first start's record. `finished`: the workdir's
  results.json, if it has one."""
  path = os.path.join(workdir, DATA_FILE)
  now = json.loads(run_records.dumps(data_info))  # as JSON has it
  saved = _read_json(path) if resuming else None
  if saved is None and resuming:  # a run from before data.json: its results say it, if it finished
    saved = (finished or {}).get("data")
  if saved is None:
    run_records.write_json(path, now)
    return now
  before, after = traverse_util.flatten_dict(saved), traverse_util.flatten_dict(now)
  differences = [
    f"{'.'.join(key)}={before[key]!r} there, {after[key]!r} now"
    for key in sorted(set(before) & set(after))
    if before[key] != after[key] and not set(key) & set(DATA_LOCATIONS)
  ]
  # Every process must agree (some records, e.g. checksums, are read by process 0 alone).
  if distributed.any_process(bool(differences)):
    raise DataMismatchError(workdir, differences or ["found by process 0"])
  if not os.path.exists(path):
    run_records.write_json(path, saved)
  return saved


def _asked(record: dict[str, Any]) -> dict[str, int]:
  """The epochs and early-stopping patience a finished run was asked for (a record written before
  "run_settings" says them in its flags and early_stop fields)."""
  settings, flags = record.get("run_settings") or {}, record.get("flags") or {}
  patience = (record.get("early_stop") or {}).get("patience", flags.get("early_stop_patience", 0))
  return {
    "epochs": settings.get("epochs", flags.get("epochs", record["epochs"])),
    "early_stop_patience": settings.get("early_stop_patience", patience),
  }


def _finished_text(record: dict[str, Any]) -> str:
  asked = _asked(record)
  if record["epochs"] < asked["epochs"]:
    return (
      f"stopped early after epoch {record['epochs']} of {asked['epochs']}, "
      f"early_stop_patience={asked['early_stop_patience']}"
    )
  done = record["epochs"]
  return f"{done} epoch{'s' if done != 1 else ''} of epochs={asked['epochs']}" + (
    f", early_stop_patience={asked['early_stop_patience']}" if asked["early_stop_patience"] else ""
  )


def _trains_on(workdir: str, record: dict[str, Any], config: RunConfig) -> bool:
  """Whether a rerun of the finished run `record` with `config` trains more epochs (more
  epochs, or more patience after an early stop); False when it asks for what the record was
  asked for. Refuses (FinishedRunError) anything else: it would only rewrite the record."""
  asked = _asked(record)
  now = {"epochs": config.epochs, "early_stop_patience": config.early_stop_patience}
  if now == asked:
    return False
  done = record["epochs"]
  best = [{"epoch": seed["best_epoch"]} if "best_epoch" in seed else None for seed in record["per_seed"]]
  if config.epochs > done and not loop.stalled(best, done, config.early_stop_patience):
    return True
  differences = [f"{key}={now[key]} (asked {asked[key]} then)" for key in now if now[key] != asked[key]]
  if config.epochs > done:  # more epochs, but its patience has run out already
    stalled_for = done - max(b["epoch"] for b in best)
    differences[-1] += f" with no seed improved for {stalled_for} epochs"
  raise FinishedRunError(workdir, _finished_text(record), differences)


def _recorded_settings(workdir: str, task: Task) -> dict[str, Any]:
  """For a workdir whose config.json was written before some of its task's data settings were
  guarded (declared `added_later`: left out there), the values other than their defaults
  that its run recorded for them among its flags (run_info.json), under their config.json keys
  (config.json, too, leaves them out at their defaults)."""
  flags = (_read_json(os.path.join(workdir, run_records.RUN_INFO_FILE)) or {}).get("flags") or {}
  data = getattr(task, "data", None)  # a task may keep no data settings
  if not dataclasses.is_dataclass(data):
    return {}
  recovered = {}
  for field, spec in settings.declared(type(data)):
    value = flags.get(field.name)
    value = tuple(value) if isinstance(value, list) else value  # a list flag's value
    if spec.added_later and value not in (None, "", field.default):  # unset or the default: left out
      recovered[f"data.{field.name}"] = value
  return recovered


def _is_record(name: str) -> bool:
  """results.json and eval records: what a finished run's state is reported as."""
  return name == run_records.RESULTS_FILE or bool(re.fullmatch(r"eval(_.*)?\.json", name))


def _keep_earlier_records(workdir: str, record: dict[str, Any], *, layout_in_results: bool = False) -> str:
  """Before a finished run trains on: its records (results.json, eval records, run_info.json)
  move to earlier/epochs_<N>/, where nothing rewrites them; returns that folder. With
  `layout_in_results` (seeds one after another: results.json names the seed workdirs, which
  eval and the layout checks read), results.json is copied, and replaced when the seeds end."""
  folder = os.path.join(workdir, EARLIER_DIR, f"epochs_{record['epochs']}")
  again = 1
  while os.path.exists(folder):  # the same epochs reported again (a run killed as it trained on)
    again += 1
    folder = os.path.join(workdir, EARLIER_DIR, f"epochs_{record['epochs']}_{again}")
  if distributed.is_primary():
    os.makedirs(folder)
    run_info = os.path.join(workdir, run_records.RUN_INFO_FILE)
    if os.path.exists(run_info):  # this start rewrites it
      shutil.copy2(run_info, folder)
    for name in sorted(os.listdir(workdir)):
      if layout_in_results and name == run_records.RESULTS_FILE:
        shutil.copy2(os.path.join(workdir, name), folder)
      elif _is_record(name):
        os.replace(os.path.join(workdir, name), os.path.join(folder, name))
  distributed.barrier("simjax-earlier-records")
  return folder


def workdir_config(task: Task, config: RunConfig, prepared: Prepared | None = None) -> dict[str, Any]:
  """config.json: the task's settings, and the run settings its checkpoints depend on. The
  number of epochs counts only where the schedule's shape depends on it (to allow training
  longer); how seeds run and how many checkpoints are kept never count."""
  own = task.run_config(prepared)
  train = {"seed": config.seed, "num_seeds": config.num_seeds, "batch_size": config.batch_size}
  if task.optim.lr_schedule in optim.SCHEDULES_OVER_ALL_EPOCHS:
    train["epochs"] = config.epochs
  return {**own, "train": {**train, **own.get("train", {})}}


# --------------------------------------------------------------------------------------
# Seeds one after another
# --------------------------------------------------------------------------------------
def _train_sequentially(task: Task, config: RunConfig, workdir: str, records: _Records) -> dict[str, Any]:
  """Each seed in <workdir>/seed_<s> (so each resumes on its own), then the combined
  results.json and metrics.jsonl in `workdir`, laid out like those of a stacked run."""
  if os.path.exists(os.path.join(workdir, CONFIG_FILE)):
    raise WorkdirError(f"{workdir} holds a run with stacked seeds", workdir)
  # The record rule as for one workdir (each seed's workdir also guards its own settings and data).
  finished = _read_json(os.path.join(workdir, run_records.RESULTS_FILE))
  trains_on = finished is not None and _trains_on(workdir, finished, config)
  if trains_on:  # before any seed trains on
    _keep_earlier_records(workdir, finished, layout_in_results=True)
  os.makedirs(workdir, exist_ok=True)
  seed_dirs = [os.path.join(workdir, SEED_DIR.format(s)) for s in config.seeds]
  runs = [
    _train_stacked(
      task,
      dataclasses.replace(config, seed=s, num_seeds=1, sequential_seeds=False),
      d,
      records,
      new_workdir=not _has_files(d),
    )
    for s, d in zip(config.seeds, seed_dirs)
  ]
  if finished is not None and not trains_on:  # every seed's run was found finished as asked
    return finished
  combined = summary.combine([run["per_seed"][0] for run in runs])
  results = {
    k: v for k, v in runs[0].items() if k not in combined and k not in ("seeds", "per_seed", "summary")
  }
  results.update(combined)
  results["train_seconds"] = float(sum(run["train_seconds"] for run in runs))
  results["compile_seconds"] = float(
    sum(run.get("compile_seconds") or 0.0 for run in runs)
  )  # each seed's own
  results["sequential_seeds"] = [os.path.basename(d) for d in seed_dirs]
  results["run_settings"] = dataclasses.asdict(config)
  run_records.MetricsLog(workdir).reset(_merge_rows([run_records.read_metrics(d) for d in seed_dirs]))
  run_records.write_json(os.path.join(workdir, run_records.RESULTS_FILE), results)
  return results


def sequential_seed_dirs(workdir: str) -> list[str] | None:
  """The seed_<s> workdirs of a run whose seeds ran one after another, in seed order; None
  for other workdirs."""
  names = (_read_json(os.path.join(workdir, run_records.RESULTS_FILE)) or {}).get("sequential_seeds")
  return [os.path.join(workdir, name) for name in names] if names else None


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


def _is_resource_exhausted(error: BaseException) -> bool:
  return "RESOURCE_EXHAUSTED" in str(error) or "Out of memory" in str(error)


def _first_line(error: BaseException) -> str:
  text = str(error).strip()
  return text.splitlines()[0][:200] if text else type(error).__name__


# --------------------------------------------------------------------------------------
# From a trained workdir: eval and predict
# --------------------------------------------------------------------------------------
def load_trained(workdir: str, make_task: Callable[[dict[str, Any], str], Task]) -> tuple[Any, dict, Task]:
  """The state of every seed of a trained workdir, stacked (each seed's best epoch if its
  task selects one, else the last: what results.json reports), its config.json and the
  task `make_task(config, workdir)` built from it. A workdir whose seeds ran one after
  another gives its seeds' states stacked the same way (with the first seed's task)."""
  seed_dirs = sequential_seed_dirs(workdir)
  if seed_dirs:
    loaded = [load_trained(d, make_task) for d in seed_dirs]
    _, config, task = loaded[0]
    config = {**config, "train": {**config["train"], "num_seeds": len(loaded)}}
    return replicas.concatenate([state for state, _, _ in loaded]), config, task
  config = read_config(workdir)
  task = make_task(config, workdir)
  state = task.create_train_state(replicas.from_config(config, workdir))
  if distributed.process_count() > 1:  # restored onto every process's devices, as evaluation needs
    state = sharding.replicate(state, sharding.data_mesh())
  which = "best" if task.selection.best_metric is not None else "latest"
  return restore_for_inference(workdir, state, which), config, task


def evaluate_trained(
  workdir: str,
  load: Callable[[str], tuple[Any, dict[str, Any], Task]],
  batch_size: int,
  *,
  command: str | None = None,
) -> tuple[dict[str, Any], list[str]]:
  """Evaluates a trained workdir: `load(workdir)` gives (state, config, task) as
  `load_trained` does, and `task.evaluate_trained(state, batch_size)` every replica's
  metrics and the run-level fields. Writes the eval record (see `eval_record_path`); returns
  it and what differs from the training run's provenance (versions, device, code, data
  checksums). A read-only workdir is evaluated all the same, with a warning that no record
  is written there."""
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise WorkdirError(f"workdir {workdir} is a file, not a folder", workdir)
  if not os.path.isdir(workdir):
    raise WorkdirError(f"workdir {workdir} not found", workdir)
  # Not while a run trains there, nor two evaluations at once; a read-only workdir is only read.
  with _lock(workdir, read_only_ok=True) as writable:
    state, config, task = load(workdir)
    evaluation = task.evaluation()
    path = eval_record_path(workdir, evaluation) if writable else None  # refused before the work
    per_seed_metrics, extras = task.evaluate_trained(state, batch_size)
    seeds = replicas.from_config(config, workdir)
    per_seed = [{"seed": s, **m} for s, m in zip(seeds, per_seed_metrics)]
    results = {
      **summary.combine(per_seed),
      **extras,
      **({"evaluation": evaluation} if evaluation else {}),
      **run_records.provenance(command),
    }
    differences = _differences_from_training(workdir, results)
    if writable:
      run_records.write_json(path, results)
  return results, differences


def eval_record_path(workdir: str, evaluation: dict[str, Any]) -> str:
  """Where an evaluation of a trained workdir is recorded: eval.json for the evaluation the
  run's results.json is of (or, where it does not say, the first one), eval_<settings>.json
  for any other (e.g. eval_dev-validation_test-train_256.json); a record is only ever replaced by an
  evaluation with the same settings. Refuses a name another evaluation holds."""
  default = os.path.join(workdir, EVAL_FILE)
  held = _read_json(default)
  if not evaluation or (held is not None and held.get("evaluation") == evaluation):
    return default
  if held is None:  # free: it takes the run's own evaluation (or, where results.json does not say, any)
    trained = (_read_json(os.path.join(workdir, run_records.RESULTS_FILE)) or {}).get("evaluation")
    if trained is None or trained == evaluation:
      return default
  name = "_".join(f"{key}-{value}" for key, value in evaluation.items())
  path = os.path.join(workdir, f"eval_{re.sub(r'[^A-Za-z0-9.-]+', '_', name).strip('_')}.json")
  held = _read_json(path)
  if held is not None and held.get("evaluation") != evaluation:
    raise WorkdirError(
      f"{path} holds an evaluation with other settings ({held.get('evaluation')}): move it away to "
      "record this one",
      workdir,
    )
  return path


def _differences_from_training(workdir: str, current: dict[str, Any]) -> list[str]:
  seed_dirs = sequential_seed_dirs(workdir)  # seeds one after another: the first seed's records
  path = os.path.join(seed_dirs[0] if seed_dirs else workdir, run_records.RUN_INFO_FILE)
  if not os.path.exists(path):
    return [f"{path} not found: cannot compare with the training run's provenance"]
  with open(path) as f:
    recorded = json.load(f)
  return run_records.provenance_differences(recorded, current)
