"""Training and evaluating a workdir from a command line, the same for every task."""

from __future__ import annotations

import os
import sys
from typing import Any, Callable

from experiments.cli_flags import FLAGS, command_line, flag_values
from experiments.console import EpochTable, progress_bar
from experiments.lifecycle import STOP
from simjax import run
from simjax.run_config import RunConfig
from simjax.tasks.base import Task


def train_workdir(task: Task, config: RunConfig, workdir: str, columns: list[tuple[str, str, str]]):
  """--mode=train: trains (or resumes) `task` in `workdir` through simjax.run, printing one
  row of `columns` (see EpochTable) per epoch; records the flags and the command line."""
  print(f"workdir: {workdir}")
  table = EpochTable(columns)
  return run.train_and_evaluate(
    task,
    config,
    workdir,
    flags=flag_values(),
    command=command_line(),
    on_epoch=table.print_row,
    stop=STOP,
    on_note=lambda line: print(line, flush=True),
    progress=progress_bar,
  )


def evaluate_workdir(workdir: str, load: Callable[[str], tuple]) -> dict[str, Any]:
  """--mode=eval of a trained workdir (`load(workdir)` -> state, config, task): writes
  eval.json and warns where this machine, code or data differ from the training run's."""
  results, differences = run.evaluate_trained(workdir, load, FLAGS.batch_size, command=command_line())
  if os.access(workdir, os.W_OK):
    print(f"evaluation recorded in {run.eval_record_path(workdir, results.get('evaluation', {}))}")
  if differences:
    print(f"warning: this evaluation differs from the training run in {workdir}:", file=sys.stderr)
    for line in differences:
      print(f"  {line}", file=sys.stderr)
  return results
