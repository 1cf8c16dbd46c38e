"""Multi-process runs on JAX's distributed runtime (simjax.distributed), on this machine: 2
processes on localhost, 2 simulated CPU devices each, CPU collectives. They must train like
one process with 4 devices, only process 0 prints and writes records, a run stopped in the
middle resumes when restarted, and a coordinator that never answers is one error line."""

import json
import os
import platform
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _env(devices: int) -> dict[str, str]:
  xla_flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}".strip()
  return {**os.environ, "XLA_FLAGS": xla_flags, "JAX_PLATFORMS": "cpu", "PYTHONPATH": REPO}


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _run_one(*flags: str) -> subprocess.CompletedProcess:
  """`python -m experiments.main FLAGS` in one process with one CPU device."""
  return subprocess.run(
    [sys.executable, "-m", "experiments.main", *flags],
    cwd=REPO,
    env=_env(1),
    capture_output=True,
    text=True,
    timeout=300,
  )


def _start(flags: list[str], workdir, processes: int, tmp_path, tag: str) -> list[subprocess.Popen]:
  """`processes` processes of one run (2 devices each), or one process with 4 devices."""
  if processes == 1:
    commands, env = [[]], _env(4)
  else:
    port = _free_port()
    commands = [
      [f"--coordinator_address=localhost:{port}", f"--num_processes={processes}", f"--process_id={i}"]
      for i in range(processes)
    ]
    env = _env(2)
  return [
    subprocess.Popen(
      [sys.executable, "-m", "experiments.main", *flags, f"--workdir={workdir}", *extra],
      cwd=REPO,
      env=env,
      stdout=open(tmp_path / f"{tag}.{i}.out", "w"),
      stderr=open(tmp_path / f"{tag}.{i}.err", "w"),
    )
    for i, extra in enumerate(commands)
  ]


def _wait(running: list[subprocess.Popen], tmp_path, tag: str) -> list[str]:
  """Each process's stdout; every process must succeed."""
  for i, process in enumerate(running):
    assert process.wait(timeout=300) == 0, (tmp_path / f"{tag}.{i}.err").read_text()[-3000:]
  return [(tmp_path / f"{tag}.{i}.out").read_text() for i in range(len(running))]


def _metrics(workdir) -> list[dict]:
  return [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]


def _assert_same_training(rows: list[dict], reference: list[dict], keys: list[str]) -> None:
  assert [r["epoch"] for r in rows] == [r["epoch"] for r in reference]
  for key in keys:  # the same programs; cross-process sums may add in another order
    # A correlation lies in [-1, 1] and is near 0 early in training, where a relative tolerance
    # would ask for ever more digits (0.1191045 against 0.1191040 is half of rtol 1e-5 already,
    # and the rounding depends on the CPU's summation order): its agreement is absolute.
    correlation = "pearson" in key or "spearman" in key
    tolerance = {"atol": 1e-5, "rtol": 0.0} if correlation else {"rtol": 1e-5}
    np.testing.assert_allclose([r[key] for r in rows], [r[key] for r in reference], err_msg=key, **tolerance)


@pytest.fixture
def similarity_flags(prepared, manual_dir):
  return [
    "--flagfile=lstm.flags",
    f"--data_dir={prepared('stsb')}",
    f"--manual_dir={manual_dir}",
    "--train_split=train[:128]",
    "--eval_split=validation[:32]",
    "--test_split=test[:32]",
    "--hidden_size=8",
    "--embedding_dim=8",
    "--mlp_hidden=8",
    "--max_length=8",  # one length bucket: half the programs to compile
    "--batch_size=32",
    "--epochs=4",
  ]


def test_two_processes_train_sentences_like_one_with_4_devices_and_a_stopped_run_resumes(
  similarity_flags, tmp_path
):
  one, two = tmp_path / "one_process", tmp_path / "two_processes"
  reference = _start(similarity_flags, one, 1, tmp_path, "one")
  # A scheduler's SIGTERM reaches process 1 alone once epoch 1 is saved: the processes agree to
  # stop at the end of the epoch in progress, save it and exit; the same command resumes.
  first = _start(similarity_flags, two, 2, tmp_path, "two")
  deadline = time.monotonic() + 300
  while not (two / "metrics.jsonl").exists() or not (two / "metrics.jsonl").read_text():
    assert time.monotonic() < deadline and all(p.poll() is None for p in first), "no epoch was saved"
    time.sleep(0.05)
  first[1].send_signal(signal.SIGTERM)
  assert [process.wait(timeout=300) for process in first] == [143, 143]
  stopped = [(tmp_path / f"two.{i}.err").read_text().strip().splitlines()[-1] for i in (0, 1)]
  assert stopped[1].startswith("stopped (SIGTERM) after epoch ") and stopped[1].endswith(
    "rerun the same command to resume from there"
  )
  assert stopped[0].startswith("stopped (a stop request of another process) after epoch ")
  saved = len(_metrics(two))
  assert 1 <= saved < 4 and not (two / "results.json").exists()
  outputs = _wait(_start(similarity_flags, two, 2, tmp_path, "again"), tmp_path, "again")
  _wait(reference, tmp_path, "one")

  _assert_same_training(_metrics(two), _metrics(one), ["train_mse", "dev_mse", "dev_pearson"])
  results = {name: json.load(open(d / "results.json")) for name, d in (("one", one), ("two", two))}
  np.testing.assert_allclose(results["two"]["test"]["pearson"], results["one"]["test"]["pearson"], rtol=1e-5)
  assert results["two"]["device"]["processes"] == 2 and results["two"]["device"]["count"] == 4
  # Only process 0 prints: its epoch table (epochs 1-4, the first replayed from the checkpoint).
  assert "Results (best dev epoch" in outputs[0] and outputs[1] == ""
  # Evaluated from the workdir by 2 processes as well: the numbers training reported.
  evaluation = [
    "--mode=eval",
    *similarity_flags[1:3],
    "--eval_split=validation[:32]",
    "--test_split=test[:32]",
  ]
  _wait(_start(evaluation, two, 2, tmp_path, "eval"), tmp_path, "eval")
  evaluated = json.load(open(two / "eval.json"))
  for split in ("dev", "test"):
    np.testing.assert_allclose(evaluated[split]["pearson"], results["two"][split]["pearson"], rtol=1e-5)


def test_two_processes_train_cifar10_like_one_with_4_devices(cifar_data_dir, tmp_path):
  flags = [
    "--flagfile=cnn_resnet.flags",
    f"--data_dir={cifar_data_dir}",
    f"--cache_dir={tmp_path / 'cache'}",
    "--train_split=train[:256]",
    "--eval_split=test[:63]",  # parts of 32 and 31 images
    "--width=4",
    "--epochs=2",
    "--batch_size=32",
  ]
  one, two = tmp_path / "one_process", tmp_path / "two_processes"
  _wait(_start(flags, one, 1, tmp_path, "one"), tmp_path, "one")
  outputs = _wait(_start(flags, two, 2, tmp_path, "two"), tmp_path, "two")
  _assert_same_training(_metrics(two), _metrics(one), ["train_loss", "test_accuracy"])
  # Each process decoded only its part of each split (its decoded-image cache shows it).
  for split, rows in (("train_-256", (128, 128)), ("test_-63", (32, 31))):
    for process in (0, 1):
      (cache,) = (tmp_path / "cache").glob(f"cifar10-*-{split}_-shard{process}of2.npz")
      assert len(np.load(cache)["labels"]) == rows[process]
  results = {name: json.load(open(d / "results.json")) for name, d in (("one", one), ("two", two))}
  assert results["two"]["test"]["accuracy"] == results["one"]["test"]["accuracy"]
  assert "accuracy (test[:63], last epoch)" in outputs[0] and outputs[1] == ""
  # Records are process 0's alone: one lock-free workdir, no file written twice or left behind.
  assert sorted(os.listdir(two)) == sorted(os.listdir(one))
  # Trained by 2 processes on 4 devices, evaluated by one process on one device.
  evaluated = _run_one("--mode=eval", f"--workdir={two}", *flags[1:3], "--eval_split=test[:63]")
  assert evaluated.returncode == 0, evaluated.stderr
  accuracy = json.load(open(two / "eval.json"))["test"]["accuracy"]
  assert abs(accuracy - results["two"]["test"]["accuracy"]) <= 2 / 63  # argmax ties may flip


def test_a_coordinator_that_never_answers_is_one_error_line_not_a_hang(tmp_path):
  port = _free_port()  # nobody listens there
  started = time.monotonic()
  done = _run_one(
    "--flagfile=cnn_gap.flags",
    f"--workdir={tmp_path / 'run'}",
    f"--coordinator_address=localhost:{port}",
    "--num_processes=2",
    "--process_id=1",
    "--distributed_timeout=3",
  )
  assert done.returncode == 1 and time.monotonic() - started < 60
  assert done.stderr.strip().splitlines()[-1] == (
    f"error: the run's 2 processes did not all join through localhost:{port} within 3 s (process 1): "
    "start every process with the same command and its own process id, and check that process 0, "
    "which hosts the coordinator, can be reached at that host and port "
    "(flags: --coordinator_address (or JAX_COORDINATOR_ADDRESS), --num_processes (or JAX_NUM_PROCESSES), "
    "--process_id (or JAX_PROCESS_ID))"
  )
  assert not (tmp_path / "run").exists()


def test_process_flags_without_a_coordinator_are_refused():
  done = _run_one("--flagfile=cnn_gap.flags", "--num_processes=2", "--process_id=1")
  assert done.returncode == 1
  assert done.stderr.strip() == (
    "error: a process count or id was given without the coordinator's address: give process 0's "
    "host:port as well (every process the same) (flags: --coordinator_address (or JAX_COORDINATOR_ADDRESS), "
    "--num_processes (or JAX_NUM_PROCESSES), --process_id (or JAX_PROCESS_ID))"
  )


def test_a_workdir_another_run_holds_stops_every_process_at_once(similarity_flags, tmp_path):
  workdir = tmp_path / "taken"
  workdir.mkdir()
  holder = {
    "pid": os.getpid(),
    "host": platform.node(),
    "started": "2026-11-30T00:00:00",
    "command": "pytest",
  }
  (workdir / ".lock").write_text(json.dumps(holder))  # this test's own process: alive
  started = time.monotonic()
  running = _start(similarity_flags, workdir, 2, tmp_path, "taken")
  assert [process.wait(timeout=120) for process in running] == [1, 1]
  assert time.monotonic() - started < 90  # not JAX's heartbeat timeout
  errors = [(tmp_path / f"taken.{i}.err").read_text().strip().splitlines()[-1] for i in (0, 1)]
  assert errors[0].startswith(
    f"error: workdir {workdir} is in use by process {os.getpid()} on {platform.node()}"
  )
  assert errors[1].startswith(
    f"error: process 0 could not take the lock of {workdir} (its own error line says why)"
  )
  assert json.loads((workdir / ".lock").read_text()) == holder  # left as it was
