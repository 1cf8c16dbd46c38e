"""The speedrun (airbench94) net and recipe: whitening, Dirac init, alternating flips,
parameter groups, and a short run that learns."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from simjax import optim, run, run_records, settings
from simjax.tasks.cifar10 import input_pipeline, models, task as train
from simjax.tasks.cifar10.models import ModelConfig


@pytest.fixture(scope="module")
def images(cifar_data_dir):
  return input_pipeline.load_split("train[:512]", cifar_data_dir, None).images


def test_the_whitening_conv_whitens_the_patches_it_was_computed_from(images):
  normalized = input_pipeline.normalize(jnp.asarray(images))
  kernel = models.whitening_kernel(normalized, eps=1e-9)
  assert kernel.shape == (2, 2, 3, 24)
  out = jax.lax.conv_general_dilated(
    normalized,
    kernel,
    (1, 1),
    "VALID",
    dimension_numbers=("NHWC", "HWIO", "NHWC"),
    precision=jax.lax.Precision.HIGHEST,  # float32 products: the bound below assumes them
  )
  flat = np.asarray(out, np.float64).reshape(-1, 24)
  covariance = flat[:, :12].T @ flat[:, :12] / len(flat)  # uncentred, as computed
  # The same 2x2x3 patches, in the conv's (i, j, channel) order, taken here independently.
  windows = np.lib.stride_tricks.sliding_window_view(np.asarray(normalized), (2, 2), axis=(1, 2))
  patches = windows.transpose(0, 1, 2, 4, 5, 3).reshape(-1, 12)  # float32
  exact = patches.astype(np.float64).T @ patches.astype(np.float64) / len(patches)
  # The float32 covariance C32 the kernel comes from, summed the same way as the library sums it.
  rounded = np.asarray(jnp.asarray(patches).T @ jnp.asarray(patches) / len(patches), np.float64)
  lam = np.linalg.eigvalsh(exact)[::-1]  # the filters' order: largest first
  # A tolerance from the float32 arithmetic. The filters w_i (rows of W) are C32's eigenvectors
  # over sqrt(lam_i + eps), so for C, the exact covariance of the same patches,
  # W C W^T = diag(lam / (lam + eps)) + W (C - C32) W^T + W (eigh's error) W^T with |w_i| =
  # 1/sqrt(lam_i): entry (i, j) is off by at most (|C - C32|_2 + 3 * 12u lam_max) / sqrt(lam_i lam_j),
  # as eigh's backward error and its vectors' loss of orthogonality (on both sides) are each about
  # n u lam_max (n = 12, u = 2^-24). The float32 conv is off by at most 12u |w_i| |x| per output,
  # which adds 12u sqrt(trace C) (1/sqrt(lam_i) + 1/sqrt(lam_j)). The weakest directions (lam ~ 1e-4
  # against lam_max ~ 10) amplify C32's rounding, whose size depends on the CPU's summation order,
  # so |C - C32|_2 is measured, not assumed; a factor of 2 covers the first-order approximations.
  u = 2.0**-24
  rsqrt = 1 / np.sqrt(lam)
  bound = 2 * (
    (np.linalg.norm(exact - rounded, 2) + 3 * 12 * u * lam[0]) * np.outer(rsqrt, rsqrt)
    + 12 * u * np.sqrt(lam.sum()) * (rsqrt[:, None] + rsqrt[None, :])
  )
  deviation = np.abs(covariance - np.diag(lam / (lam + 1e-9)))
  assert (deviation <= bound).all(), f"off by up to {np.max(deviation / bound):.2f} times the bound"
  np.testing.assert_array_equal(flat[:, 12:], -flat[:, :12])  # each direction and its negation
  # The default eps damps only the weakest directions (those with variance near it).
  damped = np.asarray(models.whitening_kernel(normalized)).reshape(12, 24)
  assert np.linalg.norm(damped[:, 0]) == pytest.approx(
    np.linalg.norm(np.asarray(kernel).reshape(12, 24)[:, 0]), rel=1e-3
  )


def test_dirac_init_passes_the_first_channels_through():
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 8, 5))
  conv = nn.Conv(12, (3, 3), padding="SAME", use_bias=False, kernel_init=models.dirac_init())
  params = conv.init(jax.random.PRNGKey(1), x)
  y = conv.apply(params, x)
  np.testing.assert_allclose(y[..., :5], x, atol=1e-6)  # the identity on the first 5 channels
  assert np.abs(np.asarray(y[..., 5:])).mean() > 0.1  # the other filters keep a random init


def test_alternating_flips_flip_each_image_on_every_other_epoch():
  key = jax.random.PRNGKey(3)
  indices = jnp.arange(1000)
  epochs = [np.asarray(input_pipeline.alternate_flips(key, indices, jnp.asarray(e))) for e in range(4)]
  assert 400 < epochs[0].sum() < 600  # a random half starts flipped
  np.testing.assert_array_equal(epochs[1], ~epochs[0])  # every image both ways every two epochs
  np.testing.assert_array_equal(epochs[2], epochs[0])
  np.testing.assert_array_equal(epochs[3], epochs[1])
  # An image's flip depends on its row only, not on the batch it lands in.
  shuffled = np.random.default_rng(0).permutation(1000)
  np.testing.assert_array_equal(
    np.asarray(input_pipeline.alternate_flips(key, jnp.asarray(shuffled), jnp.asarray(0))),
    epochs[0][shuffled],
  )
  # augment flips exactly those images.
  batch = np.random.default_rng(1).integers(0, 255, (6, 32, 32, 3)).astype(np.uint8)
  flips = jnp.asarray([True, False, True, False, False, True])
  config = input_pipeline.Augmentation(crop_padding=0, alternate_flip=True)
  out = np.asarray(input_pipeline.augment(jax.random.PRNGKey(0), batch, config, flips))
  for image, flipped, flip in zip(batch, out, np.asarray(flips)):
    np.testing.assert_array_equal(flipped, image[:, ::-1] if flip else image)
  with pytest.raises(ValueError, match="alternate_flip needs the batch's flips"):
    input_pipeline.augment(jax.random.PRNGKey(0), batch, config)


def test_lookahead_restarts_from_an_ema_of_the_weights_every_k_steps():
  tx = optim.lookahead_ema(optax.sgd(1.0), every=2, total_steps=4, base=0.5, power=1.0)
  params = {"w": jnp.zeros(())}
  state = tx.init(params)
  seen = []
  for grad in (-1.0, -1.0, -1.0, -1.0):  # each step moves the fast weight by +1
    updates, state = tx.update({"w": jnp.asarray(grad)}, state, params)
    params = {"w": params["w"] + updates["w"]}
    seen.append(float(params["w"]))
  # step 2: slow = 0 + (1 - 0.5 * 2/4) * (2 - 0) = 1.5; step 4: 1.5 + (1 - 0.5) * (3.5 - 1.5) = 2.5
  np.testing.assert_allclose(seen, [1.0, 1.5, 2.5, 2.5])
  # A last step between syncs ends on the slow weights: 3 steps, sync at 2 -> 1.5, not 2.5.
  tx = optim.lookahead_ema(optax.sgd(1.0), every=2, total_steps=3, base=0.5, power=1.0)
  params, state = {"w": jnp.zeros(())}, tx.init({"w": jnp.zeros(())})
  for _ in range(3):
    updates, state = tx.update({"w": jnp.asarray(-1.0)}, state, params)
    params = {"w": params["w"] + updates["w"]}
  # step 2: slow = (1 - 0.5 * 2/3) * 2 = 4/3
  assert float(params["w"]) == pytest.approx(4 / 3)


def test_a_short_speedrun_learns_with_its_parameter_groups(tmp_path, cifar_data_dir):
  data = train.DataConfig(
    data_dir=cifar_data_dir,
    cache_dir=None,
    train_split="train[:1024]",
    eval_split="test[:256]",
    augmentation=input_pipeline.Augmentation(crop_padding=2, alternate_flip=True),
    tta="flip",
    tta_each_epoch=False,  # each epoch one view; the final numbers with the mirror
  )
  optim_config = optim.OptimConfig(
    optimizer="nesterov",
    momentum=0.85,
    learning_rate=0.1,  # the recipe's 1.5 for batches of 1,024, scaled to 64
    weight_decay=1.3e-3,
    lr_schedule="linear",
    warmup_epochs=1,
    warmup_start=0.2,
    final_lr_factor=0.07,
    bias_lr_scale=64,
    lookahead_every=5,
    early_epochs=1,
  )
  config = train.TrainConfig(epochs=4, batch_size=64, label_smoothing=0.2)
  task = train.Cifar10Task(
    ModelConfig(architecture="speedrun", width=8), data, optim_config, **config.task_settings
  )
  results = run.train_and_evaluate(task, config, str(tmp_path))
  rows = run_records.read_metrics(str(tmp_path))
  # 64 steps of a tiny net: it learns (loss down, accuracy well above the 10% of chance).
  assert rows[-1]["train_loss"] < rows[0]["train_loss"] - 0.05 and results["test"]["accuracy"] > 0.16
  state, saved_config, _ = train.load_trained(str(tmp_path))
  assert saved_config["data"]["augmentation"]["alternate_flip"] is True
  test = input_pipeline.load_split("test[:256]", cifar_data_dir, None)
  for tta, accuracy in (("none", rows[-1]["test_accuracy"]), ("flip", results["test"]["accuracy"])):
    predicted = train.predict_classes(state, test.images, 64, "float32", tta=tta)[0]
    assert np.mean(predicted == test.labels) == accuracy
  assert (results["tta"], results["tta_each_epoch"]) == ("flip", False)
  params = jax.tree_util.tree_map(lambda x: x[0], state.params)
  train_images = input_pipeline.load_split(data.train_split, data.data_dir, None).images
  whitening = models.whitening_kernel(input_pipeline.normalize(jnp.asarray(train_images[:5000])))
  np.testing.assert_allclose(params["whiten"]["kernel"], whitening, rtol=1e-5, atol=1e-6)  # frozen
  assert np.abs(np.asarray(params["block_0"]["norm_0"]["bias"])).max() > 0  # norm biases train


def test_settings_added_later_are_recorded_only_when_set():
  later = settings.added_later(optim.OptimConfig)
  assert {"warmup_start", "final_lr_factor", "bias_lr_scale", "lookahead_every", "early_epochs"} == set(later)
  assert set(settings.recorded(optim.OptimConfig())).isdisjoint(later)  # older workdirs still resume
  assert settings.recorded(optim.OptimConfig(lookahead_every=5))["lookahead_every"] == 5
  task = train.Cifar10Task(ModelConfig(), train.DataConfig(), optim.OptimConfig())
  assert "alternate_flip" not in task.run_config()["data"]["augmentation"]
