import dataclasses
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from simjax import loop, optim, run, run_records, sharding
from tests.multi_device import run_on_devices
from simjax.train_state import TrainState
from simjax.tasks.cifar10 import input_pipeline, task as train
from simjax.tasks.cifar10.models import ModelConfig

TINY_OPTIM = optim.OptimConfig(optimizer="nesterov", learning_rate=0.05)


@pytest.fixture
def data_config(cifar_data_dir, tmp_path_factory):
  return train.DataConfig(
    data_dir=cifar_data_dir,
    cache_dir=str(tmp_path_factory.getbasetemp() / "cifar_cache"),
    train_split="train[:512]",
    eval_split="test[:256]",
  )


def _run(workdir, data_config, *, epochs, model=None, batch_size=64, optim_config=TINY_OPTIM):
  config = train.TrainConfig(epochs=epochs, batch_size=batch_size, label_smoothing=0.1)
  task = train.Cifar10Task(
    model or ModelConfig(architecture="resnet", width=8), data_config, optim_config, **config.task_settings
  )
  return run.train_and_evaluate(task, config, str(workdir))


def _compiled(state, images, labels, *, fused=None, augmentation=input_pipeline.Augmentation()):
  """The epoch (4 steps of 64 images) compiled for these arrays."""
  programs = train.epoch_programs(
    sharding.data_mesh(),
    batch_size=64,
    steps=4,
    augmentation=augmentation,
    label_smoothing=0.0,
    compute_dtype=jnp.float32,
  )
  return train.compile_epoch(programs, state, images, labels, fused=fused)


class Bar:
  """A progress bar that keeps what it is told."""

  made = []

  def __init__(self, total, description):
    self.total, self.description, self.updates = total, description, []
    Bar.made.append(self)

  def update(self, n):
    self.updates.append(n)

  def close(self):
    pass


def test_fused_epoch_program_equals_the_host_loop_and_both_report_progress(cifar_data_dir):
  split = input_pipeline.load_split("train[:256]", cifar_data_dir, None)
  images, labels = jnp.asarray(split.images), jnp.asarray(split.labels)
  results = []
  for fused in (True, False):
    state = train.create_train_state(
      [0, 1],
      ModelConfig(architecture="resnet", width=4),
      TINY_OPTIM,
      steps_per_epoch=4,
      total_steps=4,
    )
    compiled = _compiled(
      state, images, labels, fused=fused, augmentation=input_pipeline.Augmentation(cutout=4)
    )
    Bar.made = []
    result = loop.run_epoch(compiled.plan(images, labels, train.epoch_keys([0, 1], 5)), state, progress=Bar)
    # A progress bar's updates: every step (host loop) or all at once (fused).
    assert Bar.made[0].updates == ([4] if fused else [1, 1, 1, 1]) and result.complete
    results.append(result.step_metrics["loss"])
  assert results[0].shape == (4, 2)  # [steps, replicas]
  np.testing.assert_allclose(results[0], results[1], rtol=1e-5)


def test_a_fused_epoch_says_it_is_one_program_and_how_long_the_last_one_took(tmp_path, data_config):
  data = dataclasses.replace(data_config, train_split="train[:128]", eval_split="test[:64]")
  config = train.TrainConfig(epochs=2, batch_size=64, epoch_loop="scan")
  task = train.Cifar10Task(ModelConfig(architecture="cnn", width=4), data, TINY_OPTIM, epoch_loop="scan")
  Bar.made = []
  run.train_and_evaluate(task, config, str(tmp_path), progress=Bar)
  bars = Bar.made
  assert bars[0].description == "epoch 1: one compiled program" and bars[0].updates == [2]
  assert re.fullmatch(r"epoch 2: one compiled program \(the last took \d+\.\d s\)", bars[1].description)


def test_an_epoch_stopped_after_a_step_continues_from_the_next_one(cifar_data_dir):
  # What a preemption leaves (simjax.loop saves the state between the two calls).
  split = input_pipeline.load_split("train[:256]", cifar_data_dir, None)
  images, labels = jnp.asarray(split.images), jnp.asarray(split.labels)
  keys = train.epoch_keys([0], 1)

  initial = train.create_train_state(
    [0], ModelConfig(architecture="cnn", width=4), TINY_OPTIM, steps_per_epoch=4, total_steps=4
  )
  fresh = lambda: jax.tree_util.tree_map(jnp.copy, initial)  # each epoch call donates its state
  epochs = {fused: _compiled(fresh(), images, labels, fused=fused) for fused in (False, True)}

  def run_epoch(fused, state, **kwargs):
    return loop.run_epoch(epochs[fused].plan(images, labels, keys), state, **kwargs)

  whole = run_epoch(False, fresh())
  stop_after = iter([False, True])  # asked during the second step
  half = run_epoch(False, fresh(), stop=lambda: next(stop_after))
  assert half.step_metrics["loss"].shape == (2, 1) and int(half.state.step[0]) == 2 and not half.complete
  for fused in epochs:  # a fused epoch finishes a host loop's epoch with single steps
    rest = run_epoch(fused, jax.tree_util.tree_map(jnp.copy, half.state), start_step=2)
    assert rest.complete
    losses = np.concatenate([half.step_metrics["loss"], rest.step_metrics["loss"]])
    np.testing.assert_array_equal(losses, whole.step_metrics["loss"])
    for got, want in zip(
      jax.tree_util.tree_leaves(rest.state.params), jax.tree_util.tree_leaves(whole.state.params)
    ):
      np.testing.assert_array_equal(got, want)
  # Resumed after the last step: nothing left to do.
  done = run_epoch(False, whole.state, start_step=4)
  assert done.step_metrics == {} and int(done.state.step[0]) == 4 and done.complete


def test_stacked_seeds_train_like_single_runs_with_their_own_batchnorm(cifar_data_dir):
  from simjax import replicas

  split = input_pipeline.load_split("train[:256]", cifar_data_dir, None)
  images, labels = jnp.asarray(split.images), jnp.asarray(split.labels)
  model = ModelConfig(architecture="resnet", width=4)

  def one_epoch(seed_list):
    state = train.create_train_state(seed_list, model, TINY_OPTIM, steps_per_epoch=4, total_steps=4)
    plan = _compiled(state, images, labels).plan(images, labels, train.epoch_keys(seed_list, 1))
    result = loop.run_epoch(plan, state)
    return result.state, result.step_metrics

  stacked, stacked_metrics = one_epoch([7, 8])
  for r, seed in enumerate((7, 8)):
    single, single_metrics = one_epoch([seed])
    np.testing.assert_allclose(stacked_metrics["loss"][:, r], single_metrics["loss"][:, 0], rtol=1e-4)
    for a, b in zip(
      jax.tree_util.tree_leaves(replicas.replica(stacked.batch_stats, r)),
      jax.tree_util.tree_leaves(replicas.replica(single.batch_stats, 0)),
    ):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
  # Each replica keeps its own running statistics.
  mean = jax.tree_util.tree_leaves(stacked.batch_stats)[0]
  assert not np.allclose(mean[0], mean[1])


def test_bad_batch_sizes_are_explained(tmp_path, data_config):
  with pytest.raises(ValueError, match="larger than the 512 images"):
    _run(tmp_path, data_config, epochs=1, batch_size=1024)


def test_classification_metrics():
  metrics = train.classification_metrics(np.array([0, 1, 1, 2]), np.array([0, 1, 2, 2]), ("a", "b", "c"))
  assert metrics["accuracy"] == 0.75
  assert metrics["per_class_accuracy"] == {"a": 1.0, "b": 1.0, "c": 0.5}
  assert metrics["confusion_matrix"] == [[1, 0, 0], [0, 1, 0], [0, 1, 1]]


def train_tiny(data_dir: str, workdir: str) -> dict:
  """A tiny run on this process's devices (tests.multi_device runs it on 1 and on 4); on several
  devices, first a batch that does not split over them."""
  data = train.DataConfig(
    data_dir=data_dir, cache_dir=None, train_split="train[:256]", eval_split="test[:64]"
  )

  def task():
    return train.Cifar10Task(ModelConfig(architecture="resnet", width=4), data, TINY_OPTIM)

  bad = None
  if jax.device_count() > 1:
    try:
      run.train_and_evaluate(task(), train.TrainConfig(epochs=1, batch_size=30), workdir + "/bad")
    except ValueError as e:
      bad = str(e)
  results = run.train_and_evaluate(task(), train.TrainConfig(epochs=2, batch_size=32, seed=3), workdir)
  losses = [r["train_loss"] for r in run_records.read_metrics(workdir)]
  return {
    "devices": jax.device_count(),
    "bad": bad,
    "losses": losses,
    "accuracy": results["test"]["accuracy"],
  }


def test_four_devices_give_the_losses_of_one(cifar_data_dir, tmp_path):
  outputs = {
    devices: run_on_devices(train_tiny, devices, cifar_data_dir, str(tmp_path / str(devices)))
    for devices in (1, 4)
  }
  assert outputs[4]["devices"] == 4 and outputs[1]["devices"] == 1
  np.testing.assert_allclose(outputs[4]["losses"], outputs[1]["losses"], rtol=1e-4)
  assert abs(outputs[4]["accuracy"] - outputs[1]["accuracy"]) <= 2 / 64  # argmax ties may flip
  assert "does not split evenly over 4 devices" in outputs[4]["bad"]
  # Trained on 4 devices, used on this process's single device.
  state, config, _ = train.load_trained(str(tmp_path / "4"))
  images = input_pipeline.load_split("test[:64]", cifar_data_dir, None).images
  predictions = train.predict_classes(state, images, 32, config["model"]["dtype"])
  assert predictions.shape == (1, 64) and set(predictions[0]) <= set(range(10))


def test_seconds_to_accuracy_counts_training_time_until_first_reached():
  history = [
    {"epoch": 1, "epoch_seconds": 10.0, "train_accuracy": 0.99, "test_accuracy": 0.5},
    {"epoch": 2, "epoch_seconds": 5.0, "train_accuracy": 0.99, "test_accuracy": 0.91},
    {"epoch": 3, "epoch_seconds": 5.0, "train_accuracy": 0.99, "test_accuracy": 0.89},
  ]
  assert train.seconds_to_accuracy(history, (0.5, 0.9, 0.95)) == {"0.5": 10.0, "0.9": 15.0, "0.95": None}


class _PixelScores(nn.Module):
  """Per-pixel class scores averaged over the image (flip-invariant), or read from the flattened
  image (not flip-invariant)."""

  invariant: bool

  @nn.compact
  def __call__(self, images, *, train):
    if self.invariant:
      return jnp.mean(nn.Dense(10)(images), axis=(1, 2))
    return nn.Dense(10)(images.reshape(images.shape[0], -1))


def _stacked_state(module, seed=0):
  variables = module.init(jax.random.PRNGKey(seed), jnp.zeros((1, 32, 32, 3)), train=False)
  state = TrainState.create(
    apply_fn=module.apply,
    params=variables["params"],
    tx=optax.sgd(0.1),
    plateau=optim.plateau_transform(TINY_OPTIM),
    rng=jax.random.PRNGKey(seed),
  )
  return jax.tree_util.tree_map(lambda x: x[None], state)  # one replica


def test_tta_averages_the_views_logits_and_leaves_a_flip_invariant_model_unchanged():
  images = np.random.default_rng(0).integers(0, 255, (64, 32, 32, 3)).astype(np.uint8)
  invariant = _stacked_state(_PixelScores(invariant=True))
  plain = train.predict_classes(invariant, images, 32, "float32")
  np.testing.assert_array_equal(train.predict_classes(invariant, images, 32, "float32", tta="flip"), plain)
  sensitive = _stacked_state(_PixelScores(invariant=False))
  normalized = input_pipeline.normalize(jnp.asarray(images))
  params = jax.tree_util.tree_map(lambda x: x[0], sensitive.params)
  logits = [
    sensitive.apply_fn({"params": params}, x, train=False) for x in (normalized, normalized[:, :, ::-1])
  ]
  expected = np.argmax((logits[0] + logits[1]) / 2, axis=-1)
  got = train.predict_classes(sensitive, images, 32, "float32", tta="flip")[0]
  np.testing.assert_array_equal(got, expected)
  assert (got != train.predict_classes(sensitive, images, 32, "float32")[0]).any()  # the mirror counted


def test_a_program_too_large_for_the_device_is_refused_before_training_naming_a_batch_that_fits(
  tmp_path, data_config, monkeypatch
):
  from simjax import deviceless, replicas
  from simjax.errors import ProgramTooLarge

  # An accelerator whose memory holds the fused epoch at batch size 16, not at 32 (the check
  # runs on accelerators only: on the CPU the operating system decides).
  model, config = ModelConfig(architecture="cnn", width=4, fc_units=(8,)), train.TrainConfig(epochs=1)
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))

  def needs(batch_size):
    listed = train.programs(
      mesh, model, TINY_OPTIM, batch_size=batch_size, num_seeds=1, train_images=512, eval_images=256,
      augmentation=data_config.augmentation, label_smoothing=0.1, tta="none",
    )  # fmt: skip
    return deviceless.needs(deviceless.compile(next(p for p in listed if p.name == "epoch")))

  assert needs(16) < needs(32)
  monkeypatch.setattr(jax, "default_backend", lambda: "tpu")
  monkeypatch.setattr(replicas, "device_memory_bytes", lambda: (needs(16) + needs(32)) // 2)
  with pytest.raises(
    ProgramTooLarge, match=r"epoch program at batch size 64 needs .* batch size 16 fits"
  ) as e:
    _run(tmp_path / "w", data_config, epochs=1, model=model, batch_size=64)
  assert e.value.fitting_batch_size == 16
  assert not (tmp_path / "w" / "results.json").exists() and not (tmp_path / "w" / "metrics.jsonl").exists()
