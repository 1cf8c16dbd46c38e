import numpy as np
import pytest

from simjax import summary


def test_combine_summarizes_every_number_and_keeps_what_all_seeds_share():
  per_seed = [
    {"seed": 3, "test": {"pearson": 0.70, "per_class": {"cat": 0.5}}, "best_epoch": 4, "label": "x"},
    {"seed": 4, "test": {"pearson": 0.74, "per_class": {"cat": 0.7}}, "best_epoch": 4, "label": "x"},
    {"seed": 5, "test": {"pearson": 0.75, "per_class": {"cat": 0.6}}, "best_epoch": 6, "label": "x"},
  ]
  combined = summary.combine(per_seed)
  assert combined["seeds"] == [3, 4, 5] and combined["per_seed"] == per_seed
  pearsons = [0.70, 0.74, 0.75]
  assert combined["test"]["pearson"] == pytest.approx(np.mean(pearsons))
  assert combined["label"] == "x"
  pearson = combined["summary"]["test.pearson"]
  assert pearson == pytest.approx(
    {"mean": np.mean(pearsons), "std": np.std(pearsons, ddof=1), "min": 0.70, "max": 0.75, "n": 3}
  )
  assert combined["summary"]["test.per_class.cat"]["mean"] == pytest.approx(0.6)
  assert combined["summary"]["best_epoch"]["max"] == 6
  assert "seed" not in combined["summary"]


def test_one_seed_reads_like_its_own_results():
  result = {"seed": 0, "test": {"accuracy": 0.5, "confusion_matrix": [[1, 2], [3, 4]]}, "best_epoch": 2}
  combined = summary.combine([result])
  assert combined["test"] == result["test"] and combined["best_epoch"] == 2
  assert combined["summary"]["test.accuracy"] == {"mean": 0.5, "std": 0.0, "min": 0.5, "max": 0.5, "n": 1}
  assert summary.mean_std_text([0.5]) == "0.500"
  assert summary.mean_std_text([0.5, 0.7]) == "0.600 ± 0.141"
