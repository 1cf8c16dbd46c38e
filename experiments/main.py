r"""simjax entry point: absl flags (and flagfiles) -> the library.

  python -m experiments.main --flagfile=lstm_glove.flags            # train (resumes if it can)
  python -m experiments.main --flagfile=lstm_glove.flags --mode=eval
  printf 'A man plays.\tA man is playing.\n' | \
      python -m experiments.main --mode=predict --workdir=workdirs/lstm_glove_stsb
  python -m experiments.main --flagfile=cnn_resnet.flags            # CIFAR-10
  python -m experiments.main --mode=predict --workdir=workdirs/cnn_resnet a.png b.jpg
  simjax --flagfile=cnn_resnet.flags                                # the same, once pip-installed

A bare flagfile name is looked up in the current directory, then next to this file. Eval and
predict read the task (sentences or CIFAR-10) from the workdir's config.json.
"""

from __future__ import annotations

import sys

from absl import app, flags

from experiments import cifar10, cli_flags, console, lifecycle, sentence_similarity
from simjax import checkpoints, run

FLAGS = flags.FLAGS
cli_flags.define_training_flags()
flags.DEFINE_enum("task", "similarity", ["similarity", "cifar10"], "What to train.")

TASKS = {"similarity": sentence_similarity, "cifar10": cifar10}


def main(argv):
  task_name = _task_name()
  _refuse_flags_of_other_tasks(task_name)
  task = TASKS[task_name]
  inputs = argv[1:]
  if inputs and FLAGS.mode != "predict":
    raise app.UsageError(f"unexpected arguments: {' '.join(inputs)} (only --mode=predict takes inputs)")
  console.quiet_library_logs()
  lifecycle.apply_determinism()
  modes = {"train": task.train, "eval": task.evaluate, "predict": lambda: task.predict(inputs)}
  if hasattr(task, "transfer_mode"):
    modes["transfer"] = task.transfer_mode
  if FLAGS.mode not in modes:
    raise app.UsageError(f"--mode={FLAGS.mode} is for sentence encoders, and this is a {task_name} run")

  def run():
    lifecycle.initialize_distributed()  # before JAX is used; a coordinator out of reach: one error line
    lifecycle.apply_compilation_cache()  # inside run_mode: an unusable folder is one error line
    modes[FLAGS.mode]()

  lifecycle.run_mode(run, trains=FLAGS.mode == "train")


def _task_name() -> str:
  """--task; for eval and predict, the task of the trained --workdir (its config.json tells),
  so that --task need not be repeated there, and a contradicting one is one error line."""
  if FLAGS.mode == "train" or not FLAGS.workdir:
    return FLAGS.task
  try:
    config = checkpoints.read_config((run.sequential_seed_dirs(FLAGS.workdir) or [FLAGS.workdir])[0])
  except (OSError, ValueError):  # WorkdirError included: the task's own loading says what is wrong
    return FLAGS.task
  trained = next((name for name, module in TASKS.items() if module.owns(config)), FLAGS.task)
  if FLAGS["task"].present and FLAGS.task != trained:
    sys.exit(
      f"error: {FLAGS.workdir} holds a {trained} run, not {FLAGS.task}: drop --task "
      "(eval and predict read it from the workdir)"
    )
  return trained


def _refuse_flags_of_other_tasks(task_name: str) -> None:
  """A flag of another task (on the command line or in a flagfile) would be ignored without a
  word, e.g. --dataset=sick on a CIFAR-10 run, or lstm.flags' model flags with --task=cifar10."""
  by_module = FLAGS.flags_by_module_dict()
  for other, module in TASKS.items():
    given = sorted(f"--{f.name}" for f in by_module.get(module.__name__, []) if f.present)
    if other != task_name and given:
      one = len(given) == 1
      training = FLAGS.mode == "train"
      source = f"--task={task_name}" if training or FLAGS["task"].present else f"read from {FLAGS.workdir}"
      sys.exit(
        f"error: {', '.join(given)}: {'this flag belongs' if one else 'these flags belong'} to the "
        f"{other} task, and this run is {task_name} ({source}): remove {'it' if one else 'them'}"
        + (f", or train with --task={other}" if training else "")
      )


def cli() -> None:
  """The `simjax` command an installed package provides (pyproject.toml)."""
  app.run(main, flags_parser=cli_flags.parse_flags_with_flagfile_lookup)


if __name__ == "__main__":
  cli()
