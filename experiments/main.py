r"""simjax entry point: absl flags (and flagfiles) -> the library.

  python -m experiments.main --flagfile=lstm_glove.flags            # train (resumes if it can)
  python -m experiments.main --flagfile=lstm_glove.flags --mode=eval
  printf 'A man plays.\tA man is playing.\n' | \
      python -m experiments.main --mode=predict --workdir=workdirs/lstm_glove_stsb
  python -m experiments.main --flagfile=cnn_resnet.flags            # CIFAR-10
  python -m experiments.main --mode=predict --workdir=workdirs/cnn_resnet a.png b.jpg

A bare flagfile name is looked up in the current directory, then next to this file. Eval and
predict read the task (sentences or CIFAR-10) from the workdir's config.json.
"""

from __future__ import annotations

import sys

from absl import app, flags

from experiments import cifar10, common, sentence_similarity
from simjax import checkpoints, run

FLAGS = flags.FLAGS
common.define_training_flags()
flags.DEFINE_enum("task", "similarity", ["similarity", "cifar10"], "What to train.")

TASKS = {"similarity": sentence_similarity, "cifar10": cifar10}


def main(argv):
  task = TASKS[_task_name()]
  inputs = argv[1:]
  if inputs and FLAGS.mode != "predict":
    raise app.UsageError(f"unexpected arguments: {' '.join(inputs)} (only --mode=predict takes inputs)")
  common.quiet_library_logs()
  common.apply_determinism()
  modes = {"train": task.train, "eval": task.evaluate, "predict": lambda: task.predict(inputs)}

  def run():
    common.apply_compilation_cache()  # inside run_mode: an unusable folder is one error line
    modes[FLAGS.mode]()

  common.run_mode(run)


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


if __name__ == "__main__":
  app.run(main, flags_parser=common.parse_flags_with_flagfile_lookup)
