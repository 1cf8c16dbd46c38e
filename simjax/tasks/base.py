"""The Task interface: only what differs between tasks. `simjax.run` does everything else.

A task holds its configuration (model, data, optimizer, training recipe) and answers the
run module's questions: which data, which state, one epoch of training, one evaluation,
the final numbers. Seeds (stacked or sequential), the workdir guard, provenance,
checkpoints and resume, each seed's best epoch, the NaN stop and every file a workdir
holds are the run module's, written once (see simjax/run.py). `tests/test_run.py` trains
a short example task through it (tests/example_task.py, shown in docs/adding_a_task.md).

A task object never changes during a run: what a run loads and computes for itself (its
data, mesh, step counts, compiled programs) is the immutable value `prepare` returns (a
`Prepared`), handed to every later call.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any

import numpy as np

from simjax import settings
from simjax.loop import EpochPlan, FitResult, Selection, mean_of_steps
from simjax.optim import OptimConfig
from simjax.run_config import RunConfig


@dataclasses.dataclass(frozen=True)
class Prepared:
  """What `Task.prepare` returns for one run; a task subclasses it with its own fields."""

  # The data's provenance (splits, row counts, checksums): run_info.json and results.json record it.
  info: dict[str, Any]


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
  def prepare(self, workdir: str, config: RunConfig, *, resuming: bool) -> Prepared:
    """Loads the data for the run `config` (its seeds, batch size, epochs) and writes any file
    the workdir needs to resume (e.g. a vocabulary); `resuming`: the workdir has checkpoints."""

  #: Fields of `self.data` a workdir's runs may change: where the data is, nothing else (the
  #: data record, data.json, says by checksum what the data is). Every other setting changes
  #: what is trained or what the record says, so config.json holds it (simjax.run's record rule).
  free_data_fields: tuple[str, ...] = ()

  def run_config(self, prepared: Prepared | None = None) -> dict[str, Any]:
    """What the workdir's checkpoints and records depend on (its config.json); a workdir
    resumes only with an equal one. By default the `model`, `data` (less its free fields) and
    `optim` dataclasses of the task as `settings.recorded` gives them (settings added later
    left out at their defaults), and its `train_settings()`; `prepared`: the run's (see
    `model_settings`)."""
    data = settings.recorded(self.data)
    for name in self.free_data_fields:
      data.pop(name, None)
    return {
      "model": settings.recorded(self.model_settings(prepared)),
      "data": data,
      "optim": settings.recorded(self.optim),
      "train": self.train_settings(),
    }

  def model_settings(self, prepared: Prepared | None) -> Any:
    """The model settings of a run (`prepared`) or of the task (None): by default the task's
    `model`; a task whose model depends on its data (e.g. the vocabulary's size) overrides it."""
    return self.model

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
  def create_train_state(self, seeds: list[int], prepared: Prepared | None = None) -> Any:
    """One replica per seed, stacked, placed on the devices (simjax.replicas). Without
    `prepared` (eval, predict) it only has to have the structure checkpoints restore into."""

  def compile(self, prepared: Prepared, state: Any) -> Prepared:
    """Optional: compiles the epoch and the evaluation ahead of time (the run module reports
    this time as compile seconds, apart from training); returns `prepared` with the compiled
    programs (e.g. `dataclasses.replace(prepared, ...)`)."""
    return prepared

  @abc.abstractmethod
  def epoch_plan(self, prepared: Prepared, epoch: int) -> EpochPlan:
    """The training of `epoch` for every replica: its steps, each step's batch (in an order
    that depends only on (seed, epoch), so that a resumed run replays it from any step), the
    step, and optionally the whole epoch as one program. simjax.loop runs it: skips to the step
    a stopped epoch reached, stops after a step on request, stacks the metrics, shows progress."""

  def epoch_metrics(self, step_metrics: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """An epoch's logged train metrics [R] per name from all its steps' metrics [steps, R]
    (also of steps done before a stop): by default each one's mean, as "train_<name>"."""
    return mean_of_steps(step_metrics)

  @abc.abstractmethod
  def evaluate(self, prepared: Prepared, state: Any) -> list[dict[str, float]]:
    """The per-epoch evaluation: one {metric: value} dict per replica."""

  @abc.abstractmethod
  def report(
    self, prepared: Prepared, state: Any, fit: FitResult
  ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The final numbers of each replica of `state` (each seed's best epoch if the selection
    names a metric, else the last), and run-level fields added to results.json."""

  def evaluate_trained(self, state: Any, batch_size: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Optional, for eval from a workdir (eval.json): every replica's metrics of the loaded
    state, and run-level fields (e.g. the evaluated data's provenance)."""
    raise NotImplementedError(f"{type(self).__name__} has no evaluation of a trained workdir")
