"""Optimizers and learning-rate schedules shared by every task (optax)."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import optax

OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam", "adamw", "adadelta")
SCHEDULES = ("constant", "step", "cosine", "warmup_cosine", "onecycle", "plateau")
SCHEDULES_OVER_ALL_EPOCHS = ("cosine", "warmup_cosine", "onecycle")  # their shape depends on the epoch count


@dataclasses.dataclass(frozen=True)
class OptimConfig:
  optimizer: str = "adam"
  learning_rate: float = 1e-3
  lr_schedule: str = "constant"
  momentum: float = 0.9
  weight_decay: float = 0.0
  grad_clip_norm: float = 0.0  # 0 disables clipping
  warmup_epochs: float = 0.0  # linear warmup, added in front of any schedule
  decay_factor: float = 0.5  # step: lr *= factor every decay_epochs; plateau: on a plateau
  decay_epochs: int = 10  # step: period
  plateau_patience: int = 2  # plateau: epochs without dev improvement before decaying

  def __post_init__(self):
    if self.optimizer not in OPTIMIZERS:
      raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}; got {self.optimizer!r}")
    if self.lr_schedule not in SCHEDULES:
      raise ValueError(f"lr_schedule must be one of {', '.join(SCHEDULES)}; got {self.lr_schedule!r}")
    if not 0 < self.learning_rate < float("inf"):
      raise ValueError(f"learning_rate must be positive, got {self.learning_rate}")
    if self.lr_schedule == "warmup_cosine" and self.warmup_epochs <= 0:
      raise ValueError("lr_schedule warmup_cosine needs warmup_epochs > 0")
    if self.plateau_patience < 1:
      raise ValueError(f"plateau_patience must be >= 1, got {self.plateau_patience}")
    if not 0 < self.decay_factor <= 1:
      raise ValueError(f"decay_factor must be in (0, 1], got {self.decay_factor}")


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
  else:
    main = optax.constant_schedule(base)
  if warmup_steps == 0:
    return main
  warmup = optax.linear_schedule(0.0, base, warmup_steps)
  return optax.join_schedules([warmup, main], boundaries=[warmup_steps])


def make_optimizer(
  config: OptimConfig, steps_per_epoch: int, total_steps: int
) -> optax.GradientTransformation:
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
