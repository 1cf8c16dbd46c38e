"""The Task interface: only what differs between tasks. `simjax.run` does everything else.

A task holds its configuration (model, data, optimizer, training recipe) and answers the
run module's questions: which data, which state, one epoch of training, one evaluation,
the final numbers. Seeds (stacked or sequential), the workdir guard, provenance,
checkpoints and resume, each seed's best epoch, the NaN stop and every file a workdir
holds are the run module's, written once (see simjax/run.py). `tests/test_run.py` trains
a short example task through it (tests/example_task.py, shown in docs/adding_a_task.md).
"""

from __future__ import annotations

import abc
from typing import Any, Callable

import numpy as np

from simjax import settings
from simjax.loop import EpochResult, FitResult, Selection, mean_of_steps
from simjax.optim import OptimConfig
from simjax.run_config import RunConfig


class Task(abc.ABC):
  #: Which dev metric picks each seed's best epoch (None: keep the last), which drives the
  #: plateau schedule (when the optimizer's schedule is "plateau"), and the name the
  #: evaluated split's metrics are logged under.
  selection: Selection
  #: The optimizer settings (simjax.optim.OptimConfig): the run module reads the schedule.
  optim: OptimConfig
  #: The model and data settings (dataclasses), recorded in config.json by `run_config`.
  model: Any
  data: Any

  @abc.abstractmethod
  def prepare(self, workdir: str, config: RunConfig, *, resuming: bool) -> dict[str, Any]:
    """Loads the data for the run `config` (its seeds, batch size, epochs) and writes any file
    the workdir needs to resume (e.g. a vocabulary); `resuming`: the workdir has checkpoints.
    Returns the data's provenance (splits, row counts, checksums), recorded in run_info.json
    and results.json."""

  #: Fields of `self.data` a workdir's runs may change: where the data is, nothing else (the
  #: data record, data.json, says by checksum what the data is). Every other setting changes
  #: what is trained or what the record says, so config.json holds it (simjax.run's record rule).
  free_data_fields: tuple[str, ...] = ()

  def run_config(self) -> dict[str, Any]:
    """What the workdir's checkpoints and records depend on (its config.json, called after
    prepare); a workdir resumes only with an equal one. By default the `model`, `data` (less
    its free fields) and `optim` dataclasses of the task as `settings.recorded` gives them
    (settings added later left out at their defaults), and its `train_settings()`."""
    data = settings.recorded(self.data)
    for name in self.free_data_fields:
      data.pop(name, None)
    return {
      "model": settings.recorded(self.model),
      "data": data,
      "optim": settings.recorded(self.optim),
      "train": self.train_settings(),
    }

  def train_settings(self) -> dict[str, Any]:
    """The task's own training settings that checkpoints depend on (recorded under "train")."""
    return {}

  def evaluation(self) -> dict[str, Any]:
    """What the task's final numbers are of: the evaluated splits by role, and any setting of
    the evaluation (e.g. {"dev": "validation", "test": "test"}). results.json and eval records
    hold it; an evaluation of a trained run another way gets a record file of its own. {}: the
    task does not say (its evaluations then share eval.json)."""
    return {}

  @abc.abstractmethod
  def create_train_state(self, seeds: list[int]) -> Any:
    """One replica per seed, stacked, placed on the devices (simjax.replicas). Without
    prepare (eval, predict) it only has to have the structure checkpoints restore into."""

  def compile(self, state: Any) -> None:
    """Optional: compile the epoch and the evaluation ahead of time (the run module reports
    this time as compile seconds, apart from training)."""

  @abc.abstractmethod
  def train_epoch(
    self, state: Any, epoch: int, *, start_step: int = 0, stop: Callable[[], bool] = lambda: False
  ) -> EpochResult:
    """The steps `start_step`, `start_step + 1`, ... of `epoch` for every replica, with each
    step's metrics ("loss" among them). After every step, if `stop()` is true, return at once
    (the run module saves that state and the rerun continues from the next step; a task
    whose epoch is one compiled program may finish it first). The data order must depend
    only on (seed, epoch) so that a resumed run replays it, from any step."""

  def epoch_metrics(self, step_metrics: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """An epoch's logged train metrics [R] per name from all its steps' metrics [steps, R]
    (also of steps done before a stop): by default each one's mean, as "train_<name>"."""
    return mean_of_steps(step_metrics)

  @abc.abstractmethod
  def evaluate(self, state: Any) -> list[dict[str, float]]:
    """The per-epoch evaluation: one {metric: value} dict per replica."""

  @abc.abstractmethod
  def report(self, state: Any, fit: FitResult) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The final numbers of each replica of `state` (each seed's best epoch if the selection
    names a metric, else the last), and run-level fields added to results.json."""

  def evaluate_trained(self, state: Any, batch_size: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Optional, for eval from a workdir (eval.json): every replica's metrics of the loaded
    state, and run-level fields (e.g. the evaluated data's provenance)."""
    raise NotImplementedError(f"{type(self).__name__} has no evaluation of a trained workdir")
