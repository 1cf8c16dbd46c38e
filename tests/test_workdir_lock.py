"""The workdir lock: one writing process per workdir; stale locks taken over, foreign ones not."""

import errno
import json
import logging
import os
import platform
import subprocess
import sys
import time

import pytest

from experiments import cli_flags
from tests.example_task import LinearTask
from simjax import errors, optim, run, workdir_lock

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SGD = optim.OptimConfig(optimizer="sgd", learning_rate=0.02)

_HOLD = """
import sys, time
from simjax import workdir_lock
with workdir_lock.hold(sys.argv[1]):
  print("held", flush=True)
  time.sleep(60)
"""


def _train(workdir, **config):
  settings = dict(epochs=2, batch_size=16)
  return run.train_and_evaluate(LinearTask(SGD), run.RunConfig(**{**settings, **config}), str(workdir))


def _write_lock(workdir, **holder):
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, workdir_lock.LOCK_FILE), "w") as f:
    json.dump(holder, f)


def _gone_pid() -> int:
  """The pid of a process that has ended."""
  done = subprocess.run(
    [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
  )
  return int(done.stdout)


def test_a_second_process_is_refused_at_once_naming_the_holder_and_the_workdir_is_untouched(tmp_path):
  workdir = tmp_path / "run"
  holder = subprocess.Popen(
    [sys.executable, "-c", _HOLD, str(workdir)],
    cwd=REPO,
    env={**os.environ, "PYTHONPATH": REPO},
    stdout=subprocess.PIPE,
    text=True,
  )
  try:
    assert holder.stdout.readline().strip() == "held"
    started = time.perf_counter()
    with pytest.raises(
      errors.WorkdirLocked, match=f"in use by process {holder.pid} on {platform.node()}"
    ) as e:
      _train(workdir)
    assert time.perf_counter() - started < 5  # refused before any work
    assert os.listdir(workdir) == [workdir_lock.LOCK_FILE]  # nothing written
    line = cli_flags.error_line(e.value)
    assert line.endswith("wait for that run to end, or use another --workdir") and "\n" not in line
    with pytest.raises(errors.WorkdirLocked):  # evaluation writes eval.json: locked out too
      run.evaluate_trained(str(workdir), lambda w: None, 16)
  finally:
    holder.kill()
    holder.wait()
  # Its process killed, the lock is stale: the next run takes it over and trains.
  results = _train(workdir)
  assert results["per_seed"][0]["dev"]["mse"] >= 0
  assert workdir_lock.LOCK_FILE not in os.listdir(workdir)  # released at the end


def test_a_stale_lock_is_taken_over_with_a_warning(tmp_path, caplog):
  workdir = tmp_path / "run"
  _write_lock(workdir, pid=_gone_pid(), host=platform.node(), started="2026-01-01T00:00:00+00:00")
  with caplog.at_level(logging.WARNING, logger="simjax"):
    _train(workdir)
  assert "took over the stale lock" in caplog.text and "2026-01-01T00:00:00+00:00" in caplog.text
  assert workdir_lock.LOCK_FILE not in os.listdir(workdir)


def test_a_lock_from_another_host_is_never_taken_over(tmp_path):
  workdir = tmp_path / "run"
  _write_lock(workdir, pid=1, host="elsewhere-" + platform.node(), started="2026-01-01T00:00:00+00:00")
  with pytest.raises(errors.WorkdirLocked, match="delete .*\\.lock once that run is over"):
    _train(workdir)
  assert os.path.exists(os.path.join(workdir, workdir_lock.LOCK_FILE))  # still theirs


class Failing(LinearTask):
  def epoch_plan(self, data, epoch):
    raise errors.DataError("an unreadable batch")


def test_the_lock_is_released_when_a_run_fails(tmp_path):
  workdir = tmp_path / "run"
  with pytest.raises(errors.DataError):
    run.train_and_evaluate(Failing(SGD), run.RunConfig(epochs=2, batch_size=16), str(workdir))
  assert workdir_lock.LOCK_FILE not in os.listdir(workdir)
  _train(workdir)  # free again


class Evaluable(LinearTask):
  def evaluate_trained(self, state, batch_size):
    data = self.prepare("", run.RunConfig(epochs=2, batch_size=16), resuming=True)
    return [{"dev": metrics} for metrics in self.evaluate(data, state)], {}


def _load(workdir):
  return run.load_trained(workdir, lambda config, _: Evaluable(SGD))


def test_a_read_only_workdir_is_evaluated_without_a_lock_and_says_eval_json_is_not_written(
  tmp_path, monkeypatch, caplog
):
  workdir = tmp_path / "run"
  _train(workdir, num_seeds=2)
  writable, _ = run.evaluate_trained(str(workdir), _load, 16)
  os.remove(workdir / run.EVAL_FILE)
  # A read-only file system (a mount, or a copy without write permission): every attempt to
  # create or write a file there fails. Faked, since this test may run as root.
  real_open = os.open

  def read_only_open(path, flags, *args, **kwargs):
    if str(path).startswith(str(workdir)) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
      raise OSError(errno.EROFS, "Read-only file system", str(path))
    return real_open(path, flags, *args, **kwargs)

  monkeypatch.setattr(os, "open", read_only_open)
  with caplog.at_level(logging.WARNING, logger="simjax"):
    results, _ = run.evaluate_trained(str(workdir), _load, 16)
  assert results["per_seed"] == writable["per_seed"]  # the numbers, for the caller to print
  assert (
    f"{workdir} is read-only (Read-only file system): used without a lock, and nothing is written there"
    in (caplog.text)
  )
  assert sorted(os.listdir(workdir)) == sorted(
    set(os.listdir(workdir)) - {run.EVAL_FILE, workdir_lock.LOCK_FILE}
  )
  assert not (workdir / run.EVAL_FILE).exists()
  with pytest.raises(OSError, match="Read-only file system"):  # training needs to write: one clear error
    _train(workdir, num_seeds=2)
