"""Several processes, one run: JAX's multi-controller runtime (`jax.distributed`).

Every process runs the same command. Process 0 hosts the coordinator; each process drives
its own (local) devices, and the device mesh (simjax.sharding) spans the devices of all of
them, so a jitted step is one program over every device and the global batch is split over
them all. What each process does:

- data: CIFAR-10's images are read and decoded by each process for its part of a split
  and exchanged (`gather_rows`); sentence pairs are read whole by each. Every process forms
  the same global batches (their order depends only on the seed and epoch) and puts on its
  own devices only their rows (`sharding.shard_batch`): the numbers are those of one process
  with as many devices;
- checkpoints: orbax writes and restores them collectively (every process calls save and
  restore; the workdir must be on a file system every process sees);
- records: only process 0 (`is_primary`) writes config.json, run_info.json, metrics.jsonl,
  results.json, TensorBoard events and holds the workdir lock, and only it prints.

`initialize` must run before anything else uses JAX.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import sys
import threading
from typing import Any, Callable

import jax
import numpy as np
from jax.experimental import multihost_utils

from simjax.errors import DistributedError


def initialize(
  coordinator_address: str | None = None,
  num_processes: int | None = None,
  process_id: int | None = None,
  *,
  timeout_seconds: int = 300,
  on_timeout: Callable[[DistributedError], None] | None = None,
) -> bool:
  """Joins the processes of a multi-process run; returns whether this is one.

  With a coordinator address (host:port of process 0), `num_processes` and `process_id`
  are required. Without one, on a Cloud TPU VM JAX's own cluster detection is asked (it
  reads a pod slice's workers from the VM's metadata or, on GKE, its environment) and the
  run joins the slice's processes; where it finds no slice, and anywhere but on a TPU VM,
  this is a single-process run and nothing is done.

  When the processes have not all joined within `timeout_seconds` (a coordinator that
  cannot be reached, a process that never started), JAX's runtime aborts the whole
  process from C++, which no Python code can catch. So a watchdog thread acts first: it
  calls `on_timeout` with a DistributedError that says what is wrong (by default: that line
  on stderr, then exit status 1). `on_timeout` must end the process.
  """
  if coordinator_address is None:
    if num_processes not in (None, 1) or process_id not in (None, 0):
      raise DistributedError(
        "a process count or id was given without the coordinator's address: give process 0's "
        "host:port as well (every process the same)"
      )
    if not on_tpu_vm():
      return False
    kwargs = {}
  else:
    if num_processes is None or process_id is None:
      raise DistributedError(
        f"coordinator {coordinator_address}: give the number of processes and this process's id as well"
      )
    if num_processes < 1 or not 0 <= process_id < num_processes:
      raise DistributedError(
        f"process id {process_id} of {num_processes} processes: ids run from 0 to {num_processes - 1}"
      )
    kwargs = dict(coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id)
  where = coordinator_address or "the TPU pod slice's coordinator"
  timed_out = DistributedError(
    f"the run's {num_processes or 'TPU'} processes did not all join through {where} within "
    f"{timeout_seconds} s (process {process_id if process_id is not None else '?'}): start every "
    "process with the same command and its own process id, and check that process 0, which "
    "hosts the coordinator, can be reached at that host and port"
  )
  joined = threading.Event()
  watchdog = threading.Thread(
    target=_watch, args=(joined, timeout_seconds, timed_out, on_timeout or _exit_with), daemon=True
  )
  watchdog.start()
  try:
    # JAX's own deadline later than the watchdog's, so the watchdog's clear line comes first.
    jax.distributed.initialize(**kwargs, initialization_timeout=timeout_seconds + 60)
  except Exception as e:  # e.g. an address that does not parse
    if not kwargs and "coordinator_address should be defined" in str(e):
      return False  # a TPU VM where JAX finds no pod slice (e.g. a Colab or single-host TPU)
    raise DistributedError(f"could not join the run's processes through {where}: {_first_line(e)}") from None
  finally:
    joined.set()
  return True


def _watch(joined: threading.Event, seconds: float, error: DistributedError, on_timeout) -> None:
  if not joined.wait(seconds):
    on_timeout(error)


def _exit_with(error: DistributedError) -> None:
  print(f"error: {error}", file=sys.stderr, flush=True)
  os._exit(1)


_GOOGLE_PCI_VENDOR = "0x1ae0"  # TPU chips are attached through PCI under Google's vendor id


def on_tpu_vm() -> bool:
  """A Cloud TPU VM: JAX's TPU runtime (libtpu) is installed and TPU chips are attached (libtpu
  alone can be there to compile for TPUs without one: simjax.deviceless)."""
  if importlib.util.find_spec("libtpu") is None:
    return False
  for vendor in glob.glob("/sys/bus/pci/devices/*/vendor"):
    try:
      with open(vendor, encoding="ascii") as f:
        if f.read().strip() == _GOOGLE_PCI_VENDOR:
          return True
    except OSError:
      continue
  return False


def is_primary() -> bool:
  """Whether this process writes the run's records and prints (process 0). Outside a
  multi-process run, true without starting JAX's backend (a launcher that only writes
  files must not claim an accelerator its child processes need)."""
  return not jax.distributed.is_initialized() or jax.process_index() == 0


def process_count() -> int:
  return jax.process_count() if jax.distributed.is_initialized() else 1


def any_process(flag: bool) -> bool:
  """Whether `flag` is true on any process; every process must call it at the same point."""
  if process_count() == 1:
    return bool(flag)
  return bool(np.any(multihost_utils.process_allgather(np.asarray(flag, np.int32))))


def barrier(name: str) -> None:
  """Waits until every process has reached the barrier called `name` (nothing in one process)."""
  if process_count() > 1:
    multihost_utils.sync_global_devices(name)


def gather_rows(arrays: Any) -> Any:
  """Every process's rows of `arrays` (a pytree of host arrays, first axis = rows, counts
  that may differ by process), concatenated in process order on every process. Every
  process must call it at the same point."""
  if process_count() == 1:
    return arrays
  leaves, treedef = jax.tree_util.tree_flatten(arrays)
  counts = multihost_utils.process_allgather(np.asarray(len(leaves[0]), np.int32))
  most = int(np.max(counts))
  padded = [np.concatenate([x, np.zeros((most - len(x), *x.shape[1:]), x.dtype)]) for x in leaves]
  gathered = multihost_utils.process_allgather(padded)  # [processes, most, ...] per leaf
  return treedef.unflatten(
    [np.concatenate([g[p, :count] for p, count in enumerate(counts)]) for g in map(np.asarray, gathered)]
  )


def _first_line(error: BaseException, limit: int = 160) -> str:
  line = (str(error).strip().splitlines() or [""])[0]
  return f"{line[:limit]}{'...' if len(line) > limit else ''}"
