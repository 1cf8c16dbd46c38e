"""CIFAR-10 task: its flags and its train / eval / predict modes."""

from __future__ import annotations

import os

import numpy as np
from absl import flags

from experiments import cli_flags, console, workdirs
from simjax.tasks.cifar10 import input_pipeline, task as training
from simjax.tasks.cifar10.models import HEADS, ModelConfig

FLAGS = flags.FLAGS

flags.DEFINE_enum("cnn_head", "fc", list(HEADS), "cnn: fully connected layers or global average pooling.")
flags.DEFINE_list("fc_units", ["512", "256"], "Hidden units of the fc head, comma separated.")
cli_flags.define_settings(ModelConfig)  # architecture, width, dtype (--cnn_head, --fc_units: above)
cli_flags.define_settings(input_pipeline.Augmentation)
cli_flags.define_settings(training.TrainConfig)  # label_smoothing, epoch_loop
cli_flags.define_settings(training.DataConfig, skip=("eval_split",))  # --eval_split: every task's
flags.DEFINE_string(
  "cache_dir",
  os.environ.get("SIMJAX_CACHE_DIR", os.path.join(os.path.expanduser("~"), ".cache", "simjax")),
  "Decoded images are cached here (default: $SIMJAX_CACHE_DIR, else ~/.cache/simjax; '' disables).",
)

DEFAULT_EVAL_SPLIT = "test"  # the study reports test accuracy per epoch; nothing is selected on it


def model_config() -> ModelConfig:
  # --head is the sentence task's flag; the CNN's is --cnn_head.
  return cli_flags.config_from_flags(
    ModelConfig, head=FLAGS.cnn_head, fc_units=tuple(int(u) for u in FLAGS.fc_units)
  )


def data_config() -> training.DataConfig:
  return cli_flags.config_from_flags(
    training.DataConfig,
    cache_dir=FLAGS.cache_dir or None,
    eval_split=FLAGS.eval_split or DEFAULT_EVAL_SPLIT,
    augmentation=cli_flags.config_from_flags(input_pipeline.Augmentation),
  )


def workdir() -> str:
  return FLAGS.workdir or os.path.join("workdirs", FLAGS.experiment)


def owns(config: dict) -> bool:
  """Whether a workdir's config.json describes a run of this task."""
  return "architecture" in config.get("model", {})


def task_from_flags() -> tuple[training.Cifar10Task, training.TrainConfig]:
  """The task and run settings the flags describe (what --mode=train trains)."""
  train_config = cli_flags.config_from_flags(training.TrainConfig)
  task = training.Cifar10Task(
    model_config(), data_config(), cli_flags.optim_config(), **train_config.task_settings
  )
  return task, train_config


def train() -> None:
  task, train_config = task_from_flags()
  config = task.data
  split = _split_name(config.eval_split)
  columns = [
    ("epoch", "epoch", "d"),
    ("train loss", "train_loss", ".4f"),
    ("train acc", "train_accuracy", ".4f"),
    (f"{split} acc", f"{split}_accuracy", ".4f"),
    ("lr scale", "learning_rate_scale", ".3g"),
    ("seconds", "epoch_seconds", ".1f"),
  ]
  results = workdirs.train_workdir(task, train_config, workdir(), columns)
  if "sequential_seeds" in results:  # the seeds ran one after another, each compiled its own program
    print(
      f"\ntrain {results['train_seconds']:.1f} s for {len(results['per_seed'])} seeds run one after another"
    )
  else:
    print(
      f"\ncompile {results['compile_seconds']:.1f} s, train {results['train_seconds']:.1f} s "
      f"({results['images_per_second']:.0f} images/s on {results['devices']} device(s), all seeds)"
    )
  _print_accuracy(results, results["data"]["eval"]["label"], f"{config.eval_split}, last epoch")


def evaluate() -> None:
  # The evaluated split and test-time augmentation where given, else the run's own.
  settings = {
    "data_dir": FLAGS.data_dir,
    "cache_dir": FLAGS.cache_dir or None,
    **cli_flags.flags_given("eval_split", "tta"),
  }
  results = workdirs.evaluate_workdir(workdir(), lambda path: training.load_trained(path, **settings))
  tta = f", test-time augmentation {results['tta']}" if results["tta"] != "none" else ""
  info = results["data"]["eval"]
  _print_accuracy(results, info["label"], f"{info['split']}, latest checkpoint of {workdir()}{tta}")


def predict(paths: list[str]) -> None:
  if not paths:
    raise ValueError("predict needs image files: ... --mode=predict --workdir=DIR a.png b.jpg")
  # The images first: a wrong path or an unusable image fails at once, not after the model loads.
  images = input_pipeline.read_images(paths)
  state, config, _ = training.load_trained(workdir())
  tta = cli_flags.flags_given("tta").get("tta", config["data"].get("tta", "none"))  # else the run's own
  predictions = training.predict_classes(state, images, FLAGS.batch_size, config["model"]["dtype"], tta=tta)
  names = input_pipeline.CLASS_NAMES
  # A multi-seed workdir predicts by majority vote of its seeds (ties: the lowest class id).
  votes = np.apply_along_axis(np.bincount, 0, predictions, minlength=len(names))
  for path, label in zip(paths, votes.argmax(axis=0)):
    print(f"{path}\t{names[label]}")


def _split_name(split: str) -> str:
  """How the epochs' rows name `split`: "test" for (a slice of) the test split, else "eval"."""
  return "test" if training.tfds_split_name(split) == "test" else "eval"


def _print_accuracy(results, label: str, where: str) -> None:
  metrics = results["test"]  # the evaluated split's numbers (results' "evaluation" names it)
  n = len(results["per_seed"])
  mean_of = f", mean of {n} seeds {results['seeds']}" if n > 1 else ""
  print(f"\n{label} accuracy ({where}{mean_of}): {metrics['accuracy']:.4f}")
  for name, accuracy in metrics["per_class_accuracy"].items():
    print(f"  {name:12s} {accuracy:.4f}")
  if n > 1:
    print("Mean ± std over seeds (sample std):")
    print("\n".join(console.seed_summary_lines(results, [("test accuracy", "test.accuracy")])))
