import os

import pytest
from absl import app, flags
from PIL import Image

from experiments import plot
from simjax import optim
from simjax.tasks.cifar10 import task as train
from simjax.tasks.cifar10.models import ModelConfig


def test_comparison_and_per_class_figures_from_real_runs(cifar_data_dir, tmp_path):
  data = train.DataConfig(
    data_dir=cifar_data_dir, cache_dir=None, train_split="train[:128]", eval_split="test[:64]"
  )
  workdirs = []
  for head in ("fc", "gap"):
    workdir = str(tmp_path / f"cnn_{head}")
    train.train_and_evaluate(
      ModelConfig(architecture="cnn", head=head, width=4, fc_units=(8,)),
      data,
      optim.OptimConfig(optimizer="nesterov", learning_rate=0.01),
      train.TrainConfig(epochs=2, batch_size=32),
      workdir,
    )
    workdirs.append(workdir)
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
