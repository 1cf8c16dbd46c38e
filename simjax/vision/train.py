"""Training and evaluation of the CIFAR-10 CNNs.

The whole split sits on the accelerator(s). One epoch is one compiled program: a
`lax.scan` over the epoch's batches, each gathered from the device copy, augmented and
normalized in JAX. Data parallelism is `jax.jit` with a 1-D device mesh: batches are
sharded on their first axis, the state is replicated, so BatchNorm sees the global batch.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from simjax import loop, optim, run_records, seeds, sharding
from simjax import checkpoints
from simjax.checkpoints import CheckpointStore
from simjax.train_state import TrainState
from simjax.vision import input_pipeline
from simjax.vision.models import ModelConfig, init_variables, make_model


@dataclasses.dataclass(frozen=True)
class DataConfig:
  data_dir: str | None = None  # TFDS data_dir holding cifar10/ (None: TFDS's default)
  cache_dir: str | None = None  # decoded uint8 arrays are cached here (None: no cache)
  train_split: str = "train"
  eval_split: str = "test"
  augmentation: input_pipeline.Augmentation = input_pipeline.Augmentation()
  tta: str = "none"  # test-time augmentation of the evaluated split (input_pipeline.TTA_MODES)

  def __post_init__(self):
    if self.tta not in input_pipeline.TTA_MODES:
      raise ValueError(f"tta must be one of {', '.join(input_pipeline.TTA_MODES)}; got {self.tta!r}")


EPOCH_LOOPS = ("auto", "scan", "host")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  epochs: int = 30
  batch_size: int = 256
  seed: int = 0  # the first seed; replica r uses seed + r
  num_seeds: int = 1  # replicas trained together (jax.vmap), each with its own BatchNorm statistics
  sequential_seeds: bool = False  # train the seeds one after another instead (less memory)
  label_smoothing: float = 0.0
  keep_checkpoints: int = 3
  # How an epoch runs: "scan", one compiled program (lax.scan over the steps); "host", a host
  # loop over one compiled step; "auto", scan on GPU/TPU and host on CPU (see compile_train_epoch).
  epoch_loop: str = "auto"

  def __post_init__(self):
    if self.epoch_loop not in EPOCH_LOOPS:
      raise ValueError(f"epoch_loop must be one of {', '.join(EPOCH_LOOPS)}; got {self.epoch_loop!r}")
    if self.epochs < 1 or self.batch_size < 1:
      raise ValueError(f"need epochs >= 1 and batch_size >= 1; got {self.epochs}, {self.batch_size}")
    if self.num_seeds < 1:
      raise ValueError(f"num_seeds must be >= 1, got {self.num_seeds}")
    if not 0.0 <= self.label_smoothing < 1.0:
      raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")


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
) -> TrainState:
  """One replica per seed, stacked (see simjax.seeds)."""
  model = make_model(model_config)
  tx = optim.make_optimizer(optim_config, steps_per_epoch, total_steps)
  plateau = optim.plateau_transform(optim_config)

  variables, state_rngs = seeds.init_replicas(lambda key: init_variables(model, key), seed_list)

  def create(variables, state_rng):
    return TrainState.create(
      apply_fn=model.apply,
      params=variables["params"],
      batch_stats=variables.get("batch_stats", {}),
      tx=tx,
      plateau=plateau,
      rng=state_rng,
    )

  return jax.jit(jax.vmap(create))(variables, state_rngs)


def _loss_and_updates(state: TrainState, params, images, labels, dropout_key, label_smoothing: float):
  variables = {"params": params, "batch_stats": state.batch_stats}
  logits, new_vars = state.apply_fn(
    variables, images, train=True, mutable=["batch_stats"], rngs={"dropout": dropout_key}
  )
  targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
  loss = jnp.mean(optax.softmax_cross_entropy(logits, targets))
  accuracy = jnp.mean(jnp.argmax(logits, -1) == labels)
  return loss, (accuracy, new_vars.get("batch_stats", {}))


def train_step(
  state: TrainState,
  images: jax.Array,
  labels: jax.Array,
  *,
  augmentation: input_pipeline.Augmentation,
  label_smoothing: float,
  compute_dtype=jnp.float32,
) -> tuple[TrainState, dict[str, jax.Array]]:
  """One update on a uint8 batch: augment, normalize, forward, backward, apply."""
  augment_key, dropout_key = jax.random.split(state.step_key())
  images = input_pipeline.normalize(input_pipeline.augment(augment_key, images, augmentation), compute_dtype)
  grad_fn = jax.value_and_grad(_loss_and_updates, argnums=1, has_aux=True)
  (loss, (accuracy, batch_stats)), grads = grad_fn(
    state, state.params, images, labels, dropout_key, label_smoothing
  )
  state = state.apply_gradients(grads).replace(batch_stats=batch_stats)
  return state, {"loss": loss, "accuracy": accuracy}


def compile_train_epoch(
  mesh,
  state: TrainState,
  images: jax.Array,
  labels: jax.Array,
  *,
  batch_size: int,
  steps: int,
  augmentation,
  label_smoothing: float,
  compute_dtype,
  fused: bool | None = None,
) -> Callable:
  """Compiles one epoch: (state, images, labels, epoch_keys) -> (state, {"loss", "accuracy"}
  [steps, replicas]).

  `state` stacks the replicas (seeds) and `epoch_keys` [replicas, 2] gives each its data
  order. `images`/`labels` are the whole (replicated) train split on the device(s), shared
  by the replicas; each step gathers every replica's batch from its own fresh permutation
  there and shards it over the data axis. The step is `jax.vmap`ped over replicas, so
  each has its own BatchNorm statistics (over its global batch).
  fused=True compiles the epoch as one program (`lax.scan` over steps): no host round
  trip between steps. XLA's CPU backend runs loop bodies without its fast convolution
  path (about 14x slower, measured here), so on CPU (fused=None picks) the epoch is a
  host loop over one compiled step instead; the data still never leaves the device.
  Everything is compiled here, ahead of time, so epoch timings exclude compilation.
  """
  fused = jax.default_backend() != "cpu" if fused is None else fused
  batch_sharding = sharding.batch_sharded(mesh, batch_axis=1)  # [replicas, batch, ...]
  replicated = sharding.replicated(mesh)
  replicas = seeds.num_replicas(state)
  example_keys = jnp.zeros((replicas, 2), jnp.uint32)
  replica_step = jax.vmap(
    functools.partial(
      train_step, augmentation=augmentation, label_smoothing=label_smoothing, compute_dtype=compute_dtype
    )
  )

  def step(state, images, labels, indices):  # indices: [replicas, batch]
    batch_images = jax.lax.with_sharding_constraint(images[indices], batch_sharding)
    batch_labels = jax.lax.with_sharding_constraint(labels[indices], batch_sharding)
    return replica_step(state, batch_images, batch_labels)

  def epoch_order(epoch_keys):  # -> [steps, replicas, batch]
    def order(key):
      return jax.random.permutation(key, labels.shape[0])[: steps * batch_size].reshape(steps, batch_size)

    return jnp.swapaxes(jax.vmap(order)(epoch_keys), 0, 1)

  if fused:

    def epoch(state, images, labels, epoch_keys):
      return jax.lax.scan(lambda s, indices: step(s, images, labels, indices), state, epoch_order(epoch_keys))

    jitted = jax.jit(epoch, out_shardings=(replicated, replicated), donate_argnums=(0,))
    return jitted.lower(state, images, labels, example_keys).compile()

  order_fn = jax.jit(epoch_order).lower(example_keys).compile()
  example_indices = jax.ShapeDtypeStruct((replicas, batch_size), jnp.int32)
  step_fn = (
    jax.jit(step, out_shardings=(replicated, replicated), donate_argnums=(0,))
    .lower(state, images, labels, example_indices)
    .compile()
  )

  def host_loop_epoch(state, images, labels, epoch_keys):
    order = order_fn(epoch_keys)
    metrics = []
    for i in range(steps):
      state, step_metrics = step_fn(state, images, labels, order[i])
      metrics.append(step_metrics)
    return state, jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *metrics)

  return host_loop_epoch


def make_predict(mesh, *, batch_size: int, compute_dtype, tta: str = "none") -> Callable:
  """(state, images uint8 [N...]) -> every replica's predicted classes [replicas, N], jitted;
  N a multiple of batch_size. `tta` averages the logits over test-time views (see
  input_pipeline.tta_views)."""
  batch_sharding = sharding.batch_sharded(mesh)

  def replica_logits(state, batch):
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    views = input_pipeline.tta_views(input_pipeline.normalize(batch, compute_dtype), tta)
    logits = jax.vmap(lambda view: state.apply_fn(variables, view, train=False))(views)
    return jnp.mean(logits, axis=0)

  def predict(state, images):
    batches = images.reshape(-1, batch_size, *images.shape[1:])

    def step(_, batch):
      batch = jax.lax.with_sharding_constraint(batch, batch_sharding)
      logits = jax.vmap(replica_logits, in_axes=(0, None))(state, batch)  # [replicas, batch, classes]
      return None, jnp.argmax(logits, -1)

    classes = jax.lax.scan(step, None, batches)[1]  # [batches, replicas, batch]
    return jnp.swapaxes(classes, 0, 1).reshape(classes.shape[1], -1)

  return jax.jit(predict, out_shardings=sharding.replicated(mesh))


def predict_classes(
  state: TrainState, images: np.ndarray, batch_size: int, dtype: str, tta: str = "none"
) -> np.ndarray:
  """Every replica's predicted class of every uint8 image [replicas, N], on all local devices."""
  mesh = sharding.data_mesh()
  devices = mesh.devices.size
  batch_size = min(batch_size, -(-len(images) // devices) * devices)
  batch_size = -(-batch_size // devices) * devices
  predict = make_predict(mesh, batch_size=batch_size, compute_dtype=jnp.dtype(dtype), tta=tta)
  replicated = sharding.replicated(mesh)
  padded = jax.device_put(_padded(images, batch_size), replicated)
  return np.asarray(predict(jax.device_put(state, replicated), padded))[:, : len(images)]


def classification_metrics(predictions: np.ndarray, labels: np.ndarray, class_names) -> dict[str, Any]:
  confusion = np.zeros((len(class_names), len(class_names)), np.int64)
  np.add.at(confusion, (labels, predictions), 1)
  per_class = confusion.diagonal() / np.maximum(confusion.sum(1), 1)
  return {
    "accuracy": float(np.mean(predictions == labels)),
    "per_class_accuracy": {name: float(a) for name, a in zip(class_names, per_class)},
    "confusion_matrix": confusion.tolist(),  # rows: true class, columns: predicted
  }


def seconds_to_accuracy(history: list[dict[str, Any]], targets) -> dict[str, float | None]:
  """Training seconds (compilation excluded) until the evaluated accuracy first reached each target."""
  reached = {}
  for target in targets:
    elapsed, reached[str(target)] = 0.0, None
    for row in history:
      elapsed += row["epoch_seconds"]
      accuracy = next(v for k, v in row.items() if k.endswith("_accuracy") and k != "train_accuracy")
      if accuracy >= target:
        reached[str(target)] = elapsed
        break
  return reached


def epoch_keys(seed_list: list[int], epoch: int) -> jax.Array:
  """Each replica's key for `epoch` (data order, augmentation): [replicas, 2]."""
  return jnp.stack([jax.random.fold_in(jax.random.PRNGKey(s), epoch) for s in seed_list])


def _replica_history(history: list[dict[str, Any]], r: int) -> list[dict[str, Any]]:
  """One replica's rows (its own accuracy; epoch seconds are those of all replicas together)."""
  return [{**row, **{k: v[r] for k, v in row["per_seed"].items()}} for row in history]


def _accuracy_and_error(metrics: dict[str, Any]) -> dict[str, float]:
  # The per-epoch row keeps scalars only; "error" can drive the plateau schedule.
  return {"accuracy": metrics["accuracy"], "error": 1.0 - metrics["accuracy"]}


def _padded(images: np.ndarray, multiple: int) -> np.ndarray:
  fill = -len(images) % multiple
  return np.concatenate([images, np.zeros((fill, *images.shape[1:]), images.dtype)]) if fill else images


# --------------------------------------------------------------------------------------
# The whole run
# --------------------------------------------------------------------------------------
def train_and_evaluate(
  model_config: ModelConfig,
  data_config: DataConfig,
  optim_config: optim.OptimConfig,
  train_config: TrainConfig,
  workdir: str,
  *,
  flags: dict[str, Any] | None = None,
  on_epoch: Callable[[dict[str, Any]], None] = lambda row: None,
) -> dict[str, Any]:
  """Trains (or resumes) in `workdir`; evaluates the last epoch on the eval split.

  Writes metrics.jsonl, results.json (overall / per-class accuracy, confusion matrix,
  train and compile seconds, images per second), run_info.json and checkpoints. With
  several seeds, results.json holds each seed's results and their summary.
  """
  seed_list = seeds.seed_list(train_config.seed, train_config.num_seeds)

  def run_one(seed: int, seed_workdir: str) -> dict[str, Any]:
    one = dataclasses.replace(train_config, seed=seed, num_seeds=1, sequential_seeds=False)
    return train_and_evaluate(
      model_config, data_config, optim_config, one, seed_workdir, flags=flags, on_epoch=on_epoch
    )

  return seeds.train(
    seed_list,
    workdir,
    sequential=train_config.sequential_seeds,
    run_one=run_one,
    run_stacked=lambda: _train_stacked(
      model_config, data_config, optim_config, train_config, workdir, seed_list, flags, on_epoch
    ),
  )


def _train_stacked(
  model_config, data_config, optim_config, train_config, workdir, seed_list, flags, on_epoch
) -> dict[str, Any]:
  """train_and_evaluate for seeds stacked into one program."""
  mesh = sharding.data_mesh()
  sharding.check_batch_size(train_config.batch_size, mesh)
  train = input_pipeline.load_split(data_config.train_split, data_config.data_dir, data_config.cache_dir)
  test = input_pipeline.load_split(data_config.eval_split, data_config.data_dir, data_config.cache_dir)
  steps = len(train) // train_config.batch_size
  if steps == 0:
    raise ValueError(
      f"batch size {train_config.batch_size} is larger than the {len(train)} images of "
      f"{data_config.train_split!r}: lower --batch_size or use a larger --train_split"
    )
  os.makedirs(workdir, exist_ok=True)
  store = CheckpointStore(workdir, keep=train_config.keep_checkpoints)
  resuming = store.latest_step() is not None
  store.guard_config(run_config(model_config, data_config, optim_config, train_config), replace=not resuming)
  data_info = {"train": train.info, "eval": test.info}
  run_records.write_json(
    os.path.join(workdir, run_records.RUN_INFO_FILE),
    {"flags": flags or {}, "data": data_info, **run_records.provenance()},
  )

  compute_dtype = jnp.dtype(model_config.dtype)
  state = create_train_state(
    seed_list, model_config, optim_config, steps_per_epoch=steps, total_steps=steps * train_config.epochs
  )
  replicated = sharding.replicated(mesh)
  state = jax.device_put(state, replicated)
  train_images, train_labels = jax.device_put((train.images, train.labels), replicated)
  eval_batch = min(train_config.batch_size, -(-len(test) // mesh.devices.size) * mesh.devices.size)
  test_images = jax.device_put(_padded(test.images, eval_batch), replicated)
  # Compile before training, so epoch timings measure training only.
  start = time.perf_counter()
  compiled_epoch = compile_train_epoch(
    mesh,
    state,
    train_images,
    train_labels,
    batch_size=train_config.batch_size,
    steps=steps,
    augmentation=data_config.augmentation,
    label_smoothing=train_config.label_smoothing,
    compute_dtype=compute_dtype,
    fused={"auto": None, "scan": True, "host": False}[train_config.epoch_loop],
  )
  predict_fn = make_predict(mesh, batch_size=eval_batch, compute_dtype=compute_dtype, tta=data_config.tta)
  compiled_predict = predict_fn.lower(state, test_images).compile()
  epoch_keys(seed_list, 0).block_until_ready()  # eager ops of train_epoch
  compile_seconds = time.perf_counter() - start

  def evaluate(state) -> list[dict[str, Any]]:
    predictions = np.asarray(compiled_predict(jax.device_put(state, replicated), test_images))[:, : len(test)]
    return [classification_metrics(p, test.labels, test.class_names) for p in predictions]

  def train_epoch(state, epoch: int) -> loop.EpochResult:
    # Data order and augmentation depend only on (seed, epoch, step): resuming replays them.
    state, metrics = compiled_epoch(
      jax.device_put(state, replicated), train_images, train_labels, epoch_keys(seed_list, epoch)
    )
    metrics = jax.device_get(metrics)  # [steps, replicas]
    return loop.EpochResult(
      state,
      np.asarray(metrics["loss"]),
      {
        "train_loss": np.mean(metrics["loss"], axis=0),
        "train_accuracy": np.mean(metrics["accuracy"], axis=0),
      },
    )

  state, meta = loop.fit(
    state,
    store=store,
    epochs=train_config.epochs,
    train_epoch=train_epoch,
    evaluate=lambda s: [_accuracy_and_error(m) for m in evaluate(s)],
    selection=loop.Selection(
      best_metric=None,  # the evaluated split is the test set: select nothing on it, keep no "best"
      plateau_metric="error" if optim_config.lr_schedule == "plateau" else None,
      eval_name="test" if data_config.eval_split.startswith("test") else "eval",
    ),
    seeds=seed_list,
    plateau=optim.plateau_transform(optim_config),
    on_epoch=on_epoch,
  )
  store.close()
  final = evaluate(state)  # the last epoch, as the study reports it (no selection on test)
  images_trained = steps * train_config.batch_size * meta["epoch"] * len(seed_list)
  per_seed = [
    {
      "seed": s,
      "test": final[r],
      "seconds_to_accuracy": seconds_to_accuracy(
        _replica_history(meta["history"], r), (0.8, 0.85, 0.9, 0.94)
      ),
    }
    for r, s in enumerate(seed_list)
  ]
  results = {
    **seeds.combine(per_seed),
    "epochs": meta["epoch"],
    "train_seconds": meta["train_seconds"],
    "compile_seconds": compile_seconds,
    "images_per_second": images_trained / meta["train_seconds"] if meta["train_seconds"] else None,
    "seconds_per_epoch": float(np.median([r["epoch_seconds"] for r in meta["history"]])),
    "devices": mesh.devices.size,
    "data": data_info,
    "flags": flags or {},
    **run_records.provenance(),
  }
  run_records.write_json(os.path.join(workdir, run_records.RESULTS_FILE), results)
  return results


def run_config(
  model_config: ModelConfig,
  data_config: DataConfig,
  optim_config: optim.OptimConfig,
  train_config: TrainConfig,
) -> dict[str, Any]:
  """What a workdir's checkpoints depend on (see similarity.train.run_config)."""
  data = dataclasses.asdict(data_config)
  for free in ("data_dir", "cache_dir", "eval_split", "tta"):  # where data is, and how it is evaluated
    data.pop(free)
  train = dataclasses.asdict(train_config)
  train.pop("keep_checkpoints")
  train.pop("sequential_seeds")  # how the seeds run, not what they compute
  train.pop("epoch_loop")  # how an epoch runs, not what it computes (same losses, tested)
  if optim_config.lr_schedule not in optim.SCHEDULES_OVER_ALL_EPOCHS:
    train.pop("epochs")
  return {
    "model": dataclasses.asdict(model_config),
    "data": data,
    "optim": dataclasses.asdict(optim_config),
    "train": train,
  }


def load_trained(workdir: str) -> tuple[TrainState, dict[str, Any]]:
  """The last-epoch state of every seed of a trained workdir (what results.json reports)
  and its run config. A --sequential_seeds workdir gives its seeds' states stacked the same way."""
  seed_dirs = seeds.sequential_seed_dirs(workdir)
  if seed_dirs:
    loaded = [load_trained(d) for d in seed_dirs]
    config = loaded[0][1]
    config = {**config, "train": {**config["train"], "num_seeds": len(loaded)}}
    return seeds.concatenate([state for state, _ in loaded]), config
  config = checkpoints.read_config(workdir)
  state = create_train_state(
    seeds.from_config(config, workdir),
    ModelConfig(**config["model"]),
    optim.OptimConfig(**config["optim"]),  # the checkpoint's optimizer-state structure
    steps_per_epoch=1,
    total_steps=1,
  )
  return checkpoints.restore_for_inference(workdir, state, "latest"), config
