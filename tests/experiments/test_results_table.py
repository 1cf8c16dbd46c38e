import json
import pathlib
import subprocess
import sys

import pytest
from absl import app

from experiments import results_table

REPO = pathlib.Path(__file__).resolve().parents[2]


def _write(workdir, per_seed_pearsons):
  workdir.mkdir()
  per_seed = [
    {"seed": s, "test": {"pearson": p, "spearman": p - 0.01, "mse": 1.0}, "best_epoch": 3}
    for s, p in enumerate(per_seed_pearsons)
  ]
  results = {
    "flags": {"experiment": "lstm_glove"},
    "data": {"dataset": "stsb"},
    "per_seed": per_seed,
    "epochs": 12,
    "train_seconds": 30.0,
    "seconds_per_step": 0.024,
  }
  (workdir / "results.json").write_text(json.dumps(results))
  return str(workdir)


def test_rows_show_the_study_and_mean_and_std_over_seeds(tmp_path, capsys):
  one = _write(tmp_path / "one", [0.7])
  many = _write(tmp_path / "many", [0.70, 0.72, 0.74])
  assert results_table.main(["results_table", one, many, str(tmp_path / "unfinished")]) == 0
  out, err = capsys.readouterr()
  rows = [line for line in out.splitlines() if line.startswith("| lstm_glove")]
  assert rows[0].startswith("| lstm_glove | stsb | 0.502 | 0.700 | 0.690 | 1.000 | 1 | 3 / 12 | 30 | 24.0 |")
  assert "| 0.720 ± 0.020 | 0.710 ± 0.020 | 1.000 ± 0.000 | 3 | 3, 3, 3 / 12 |" in rows[1]
  assert "unfinished" in err


def test_command_line(tmp_path):
  one = _write(tmp_path / "one", [0.7])
  command = [sys.executable, "-m", "experiments.results_table"]
  done = subprocess.run([*command, one], cwd=REPO, capture_output=True, text=True, timeout=120)
  assert done.returncode == 0 and "`one` |" in done.stdout
  usage = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
  assert usage.returncode == 2 and "python -m experiments.results_table workdirs" in usage.stderr
  with pytest.raises(app.UsageError, match="workdirs"):
    results_table.main(["results_table"])
