r"""Benchmark: N seeds stacked with jax.vmap vs the same N seeds one after another.

  python -m experiments.benchmark_seeds                         # Siamese LSTM (lstm.flags recipe), N=8
  python -m experiments.benchmark_seeds --task=cifar10 --num_seeds=4

Trains the same configuration three ways in fresh workdirs under --out: one seed; N seeds
stacked (one compiled program); N seeds sequentially (--sequential_seeds). Reports wall
seconds of each whole run (data loading and compilation included) and the median
steady-state epoch (epochs after the first, which compiles), writes <out>/seeds_<task>_<device>.json
and prints a Markdown table. Epochs are few and data is sliced: this measures speed, not quality.
"""

from __future__ import annotations

import os
import shutil
import time

from absl import app, flags

import numpy as np

from experiments import cli_flags, console, lifecycle
from simjax import optim, run, run_records
from simjax.tasks.cifar10 import task as cifar10_task
from simjax.tasks.cifar10.models import ModelConfig as CnnConfig
from simjax.tasks.similarity import datasets, task as similarity_task
from simjax.tasks.similarity.models import ModelConfig as EncoderConfig

FLAGS = flags.FLAGS


def define_flags() -> None:
  """Flags of this command (defined only when it runs, so importing it defines none)."""
  flags.DEFINE_enum("task", "similarity", ["similarity", "cifar10"], "What to benchmark.")
  flags.DEFINE_integer("num_seeds", 8, "Seeds N.", lower_bound=2)
  flags.DEFINE_integer("epochs", 3, "Epochs per run (the first includes compilation).", lower_bound=2)
  flags.DEFINE_string(
    "train_split", None, "Train split (default: train for sentences, train[:2048] for CIFAR)."
  )
  flags.DEFINE_string("out", "benchmarks", "Folder for the JSON result and the workdirs (removed after).")
  flags.DEFINE_string("data_dir", os.environ.get("TFDS_DATA_DIR"), "TFDS data_dir.")
  flags.DEFINE_string("manual_dir", os.environ.get("SIMJAX_MANUAL_DIR"), "Raw STS files (offline).")
  flags.DEFINE_string("dtype", "float32", "CIFAR compute dtype (bfloat16 on a GPU).")
  flags.DEFINE_integer(
    "batch_size", None, "Batch size (default: 64 for sentences, 256 for CIFAR).", lower_bound=1
  )
  flags.DEFINE_integer("width", 64, "CIFAR: ResNet width (smaller for a smoke test).", lower_bound=1)
  flags.DEFINE_integer(
    "hidden_size", 128, "Sentences: LSTM hidden size (smaller for a smoke test).", lower_bound=1
  )
  flags.DEFINE_integer(
    "max_length",
    None,
    "Sentences: tokens kept per sentence (default: the recipe's 64; 8 for a smoke test compiles "
    "one length bucket instead of four).",
    lower_bound=1,
  )
  flags.DEFINE_string("eval_split", None, "Evaluated split (default: validation / test[:1000]).")
  flags.DEFINE_enum(
    "epoch_loop", "auto", list(cifar10_task.EPOCH_LOOPS), "CIFAR: see experiments.main --helpfull."
  )
  cli_flags.define_compilation_cache_flag()


def _similarity_runner(train_split: str):
  low, high = datasets.SCORE_RANGE["stsb"]
  data = similarity_task.DataConfig(
    dataset="stsb",
    data_dir=FLAGS.data_dir,
    manual_dir=FLAGS.manual_dir,
    train_split=train_split,
    **({"eval_split": FLAGS.eval_split, "test_split": FLAGS.eval_split} if FLAGS.eval_split else {}),
    **({"max_length": FLAGS.max_length} if FLAGS.max_length else {}),
  )
  optim_config = optim.OptimConfig(optimizer="adam", learning_rate=1e-3, grad_clip_norm=5.0)

  def model(prepared):  # the lstm.flags recipe
    return EncoderConfig(
      vocab_size=len(prepared.vocab),
      embedding_dim=50,
      cell="lstm",
      hidden_size=FLAGS.hidden_size,
      bidirectional=True,
      pooling="max",
      head="mlp",
      score_min=low,
      score_max=high,
    )

  def train(workdir: str, num_seeds: int, sequential: bool):
    config = similarity_task.TrainConfig(
      epochs=FLAGS.epochs, batch_size=batch_size, num_seeds=num_seeds, sequential_seeds=sequential
    )
    task = similarity_task.SimilarityTask(model, data, optim_config, **config.task_settings)
    return run.train_and_evaluate(task, config, workdir)

  batch_size = FLAGS.batch_size or 64
  what = (
    f"Siamese BiLSTM (lstm.flags recipe, hidden {FLAGS.hidden_size}, {data.max_length} tokens), "
    f"STS-B {train_split}, batch {batch_size}"
  )
  return what, train


def _cifar_runner(train_split: str):
  data = cifar10_task.DataConfig(
    data_dir=FLAGS.data_dir,
    cache_dir=os.path.join(FLAGS.out, "cache"),
    train_split=train_split,
    eval_split=FLAGS.eval_split or "test[:1000]",
  )
  optim_config = optim.OptimConfig(optimizer="nesterov", learning_rate=0.05, weight_decay=5e-4)
  model = CnnConfig(architecture="resnet", width=FLAGS.width, dtype=FLAGS.dtype)
  batch_size = FLAGS.batch_size or 256

  def train(workdir: str, num_seeds: int, sequential: bool):
    config = cifar10_task.TrainConfig(
      epochs=FLAGS.epochs,
      batch_size=batch_size,
      num_seeds=num_seeds,
      sequential_seeds=sequential,
      epoch_loop=FLAGS.epoch_loop,
    )
    task = cifar10_task.Cifar10Task(model, data, optim_config, **config.task_settings)
    return run.train_and_evaluate(task, config, workdir)

  what = (
    f"ResNet-style CNN (width {FLAGS.width}, {FLAGS.dtype}), CIFAR-10 (JPEG stand-in) {train_split}, "
    f"batch {batch_size}"
  )
  return what, train


def _steady_epoch_seconds(workdir: str) -> float:
  rows = run_records.read_metrics(workdir)
  return float(np.median([r["epoch_seconds"] for r in rows[1:]]))


def benchmark() -> dict:
  split = FLAGS.train_split or ("train" if FLAGS.task == "similarity" else "train[:2048]")
  what, train = (_similarity_runner if FLAGS.task == "similarity" else _cifar_runner)(split)
  n = FLAGS.num_seeds
  work = os.path.join(FLAGS.out, f"seeds_{FLAGS.task}_work")
  shutil.rmtree(work, ignore_errors=True)
  measured = {}
  for label, num_seeds, sequential in (
    ("one seed", 1, False),
    (f"{n} stacked", n, False),
    (f"{n} sequential", n, True),
  ):
    workdir = os.path.join(work, label.replace(" ", "_"))
    print(f"{label}...", flush=True)
    start = time.perf_counter()
    train(workdir, num_seeds, sequential)
    wall = time.perf_counter() - start
    steady = _steady_epoch_seconds(workdir)
    measured[label] = {"wall_seconds": wall, "steady_epoch_seconds": steady}
  one, stacked, sequential = (measured[k] for k in ("one seed", f"{n} stacked", f"{n} sequential"))
  device = run_records.device_info()
  result = {
    "what": what,
    "num_seeds": n,
    "epochs": FLAGS.epochs,
    "measured": measured,
    "stacked_over_one_seed": {k: stacked[k] / one[k] for k in one},
    "sequential_over_stacked": {k: sequential[k] / stacked[k] for k in one},
    "device": device,
    "versions": run_records.versions(),
    "git": run_records.git_state(),
    "command": "python -m experiments.benchmark_seeds "
    + " ".join(
      f"--{k}={FLAGS[k].value}"
      for k in ("task", "num_seeds", "epochs", "train_split", "dtype", "batch_size", "width", "hidden_size")
      if FLAGS[k].present
    ),
    # Per steady epoch, compilation excluded: what decides a long study run.
    "faster": "stacked"
    if stacked["steady_epoch_seconds"] <= sequential["steady_epoch_seconds"]
    else "sequential",
  }
  shutil.rmtree(work, ignore_errors=True)
  kind = device["kind"].replace(" ", "_")
  path = os.path.join(FLAGS.out, f"seeds_{FLAGS.task}_{device['platform']}_{kind}.json")
  run_records.write_json(path, result)
  print(f"\n{what}; {device['count']} × {device['kind']}, {FLAGS.epochs} epochs")
  print("| run | wall s | steady epoch s | vs one seed (epoch) |")
  print("|---|---|---|---|")
  for label, m in measured.items():
    print(
      f"| {label} | {m['wall_seconds']:.1f} | {m['steady_epoch_seconds']:.2f} "
      f"| {m['steady_epoch_seconds'] / one['steady_epoch_seconds']:.2f}× |"
    )
  wall, epoch = (result["sequential_over_stacked"][k] for k in ("wall_seconds", "steady_epoch_seconds"))
  print(f"{n} stacked seeds vs {n} sequential runs: {_faster(wall)} (wall), {_faster(epoch)} per epoch.")
  print(f"written: {path}")
  return result


def _faster(ratio: float) -> str:
  return f"{ratio:.2f}x faster" if ratio >= 1 else f"{1 / ratio:.2f}x slower"


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  console.quiet_library_logs()

  def measure():
    lifecycle.apply_compilation_cache()
    benchmark()

  lifecycle.run_mode(measure)


if __name__ == "__main__":
  define_flags()
  app.run(main)
