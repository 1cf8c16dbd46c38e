"""Training and evaluation of the CIFAR-10 CNNs.

The whole split sits on the accelerator(s). One epoch is one compiled program: a
`lax.scan` over the epoch's batches, each gathered from the device copy, augmented and
normalized in JAX. Data parallelism is `jax.jit` with a 1-D device mesh: batches are
sharded on their first axis, the state is replicated, so BatchNorm sees the global batch.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from simjax import checkpoints, deviceless, loop, optim, replicas, run, sharding
from simjax.errors import ConfigError
from simjax.programs import Program, abstract_state
from simjax.run_config import RunConfig
from simjax.settings import setting, validate
from simjax.tasks import base
from simjax.tasks.base import Task
from simjax.tasks.cifar10 import input_pipeline
from simjax.tasks.cifar10.models import (
  ModelConfig,
  init_variables,
  make_model,
  param_groups,
  whitening_kernel,
)
from simjax.train_state import TrainState


@dataclasses.dataclass(frozen=True)
class DataConfig:
  data_dir: str | None = None  # TFDS data_dir holding cifar10/ (None: TFDS's default)
  cache_dir: str | None = None  # decoded uint8 arrays are cached here (None: no cache)
  train_split: str = "train"
  eval_split: str = setting("test", "Split evaluated every epoch.", added_later=True)
  augmentation: input_pipeline.Augmentation = input_pipeline.Augmentation()
  tta: str = setting(
    "none",
    "Test-time augmentation when evaluating: the mean logits of the image and its mirror (flip), "
    "and of both shifted one pixel each way (flip_translate, 6 views). Training is unchanged. Eval "
    "and predict: the trained run's own unless given.",
    choices=input_pipeline.TTA_MODES,
    added_later=True,
  )
  tta_each_epoch: bool = setting(
    True,
    "Evaluate every epoch with tta; false: one view each epoch (cheaper), tta for the final numbers.",
    added_later=True,
  )

  def __post_init__(self):
    validate(self)


EPOCH_LOOPS = ("auto", "scan", "host")
WHITENING_IMAGES = 5000  # the speedrun net's whitening conv comes from the first this many train images


@dataclasses.dataclass(frozen=True)
class TrainConfig(RunConfig):
  """The shared run settings (simjax.run_config.RunConfig) and this task's own."""

  epochs: int = 30
  batch_size: int = 256
  label_smoothing: float = setting(
    0.0, "Label smoothing of the cross-entropy targets.", lower=0.0, upper=0.99
  )
  epoch_loop: str = setting(
    "auto",
    "scan: each epoch is one compiled program (lax.scan over its steps); host: a host loop over one "
    "compiled step; auto: scan on GPU/TPU, host on CPU (XLA's CPU backend runs convolutions inside "
    "loops slowly). Same numbers either way.",
    choices=EPOCH_LOOPS,
  )


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
  whitening_images: np.ndarray | None = None,
  image_size: int = 32,
  platform: str | None = None,
) -> TrainState:
  """One replica per seed, stacked (see simjax.replicas). The speedrun net's whitening conv
  is computed from `whitening_images` (uint8, e.g. the first 5,000 of the train split);
  without them (eval, predict) it is left for a checkpoint to fill. `image_size`: CIFAR's 32,
  or smaller for programs compiled only to check them (the fc head's shape depends on it).
  `platform`: where the programs run (models.make_model; None: JAX's default backend)."""
  model = make_model(model_config, platform)
  tx = optim.make_optimizer(optim_config, steps_per_epoch, total_steps, labels=param_groups(model_config))
  plateau = optim.plateau_transform(optim_config)

  image_shape = (image_size, image_size, 3)
  variables, state_rngs = replicas.init_replicas(
    lambda key: init_variables(model, key, image_shape), seed_list
  )
  if model_config.architecture == "speedrun" and whitening_images is not None:
    kernel = whitening_kernel(input_pipeline.normalize(jnp.asarray(whitening_images)))
    whiten = variables["params"]["whiten"]
    variables["params"]["whiten"] = {**whiten, "kernel": jnp.broadcast_to(kernel, whiten["kernel"].shape)}

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


_FLIP_STREAM = 2**31 - 1  # fold_in(rng, step) serves the steps; no step reaches this number


def train_step(
  state: TrainState,
  images: jax.Array,
  labels: jax.Array,
  *,
  augmentation: input_pipeline.Augmentation,
  label_smoothing: float,
  compute_dtype=jnp.float32,
  indices: jax.Array | None = None,
  steps_per_epoch: int | None = None,
) -> tuple[TrainState, dict[str, jax.Array]]:
  """One update on a uint8 batch: augment, normalize, forward, backward, apply. `indices`
  (the images' rows in the split) and `steps_per_epoch` serve Augmentation.alternate_flip."""
  augment_key, dropout_key = jax.random.split(state.step_key())
  flips = None
  if augmentation.flip and augmentation.alternate_flip:
    flip_key = jax.random.fold_in(state.rng, _FLIP_STREAM)
    flips = input_pipeline.alternate_flips(flip_key, indices, state.step // steps_per_epoch)
  augmented = input_pipeline.augment(augment_key, images, augmentation, flips)
  images = input_pipeline.normalize(augmented, compute_dtype)
  grad_fn = jax.value_and_grad(_loss_and_updates, argnums=1, has_aux=True)
  (loss, (accuracy, batch_stats)), grads = grad_fn(
    state, state.params, images, labels, dropout_key, label_smoothing
  )
  state = state.apply_gradients(grads).replace(batch_stats=batch_stats)
  return state, {"loss": loss, "accuracy": accuracy}


@dataclasses.dataclass(frozen=True)
class EpochPrograms:
  """The jitted programs of a training epoch (see `epoch_programs`), not yet compiled."""

  order: Callable  # (epoch_keys [R, 2]) -> the epoch's batch indices [steps, R, batch]
  step: Callable  # (state, images, labels, indices [R, batch]) -> (state, {"loss", "accuracy"} [R])
  epoch: Callable  # (state, images, labels, epoch_keys) -> (state, {"loss", "accuracy"} [steps, R])
  steps: int
  batch_size: int


def epoch_programs(
  mesh,
  *,
  batch_size: int,
  steps: int,
  augmentation: input_pipeline.Augmentation,
  label_smoothing: float,
  compute_dtype,
) -> EpochPrograms:
  """Builds (jits, without compiling) an epoch's programs for the devices of `mesh`: a run
  compiles them with its arrays (compile_epoch), the compile checks with abstract ones
  (`programs`), on any mesh, e.g. of TPU or GPU devices that are not here.

  `images`/`labels` are the whole (replicated) train split, shared by the replicas; each step
  gathers every replica's batch from its own permutation of it and shards it over the mesh's
  data axis. The step is `jax.vmap`ped over the replicas (seeds), so each has its own
  BatchNorm statistics (over its global batch). `epoch` is the whole epoch as one program, a
  `lax.scan` over the steps; the state's buffers are donated to `step` and `epoch`.
  """
  batch_sharding = sharding.batch_sharded(mesh, batch_axis=1)  # [replicas, batch, ...]
  replicated = sharding.replicated(mesh)
  replica_step = jax.vmap(
    functools.partial(
      train_step,
      augmentation=augmentation,
      label_smoothing=label_smoothing,
      compute_dtype=compute_dtype,
      steps_per_epoch=steps,
    )
  )

  def step(state, images, labels, indices):  # indices: [replicas, batch]
    batch_images = jax.lax.with_sharding_constraint(images[indices], batch_sharding)
    batch_labels = jax.lax.with_sharding_constraint(labels[indices], batch_sharding)
    return replica_step(state, batch_images, batch_labels, indices=indices)

  def order(epoch_keys, num_images: int):  # -> [steps, replicas, batch]
    def one(key):
      return jax.random.permutation(key, num_images)[: steps * batch_size].reshape(steps, batch_size)

    return jnp.swapaxes(jax.vmap(one)(epoch_keys), 0, 1)

  def epoch(state, images, labels, epoch_keys):
    indices = order(epoch_keys, labels.shape[0])
    return jax.lax.scan(lambda s, batch_indices: step(s, images, labels, batch_indices), state, indices)

  outputs = dict(out_shardings=(replicated, replicated), donate_argnums=(0,))
  return EpochPrograms(
    order=jax.jit(order, static_argnums=(1,)),
    step=jax.jit(step, **outputs),
    epoch=jax.jit(epoch, **outputs),
    steps=steps,
    batch_size=batch_size,
  )


@dataclasses.dataclass(frozen=True)
class CompiledEpoch:
  """An epoch's programs compiled for a run's arrays (`compile_epoch`)."""

  order: Any  # (epoch_keys [R, 2]) -> the epoch's batch indices [steps, R, batch]
  step: Callable[[], Any]  # -> the compiled step (compiled on first use when the epoch is fused)
  epoch: Any | None  # the whole epoch as one program; None: a host loop over the step
  steps: int

  @property
  def training_program(self) -> Any:
    """The program that trains: the fused epoch, or the host loop's step."""
    return self.epoch if self.epoch is not None else self.step()

  def plan(self, images: jax.Array, labels: jax.Array, keys: jax.Array, place=None) -> loop.EpochPlan:
    """The epoch of `keys` [R, 2] (see `epoch_keys`) on the whole split `images`/`labels`."""

    def batches():  # a generator: nothing runs until the loop asks for the first step's batch
      order = self.order(keys)
      for i in range(self.steps):
        yield order[i]

    def fused(state):
      return self.epoch(state, images, labels, keys)

    return loop.EpochPlan(
      steps=self.steps,
      batches=batches(),
      step=lambda state, indices: self.step()(state, images, labels, indices),
      fused=fused if self.epoch is not None else None,
      place=place,
    )


def compile_epoch(
  programs: EpochPrograms,
  state: TrainState,
  images: jax.Array,
  labels: jax.Array,
  *,
  fused: bool | None = None,
) -> CompiledEpoch:
  """Compiles `programs` (`epoch_programs`) for these arrays, ahead of time, so that epoch
  timings exclude compilation (but a fused epoch's one-step program, needed only to finish an
  epoch that stopped in the middle). `state` stacks the replicas (seeds).

  fused=True compiles the epoch as one program (`lax.scan` over steps): no host round trip
  between steps. XLA's CPU backend runs loop bodies without its fast convolution path (about
  14x slower, measured here), so on CPU (fused=None picks) the epoch is a host loop over one
  compiled step instead; the data still never leaves the device.
  """
  fused = jax.default_backend() != "cpu" if fused is None else fused
  num_replicas = replicas.num_replicas(state)
  example_keys = jnp.zeros((num_replicas, 2), jnp.uint32)
  abstract_state = checkpoints.abstract_state(state)  # `state` may be donated before a late compile
  example_indices = jax.ShapeDtypeStruct((num_replicas, programs.batch_size), jnp.int32)

  @functools.cache
  def step():
    return programs.step.lower(abstract_state, images, labels, example_indices).compile()

  if not fused:
    step()  # the host loop's program, ahead of time
  return CompiledEpoch(
    order=programs.order.lower(example_keys, labels.shape[0]).compile(),
    step=step,
    epoch=programs.epoch.lower(state, images, labels, example_keys).compile() if fused else None,
    steps=programs.steps,
  )


def make_predict(mesh, *, batch_size: int, compute_dtype, tta: str = "none") -> Callable:
  """(state, images uint8 [N...]) -> every replica's predicted classes [replicas, N], jitted
  (not compiled) for the devices of `mesh`; N a multiple of batch_size. `tta` averages the
  logits over test-time views (see input_pipeline.tta_views)."""
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


def eval_batch_size(batch_size: int, images: int, devices: int) -> int:
  """The evaluation's batch: the run's, or less for a small split, a multiple of the devices."""
  return -(-min(batch_size, images) // devices) * devices


@dataclasses.dataclass(frozen=True)
class Evaluator:
  """Every replica's predicted class of each of a set of images, on all devices: the images
  padded to whole batches and placed once, one compiled program per test-time augmentation.
  Training's per-epoch rows and final numbers, eval of a trained workdir and predict all use
  it (`evaluator` makes one)."""

  mesh: Any
  batch_size: int  # a multiple of the devices
  count: int  # images (the rest of `padded` is padding)
  padded: jax.Array  # uint8 [whole batches, 32, 32, 3], replicated
  compute_dtype: Any
  _compiled: dict[str, Any] = dataclasses.field(default_factory=dict, repr=False, compare=False)

  def compile(self, state: TrainState, tta: str) -> Any:
    """The program of `tta` (compiled on first use, e.g. ahead of training)."""
    if tta not in self._compiled:
      predict = make_predict(self.mesh, batch_size=self.batch_size, compute_dtype=self.compute_dtype, tta=tta)
      self._compiled[tta] = predict.lower(self._placed(state), self.padded).compile()
    return self._compiled[tta]

  def predictions(self, state: TrainState, tta: str = "none") -> np.ndarray:
    """[replicas, images]: every replica's predicted classes."""
    state = self._placed(state)
    return np.asarray(self.compile(state, tta)(state, self.padded))[:, : self.count]

  def classify(self, state: TrainState, split: input_pipeline.ImageSplit, tta: str) -> list[dict[str, Any]]:
    """Every replica's `classification_metrics` of `split` (the images this evaluator holds)."""
    return [classification_metrics(p, split.labels, split.class_names) for p in self.predictions(state, tta)]

  def _placed(self, state: TrainState) -> TrainState:
    return jax.device_put(state, sharding.replicated(self.mesh))


def evaluator(images: np.ndarray, batch_size: int, dtype: str, mesh=None) -> Evaluator:
  """An Evaluator of uint8 `images` [N, 32, 32, 3] in batches of at most `batch_size`, on the
  devices of `mesh` (None: all)."""
  mesh = sharding.data_mesh() if mesh is None else mesh
  batch = eval_batch_size(batch_size, len(images), mesh.devices.size)
  padded = sharding.replicate(_padded(images, batch), mesh)
  return Evaluator(mesh, batch, len(images), padded, jnp.dtype(dtype))


def programs(
  mesh,
  model: ModelConfig,
  optim_config: optim.OptimConfig,
  *,
  batch_size: int,
  num_seeds: int,
  train_images: int,
  eval_images: int,
  augmentation: input_pipeline.Augmentation,
  label_smoothing: float,
  tta: str,
  tta_each_epoch: bool = True,
  image_size: int = 32,
) -> list[Program]:
  """Every program a run of these settings compiles, on the devices of `mesh`, with abstract
  inputs: the epoch's batch order, its step (the host loop's program), the whole epoch as one
  program (the fused loop), and the evaluation with the run's test-time augmentation (and
  without it, when each epoch's evaluation skips it). `train_images`/`eval_images`: the
  splits' sizes; `image_size` below CIFAR's 32 only to compile them quicker (checks)."""
  steps = train_images // batch_size
  replicated = sharding.replicated(mesh)
  built = epoch_programs(
    mesh,
    batch_size=batch_size,
    steps=steps,
    augmentation=augmentation,
    label_smoothing=label_smoothing,
    compute_dtype=model.compute_dtype,
  )
  state = abstract_state(
    lambda seeds: create_train_state(
      seeds,
      model,
      optim_config,
      steps_per_epoch=steps,
      total_steps=steps,
      image_size=image_size,
      platform=mesh.devices.flat[0].platform,
    ),
    num_seeds,
    replicated,
  )
  images = jax.ShapeDtypeStruct((train_images, image_size, image_size, 3), jnp.uint8, sharding=replicated)
  labels = jax.ShapeDtypeStruct((train_images,), jnp.int32, sharding=replicated)
  keys = jax.ShapeDtypeStruct((num_seeds, 2), jnp.uint32, sharding=replicated)
  indices = jax.ShapeDtypeStruct((num_seeds, batch_size), jnp.int32, sharding=replicated)
  eval_batch = eval_batch_size(batch_size, eval_images, mesh.devices.size)
  padded = -(-eval_images // eval_batch) * eval_batch
  eval_array = jax.ShapeDtypeStruct((padded, image_size, image_size, 3), jnp.uint8, sharding=replicated)
  listed = [
    Program("order", built.order, (keys, train_images)),
    Program("train_step", built.step, (state, images, labels, indices), counted_per_epoch=steps),
    Program("epoch", built.epoch, (state, images, labels, keys), counted_per_epoch=steps),
  ]
  for mode in dict.fromkeys([tta, tta if tta_each_epoch else "none"]):
    predict = make_predict(mesh, batch_size=eval_batch, compute_dtype=model.compute_dtype, tta=mode)
    listed.append(Program(f"predict_tta={mode}", predict, (state, eval_array), padded // eval_batch))
  return listed


def predict_classes(
  state: TrainState, images: np.ndarray, batch_size: int, dtype: str, tta: str = "none"
) -> np.ndarray:
  """Every replica's predicted class of every uint8 image [replicas, N], on all devices."""
  return evaluator(images, batch_size, dtype).predictions(state, tta)


def classification_metrics(predictions: np.ndarray, labels: np.ndarray, class_names) -> dict[str, Any]:
  confusion = np.zeros((len(class_names), len(class_names)), np.int64)
  np.add.at(confusion, (labels, predictions), 1)
  per_class = confusion.diagonal() / np.maximum(confusion.sum(1), 1)
  return {
    "accuracy": float(np.mean(predictions == labels)),
    "per_class_accuracy": {name: float(a) for name, a in zip(class_names, per_class)},
    "confusion_matrix": confusion.tolist(),  # rows: true class, columns: predicted
  }


def seconds_to_accuracy(
  history: list[dict[str, Any]], targets, accuracy_key: str = "test_accuracy"
) -> dict[str, float | None]:
  """Training seconds (compilation excluded) until row[accuracy_key] first reached each target."""
  reached = {}
  for target in targets:
    elapsed, reached[str(target)] = 0.0, None
    for row in history:
      elapsed += row["epoch_seconds"]
      # .get: a workdir resumed with another evaluated split logs it under another name.
      if row.get(accuracy_key, -1.0) >= target:
        reached[str(target)] = elapsed
        break
  return reached


def epoch_keys(seed_list: list[int], epoch: int) -> jax.Array:
  """Each replica's key for `epoch` (data order, augmentation): [replicas, 2]."""
  return jnp.stack([jax.random.fold_in(jax.random.PRNGKey(s), epoch) for s in seed_list])


def _replica_history(history: list[dict[str, Any]], r: int) -> list[dict[str, Any]]:
  """One replica's rows (its own accuracy; epoch seconds are those of all replicas together)."""
  return [{**row, **{k: v[r] for k, v in row["per_seed"].items()}} for row in history]


def _padded(images: np.ndarray, multiple: int) -> np.ndarray:
  fill = -len(images) % multiple
  return np.concatenate([images, np.zeros((fill, *images.shape[1:]), images.dtype)]) if fill else images


# --------------------------------------------------------------------------------------
# The task
# --------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Prepared(base.Prepared):
  """One run's splits (the train split on the devices), settings and evaluator, and after
  `Cifar10Task.compile` its training epoch."""

  config: RunConfig
  mesh: Any
  train_split: input_pipeline.ImageSplit
  eval_split: input_pipeline.ImageSplit
  train_arrays: tuple[jax.Array, jax.Array]  # images, labels (replicated)
  evaluator: Evaluator  # of the eval split
  epoch: CompiledEpoch | None = None  # compiled by Cifar10Task.compile

  @property
  def steps(self) -> int:
    return len(self.train_split) // self.config.batch_size


class Cifar10Task(Task):
  """CIFAR-10 classification: the whole split on the device(s), the last epoch reported.

  The evaluated split is the study's test set: nothing is selected on it (no best
  checkpoint), the last epoch is what results.json reports, as the study does: overall and
  per-class accuracy, confusion matrix, train and compile seconds, images per second.

      run.train_and_evaluate(Cifar10Task(model, data, optim, **train_config.task_settings),
                             train_config, workdir)
  """

  def __init__(
    self,
    model: ModelConfig,
    data: DataConfig,
    optim_config: optim.OptimConfig,
    *,
    label_smoothing: float = 0.0,
    epoch_loop: str = "auto",
  ):
    self.model, self.data, self.optim = model, data, optim_config
    self.label_smoothing, self.epoch_loop = label_smoothing, epoch_loop
    # Rows are logged as test_* when the evaluated split is (a slice of) the test split.
    eval_name = "test" if tfds_split_name(data.eval_split) == "test" else "eval"
    self.selection = loop.Selection(best_metric=None, plateau_metric="error", eval_name=eval_name)

  @classmethod
  def from_config(cls, config: dict[str, Any], **data_settings) -> "Cifar10Task":
    """The task a workdir's config.json describes; `data_settings` replace data fields for
    evaluation (data location and cache, the evaluated split, test-time augmentation)."""
    data = {**config["data"], **data_settings}
    data["augmentation"] = input_pipeline.Augmentation(**data.get("augmentation", {}))
    return cls(
      ModelConfig(**config["model"]),
      DataConfig(**data),
      optim.OptimConfig(**config["optim"]),  # the checkpoint's optimizer-state structure
      label_smoothing=config["train"].get("label_smoothing", 0.0),
    )

  free_data_fields = ("data_dir", "cache_dir")  # where the data is

  def train_settings(self) -> dict[str, Any]:
    return {"label_smoothing": self.label_smoothing}

  def evaluation(self) -> dict[str, Any]:
    return {"split": self.data.eval_split, "tta": self.data.tta}

  def prepare(self, workdir: str, config: RunConfig, *, resuming: bool) -> Prepared:
    mesh = sharding.data_mesh()
    sharding.check_batch_size(config.batch_size, mesh)
    # Several processes: each reads and decodes its part of a split; all then hold all of it.
    train_split, eval_split = (
      input_pipeline.load_split_of_processes(split, self.data.data_dir, self.data.cache_dir)
      for split in (self.data.train_split, self.data.eval_split)
    )
    if len(train_split) < config.batch_size:
      raise ConfigError(
        f"batch size {config.batch_size} is larger than the {len(train_split)} images of "
        f"{self.data.train_split!r}: lower the batch size or use a larger train split",
        settings=("batch_size", "train_split"),
      )
    return Prepared(
      info={"train": train_split.info, "eval": eval_split.info},
      config=config,
      mesh=mesh,
      train_split=train_split,
      eval_split=eval_split,
      train_arrays=sharding.replicate((train_split.images, train_split.labels), mesh),
      evaluator=evaluator(eval_split.images, config.batch_size, self.model.dtype, mesh),
    )

  def create_train_state(self, seeds: list[int], prepared: Prepared | None = None) -> TrainState:
    if prepared is None:  # eval / predict: the structure to restore into
      return create_train_state(seeds, self.model, self.optim, steps_per_epoch=1, total_steps=1)
    state = create_train_state(
      seeds,
      self.model,
      self.optim,
      steps_per_epoch=prepared.steps,
      total_steps=prepared.steps * prepared.config.epochs,
      whitening_images=prepared.train_split.images[:WHITENING_IMAGES],
      platform=prepared.mesh.devices.flat[0].platform,
    )
    return jax.device_put(state, sharding.replicated(prepared.mesh))

  def compile(self, prepared: Prepared, state: TrainState) -> Prepared:
    """Compiles the epoch and the evaluations; on an accelerator, a program that does not fit
    its memory is refused here, before any training, naming the batch size that fits."""
    state = jax.device_put(state, sharding.replicated(prepared.mesh))
    fused = {"auto": jax.default_backend() != "cpu", "scan": True, "host": False}[self.epoch_loop]
    program = "epoch" if fused else "train_step"
    built = epoch_programs(
      prepared.mesh,
      batch_size=prepared.config.batch_size,
      steps=prepared.steps,
      augmentation=self.data.augmentation,
      label_smoothing=self.label_smoothing,
      compute_dtype=jnp.dtype(self.model.dtype),
    )
    try:
      epoch = compile_epoch(built, state, *prepared.train_arrays, fused=fused)
    except jax.errors.JaxRuntimeError as e:  # XLA's TPU compiler refuses what does not fit
      if not deviceless.out_of_memory(e):
        raise
      self._refuse_too_large(prepared, program, None)
    self._refuse_too_large(prepared, program, epoch.training_program)
    for tta in dict.fromkeys([self.data.tta, self._epoch_tta()]):  # the final numbers' and each epoch's
      prepared.evaluator.compile(state, tta)
    epoch_keys(prepared.config.seeds, 0).block_until_ready()  # eager ops of epoch_plan
    return dataclasses.replace(prepared, epoch=epoch)

  def _epoch_tta(self) -> str:
    return self.data.tta if self.data.tta_each_epoch else "none"

  def _refuse_too_large(self, prepared: Prepared, name: str, compiled) -> None:
    """On an accelerator: the training program `name` (compiled; None: refused by the compiler)
    must fit a device's memory (simjax.deviceless.refuse_if_too_large)."""

    def build(batch_size: int) -> Program:
      listed = programs(
        prepared.mesh,
        self.model,
        self.optim,
        batch_size=batch_size,
        num_seeds=len(prepared.config.seeds),
        train_images=len(prepared.train_split),
        eval_images=len(prepared.eval_split),
        augmentation=self.data.augmentation,
        label_smoothing=self.label_smoothing,
        tta=self.data.tta,
      )
      return next(p for p in listed if p.name == name)

    batch_size, devices = prepared.config.batch_size, prepared.mesh.devices.size
    deviceless.refuse_if_too_large(name, build, batch_size, devices, compiled)

  def epoch_plan(self, prepared: Prepared, epoch: int) -> loop.EpochPlan:
    # Data order and augmentation depend only on (seed, epoch, step): resuming replays them.
    place = functools.partial(jax.device_put, device=sharding.replicated(prepared.mesh))
    keys = epoch_keys(prepared.config.seeds, epoch)
    return prepared.epoch.plan(*prepared.train_arrays, keys, place=place)

  def evaluate(self, prepared: Prepared, state: TrainState) -> list[dict[str, float]]:
    # The per-epoch row keeps scalars only; "error" can drive the plateau schedule.
    each = prepared.evaluator.classify(state, prepared.eval_split, self._epoch_tta())
    return [{"accuracy": m["accuracy"], "error": 1.0 - m["accuracy"]} for m in each]

  def report(
    self, prepared: Prepared, state: TrainState, fit: loop.FitResult
  ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    # The last epoch, as the study reports it (no selection on test).
    final = prepared.evaluator.classify(state, prepared.eval_split, self.data.tta)
    accuracy_key = f"{self.selection.eval_name}_accuracy"
    per_seed = [
      {
        "test": final[r],
        "seconds_to_accuracy": seconds_to_accuracy(
          _replica_history(fit.history, r), (0.8, 0.85, 0.9, 0.94), accuracy_key
        ),
      }
      for r in range(len(final))
    ]
    images_trained = prepared.steps * prepared.config.batch_size * fit.epochs * len(final)
    extras = {
      "images_per_second": images_trained / fit.train_seconds if fit.train_seconds else None,
      "seconds_per_epoch": float(np.median([row["epoch_seconds"] for row in fit.history])),
      "devices": prepared.mesh.devices.size,
      # Test-time augmentation of the final numbers, and whether each epoch's row used it too.
      "tta": self.data.tta,
      "tta_each_epoch": self.data.tta_each_epoch or self.data.tta == "none",
    }
    return per_seed, extras

  def evaluate_trained(
    self, state: TrainState, batch_size: int
  ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """eval from a workdir: accuracy on the evaluated split, with the task's test-time augmentation
    (under "test", as results.json has it; the record's "evaluation" names the split)."""
    split = input_pipeline.load_split(self.data.eval_split, self.data.data_dir, self.data.cache_dir)
    classified = evaluator(split.images, batch_size, self.model.dtype).classify(state, split, self.data.tta)
    return [{"test": metrics} for metrics in classified], {"tta": self.data.tta, "data": {"eval": split.info}}


def tfds_split_name(split: str) -> str:
  """'test[:2000]' -> 'test' (the split a TFDS slice is taken from)."""
  return split.split("[", 1)[0].strip()


def load_trained(workdir: str, **data_settings) -> tuple[TrainState, dict[str, Any], Cifar10Task]:
  """The last-epoch state of every seed of a trained workdir (what results.json reports),
  its config.json and its task (`data_settings` as in Cifar10Task.from_config)."""
  return run.load_trained(workdir, lambda config, _: Cifar10Task.from_config(config, **data_settings))
