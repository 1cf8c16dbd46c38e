import jax.numpy as jnp
import numpy as np
import pytest

from simjax.checkpoints import CheckpointStore, ConfigMismatchError


def test_config_guard_names_each_differing_setting(tmp_path):
  store = CheckpointStore(str(tmp_path))
  store.guard_config({"model": {"hidden_size": 8, "cell": "lstm"}, "train": {"seed": 0}})
  store.save(1, {"w": jnp.ones(2)}, {"epoch": 1}, best_state={"w": jnp.ones(2)})
  store.guard_config({"model": {"hidden_size": 8, "cell": "lstm"}, "train": {"seed": 0}})  # same: fine
  with pytest.raises(ConfigMismatchError) as error:
    store.guard_config({"model": {"hidden_size": 16, "cell": "gru"}, "train": {"seed": 0}})
  assert "model.cell='lstm' there, 'gru' now" in str(error.value)
  assert "model.hidden_size=8 there, 16 now" in str(error.value)
  assert "train.seed" not in str(error.value)
  store.close()


def test_a_workdir_without_checkpoints_takes_a_new_config_when_asked(tmp_path):
  store = CheckpointStore(str(tmp_path))
  store.guard_config({"lr": 1.0})
  store.guard_config({"lr": 0.1}, replace=True)  # nothing was trained with lr 1.0
  store.guard_config({"lr": 0.1})
  store.close()


def test_latest_and_best_round_trip_and_a_repeated_best_step_is_replaced(tmp_path):
  store = CheckpointStore(str(tmp_path), keep=2)
  for step in (1, 2, 3):
    tree = {"w": jnp.full(2, step, jnp.float32)}
    store.save(step, tree, {"epoch": step}, best_state=tree if step == 2 else None)
  # A run killed after saving `best` for step 4 but before `latest` redoes step 4.
  store.save(4, {"w": jnp.full(2, 4.0)}, {"epoch": 4}, best_state={"w": jnp.full(2, 4.0)})
  store.save(4, {"w": jnp.full(2, 4.5)}, {"epoch": 4}, best_state={"w": jnp.full(2, -1.0)})
  abstract = {"w": jnp.zeros(2, jnp.float32)}
  state, meta = store.restore_latest(abstract)
  np.testing.assert_array_equal(state["w"], [4.5, 4.5])
  assert meta == {"epoch": 4} and store.best_step() == 4
  np.testing.assert_array_equal(store.restore_best(abstract)[0]["w"], [-1.0, -1.0])  # its own tree
  store.close()
