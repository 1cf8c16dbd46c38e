import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from simjax.tasks.cifar10 import models
from simjax.tasks.cifar10.models import ModelConfig, init_variables, make_model, param_count

BATCH = 4
# Small widths keep every compile fast; the layout (names, depth, pooling) is that of width=64.
TINY = {"width": 8, "fc_units": (16,)}
STRUCTURES = {
  "cnn_fc": {"architecture": "cnn", "head": "fc"},
  "cnn_fc_dropout": {"architecture": "cnn", "head": "fc", "dropout": 0.5},
  "cnn_gap": {"architecture": "cnn", "head": "gap"},
  "cnn_gap_dropout": {"architecture": "cnn", "head": "gap", "dropout": 0.5},
  "resnet": {"architecture": "resnet"},
}


def _config(**overrides) -> ModelConfig:
  return ModelConfig(**{**TINY, **overrides})


@functools.cache
def _built(config: ModelConfig):
  """(model, initial variables, jitted eval apply, jitted train apply), shared across tests."""
  model = make_model(config)
  variables = init_variables(model, jax.random.PRNGKey(0))

  @jax.jit
  def evaluate(variables, images):
    # mutable so the test can see that eval leaves batch_stats alone.
    return model.apply(variables, images, train=False, mutable=["batch_stats"])

  @jax.jit
  def train(variables, images, dropout_key):
    return model.apply(variables, images, train=True, rngs={"dropout": dropout_key}, mutable=["batch_stats"])

  return model, variables, evaluate, train


def _images(seed: int, batch: int = BATCH) -> jax.Array:
  return jax.random.normal(jax.random.PRNGKey(seed), (batch, 32, 32, 3), jnp.float32)


def _assert_trees_equal(a, b):
  jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)


@pytest.mark.parametrize("name", STRUCTURES)
def test_every_structure_returns_float32_logits(name):
  _, variables, evaluate, train = _built(_config(**STRUCTURES[name]))
  images = _images(0)
  for logits, _ in (evaluate(variables, images), train(variables, images, jax.random.PRNGKey(1))):
    assert logits.shape == (BATCH, 10)
    assert logits.dtype == jnp.float32
    assert np.all(np.isfinite(logits))


def test_study_sizes_at_width_64():
  """The study's layouts: pinned so that a change of layout shows up here, not in the results."""

  def counts(**overrides):
    model = make_model(ModelConfig(**overrides))
    variables = jax.eval_shape(lambda: init_variables(model, jax.random.PRNGKey(0)))
    return param_count(variables["params"]), param_count(variables.get("batch_stats", {}))

  convs = 1_145_408  # 3->64->64, 64->128->128, 128->256->256, 3x3 kernels with biases
  assert counts(head="fc") == counts(head="fc", dropout=0.5) == (convs + 2_231_562, 0)  # 4096->512->256->10
  assert counts(head="gap") == counts(head="gap", dropout=0.5) == (convs + 2_570, 0)  # 256->10
  # Bias-free convs + BatchNorm scale/bias over 896 channels + Dense 256->10; mean/var in batch_stats.
  assert counts(architecture="resnet") == (1_144_512 + 1_792 + 2_570, 1_792)


@pytest.mark.parametrize("structure", ["cnn_fc", "cnn_gap", "resnet"])
def test_bfloat16_computes_in_bf16_with_float32_params_and_logits(structure):
  overrides = STRUCTURES[structure]
  model, variables, evaluate, train = _built(_config(dtype="bfloat16", **overrides))
  for leaf in jax.tree_util.tree_leaves(variables):
    assert leaf.dtype == jnp.float32
  images = _images(0)
  logits, _ = evaluate(variables, images)
  assert logits.dtype == jnp.float32 and np.all(np.isfinite(logits))
  logits_train, new_state = train(variables, images, jax.random.PRNGKey(1))
  assert logits_train.dtype == jnp.float32 and np.all(np.isfinite(logits_train))
  for leaf in jax.tree_util.tree_leaves(new_state):
    assert leaf.dtype == jnp.float32

  # Every convolution really runs in bfloat16 (the dtype reached the layers), in either form:
  # XLA's convolution, or the matmul over shifted copies (its kernel [9 * in, out]).
  def is_conv(eqn, conv_impl):
    if conv_impl == "xla":
      return eqn.primitive.name == "conv_general_dilated"
    return eqn.primitive.name == "dot_general" and eqn.invars[1].aval.shape[0] % 9 == 0

  for conv_impl in ("xla", "matmul"):
    form = make_model(_config(dtype="bfloat16", conv_impl=conv_impl, **overrides))
    jaxpr = jax.make_jaxpr(lambda v, x: form.apply(v, x, train=False))(variables, images).jaxpr
    convs = [e for e in jaxpr.eqns if is_conv(e, conv_impl)]
    assert len(convs) == 6, conv_impl
    assert all(v.aval.dtype == jnp.bfloat16 for e in convs for v in e.invars)

  # Same parameters, same function as float32, up to bfloat16 rounding.
  _, _, evaluate32, _ = _built(_config(**overrides))
  reference, _ = evaluate32(variables, images)
  scale = float(np.max(np.abs(reference)))
  np.testing.assert_allclose(logits, reference, atol=0.05 * scale)


def test_fc_and_gap_share_the_conv_stack_and_gap_has_a_much_smaller_head():
  fc = _built(_config(head="fc"))[1]["params"]
  gap = _built(_config(head="gap"))[1]["params"]
  convs = sorted(k for k in fc if k.startswith("conv_"))
  assert convs == sorted(k for k in gap if k.startswith("conv_"))
  assert len(convs) == 6
  # Same names and shapes, and (same init key, same module paths) even the same initial values.
  _assert_trees_equal({k: fc[k] for k in convs}, {k: gap[k] for k in convs})

  def head_size(params):
    return param_count({k: v for k, v in params.items() if not k.startswith("conv_")})

  assert set(gap) - set(convs) == {"logits"}
  assert head_size(gap) == 4 * 8 * 10 + 10
  assert head_size(fc) == (4 * 4 * 32) * 16 + 16 + 16 * 10 + 10
  assert head_size(gap) * 20 < head_size(fc)


def test_batchnorm_train_mode_uses_batch_statistics_and_updates_running_ones():
  config = _config(architecture="resnet")
  _, variables, _evaluate, train = _built(config)
  key = jax.random.PRNGKey(1)
  batch_a = _images(0)
  batch_b = batch_a.at[1:].set(_images(1)[1:] * 3.0 + 1.0)  # same first image, other companions

  logits_a, state_a = train(variables, batch_a, key)
  logits_b, _ = train(variables, batch_b, key)
  assert not np.allclose(logits_a[0], logits_b[0], atol=1e-4)  # image 0's output depends on its batch

  stats = state_a["batch_stats"]
  assert jax.tree_util.tree_structure(stats) == jax.tree_util.tree_structure(variables["batch_stats"])
  for old, new in zip(jax.tree_util.tree_leaves(variables["batch_stats"]), jax.tree_util.tree_leaves(stats)):
    assert not np.allclose(old, new)
  # momentum 0.9: running = 0.9 * running + 0.1 * batch; the first BN sees conv_0's output directly.
  kernel = variables["params"]["stage_0"]["conv_0"]["kernel"]
  conv_0 = nn.Conv(8, (3, 3), padding="SAME", use_bias=False).apply({"params": {"kernel": kernel}}, batch_a)
  np.testing.assert_allclose(
    stats["stage_0"]["bn_0"]["mean"], 0.1 * np.mean(conv_0, axis=(0, 1, 2)), rtol=1e-4, atol=1e-6
  )


def test_batchnorm_eval_mode_uses_running_statistics_unchanged():
  config = _config(architecture="resnet")
  _, variables, evaluate, train = _built(config)
  batch_a = _images(0)
  batch_b = batch_a.at[1:].set(_images(1)[1:] * 3.0 + 1.0)
  # Non-trivial running statistics, as after some training.
  _, state = train(variables, batch_a, jax.random.PRNGKey(1))
  trained = {**variables, "batch_stats": state["batch_stats"]}

  logits_a, state_a = evaluate(trained, batch_a)
  logits_b, _ = evaluate(trained, batch_b)
  np.testing.assert_allclose(logits_a[0], logits_b[0], rtol=1e-5, atol=1e-5)
  single, _ = evaluate(trained, batch_a[:1])
  np.testing.assert_allclose(single[0], logits_a[0], rtol=1e-5, atol=1e-5)
  _assert_trees_equal(state_a["batch_stats"], trained["batch_stats"])
  # ... and the running statistics are what it normalizes with.
  initial, _ = evaluate(variables, batch_a)
  assert not np.allclose(initial, logits_a, atol=1e-4)


@pytest.mark.parametrize("structure", ["cnn_fc_dropout", "cnn_gap_dropout", "resnet_dropout"])
def test_dropout_is_random_in_train_mode_and_off_in_eval_mode(structure):
  overrides = STRUCTURES.get(structure) or {"architecture": "resnet", "dropout": 0.5}
  _, variables, evaluate, train = _built(_config(**overrides))
  images = _images(0)
  first, _ = train(variables, images, jax.random.PRNGKey(1))
  again, _ = train(variables, images, jax.random.PRNGKey(1))
  other, _ = train(variables, images, jax.random.PRNGKey(2))
  np.testing.assert_array_equal(first, again)
  assert not np.allclose(first, other, atol=1e-4)
  np.testing.assert_array_equal(evaluate(variables, images)[0], evaluate(variables, images)[0])


@pytest.mark.parametrize("structure", ["cnn_fc", "cnn_gap"])
def test_cnn_without_dropout_computes_the_same_in_train_and_eval_mode(structure):
  model, variables, evaluate, train = _built(_config(**STRUCTURES[structure]))
  images = _images(0)
  np.testing.assert_allclose(
    train(variables, images, jax.random.PRNGKey(1))[0], evaluate(variables, images)[0]
  )
  # No Dropout module at all, so train mode needs no dropout rng.
  model.apply(variables, images[:1], train=True)


def test_resnet_has_one_batchnorm_per_conv_and_gradients_reach_the_first_conv():
  model, variables, _, _ = _built(_config(architecture="resnet"))
  params = variables["params"]
  stages = [params[f"stage_{i}"] for i in range(3)]
  assert all(set(stage) == {"conv_0", "bn_0", "conv_1", "bn_1"} for stage in stages)
  assert sum(1 for stage in stages for layer in stage.values() if "scale" in layer) == 6
  # Each residual branch starts switched off (zero BN scale): every stage begins as one conv.
  for stage in stages:
    np.testing.assert_array_equal(stage["bn_1"]["scale"], 0.0)
    np.testing.assert_array_equal(stage["bn_0"]["scale"], 1.0)

  images = _images(0)
  labels = jnp.arange(BATCH) % 10

  @jax.jit
  def grads(params):
    def loss(params):
      logits, _ = model.apply(
        {"params": params, "batch_stats": variables["batch_stats"]},
        images,
        train=True,
        mutable=["batch_stats"],
      )
      return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    return jax.grad(loss)(params)

  g = grads(params)
  first = g["stage_0"]["conv_0"]["kernel"]
  assert np.all(np.isfinite(first)) and np.any(first != 0)
  # The zero scales still learn: their gradient is what opens the residual branches.
  for i in range(3):
    assert np.any(g[f"stage_{i}"]["bn_1"]["scale"] != 0)


def test_zero_initialized_branch_leaves_only_the_shortcut():
  _, variables, evaluate, _ = _built(_config(architecture="resnet"))
  params = variables["params"]
  scrambled = {
    name: {**stage, "conv_1": {"kernel": 5.0 * stage["conv_1"]["kernel"][::-1]}}
    if name.startswith("stage_")
    else stage
    for name, stage in params.items()
  }
  images = _images(0)
  np.testing.assert_allclose(
    evaluate(variables, images)[0], evaluate({**variables, "params": scrambled}, images)[0], rtol=1e-6
  )


@pytest.mark.parametrize(
  "overrides,message",
  [
    ({"architecture": "vgg"}, "architecture must be one of cnn, resnet, speedrun; got 'vgg'"),
    ({"head": "max"}, "head must be one of fc, gap; got 'max'"),
    ({"dtype": "float16"}, "dtype must be one of float32, bfloat16; got 'float16'"),
    ({"dropout": 1.0}, r"dropout must be in \[0, 1\), got 1.0"),
    ({"dropout": -0.1}, r"dropout must be in \[0, 1\)"),
    ({"width": 0}, "width must be >= 1, got 0"),
    ({"fc_units": (512, 0)}, r"fc_units must all be >= 1, got \(512, 0\)"),
    ({"num_classes": 1}, "num_classes must be >= 2, got 1"),
  ],
)
def test_bad_config_raises_a_helpful_error(overrides, message):
  with pytest.raises(ValueError, match=message):
    ModelConfig(**overrides)


def test_fc_units_from_a_list_becomes_a_tuple():
  config = ModelConfig(fc_units=[32, 16])
  assert config.fc_units == (32, 16)
  hash(config)  # usable as a jit static argument


def test_unnormalized_or_badly_shaped_images_are_rejected():
  model, variables, _, _ = _built(_config(head="gap"))
  with pytest.raises(ValueError, match="normalized floats, got dtype uint8"):
    model.apply(variables, jnp.zeros((1, 32, 32, 3), jnp.uint8), train=False)
  with pytest.raises(ValueError, match=r"NHWC\), got shape \(1, 3, 32, 32\)"):
    model.apply(variables, jnp.zeros((1, 3, 32, 32)), train=False)


# --------------------------------------------------------------------------------------
# The convolution's two forms
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("kernel,padding", [((3, 3, 5, 16), "SAME"), ((2, 2, 3, 24), "VALID")])
def test_the_matmul_convolution_computes_xlas_convolution_and_its_gradients(kernel, padding):
  # float32 sums in another order: each output sums kh*kw*in products, so it may move by a few
  # ulps of the sum's magnitude (seen: 4e-6 on values of order 5), never more.
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(3, 9, 9, kernel[2])).astype(np.float32))
  w = jnp.asarray(rng.normal(size=kernel).astype(np.float32))
  numbers = jax.lax.conv_dimension_numbers(x.shape, w.shape, ("NHWC", "HWIO", "NHWC"))
  forms = {
    "xla": functools.partial(jax.lax.conv_general_dilated, dimension_numbers=numbers),
    "matmul": functools.partial(models.MatmulConv(), dimension_numbers=numbers),
  }
  outputs = {name: f(x, w, (1, 1), padding) for name, f in forms.items()}
  cotangent = jnp.asarray(rng.normal(size=outputs["xla"].shape).astype(np.float32))
  grads = {
    name: jax.grad(lambda x, w: jnp.vdot(f(x, w, (1, 1), padding), cotangent), argnums=(0, 1))(x, w)
    for name, f in forms.items()
  }
  for got, want in zip((outputs["matmul"], *grads["matmul"]), (outputs["xla"], *grads["xla"])):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(want))))
  # Strided: not the matmul form's case; it hands the convolution to XLA.
  strided = {name: f(x, w, (2, 2), padding) for name, f in forms.items()}
  np.testing.assert_array_equal(strided["matmul"], strided["xla"])


@pytest.mark.parametrize("architecture", ["cnn", "resnet", "speedrun"])
def test_both_convolution_forms_share_parameters_and_compute_the_same_model(architecture):
  config = _config(architecture=architecture)
  built = {impl: make_model(dataclasses.replace(config, conv_impl=impl)) for impl in ("xla", "matmul")}
  variables = {impl: init_variables(model, jax.random.PRNGKey(0)) for impl, model in built.items()}
  _assert_trees_equal(variables["xla"], variables["matmul"])  # one checkpoint serves both
  images = _images(0)
  logits = {impl: model.apply(variables["xla"], images, train=False) for impl, model in built.items()}
  # The float32 reordering above, through the network's layers.
  np.testing.assert_allclose(logits["matmul"], logits["xla"], rtol=1e-4, atol=1e-5)


def test_auto_takes_the_matmul_form_on_cpus_for_wide_nets_and_xlas_convolution_elsewhere():
  wide, narrow = _config(architecture="resnet", width=64), _config(architecture="resnet", width=32)
  assert wide.conv_impl == narrow.conv_impl == "auto"
  images = jnp.zeros((2, 32, 32, 3))
  cases = [(wide, "cpu", False), (narrow, "cpu", True), (wide, "tpu", True), (wide, "gpu", True)]
  for config, platform, convolutions in cases:
    model = make_model(config, platform)
    variables = init_variables(model, jax.random.PRNGKey(0))
    program = jax.jit(lambda v, x: model.apply(v, x, train=False)).lower(variables, images).as_text()
    assert ("convolution" in program) == convolutions, (config.width, platform)
  with pytest.raises(ValueError, match="conv_impl must be one of auto, xla, matmul; got 'fft'"):
    ModelConfig(conv_impl="fft")
