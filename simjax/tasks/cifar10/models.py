"""CIFAR-10 image classifiers (Flax Linen): a classic CNN and a small ResNet-style network.

Both take normalized float images [B, H, W, 3] (NHWC) and return float32 logits [B, num_classes].

* `ClassicCNN`: three stages of [conv3x3 -> relu -> conv3x3 -> relu -> maxpool 2x2] with
  width, 2*width, 4*width channels and no BatchNorm, then either an "fc" head (flatten + fully
  connected layers) or a "gap" head (global average pooling + one Dense). The conv stack is
  the same module tree for both heads, so the two heads differ only in their head parameters.
* `ResNet`: the study's layout, conv 3->w, w->w, maxpool, w->2w, 2w->2w, avgpool, 2w->4w,
  4w->4w, global average pooling, Dense, with BatchNorm after every conv and an identity
  shortcut inside each stage.

Convolutions: XLA's own (`conv_impl="xla"`), or one matmul over the k*k shifted copies of the
padded input (`"matmul"`, `MatmulConv`): the same parameters and checkpoints, numbers equal to
float tolerance. "auto" takes the matmul form on CPUs at width 64 and more, where XLA's
convolution is the slower path (measured in docs/cifar10.md), and XLA's on GPUs and TPUs.

Mixed precision: with dtype="bfloat16" convs and Dense layers compute in bfloat16, parameters stay
float32 (`param_dtype` default), BatchNorm normalizes and keeps its statistics in float32, and the
logits are cast back to float32 so losses and metrics never see bfloat16.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from simjax.settings import setting, validate

HEADS = ("fc", "gap")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
ARCHITECTURES = ("cnn", "resnet", "speedrun")  # MODELS, below, in this order
CONV_IMPLS = ("auto", "xla", "matmul")
NUM_STAGES = 3  # 32x32 inputs -> 4x4 feature maps after three 2x2 poolings

# He (Kaiming) normal init for kernels followed by a ReLU: Flax's default (LeCun normal) halves the
# activation variance at every ReLU layer, which matters in the classic CNN, where no BatchNorm
# rescales the signal through its nine layers.
_RELU_INIT = nn.initializers.he_normal()


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Everything that fixes the parameter shapes and the function the model computes."""

  architecture: str = setting(
    "cnn",
    "cnn: the classic conv-pool stacks; resnet: with BatchNorm; speedrun: the airbench94 net "
    "(cifar_speedrun.flags).",
    choices=ARCHITECTURES,
  )
  head: str = "fc"  # cnn only; the resnet always ends in global average pooling + Dense
  dropout: float = 0.0
  width: int = setting(64, "Channels of the first stage (later stages double).", lower=1)
  fc_units: tuple[int, ...] = (512, 256)  # hidden layers of the cnn's "fc" head
  num_classes: int = 10
  dtype: str = setting("float32", "Compute dtype (params and BatchNorm stay float32).", choices=tuple(DTYPES))
  conv_impl: str = setting(
    "auto",
    "How convolutions compute: xla (XLA's convolution), matmul (one matmul over shifted copies of "
    "the input), auto (matmul on CPUs at width 64 and more, where it is faster; else xla). Same parameters "
    "and checkpoints; numbers equal to float tolerance.",
    choices=CONV_IMPLS,
    added_later=True,
  )

  def __post_init__(self):
    # Flags and JSON hand over lists; a tuple keeps the frozen config hashable (usable as a jit static).
    object.__setattr__(self, "fc_units", tuple(self.fc_units))
    validate(self)  # choices and bounds
    _check_choice("head", self.head, HEADS)
    if not 0.0 <= self.dropout < 1.0:
      raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
    if any(units < 1 for units in self.fc_units):
      raise ValueError(f"fc_units must all be >= 1, got {self.fc_units}")
    if self.num_classes < 2:
      raise ValueError(f"num_classes must be >= 2, got {self.num_classes}")

  @property
  def compute_dtype(self) -> Any:
    return DTYPES[self.dtype]


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
  if value not in choices:
    raise ValueError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


def _prepare(images: jax.Array, dtype: Any) -> jax.Array:
  if images.ndim != 4 or images.shape[-1] != 3:
    raise ValueError(f"images must be [batch, height, width, 3] (NHWC), got shape {images.shape}")
  # uint8 pixels would silently become 0..255 floats here: normalization belongs to the input pipeline.
  if not jnp.issubdtype(images.dtype, jnp.floating):
    raise ValueError(f"images must be normalized floats, got dtype {images.dtype}")
  return images.astype(dtype)


class MatmulConv:
  """`lax.conv_general_dilated` for flax's `nn.Conv` (its `conv_general_dilated_cls`), computed
  as im2col by slicing: the input padded once, its kh*kw shifted copies concatenated on the
  channel axis, and one matmul with the kernel reshaped to [kh*kw*in, out] (the order in which
  the kernel's HWIO layout flattens). Stride 1, no dilation, one feature group, NHWC/HWIO, which
  is every convolution of these models; anything else goes to XLA's convolution."""

  def __call__(self, lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
               dimension_numbers=None, feature_group_count=1, precision=None,
               preferred_element_type=None):  # fmt: skip
    plain = (
      all(s == 1 for s in window_strides)
      and all(d == 1 for d in (lhs_dilation or ()) + (rhs_dilation or ()))
      and feature_group_count == 1
      and lhs.ndim == 4
      and dimension_numbers == lax.conv_dimension_numbers(lhs.shape, rhs.shape, ("NHWC", "HWIO", "NHWC"))
    )
    if not plain:
      return lax.conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
        feature_group_count, precision=precision, preferred_element_type=preferred_element_type,
      )  # fmt: skip
    kh, kw, channels, features = rhs.shape
    if isinstance(padding, str):
      padding = lax.padtype_to_pads(lhs.shape[1:3], (kh, kw), window_strides, padding)
    x = jnp.pad(lhs, ((0, 0), *padding, (0, 0)))
    batch, height, width = x.shape[0], x.shape[1] - kh + 1, x.shape[2] - kw + 1
    patches = jnp.concatenate(
      [x[:, i : i + height, j : j + width, :] for i in range(kh) for j in range(kw)], axis=-1
    )
    y = lax.dot(
      patches.reshape(-1, kh * kw * channels),
      rhs.reshape(kh * kw * channels, features),
      precision=precision,
      preferred_element_type=preferred_element_type,
    )
    return y.reshape(batch, height, width, features)


# "auto" takes the matmul form on a CPU from this width on. Measured (docs/cifar10.md), whole
# train steps on a 2-core AVX-512 CPU, matmul over xla: at width 64 faster in every case measured
# (1.07x to 1.35x, batch 32 to 128); at 32 mixed (the classic CNN 1.23x at batch 128, the ResNet
# 0.85x at batch 32); at 16 slower (the ResNet 0.89x).
MATMUL_MIN_WIDTH = 64


def resolve_conv_impl(conv_impl: str, platform: str, width: int) -> str:
  """The form "auto" takes: "matmul" on a CPU for nets of `MATMUL_MIN_WIDTH` channels and
  more, "xla" elsewhere (narrower nets, a GPU, a TPU); other values as they are."""
  if conv_impl != "auto":
    return conv_impl
  return "matmul" if platform == "cpu" and width >= MATMUL_MIN_WIDTH else "xla"


def conv(features: int, kernel_size, conv_impl: str, **kwargs) -> nn.Conv:
  """`nn.Conv` computing as `conv_impl` ("xla" or "matmul"): the same parameters either way."""
  assert conv_impl in ("xla", "matmul"), conv_impl  # "auto" is resolved by make_model
  return nn.Conv(
    features, kernel_size, conv_general_dilated_cls=MatmulConv if conv_impl == "matmul" else None, **kwargs
  )


def _conv(features: int, dtype: Any, name: str, conv_impl: str, use_bias: bool = True) -> nn.Conv:
  return conv(
    features, (3, 3), conv_impl, padding="SAME", use_bias=use_bias, kernel_init=_RELU_INIT, dtype=dtype,
    name=name,
  )  # fmt: skip


class ClassicCNN(nn.Module):
  """Three conv stages without BatchNorm, then an "fc" or a "gap" head."""

  config: ModelConfig

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool) -> jax.Array:
    cfg = self.config
    dtype = cfg.compute_dtype
    x = _prepare(images, dtype)
    for stage in range(NUM_STAGES):
      features = cfg.width * 2**stage
      x = nn.relu(_conv(features, dtype, f"conv_{stage}_0", cfg.conv_impl)(x))
      x = nn.relu(_conv(features, dtype, f"conv_{stage}_1", cfg.conv_impl)(x))
      x = nn.max_pool(x, (2, 2), strides=(2, 2))
      # The last stage's dropout is the head's dropout before its first Dense: dropping twice in a row
      # would silently raise the rate to 1 - (1 - p)^2, and for "gap" it belongs after the averaging.
      if stage < NUM_STAGES - 1:
        x = _dropout(x, cfg.dropout, train)
    if cfg.head == "gap":
      x = jnp.mean(x, axis=(1, 2))
    else:
      x = x.reshape(x.shape[0], -1)
      for i, units in enumerate(cfg.fc_units):
        x = _dropout(x, cfg.dropout, train)
        x = nn.relu(nn.Dense(units, kernel_init=_RELU_INIT, dtype=dtype, name=f"fc_{i}")(x))
    x = _dropout(x, cfg.dropout, train)
    # The classifier runs in float32 even under bf16: cheap, and the logits keep their precision.
    return nn.Dense(cfg.num_classes, dtype=jnp.float32, name="logits")(x.astype(jnp.float32))


class ResidualStage(nn.Module):
  """y1 = relu(bn(conv(x))); y2 = relu(bn(conv(y1)) + y1).

  The first conv changes the channel count, so the identity shortcut spans the second conv. Its
  BatchNorm scale starts at zero: each stage begins as a single conv and learns how much of the
  second one to add, which keeps early training stable.
  """

  features: int
  dtype: Any
  conv_impl: str

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    conv_0 = _conv(self.features, self.dtype, "conv_0", self.conv_impl, use_bias=False)
    y1 = nn.relu(self._bn(conv_0(x), train, "bn_0"))
    conv_1 = _conv(self.features, self.dtype, "conv_1", self.conv_impl, use_bias=False)
    branch = self._bn(conv_1(y1), train, "bn_1", zero=True)
    return nn.relu(branch + y1).astype(self.dtype)

  def _bn(self, x: jax.Array, train: bool, name: str, zero: bool = False) -> jax.Array:
    # A conv bias before BatchNorm is cancelled by the mean subtraction, hence use_bias=False above.
    # float32 for the statistics and the normalization, whatever the compute dtype.
    return nn.BatchNorm(
      use_running_average=not train,
      momentum=0.9,
      epsilon=1e-5,
      dtype=jnp.float32,
      scale_init=nn.initializers.zeros if zero else nn.initializers.ones,
      name=name,
    )(x.astype(jnp.float32))


class ResNet(nn.Module):
  """Stages of width, 2*width, 4*width channels; maxpool after the first, avgpool after the second."""

  config: ModelConfig

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool) -> jax.Array:
    cfg = self.config
    dtype = cfg.compute_dtype
    x = _prepare(images, dtype)
    x = ResidualStage(cfg.width, dtype, cfg.conv_impl, name="stage_0")(x, train=train)
    x = nn.max_pool(x, (2, 2), strides=(2, 2))
    x = ResidualStage(2 * cfg.width, dtype, cfg.conv_impl, name="stage_1")(x, train=train)
    x = nn.avg_pool(x, (2, 2), strides=(2, 2))
    x = ResidualStage(4 * cfg.width, dtype, cfg.conv_impl, name="stage_2")(x, train=train)
    x = jnp.mean(x, axis=(1, 2))
    x = _dropout(x, cfg.dropout, train)
    # The classifier runs in float32 even under bf16: cheap, and the logits keep their precision.
    return nn.Dense(cfg.num_classes, dtype=jnp.float32, name="logits")(x.astype(jnp.float32))


# --------------------------------------------------------------------------------------
# Speedrun: the airbench94 network (Keller Jordan, "94% on CIFAR-10 in 3.29 seconds on a
# single GPU", 2024), written from its description
# --------------------------------------------------------------------------------------
WHITEN_PATCH = 2  # the first conv sees 2x2 patches: 2*2*3 = 12 directions, each with its negation
SPEEDRUN_LOGIT_SCALE = 1 / 9  # the head's logits are scaled down (its reference value)
_TORCH_DEFAULT_INIT = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")  # U(+-1/sqrt(fan_in))


def dirac_init(base=_TORCH_DEFAULT_INIT):
  """A conv kernel [h, w, in, out] whose first `in` filters pass input channel i to output
  channel i unchanged (the identity at the kernel's centre), the others drawn from `base`."""

  def init(key, shape, dtype=jnp.float32):
    height, width, inputs, outputs = shape
    kernel = base(key, shape, dtype)
    n = min(inputs, outputs)
    identity = (
      jnp.zeros((height, width, inputs, n), dtype)
      .at[height // 2, width // 2]
      .set(jnp.eye(inputs, n, dtype=dtype))
    )
    return kernel.at[..., :n].set(identity)

  return init


def whitening_kernel(images: jax.Array, eps: float = 5e-4) -> jax.Array:
  """The frozen first conv of the speedrun net, from normalized images [N, H, W, 3]: the
  eigenvectors of the (uncentred) covariance of all 2x2x3 patches, each divided by
  sqrt(eigenvalue + eps), and their negations: [2, 2, 3, 24], largest eigenvalue first. Its
  outputs on the patches have about the identity covariance (the first 12 channels)."""
  n, height, width, channels = images.shape
  patches = jnp.stack(
    [
      images[:, i : height - WHITEN_PATCH + 1 + i, j : width - WHITEN_PATCH + 1 + j]
      for i in range(2)
      for j in range(2)
    ],
    axis=3,
  )  # [N, H-1, W-1, 4 (i, j), C]
  flat = patches.reshape(-1, WHITEN_PATCH * WHITEN_PATCH * channels).astype(jnp.float32)
  covariance = flat.T @ flat / flat.shape[0]
  eigenvalues, eigenvectors = jnp.linalg.eigh(covariance)  # ascending
  eigenvalues, eigenvectors = eigenvalues[::-1], eigenvectors[:, ::-1]
  scaled = eigenvectors / jnp.sqrt(eigenvalues + eps)  # columns: filters
  kernel = scaled.reshape(WHITEN_PATCH, WHITEN_PATCH, channels, -1)
  return jnp.concatenate([kernel, -kernel], axis=-1)


class SpeedrunBlock(nn.Module):
  """conv -> max-pool 2 -> BatchNorm -> GELU -> conv -> BatchNorm -> GELU."""

  features: int
  dtype: Any
  conv_impl: str

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    for i in range(2):
      x = conv(
        self.features,
        (3, 3),
        self.conv_impl,
        padding="SAME",
        use_bias=False,
        kernel_init=dirac_init(),
        dtype=self.dtype,
        name=f"conv_{i}",
      )(x)
      if i == 0:
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
      # No learned scale, a fast running average (new = 0.6 old + 0.4 batch), a tiny epsilon;
      # float32 whatever the compute dtype.
      x = nn.BatchNorm(
        use_running_average=not train,
        momentum=0.6,
        epsilon=1e-12,
        use_scale=False,
        dtype=jnp.float32,
        name=f"norm_{i}",
      )(x.astype(jnp.float32))
      x = nn.gelu(x, approximate=False).astype(self.dtype)
    return x


class SpeedrunNet(nn.Module):
  """Frozen 2x2 whitening conv (its bias trains early on only), GELU, three blocks of widths
  width, 4 width, 4 width (64/256/256), a max over the final 3x3 map, a bias-free linear
  head, scaled logits."""

  config: ModelConfig

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool) -> jax.Array:
    cfg = self.config
    dtype = cfg.compute_dtype
    x = _prepare(images, dtype)
    channels = 2 * WHITEN_PATCH * WHITEN_PATCH * 3
    patch = (WHITEN_PATCH, WHITEN_PATCH)
    x = conv(channels, patch, cfg.conv_impl, padding="VALID", dtype=dtype, name="whiten")(x)
    x = nn.gelu(x, approximate=False)
    for i, features in enumerate((cfg.width, 4 * cfg.width, 4 * cfg.width)):
      x = SpeedrunBlock(features, dtype, cfg.conv_impl, name=f"block_{i}")(x, train=train)
    # Max over the whole final map: 3x3 for CIFAR's 32x32 images, so the recipe's max-pool 3
    # (the same XLA op and numbers); other sizes (e.g. small compile checks) still end in 1x1.
    x = nn.max_pool(x, x.shape[1:3], strides=x.shape[1:3])
    x = x.reshape(x.shape[0], -1).astype(jnp.float32)
    logits = nn.Dense(cfg.num_classes, use_bias=False, kernel_init=_TORCH_DEFAULT_INIT, name="logits")(x)
    return logits * SPEEDRUN_LOGIT_SCALE


def param_groups(config: ModelConfig):
  """The optimizer groups of a model's parameters (simjax.optim.GROUPS), as a function of the
  params tree; None where every parameter is trained alike (the same optimizer as before)."""
  if config.architecture != "speedrun":
    return None

  def labels(params):
    def label(path, _):
      names = [str(getattr(p, "key", p)) for p in path]
      if names[0] == "whiten":
        return "frozen" if names[-1] == "kernel" else "early"
      return "norm_bias" if names[-2].startswith("norm_") and names[-1] == "bias" else "default"

    return jax.tree_util.tree_map_with_path(label, params)

  return labels


def _dropout(x: jax.Array, rate: float, train: bool) -> jax.Array:
  # No module at all for rate 0, so such models need no "dropout" rng even in train mode.
  if rate == 0.0:
    return x
  return nn.Dropout(rate, deterministic=not train)(x)


MODELS = dict(zip(ARCHITECTURES, (ClassicCNN, ResNet, SpeedrunNet)))


def make_model(config: ModelConfig, platform: str | None = None) -> nn.Module:
  """The model for `config` on `platform` ("cpu", "tpu", "gpu", ...; None: JAX's default
  backend), which resolves conv_impl "auto"; call it as `model.apply(variables, images, train=...)`."""
  conv_impl = resolve_conv_impl(config.conv_impl, platform or jax.default_backend(), config.width)
  return MODELS[config.architecture](dataclasses.replace(config, conv_impl=conv_impl))


def init_variables(model: nn.Module, rng: jax.Array, image_shape=(32, 32, 3)) -> dict[str, Any]:
  """{"params": ..., "batch_stats": ...} ("batch_stats" only for models with BatchNorm)."""
  return dict(model.init(rng, jnp.zeros((1, *image_shape), jnp.float32), train=False))


def param_count(params: Any) -> int:
  return sum(int(x.size) for x in jax.tree_util.tree_leaves(params))
