r"""simjax entry point: absl flags (and flagfiles) -> the library.

  python -m experiments.main --flagfile=lstm_glove.flags            # train (resumes if it can)
  python -m experiments.main --flagfile=lstm_glove.flags --mode=eval
  printf 'A man plays.\tA man is playing.\n' | \
      python -m experiments.main --mode=predict --workdir=workdirs/lstm_glove_stsb
  python -m experiments.main --flagfile=cnn_resnet.flags            # CIFAR-10
  python -m experiments.main --task=cifar10 --mode=predict --workdir=workdirs/cnn_resnet a.png b.jpg

A bare flagfile name is looked up in the current directory, then next to this file.
"""

from __future__ import annotations

from absl import app, flags

from experiments import cifar10, common, sentence_similarity

FLAGS = flags.FLAGS
common.define_training_flags()
flags.DEFINE_enum("task", "similarity", ["similarity", "cifar10"], "What to train.")

TASKS = {"similarity": sentence_similarity, "cifar10": cifar10}


def main(argv):
  task = TASKS[FLAGS.task]
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


if __name__ == "__main__":
  app.run(main, flags_parser=common.parse_flags_with_flagfile_lookup)
