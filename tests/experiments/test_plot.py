import json
import os

import pytest
from absl import app, flags
from PIL import Image

from experiments import plot
from simjax import run_records
from simjax.tasks.cifar10.input_pipeline import CLASS_NAMES


def _workdir(path, name, accuracy, seeds=1):
  """A finished CIFAR-10 workdir's two files as the plot reads them (results.json,
  metrics.jsonl). The real runs' files are plotted by the smoke device session's report
  (tests/experiments/test_gpu_session.py) and by reproduce (tests/experiments/test_reproduce.py)."""
  os.makedirs(path)
  per_class = {c: accuracy + 0.01 * i for i, c in enumerate(CLASS_NAMES)}
  results = {
    "test": {"accuracy": accuracy, "per_class_accuracy": per_class},
    "data": {"eval": {"label": "CIFAR-10 (JPEG stand-in)"}},
    "flags": {"experiment": name},
  }
  if seeds > 1:
    results["summary"] = {f"test.per_class_accuracy.{c}": {"std": 0.02} for c in CLASS_NAMES}
  with open(os.path.join(path, run_records.RESULTS_FILE), "w") as f:
    json.dump(results, f)
  with open(os.path.join(path, run_records.METRICS_FILE), "w") as f:
    for epoch in (1, 2, 3):
      row = {"epoch": epoch, "train_loss": 2.0 / epoch, "test_accuracy": accuracy * epoch / 3}
      if seeds > 1:
        row["per_seed"] = {k: [v - 0.01, v + 0.01] for k, v in row.items() if k != "epoch"}
      f.write(json.dumps(row) + "\n")
  return str(path)


def test_comparison_and_per_class_figures(tmp_path):
  workdirs = [_workdir(tmp_path / "fc", "cnn_fc", 0.6), _workdir(tmp_path / "gap", "cnn_gap", 0.7, seeds=2)]
  paths = plot.plot(workdirs, str(tmp_path / "plots"))
  assert [os.path.basename(p) for p in paths] == ["comparison.png", "per_class_accuracy.png"]
  for path in paths:
    with Image.open(path) as image:
      assert image.size[0] > 800 and image.size[1] > 300
  with pytest.raises(ValueError, match="1 names for 2 workdirs"):
    plot.plot(workdirs, str(tmp_path / "plots"), names=["before"])
  assert _main(f"--out={tmp_path / 'named'}", "--names=before,after", *workdirs) == 0
  assert sorted(os.listdir(tmp_path / "named")) == ["comparison.png", "per_class_accuracy.png"]
  assert _main(*workdirs, f"--out={tmp_path / 'flags_last'}") == 0  # flags may follow the workdirs
  assert _main(f"--out={tmp_path / 'one_name'}", "--names=before", *workdirs) == 1
  with pytest.raises(app.UsageError, match="workdirs"):
    _main(f"--out={tmp_path / 'none'}")


def _main(*args: str) -> int:
  """plot.main as `python -m experiments.plot ARGS` calls it: absl has parsed the flags, the
  workdirs are argv[1:]."""
  if "names" not in flags.FLAGS:
    plot.define_flags()
  try:
    return plot.main(flags.FLAGS(["plot", *args]))
  finally:
    flags.FLAGS.unparse_flags()


def test_a_workdir_that_is_not_a_cifar_run_is_refused(tmp_path):
  with pytest.raises(FileNotFoundError, match="results.json not found"):
    plot.plot([str(tmp_path)], str(tmp_path / "plots"))
