"""The settings every task's run shares: below both the run (simjax.run) and the tasks
(simjax.tasks), which each extend or read them."""

from __future__ import annotations

import dataclasses
from typing import Any

from simjax import replicas
from simjax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class RunConfig:
  """What every task's run shares (a task's own recipe lives in the task)."""

  epochs: int = 20
  batch_size: int = 64
  seed: int = 0  # the first seed; replica r uses seed + r
  num_seeds: int = 1  # replicas trained together (jax.vmap) and reported as mean ± std
  sequential_seeds: bool = False  # train the seeds one after another instead (less memory)
  keep_checkpoints: int = 3
  # > 0: stop once no seed has improved its best dev metric for this many epochs (loop.stalled).
  early_stop_patience: int = 0

  def __post_init__(self):
    if self.epochs < 1 or self.batch_size < 1:
      raise ConfigError(
        f"need epochs >= 1 and batch_size >= 1; got {self.epochs}, {self.batch_size}",
        settings=("epochs", "batch_size"),
      )
    if self.num_seeds < 1:
      raise ConfigError(f"num_seeds must be >= 1, got {self.num_seeds}", settings=("num_seeds",))
    if self.early_stop_patience < 0:
      raise ConfigError(
        f"early_stop_patience must be >= 0 (0: never stop early), got {self.early_stop_patience}",
        settings=("early_stop_patience",),
      )
    if self.early_stop_patience > 0 and self.sequential_seeds and self.num_seeds > 1:
      # Stacked seeds stop together, when the last of them stalls; seeds trained one after
      # another cannot wait for the later ones, and their histories would differ in length.
      raise ConfigError(
        "early stopping needs the seeds trained together: sequential_seeds cannot be combined "
        "with early_stop_patience > 0",
        settings=("early_stop_patience", "sequential_seeds"),
      )

  @property
  def seeds(self) -> list[int]:
    return replicas.seed_list(self.seed, self.num_seeds)

  @property
  def task_settings(self) -> dict[str, Any]:
    """The fields a task's TrainConfig adds to these, as keyword arguments of its Task:
    run.train_and_evaluate(Cifar10Task(model, data, optim, **config.task_settings), config, workdir)."""
    shared = {f.name for f in dataclasses.fields(RunConfig)}
    return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in shared}
