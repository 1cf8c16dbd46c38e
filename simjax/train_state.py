"""The train state every task checkpoints: one pytree, functions kept static."""

from __future__ import annotations

from typing import Any, Callable

import flax.struct
import jax
import optax


class TrainState(flax.struct.PyTreeNode):
  step: jax.Array
  params: Any
  opt_state: Any
  plateau_state: Any  # optax reduce_on_plateau state; its `scale` multiplies every update
  rng: jax.Array  # base key; step t uses fold_in(rng, t), so resuming replays the same keys
  batch_stats: Any  # BatchNorm running statistics ({} for models without BatchNorm)
  apply_fn: Callable = flax.struct.field(pytree_node=False)
  tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)

  @classmethod
  def create(cls, *, apply_fn, params, tx, plateau, rng, batch_stats=None) -> "TrainState":
    return cls(
      step=jax.numpy.zeros((), jax.numpy.int32),
      params=params,
      opt_state=tx.init(params),
      plateau_state=plateau.init(params),
      rng=rng,
      batch_stats={} if batch_stats is None else batch_stats,
      apply_fn=apply_fn,
      tx=tx,
    )

  def apply_gradients(self, grads) -> "TrainState":
    updates, opt_state = self.tx.update(grads, self.opt_state, self.params)
    updates = jax.tree_util.tree_map(lambda u: u * self.plateau_state.scale.astype(u.dtype), updates)
    return self.replace(
      step=self.step + 1, params=optax.apply_updates(self.params, updates), opt_state=opt_state
    )

  def step_key(self) -> jax.Array:
    return jax.random.fold_in(self.rng, self.step)
