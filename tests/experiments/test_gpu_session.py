"""The device session script in smoke mode (CPU, data slices), packed and folded into a repo copy."""

import dataclasses
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tarfile

import pytest

from experiments import reproduce
from tools import fold_gpu_session, gpu_session

REPO = pathlib.Path(__file__).resolve().parents[2]


def _smoke_session(data_dir: pathlib.Path, cifar_data_dir: str, tmp: pathlib.Path):
  """Runs `SIMJAX_SMOKE=1 bash benchmarks/gpu_session.sh`; returns (its $OUT, its console)."""
  tmp.mkdir(parents=True, exist_ok=True)
  if not (data_dir / "cifar10").exists():
    (data_dir / "cifar10").symlink_to(pathlib.Path(cifar_data_dir) / "cifar10")
  env = {
    **os.environ,
    "SIMJAX_SMOKE": "1",
    "PYTHON": sys.executable,
    "OUT": str(tmp / "out"),
    "TFDS_DATA_DIR": str(data_dir),
    "SIMJAX_CACHE_DIR": str(tmp / "cache"),
    "SIMJAX_COMPILATION_CACHE_DIR": str(tmp / "jax_cache"),
  }
  done = subprocess.run(
    ["bash", "benchmarks/gpu_session.sh", f"--work_dir={tmp / 'work'}"],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=900,
  )
  assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
  return tmp / "out", done.stdout


def test_smoke_session_runs_every_step_packs_what_a_device_run_returns_and_folds(
  prepared, cifar_data_dir, tmp_path
):
  # One test, so that the session (about 2 minutes) runs once whichever worker takes it.
  out, console = _smoke_session(pathlib.Path(prepared("stsb")), cifar_data_dir, tmp_path / "session")
  files = sorted(p.name for p in out.iterdir())
  assert files == ["session.json", "session.log", "session.tar.gz"]  # a device returns at most 8 files
  session = json.loads((out / "session.json").read_text())
  assert session["smoke"] and session["name"] == "smoke"
  statuses = {s["step"]: s["status"] for s in session["steps"]}
  assert statuses == dict.fromkeys(["bench", "cnn_seeds", "cnn_resnet", "lstm_seeds", "deterministic"], "ok")
  assert "dropped: none" in console
  results = {s["step"]: s.get("result", {}) for s in session["steps"]}
  # The speed bench: 2 runs of the smoke's cnn_resnet, summarised in session.json.
  bench = results["bench"]
  assert (
    bench["experiment"] == "cnn_resnet" and bench["runs"] == 2 and bench["data"] == "CIFAR-10 (JPEG stand-in)"
  )
  assert bench["command"].startswith("python -m experiments.bench --flagfile=cnn_resnet.flags")
  # The study runs train their seeds the way the benchmark measured faster.
  measured = results["cnn_seeds"]["measured"]
  assert set(measured) == {"one seed", "2 stacked", "2 sequential"}
  assert session["cnn_seeds"] in ("stacked", "sequential")
  with tarfile.open(out / "session.tar.gz") as tar:
    names = tar.getnames()
    run = json.load(tar.extractfile("reports/smoke/runs/cnn_resnet/results.json"))
    report = tar.extractfile("reports/smoke/report.md").read().decode()
    log = tar.extractfile("reports/smoke/logs/cnn_resnet.log").read().decode()
    figure_bytes = {
      f: tar.getmember(f"reports/smoke/{f}").size for f in ("comparison.png", "per_class_accuracy.png")
    }
  # The CIFAR half of reproduce's report (its sentence half: tests/experiments/test_reproduce.py).
  for heading in ("## CIFAR-10 CNNs: test accuracy", "### Per-class test accuracy", "## Figures"):
    assert heading in report
  assert "CIFAR-10 here is the JPEG stand-in" in report
  resnet_row = next(line for line in report.splitlines() if line.startswith("| cnn_resnet | – |"))
  assert "%" in resnet_row.split("|")[3] and "--num_seeds=2" in resnet_row
  for figure, size in figure_bytes.items():
    assert size > 10_000 and f"![{figure}]({figure})" in report
  assert log.startswith("$ python -m experiments.main --flagfile=cnn_resnet.flags")
  assert not [n for n in names if "/checkpoints" in n or "/best" in n]  # checkpoints stay on the device
  # The device's code path: the fused lax.scan epoch, bf16, several seeds.
  assert run["flags"]["epoch_loop"] == "scan" and run["flags"]["dtype"] == "bfloat16"
  assert len(run["per_seed"]) == 2 and run["compile_seconds"] > 0
  assert {"benchmarks/deterministic.json", "logs/cnn_resnet.log"} <= set(names)
  assert {"benchmarks/bench/cnn_resnet.json", "benchmarks/bench/cnn_resnet.md"} <= set(names)
  assert not [n for n in names if "_work_" in n or "jax_cache" in n]  # the bench's workdirs are removed
  _check_fold(out, tmp_path / "repo")


def _check_fold(out: pathlib.Path, tmp_path: pathlib.Path) -> None:
  """The fold writes the report, the benchmarks and the GPU page's results section into a repo copy."""
  (tmp_path / "docs").mkdir(parents=True)
  page = tmp_path / "docs" / "gpu.md"
  shutil.copy(REPO / "docs" / "gpu.md", page)
  before = page.read_text()
  fold = ["-m", "tools.fold_gpu_session", str(out), f"--repo_dir={tmp_path}", f"--results_doc={page}"]
  done = _python(*fold)
  assert done.returncode == 0, done.stderr[-3000:]
  assert (tmp_path / "reports" / "smoke" / "report.md").is_file()
  assert (tmp_path / "reports" / "smoke" / "session.json").is_file()
  assert list((tmp_path / "benchmarks").glob("seeds_cifar10_cpu_*.json"))
  assert list((tmp_path / "benchmarks").glob("deterministic_cpu_*.json"))
  assert {p.name for p in (tmp_path / "benchmarks" / "bench").iterdir()} == {
    "cnn_resnet_cpu_cpu.json",
    "cnn_resnet_cpu_cpu.md",
  }
  text = page.read_text()
  head, section = text.split(fold_gpu_session.BEGIN)
  section, tail = section.split(fold_gpu_session.END)
  assert before.startswith(head) and before.endswith(tail)  # only the section changed
  assert "Smoke run" in section and "CIFAR-10 **(JPEG stand-in)**" in section
  resnet = next(line for line in section.splitlines() if line.startswith("| cnn_resnet | – |"))
  assert "%" in resnet and "--num_seeds=2" in resnet
  assert "| cnn_fc, study | 86 | 96 | 73 | 65 | 77 | 71 | 90 | 84 | 95 | 93 |" in section  # study.json
  assert "| cnn_gap | 87% | not run |" in section  # the smoke run skips the classic structures
  assert "| cnn_resnet, ours |" in section
  # The deterministic run's XLA flags as recorded (here after the tests' own, tests/conftest.py).
  assert re.search(r"`--deterministic` \(`[^`]*--xla_gpu_deterministic_ops=true`\)", section)
  assert "| 2 stacked |" in section
  bench = next(
    line for line in section.splitlines() if line.startswith("| [cnn_resnet](../benchmarks/bench/")
  )
  assert bench.startswith("| [cnn_resnet](../benchmarks/bench/cnn_resnet_cpu_cpu.md) | 2 | ")
  assert "`python -m experiments.bench --flagfile=cnn_resnet.flags" in bench
  # Folding the same session again replaces its section, not appends.
  assert _python(*fold).returncode == 0 and page.read_text() == text


def _python(*args: str) -> subprocess.CompletedProcess:
  env = {**os.environ, "PYTHONPATH": str(REPO)}
  return subprocess.run(
    [sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
  )


def test_bench_step_with_a_missing_flagfile_fails_with_one_clear_line(tmp_path):
  # On a device session the bench's flagfile may be missing: the step fails, its log says why.
  sizes = dataclasses.replace(gpu_session.SMOKE, speed_bench=("--flagfile=not_written_yet.flags", "--runs=2"))
  session = gpu_session.Session(sizes, str(tmp_path / "work"), "smoke")
  log = tmp_path / "bench.log"
  env = {**os.environ, "PYTHONPATH": str(REPO)}
  status, _ = gpu_session.run_command(gpu_session._speed_bench(session), str(log), 120, env)
  assert status == "failed (exit 1)"
  last = log.read_text().splitlines()[-1]
  assert last.startswith("error: flagfile 'not_written_yet.flags' not found") and "cnn_resnet.flags" in last
  assert gpu_session._speed_bench_summary(session) == {"why": "no bench result"}


def test_fold_refuses_a_folder_without_a_session(tmp_path):
  with pytest.raises(fold_gpu_session.FoldError, match="session.tar.gz not found"):
    fold_gpu_session.fold(str(tmp_path), str(tmp_path), str(tmp_path / "gpu.md"))


def test_cnn_seeds_choice_reaches_the_commands():
  resnet = next(e for e in reproduce.EXPERIMENTS if e.name == "cnn_resnet")
  sequential = reproduce.command(resnet, "r", 3, False, [], backend="gpu", cnn_seeds="sequential")
  stacked = reproduce.command(resnet, "r", 3, False, [], backend="cpu", cnn_seeds="stacked")
  assert "--sequential_seeds" in sequential and "--sequential_seeds" not in stacked
  assert "--sequential_seeds" in reproduce.command(resnet, "r", 3, False, [], backend="cpu")  # auto on CPU
  assert "--sequential_seeds" not in reproduce.command(resnet, "r", 3, False, [], backend="gpu")


_COMPILE_TWICE = """
import sys
import jax, jax.numpy as jnp
from simjax import compilation
compilation.enable_persistent_cache(sys.argv[1])
with compilation.CompileClock() as clock:
  jax.jit(lambda x: jnp.sin(x) @ x.T + 1.0)(jnp.ones((64, 64))).block_until_ready()
print(clock.seconds, clock.cache_hits)
"""


def test_persistent_compilation_cache_makes_a_rerun_load_instead_of_compile(tmp_path):
  def run():
    done = _python("-c", _COMPILE_TWICE, str(tmp_path / "cache"))
    assert done.returncode == 0, done.stderr[-2000:]
    seconds, hits = done.stdout.split()
    return float(seconds), int(hits)

  first_seconds, first_hits = run()
  assert first_hits == 0 and first_seconds > 0 and any((tmp_path / "cache").iterdir())
  _, hits = run()
  assert hits >= 1  # the second process loaded the program from the folder
