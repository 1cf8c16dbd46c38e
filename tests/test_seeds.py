import jax.numpy as jnp
import numpy as np
import pytest

from simjax import seeds


def test_combine_summarizes_every_number_and_keeps_what_all_seeds_share():
  per_seed = [
    {"seed": 3, "test": {"pearson": 0.70, "per_class": {"cat": 0.5}}, "best_epoch": 4, "label": "x"},
    {"seed": 4, "test": {"pearson": 0.74, "per_class": {"cat": 0.7}}, "best_epoch": 4, "label": "x"},
    {"seed": 5, "test": {"pearson": 0.75, "per_class": {"cat": 0.6}}, "best_epoch": 6, "label": "x"},
  ]
  combined = seeds.combine(per_seed)
  assert combined["seeds"] == [3, 4, 5] and combined["per_seed"] == per_seed
  pearsons = [0.70, 0.74, 0.75]
  assert combined["test"]["pearson"] == pytest.approx(np.mean(pearsons))
  assert combined["label"] == "x"
  summary = combined["summary"]["test.pearson"]
  assert summary == pytest.approx(
    {"mean": np.mean(pearsons), "std": np.std(pearsons, ddof=1), "min": 0.70, "max": 0.75, "n": 3}
  )
  assert combined["summary"]["test.per_class.cat"]["mean"] == pytest.approx(0.6)
  assert combined["summary"]["best_epoch"]["max"] == 6
  assert "seed" not in combined["summary"]


def test_one_seed_reads_like_its_own_results():
  result = {"seed": 0, "test": {"accuracy": 0.5, "confusion_matrix": [[1, 2], [3, 4]]}, "best_epoch": 2}
  combined = seeds.combine([result])
  assert combined["test"] == result["test"] and combined["best_epoch"] == 2
  assert combined["summary"]["test.accuracy"] == {"mean": 0.5, "std": 0.0, "min": 0.5, "max": 0.5, "n": 1}
  assert seeds.mean_std_text([0.5]) == "0.500"
  assert seeds.mean_std_text([0.5, 0.7]) == "0.600 ± 0.141"


def test_select_takes_each_replica_from_its_own_side():
  new = {"w": jnp.array([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]]), "step": jnp.array([7, 7, 7])}
  old = {"w": jnp.zeros((3, 2)), "step": jnp.array([1, 2, 3])}
  picked = seeds.select(np.array([True, False, True]), new, old)
  np.testing.assert_array_equal(picked["w"], [[1.0, 1.0], [0.0, 0.0], [3.0, 3.0]])
  np.testing.assert_array_equal(picked["step"], [7, 2, 7])
  np.testing.assert_array_equal(seeds.replica(picked, 1)["w"], [0.0, 0.0])


def test_seed_list_and_out_of_memory_advice():
  assert seeds.seed_list(3, 4) == [3, 4, 5, 6]
  with pytest.raises(ValueError, match="num_seeds must be >= 1"):
    seeds.seed_list(0, 0)
  error = RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 80.00GiB.")
  assert seeds.is_resource_exhausted(error)
  message = str(seeds.out_of_memory_error(64, error))
  assert "64 stacked replicas do not fit" in message and "--sequential_seeds" in message


def test_seeds_of_a_workdir_config_and_a_clear_error_for_pre_stacking_workdirs():
  assert seeds.from_config({"train": {"seed": 2, "num_seeds": 3}}, "w") == [2, 3, 4]
  with pytest.raises(ValueError, match="w was trained before simjax stacked seeds"):
    seeds.from_config({"train": {"seed": 2}}, "w")
