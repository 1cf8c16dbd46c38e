"""The example task of docs/adding_a_task.md, kept word for word: tests/test_run.py checks
that the page shows this file and trains it through simjax.run."""

# --- docs example begins ---
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from simjax import loop, optim, replicas
from simjax.run_config import RunConfig
from simjax.tasks.base import Prepared, Task
from simjax.train_state import TrainState


def _mse(params, x, y):  # params {"w": [4]}, x [batch, 4], y [batch]
  return jnp.mean((x @ params["w"] - y) ** 2)


@jax.jit
@jax.vmap  # every replica (seed) steps on its own batch
def _train_step(state, x, y):
  loss, grads = jax.value_and_grad(_mse)(state.params, x, y)
  return state.apply_gradients(grads), {"loss": loss}


@dataclasses.dataclass(frozen=True)
class LinearData(Prepared):
  """One run's data (rows [0, rows) train, [rows, 2 rows) dev), settings and steps per epoch."""

  x: np.ndarray
  y: np.ndarray
  config: RunConfig
  steps: int


class LinearTask(Task):
  """Fits y = x·w to synthetic data; dev MSE picks each seed's best epoch."""

  selection = loop.Selection(best_metric="mse", higher_is_better=False, plateau_metric="mse")

  def __init__(self, optim_config: optim.OptimConfig, rows: int = 64):
    self.optim, self.rows = optim_config, rows

  def prepare(self, workdir, config, *, resuming):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2 * self.rows, 4)).astype(np.float32)
    y = x @ np.arange(1, 5, dtype=np.float32) + rng.normal(size=2 * self.rows).astype(np.float32)
    return LinearData(info={"rows": self.rows}, x=x, y=y, config=config, steps=self.rows // config.batch_size)

  def run_config(self, prepared=None):
    return {"data": {"rows": self.rows}, "optim": dataclasses.asdict(self.optim)}

  def create_train_state(self, seeds, prepared=None):
    steps, epochs = (prepared.steps, prepared.config.epochs) if prepared else (1, 1)
    tx = optim.make_optimizer(self.optim, steps, steps * epochs)
    params, keys = replicas.init_replicas(lambda key: {"w": jax.random.normal(key, (4,))}, seeds)
    plateau = optim.plateau_transform(self.optim)
    return jax.vmap(lambda p, k: TrainState.create(apply_fn=_mse, params=p, tx=tx, plateau=plateau, rng=k))(
      params, keys
    )

  def epoch_plan(self, data, epoch):
    # The order depends on (seed, epoch) only: a resumed run replays it, from any step.
    order = np.stack([np.random.default_rng([s, epoch]).permutation(self.rows) for s in data.config.seeds])
    batches = np.split(order[:, : data.steps * data.config.batch_size], data.steps, axis=1)

    def step(state, rows):
      return _train_step(state, data.x[rows], data.y[rows])

    return loop.EpochPlan(steps=data.steps, batches=batches, step=step)

  def evaluate(self, data, state):
    dev = jax.vmap(_mse, in_axes=(0, None, None))(state.params, data.x[self.rows :], data.y[self.rows :])
    return [{"mse": float(m)} for m in dev]

  def report(self, data, state, fit):
    return [{"dev": metrics} for metrics in self.evaluate(data, state)], {}


# --- docs example ends ---
