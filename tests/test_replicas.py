import jax.numpy as jnp
import numpy as np
import pytest

from simjax import errors, replicas


def test_select_takes_each_replica_from_its_own_side():
  new = {"w": jnp.array([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]]), "step": jnp.array([7, 7, 7])}
  old = {"w": jnp.zeros((3, 2)), "step": jnp.array([1, 2, 3])}
  picked = replicas.select(np.array([True, False, True]), new, old)
  np.testing.assert_array_equal(picked["w"], [[1.0, 1.0], [0.0, 0.0], [3.0, 3.0]])
  np.testing.assert_array_equal(picked["step"], [7, 2, 7])
  np.testing.assert_array_equal(replicas.replica(picked, 1)["w"], [0.0, 0.0])


def test_seed_list():
  assert replicas.seed_list(3, 4) == [3, 4, 5, 6]
  with pytest.raises(errors.ConfigError, match="num_seeds must be >= 1") as error:
    replicas.seed_list(0, 0)
  assert error.value.settings == ("num_seeds",)


def test_seeds_of_a_workdir_config_and_a_clear_error_for_pre_stacking_workdirs():
  assert replicas.from_config({"train": {"seed": 2, "num_seeds": 3}}, "w") == [2, 3, 4]
  with pytest.raises(errors.WorkdirError, match="w was trained before simjax stacked seeds"):
    replicas.from_config({"train": {"seed": 2}}, "w")
