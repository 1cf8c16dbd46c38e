"""simjax.distributed in one process (tests/test_multi_process.py runs several)."""

import os
import subprocess
import sys

import numpy as np
import pytest

from simjax import distributed
from simjax.errors import DistributedError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_one_process_is_not_a_distributed_run_and_is_its_own_primary():
  assert distributed.initialize() is False
  assert distributed.is_primary() and distributed.process_count() == 1
  assert distributed.any_process(True) and not distributed.any_process(False)
  rows = (np.arange(6).reshape(3, 2), np.arange(3))
  assert distributed.gather_rows(rows) is rows


@pytest.mark.parametrize(
  "args, message",
  [
    ((None, 2, 1), "a process count or id was given without the coordinator's address"),
    (("localhost:1234", None, 0), "give the number of processes and this process's id as well"),
    (("localhost:1234", 2, 2), "process id 2 of 2 processes: ids run from 0 to 1"),
  ],
)
def test_inconsistent_process_settings_are_refused_before_joining(args, message):
  with pytest.raises(DistributedError, match=message):
    distributed.initialize(*args)


def test_writing_records_outside_a_multi_process_run_does_not_start_jax(tmp_path):
  """A launcher (reproduce, the device session) writes JSON records while its child processes
  train: it must not start JAX's backend, which on a GPU would claim most of its memory."""
  script = (
    "import sys\n"
    "from jax._src import xla_bridge\n"
    "from simjax import run_records\n"
    "run_records.write_json(sys.argv[1], {'a': 1})\n"
    "print(xla_bridge.backends_are_initialized())\n"
  )
  done = subprocess.run(
    [sys.executable, "-c", script, str(tmp_path / "x.json")],
    cwd=REPO,
    capture_output=True,
    text=True,
    env={**os.environ, "PYTHONPATH": REPO},
    timeout=120,
  )
  assert done.returncode == 0, done.stderr
  assert done.stdout.strip() == "False" and (tmp_path / "x.json").read_text().strip() == '{\n  "a": 1\n}'


@pytest.mark.parametrize(
  "detection, joined",
  [
    (None, True),  # a pod slice's worker: JAX found the slice and joined its processes
    (ValueError("coordinator_address should be defined."), False),  # a TPU VM alone (e.g. Colab)
    (ConnectionError("metadata server unreachable"), DistributedError),  # never a silent lone run
  ],
)
def test_on_a_tpu_vm_jax_is_asked_for_a_pod_slice_and_none_means_one_process(monkeypatch, detection, joined):
  calls = []

  def initialize(**kwargs):
    calls.append(kwargs)
    if detection is not None:
      raise detection

  monkeypatch.setattr(distributed, "on_tpu_vm", lambda: True)
  monkeypatch.setattr(distributed.jax.distributed, "initialize", initialize)
  if joined is DistributedError:
    with pytest.raises(DistributedError, match="metadata server unreachable"):
      distributed.initialize(timeout_seconds=5)
  else:
    assert distributed.initialize(timeout_seconds=5) is joined
  (call,) = calls  # JAX's own cluster detection: no address, count or id given
  assert not {"coordinator_address", "num_processes", "process_id"} & set(call)
