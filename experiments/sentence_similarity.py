"""Sentence-similarity task: its flags and its train / eval / predict modes."""

from __future__ import annotations

import os
import sys

import numpy as np
from absl import flags

from experiments import cli_flags, console, transfer_table, workdirs
from simjax.tasks.similarity import datasets, input_pipeline, task as training, transfer
from simjax.tasks.similarity.models import ModelConfig

FLAGS = flags.FLAGS

# Flags of this task; the shared ones (mode, workdir, data_dir, seed, optimizer...) are in cli_flags.py.
flags.DEFINE_string(
  "manual_dir",
  os.environ.get("SIMJAX_MANUAL_DIR"),
  "Folder with the official raw files for offline preparation "
  "(default: $SIMJAX_MANUAL_DIR; unset: download).",
)
cli_flags.define_settings(training.DataConfig)
cli_flags.define_settings(ModelConfig)
cli_flags.define_settings(training.TrainConfig)  # best_metric

flags.DEFINE_enum(
  "transfer_encoder",
  "trained",
  ["trained", *transfer.WordVectorBaseline.KINDS],
  "--mode=transfer: what to score; trained = the trained --workdir, glove_mean and sif = baselines "
  "without training (their record goes to --workdir).",
)
flags.DEFINE_list(
  "transfer_sets", list(transfer.GROUPS), f"--mode=transfer: the datasets ({', '.join(transfer.GROUPS)})."
)
flags.DEFINE_integer(
  "transfer_max_pairs",
  0,
  "--mode=transfer: > 0 scores the first N pairs of each set (a quick check).",
  lower_bound=0,
)

TRANSFER_FLAGS = ("transfer_encoder", "transfer_sets", "transfer_max_pairs")

DEFAULT_EVAL_SPLIT = "validation"  # dev: model selection and the plateau schedule


def model_config_for(data) -> ModelConfig:
  low, high = datasets.SCORE_RANGE[FLAGS.dataset]
  embedding_dim = FLAGS.embedding_dim
  if data.embedding_matrices is not None:
    pretrained_dim = data.embedding_matrices.shape[-1]
    if FLAGS["embedding_dim"].present and embedding_dim != pretrained_dim:
      raise ValueError(
        f"--embedding_dim={embedding_dim} but the GloVe vectors have {pretrained_dim} dimensions: "
        "drop --embedding_dim or set it to match"
      )
    embedding_dim = pretrained_dim  # e.g. 300 for a --glove_path to 300-d vectors
  return cli_flags.config_from_flags(
    ModelConfig, vocab_size=len(data.vocab), embedding_dim=embedding_dim, score_min=low, score_max=high
  )


def data_config() -> training.DataConfig:
  return cli_flags.config_from_flags(training.DataConfig, eval_split=FLAGS.eval_split or DEFAULT_EVAL_SPLIT)


def workdir() -> str:
  return FLAGS.workdir or os.path.join("workdirs", f"{FLAGS.experiment}_{FLAGS.dataset}")


def owns(config: dict) -> bool:
  """Whether a workdir's config.json describes a run of this task."""
  return "cell" in config.get("model", {})


def _refuse_transfer_flags() -> None:
  """The --transfer_* flags would be ignored without a word in the other modes."""
  given = [f"--{name}" for name in TRANSFER_FLAGS if FLAGS[name].present]
  if given:
    raise ValueError(
      f"{', '.join(given)} only apply with --mode=transfer, not --mode={FLAGS.mode}: drop them"
    )


def train() -> None:
  _refuse_transfer_flags()
  train_config = cli_flags.config_from_flags(training.TrainConfig)
  task = training.SimilarityTask(
    model_config_for,
    data_config(),
    cli_flags.optim_config(),
    **train_config.task_settings,
  )
  columns = [
    ("epoch", "epoch", "d"),
    ("train MSE", "train_mse", ".4f"),
    ("dev MSE", "dev_mse", ".4f"),
    ("dev Pearson", "dev_pearson", ".4f"),
    ("dev Spearman", "dev_spearman", ".4f"),
    ("lr scale", "learning_rate_scale", ".3g"),
    ("seconds", "epoch_seconds", ".1f"),
  ]
  results = workdirs.train_workdir(task, train_config, workdir(), columns)
  coverage = results["data"].get("glove_coverage_of_train_vocab")  # known when the vocabulary is built
  if coverage is not None:
    print(f"GloVe coverage of the train vocabulary: {coverage:.1%}")
  best_epochs = ", ".join(str(r["best_epoch"]) for r in results["per_seed"])
  _print_final(results, f"best dev epoch {best_epochs}, {results['train_seconds']:.1f} s of training")


def _data_settings() -> dict:
  """What eval and predict change from the trained run's data settings: where the data is, and
  the dev and test splits where given (else the run's own, from its config.json)."""
  return {
    "data_dir": FLAGS.data_dir,
    "manual_dir": FLAGS.manual_dir,
    **cli_flags.flags_given("eval_split", "test_split"),
  }


def evaluate() -> None:
  _refuse_transfer_flags()
  settings = _data_settings()
  results = workdirs.evaluate_workdir(workdir(), lambda path: training.load_trained(path, **settings))
  for split, count in results["training_overlap"]["extra"].items():
    if count:  # only where other splits are evaluated than the run removed from its extra data
      print(
        f"warning: {count} {split} pairs ({results['evaluation'][split]}) are in the run's extra "
        "training data: these numbers are not of unseen pairs",
        file=sys.stderr,
      )
  _print_final(results, f"best checkpoint of {workdir()}")


def predict(paths: list[str]) -> None:
  _refuse_transfer_flags()
  if len(paths) > 1:
    raise ValueError("predict reads one TSV file (or stdin): pass one path, '-' or nothing")
  path = paths[0] if paths else "-"
  name = "stdin" if path == "-" else path
  wanted = "a file of 'sentence1<TAB>sentence2' lines, or pipe one in"
  # A file is read before the model loads (seconds), so that a wrong path fails at once; stdin
  # only after it, so that nobody types sentences for a workdir that cannot be loaded.
  data = None if path == "-" else console.read_input(path, wanted)
  state, config, task = training.load_trained(workdir(), **_data_settings())
  if data is None:
    data = console.read_input(path, wanted)
  first, second = console.read_sentence_pairs(data, name)
  if not first:
    raise ValueError(f"{name}: no sentence pairs to score (expected 'sentence1<TAB>sentence2' lines)")
  encoded = input_pipeline.encode_pairs(
    first, second, np.zeros(len(first)), task.vocab, config["data"]["max_length"]
  )
  scores = training.predict(state, encoded, FLAGS.batch_size, config["data"]["max_length"])
  # A multi-seed workdir predicts with the mean of its seeds (an ensemble).
  for score in scores.mean(axis=0):
    print(f"{score:.4f}")


def transfer_mode() -> None:
  """--mode=transfer: the trained --workdir (or a baseline) on STS12-16, STS-B and SICK-R."""
  common = {
    "data_dir": FLAGS.data_dir,
    "manual_dir": FLAGS.manual_dir,
    "groups": tuple(FLAGS.transfer_sets),
    "max_pairs": FLAGS.transfer_max_pairs,
    "command": cli_flags.command_line(),
  }
  if FLAGS.transfer_encoder == "trained":
    record, path = transfer.transfer_trained(workdir(), batch_size=FLAGS.batch_size, **common)
    what = (
      f"{workdir()} (trained on {record['encoder']['dataset']}, {len(record['encoder']['seeds'])} seed(s))"
    )
  elif not FLAGS.workdir:
    raise ValueError(
      f"--transfer_encoder={FLAGS.transfer_encoder}: pass --workdir, the folder its transfer.json goes to"
    )
  else:
    record, path = transfer.transfer_baseline(
      FLAGS.transfer_encoder, FLAGS.workdir, glove_path=FLAGS.glove_path, **common
    )
    what = f"the {FLAGS.transfer_encoder} baseline"
    if FLAGS.transfer_encoder == "sif":
      what += f" (word frequencies: {record['encoder']['word_frequencies']})"
  print(f"Transfer of {what}: Spearman and Pearson x 100, mean over seeds; pairs it trained on removed")
  print("\n".join(transfer_table.set_lines(record)))
  if FLAGS.transfer_max_pairs:
    print(
      f"only the first {FLAGS.transfer_max_pairs} pairs of each set: a check of the pipeline, not figures to compare"
    )
  print(f"transfer recorded in {path}" if path else f"{workdir()} is read-only: nothing recorded")


def _print_final(results, where: str) -> None:
  print(f"\nResults ({where}):")
  for name in ("dev", "test"):
    r = results[name]
    print(f"  {name:4s} Pearson {r['pearson']:.4f}  Spearman {r['spearman']:.4f}  MSE {r['mse']:.4f}")
  ensemble = results.get("ensemble")
  if ensemble is not None:
    print(
      f"  ensemble (mean score of the {ensemble['seeds']} seeds): dev Pearson {ensemble['dev']['pearson']:.4f}"
      f"  test Pearson {ensemble['test']['pearson']:.4f}"
    )
  if len(results["per_seed"]) > 1:
    print(f"Mean ± std over {len(results['per_seed'])} seeds {results['seeds']} (sample std):")
    keys = [
      (f"{split} {m}", f"{split}.{m.lower()}")
      for split in ("dev", "test")
      for m in ("Pearson", "Spearman", "MSE")
    ]
    print("\n".join(console.seed_summary_lines(results, keys)))
