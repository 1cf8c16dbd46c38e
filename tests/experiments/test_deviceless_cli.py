"""./run.sh deviceless: its refusals, and the roofline it writes from a run's counts."""

import os
import subprocess
import sys

import pytest

from experiments import deviceless as report
from simjax import deviceless

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _command(*args):
  return subprocess.run(
    [sys.executable, "-m", "experiments.deviceless", *args],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=120,
  )


@pytest.mark.parametrize(
  "args,error",
  [
    (["--runs=cnn_resnett"], "error: unknown run or target cnn_resnett"),
    (["--targets=v5e"], "error: unknown run or target v5e"),
  ],
)
def test_bad_runs_and_targets_are_one_line(args, error, tmp_path):
  done = _command(*args, f"--out={tmp_path / 'r.json'}")
  assert done.returncode != 0 and done.stderr.strip().splitlines()[-1].startswith(error), done.stderr
  assert not (tmp_path / "r.json").exists()


def test_an_existing_report_is_never_overwritten(tmp_path):
  (tmp_path / "r.json").write_text("{}")
  done = _command("--runs=lstm", "--targets=h200", f"--out={tmp_path / 'r.json'}")
  assert done.returncode != 0 and "exists: a finished report is never rewritten" in done.stderr
  assert (tmp_path / "r.json").read_text() == "{}"


def test_the_roofline_is_the_slower_of_compute_and_memory_on_each_target():
  tflop, gb = 1e12, 1e9
  record = {
    "costs": {"dtype": "bfloat16", "epochs": 10, "per_run": {"flops": 500 * tflop}},
    # Bytes after fusion come from the TPU compile; a failed target is left out.
    "targets": {"tpu_v5e": {"bytes_after_fusion_per_epoch": 100 * gb}, "tpu_v6e": {"error": "x"}},
  }
  bounds = report.roofline(record)
  assert bounds["bytes_per_run"] == 1000 * gb
  v5e, h200 = bounds["targets"]["tpu_v5e"], bounds["targets"]["h200"]
  assert v5e["seconds_per_run"] == pytest.approx(max(500 / 197, 1000 / 819))  # 2.54 s compute > 1.22 s memory
  assert v5e["bound"] == "compute" and v5e["measured_seconds_per_run"] is None
  assert h200["seconds_per_run"] == pytest.approx(max(500 / 989, 1000 / 4800)) and h200["bound"] == "compute"
  record["targets"]["tpu_v5e"]["bytes_after_fusion_per_epoch"] = 1000 * gb
  assert report.roofline(record)["targets"]["tpu_v5e"]["bound"] == "memory"
  # float32 at JAX's default precision: TF32 on the GPUs, one bf16 pass on TPUs.
  record["costs"]["dtype"] = "float32"
  f32 = report.roofline(record)["targets"]
  assert f32["a100"]["seconds_per_run"] == pytest.approx(max(500 / 156, 10000 / 2039))
  assert deviceless.ROOFLINE_ONLY["a100"].peak_f32_flops == 156e12
