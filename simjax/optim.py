"""Optimizers and learning-rate schedules shared by every task (optax)."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from simjax.errors import ConfigError
from simjax.settings import setting, validate

OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam", "adamw", "adadelta")
SCHEDULES = ("constant", "step", "cosine", "warmup_cosine", "onecycle", "linear", "plateau")
# Their shape depends on the epoch count.
SCHEDULES_OVER_ALL_EPOCHS = ("cosine", "warmup_cosine", "onecycle", "linear")
# Parameter groups a model may label its parameters with (see make_optimizer's `labels`).
GROUPS = ("default", "norm_bias", "frozen", "early")


@dataclasses.dataclass(frozen=True)
class OptimConfig:
  optimizer: str = setting("adam", "Optimizer.", choices=OPTIMIZERS)
  learning_rate: float = setting(1e-3, "Peak learning rate.", lower=0.0)
  lr_schedule: str = setting(
    "constant",
    "Learning-rate schedule; plateau: multiply by decay_factor when the dev metric stalls for "
    "plateau_patience epochs.",
    choices=SCHEDULES,
  )
  momentum: float = setting(0.9, "Momentum for momentum / nesterov.")
  weight_decay: float = setting(
    0.0, "Weight decay: decoupled for adamw, an L2 term in the gradient otherwise.", lower=0.0
  )
  grad_clip_norm: float = setting(0.0, "Clip gradients to this global norm (0: off).", lower=0.0)
  warmup_epochs: float = setting(
    0.0, "Linear warmup length in epochs (added in front of any schedule).", lower=0.0
  )
  decay_factor: float = setting(
    0.5, "step / plateau: learning-rate multiplier at each decay.", lower=0.0, upper=1.0
  )
  decay_epochs: int = setting(10, "step: epochs between decays.", lower=1)
  plateau_patience: int = setting(2, "plateau: epochs without improvement before a decay.", lower=1)
  warmup_start: float = setting(
    0.0, "The warmup starts at this fraction of learning_rate.", lower=0.0, upper=1.0, added_later=True
  )
  final_lr_factor: float = setting(
    0.0,
    "linear: the learning rate falls linearly to this fraction of learning_rate.",
    lower=0.0,
    upper=1.0,
    added_later=True,
  )
  bias_lr_scale: float = setting(
    1.0,
    "Normalization biases (the speedrun net's) train at this multiple of the learning rate, "
    "with weight decay divided by it (the same decay per step).",
    lower=0.0,
    added_later=True,
  )
  lookahead_every: int = setting(
    0,
    "> 0: lookahead every this many steps, the slow weights an EMA of the fast ones (airbench's).",
    lower=0,
    added_later=True,
  )
  early_epochs: float = setting(
    0.0,
    "Parameters a model marks as early (the speedrun net's whitening bias) train this many epochs.",
    lower=0.0,
    added_later=True,
  )

  def __post_init__(self):
    validate(self)  # choices and bounds
    if not 0 < self.learning_rate < float("inf"):
      raise ConfigError(f"learning_rate must be positive, got {self.learning_rate}", ("learning_rate",))
    if self.lr_schedule == "warmup_cosine" and self.warmup_epochs <= 0:
      raise ConfigError("lr_schedule warmup_cosine needs warmup_epochs > 0", ("lr_schedule", "warmup_epochs"))
    if self.decay_factor == 0:
      raise ConfigError("decay_factor must be in (0, 1], got 0", ("decay_factor",))
    if self.bias_lr_scale == 0 or self.bias_lr_scale == float("inf"):
      raise ConfigError(f"bias_lr_scale must be positive, got {self.bias_lr_scale}", ("bias_lr_scale",))


def learning_rate_schedule(config: OptimConfig, steps_per_epoch: int, total_steps: int) -> optax.Schedule:
  """The per-step learning rate. 'plateau' is constant here; `plateau_transform` scales it."""
  base = config.learning_rate
  warmup_steps = int(config.warmup_epochs * steps_per_epoch)
  if config.lr_schedule == "step":
    main = optax.exponential_decay(
      base,
      transition_steps=config.decay_epochs * steps_per_epoch,
      decay_rate=config.decay_factor,
      staircase=True,
    )
  elif config.lr_schedule == "onecycle":  # up for 30% of training (optax default), then down (Smith & Topin)
    main = optax.cosine_onecycle_schedule(max(total_steps - warmup_steps, 1), peak_value=base)
  elif config.lr_schedule in ("cosine", "warmup_cosine"):
    main = optax.cosine_decay_schedule(base, decay_steps=max(total_steps - warmup_steps, 1))
  elif config.lr_schedule == "linear":
    main = optax.linear_schedule(base, base * config.final_lr_factor, max(total_steps - warmup_steps, 1))
  else:
    main = optax.constant_schedule(base)
  if warmup_steps == 0:
    return main
  warmup = optax.linear_schedule(base * config.warmup_start, base, warmup_steps)
  return optax.join_schedules([warmup, main], boundaries=[warmup_steps])


def make_optimizer(
  config: OptimConfig,
  steps_per_epoch: int,
  total_steps: int,
  labels: Callable[[Any], Any] | None = None,
) -> optax.GradientTransformation:
  """The optimizer of `config`. `labels(params)` (a model's) names each parameter's group
  (GROUPS): "frozen" ones never move; "norm_bias" ones (e.g. BatchNorm biases) train at
  bias_lr_scale x the learning rate and weight decay / bias_lr_scale (the same decay per
  step); "early" ones stop after early_epochs. With lookahead_every > 0, the whole is
  wrapped in `lookahead_ema`."""
  groups = {
    "default": _optimizer(config, steps_per_epoch, total_steps),
    "norm_bias": _optimizer(
      dataclasses.replace(
        config,
        learning_rate=config.learning_rate * config.bias_lr_scale,
        weight_decay=config.weight_decay / config.bias_lr_scale,
      ),
      steps_per_epoch,
      total_steps,
    ),
    "frozen": optax.set_to_zero(),
    "early": optax.chain(
      _optimizer(config, steps_per_epoch, total_steps),
      optax.scale_by_schedule(
        lambda step: (step < config.early_epochs * steps_per_epoch).astype(jnp.float32)
      ),
    ),
  }
  tx = optax.multi_transform(groups, labels) if labels is not None else groups["default"]
  if config.lookahead_every:
    tx = lookahead_ema(tx, config.lookahead_every, total_steps)
  return tx


class LookaheadState(NamedTuple):
  count: jax.Array
  slow: Any  # the slow (averaged) weights
  inner: Any


def lookahead_ema(
  inner: optax.GradientTransformation, every: int, total_steps: int, base: float = 0.95**5, power: float = 3.0
) -> optax.GradientTransformation:
  """Lookahead whose slow weights are an EMA of the fast ones (as in Keller Jordan's airbench):
  every `every` steps, slow += (1 - decay) * (fast - slow) with decay = base * (t / total)^power,
  and the fast weights restart from the slow ones; the last step (total_steps) ends on the
  slow weights. Early in training decay is near 0 (the slow weights follow); late, they
  average over many steps."""

  def init(params):
    return LookaheadState(
      jnp.zeros((), jnp.int32), jax.tree_util.tree_map(jnp.asarray, params), inner.init(params)
    )

  def update(grads, state, params):
    updates, inner_state = inner.update(grads, state.inner, params)
    fast = optax.apply_updates(params, updates)
    count = state.count + 1
    sync = count % every == 0
    decay = base * (count.astype(jnp.float32) / total_steps) ** power
    slow = jax.tree_util.tree_map(
      lambda s, f: jnp.where(sync, s + (1.0 - decay) * (f - s), s), state.slow, fast
    )
    # The last step ends on the slow weights even between syncs (the fast steps since are dropped).
    restart = sync | (count == total_steps)
    new = jax.tree_util.tree_map(lambda s, f: jnp.where(restart, s, f), slow, fast)
    return jax.tree_util.tree_map(lambda n, p: n - p, new, params), LookaheadState(count, slow, inner_state)

  return optax.GradientTransformation(init, update)


def _optimizer(config: OptimConfig, steps_per_epoch: int, total_steps: int) -> optax.GradientTransformation:
  lr = learning_rate_schedule(config, steps_per_epoch, total_steps)
  if config.optimizer == "sgd":
    base = optax.sgd(lr)
  elif config.optimizer in ("momentum", "nesterov"):
    base = optax.sgd(lr, momentum=config.momentum, nesterov=config.optimizer == "nesterov")
  elif config.optimizer == "adam":
    base = optax.adam(lr)
  elif config.optimizer == "adamw":
    base = optax.adamw(lr, weight_decay=config.weight_decay)
  else:
    base = optax.adadelta(lr)
  parts = []
  if config.grad_clip_norm > 0:
    parts.append(optax.clip_by_global_norm(config.grad_clip_norm))
  if config.weight_decay > 0 and config.optimizer != "adamw":
    parts.append(optax.add_decayed_weights(config.weight_decay))
  return optax.chain(*parts, base)


def plateau_transform(config: OptimConfig) -> optax.GradientTransformationExtraArgs:
  """Reduce-on-plateau, advanced once per epoch with the dev loss (not per step).

  Its state's `scale` multiplies every update in the train step; it only ever changes
  when the loop calls `update(..., value=dev_loss)` at the end of an epoch. For every
  schedule other than 'plateau' the loop never advances it, so the scale stays 1.
  """
  return optax.contrib.reduce_on_plateau(
    factor=config.decay_factor, patience=config.plateau_patience, rtol=1e-4, accumulation_size=1
  )


def advance_plateau(transform, state, dev_loss: float):
  """Feeds one epoch's dev loss to the plateau state; returns the new state."""
  _, state = transform.update(jnp.zeros(()), state, value=jnp.asarray(dev_loss, jnp.float32))
  return state
