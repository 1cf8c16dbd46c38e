"""The example task of docs/adding_a_task.md, kept word for word: tests/test_run.py checks
that the page shows this file and trains it through simjax.run."""

# --- docs example begins ---
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from simjax import loop, optim, replicas
from simjax.tasks.base import Task
from simjax.train_state import TrainState


def _mse(params, x, y):  # params {"w": [4]}, x [batch, 4], y [batch]
  return jnp.mean((x @ params["w"] - y) ** 2)


@jax.jit
@jax.vmap  # every replica (seed) steps on its own batch
def _train_step(state, x, y):
  loss, grads = jax.value_and_grad(_mse)(state.params, x, y)
  return state.apply_gradients(grads), loss


class LinearTask(Task):
  """Fits y = x·w to synthetic data; dev MSE picks each seed's best epoch."""

  selection = loop.Selection(best_metric="mse", higher_is_better=False, plateau_metric="mse")

  def __init__(self, optim_config: optim.OptimConfig, rows: int = 64):
    self.optim, self.rows, self.config = optim_config, rows, None

  def prepare(self, workdir, config, *, resuming):
    rng = np.random.default_rng(0)  # rows [0, rows) train, [rows, 2 rows) dev
    self.x = rng.normal(size=(2 * self.rows, 4)).astype(np.float32)
    self.y = self.x @ np.arange(1, 5, dtype=np.float32) + rng.normal(size=2 * self.rows).astype(np.float32)
    self.config, self.steps = config, self.rows // config.batch_size
    return {"rows": self.rows}

  def run_config(self):
    return {"data": {"rows": self.rows}, "optim": dataclasses.asdict(self.optim)}

  def create_train_state(self, seeds):
    steps, epochs = (self.steps, self.config.epochs) if self.config else (1, 1)
    tx = optim.make_optimizer(self.optim, steps, steps * epochs)
    params, keys = replicas.init_replicas(lambda key: {"w": jax.random.normal(key, (4,))}, seeds)
    plateau = optim.plateau_transform(self.optim)
    return jax.vmap(lambda p, k: TrainState.create(apply_fn=_mse, params=p, tx=tx, plateau=plateau, rng=k))(
      params, keys
    )

  def train_epoch(self, state, epoch, *, start_step=0, stop=lambda: False):
    # The order depends on (seed, epoch) only: a resumed run replays it, from any step.
    order = np.stack([np.random.default_rng([s, epoch]).permutation(self.rows) for s in self.config.seeds])
    batches = np.split(order[:, : self.steps * self.config.batch_size], self.steps, axis=1)
    losses = []
    for batch in batches[start_step:]:
      state, loss = _train_step(state, self.x[batch], self.y[batch])
      losses.append(loss)
      if stop():  # e.g. SIGTERM: simjax saves this step's state
        break
    losses = np.asarray(losses).reshape(-1, len(self.config.seeds))  # [steps run, seeds]
    return loop.EpochResult(state, {"loss": losses}, complete=start_step + len(losses) == self.steps)

  def evaluate(self, state):
    dev = jax.vmap(_mse, in_axes=(0, None, None))(state.params, self.x[self.rows :], self.y[self.rows :])
    return [{"mse": float(m)} for m in dev]

  def report(self, state, fit):
    return [{"dev": metrics} for metrics in self.evaluate(state)], {}


# --- docs example ends ---
