"""The settings every task's run shares: below both the run (simjax.run) and the tasks
(simjax.tasks), which each extend or read them."""

from __future__ import annotations

import dataclasses
from typing import Any

from simjax import replicas
from simjax.errors import ConfigError
from simjax.settings import setting, validate


@dataclasses.dataclass(frozen=True)
class RunConfig:
  """What every task's run shares (a task's own recipe lives in the task)."""

  epochs: int = setting(20, "Training epochs (a resumed run continues up to this).", lower=1)
  batch_size: int = setting(64, "Batch size.", lower=1)
  seed: int = setting(0, "Random seed (init, dropout, data order); with num_seeds, the first.")
  num_seeds: int = setting(
    1,
    "Train seeds seed ... seed+N-1 of this configuration together (jax.vmap in one compiled "
    "program); results.json reports each and their mean, std, min, max.",
    lower=1,
  )
  sequential_seeds: bool = setting(
    False,
    "With num_seeds: train the seeds one after another (in <workdir>/seed_<s>) instead of "
    "together, when N replicas do not fit in device memory.",
  )
  keep_checkpoints: int = setting(3, "How many latest checkpoints to keep.", lower=1)
  early_stop_patience: int = setting(
    0,
    "Stop before the last epoch once no seed's dev metric (the one that picks the best epoch) "
    "has improved for this many epochs; 0: train every epoch. Each seed's best "
    "epoch is the one a full run would pick unless it improves again later.",
    lower=0,
  )

  def __post_init__(self):
    validate(self)  # choices and bounds
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
