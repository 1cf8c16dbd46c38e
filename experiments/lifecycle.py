"""The process around a run: distributed start-up, XLA settings applied before JAX starts,
SIGTERM / Ctrl-C handling (a stop saves the step in progress), child processes, and
`run_mode`, which turns failures into one line and an exit status."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Callable

from experiments.cli_flags import FLAGS, error_line, int_from_env
from simjax import compilation, distributed, errors, loop


def initialize_distributed() -> None:
  """--coordinator_address etc. (or a TPU pod slice): joins the run's processes before JAX is
  used; every process but 0 then prints nothing (its errors still reach stderr)."""
  for name, flag, lowest in (("JAX_NUM_PROCESSES", "num_processes", 1), ("JAX_PROCESS_ID", "process_id", 0)):
    value = os.environ.get(name)
    if value is not None and not FLAGS[flag].present and int_from_env(name, lowest) is None:
      raise errors.DistributedError(f"${name}={value!r} is not a whole number >= {lowest}")
  distributed.initialize(
    FLAGS.coordinator_address,
    FLAGS.num_processes,
    FLAGS.process_id,
    timeout_seconds=FLAGS.distributed_timeout,
    on_timeout=lambda e: _exit_at_once(f"error: {error_line(e)}", 1),
  )
  # jax.distributed installs a SIGTERM handler of its own (its preemption notifier), which would
  # end the process without the checkpoint: the run's handler takes SIGTERM back.
  signal.signal(signal.SIGTERM, _on_stop_signal)
  if not distributed.is_primary():  # at the file descriptor: C++ libraries (gloo) print there too
    sys.stdout.flush()
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def apply_compilation_cache() -> None:
  """--compilation_cache_dir: before the first computation, like apply_determinism."""
  if FLAGS.compilation_cache_dir:
    compilation.enable_persistent_cache(FLAGS.compilation_cache_dir)


def apply_determinism() -> None:
  """--deterministic: must run before JAX initialises its backend (the first computation)."""
  if FLAGS.deterministic:
    xla_flags = os.environ.get("XLA_FLAGS", "")
    if "--xla_gpu_deterministic_ops" not in xla_flags:
      os.environ["XLA_FLAGS"] = f"{xla_flags} --xla_gpu_deterministic_ops=true".strip()


def stop_process(process: subprocess.Popen, sig: int, wait: float, *, group: bool = False) -> None:
  """Sends `sig` to a child (to its whole process group with `group`) and waits up to `wait`
  seconds for it to end; then SIGKILL and up to 30 seconds more."""
  stop_processes([process], sig, wait, group=group)


def stop_processes(processes: list[subprocess.Popen], sig: int, wait: float, *, group: bool = False) -> None:
  """stop_process for several children at once: each gets `sig` once, then all share the wait
  (a run counts the same signal again, seconds later, as a second request: stop at once)."""
  for signal_, timeout in ((sig, wait), (signal.SIGKILL, 30)):
    alive = [p for p in processes if p.poll() is None]
    for process in alive:
      try:
        if group:
          os.killpg(process.pid, signal_)
        else:
          process.send_signal(signal_)
      except ProcessLookupError:
        pass
    deadline = time.monotonic() + timeout
    for process in alive:
      try:
        process.wait(timeout=max(0.0, deadline - time.monotonic()))
      except subprocess.TimeoutExpired:
        pass


class Terminated(KeyboardInterrupt):
  """SIGTERM (what Colab, spot VMs and job schedulers send before they stop a process),
  raised in the main thread like Ctrl-C."""


# Set by the first SIGTERM or Ctrl-C while a training loop runs (it saves, then stops).
STOP = loop.StopRequest()


_EXIT_STATUS = {"SIGTERM": 143, "SIGINT": 130}


# A scheduler may signal every process of a job (and reproduce passes its signal on to its
# run): the same signal again this soon is that one signal, not a second request.
_REPEAT_SECONDS = 2.0


_first_request: dict[str, float] = {}


def _on_stop_signal(signum, frame) -> None:
  """SIGTERM or Ctrl-C: while training, the first asks for a stop after the step in progress,
  with a checkpoint of it; elsewhere (or a second signal) stops at once."""
  name = signal.Signals(signum).name
  if STOP.requested and name == STOP.reason and time.monotonic() - _first_request[name] < _REPEAT_SECONDS:
    return
  if STOP.requested and STOP.honoured and not _first_request:
    # Already stopping, on another process's request (a multi-process run agreed on it): this
    # process's own first signal asks for what is under way; a second one stops at once.
    _first_request[name] = time.monotonic()
    STOP.reason = name
    return
  if STOP.honoured and not STOP.requested:
    STOP.request(name)
    _first_request[name] = time.monotonic()
    print(
      f"\n{name}: stopping after the "
      + (
        "step in progress"
        if distributed.process_count() == 1
        else "epoch in progress (the processes agree there)"
      )
      + ", with a checkpoint of it "
      f"(send {'Ctrl-C' if name == 'SIGINT' else name} again to stop at once, losing the steps since the last checkpoint)",
      file=sys.stderr,
      flush=True,
    )
    return
  raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def run_mode(fn: Callable[[], None], *, trains: bool = True) -> None:
  """Runs `fn`; expected failures become one line on stderr and exit status 1; Ctrl-C and
  SIGTERM stop it with one line (exit status 130 and 143), a training run after saving
  the step in progress (see _on_stop_signal). `trains`: whether `fn` trains (a command that
  only reads a workdir and writes its record at the end loses nothing but the time)."""
  handlers = {sig: signal.signal(sig, _on_stop_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
  try:
    fn()
  except errors.Preempted as e:
    _exit_at_once(f"\n{e}; rerun the same command to resume from there", _EXIT_STATUS.get(e.reason, 143))
  except (errors.SimjaxError, ValueError, OSError, MemoryError) as e:
    if os.environ.get("SIMJAX_TRACEBACK"):  # for debugging: the full stack instead of one line
      raise
    _exit_at_once(f"error: {error_line(e)}", 1)
  except KeyboardInterrupt as e:
    terminated = isinstance(e, Terminated)
    stopped = "terminated (SIGTERM)" if terminated else "interrupted"
    lost = (
      f"{stopped}: the steps since the last checkpoint are lost; rerun the same command to resume "
      "from the last checkpoint"
      if trains
      else f"{stopped}: nothing was written; rerun the same command"
    )
    # str(e): the raiser's own account (e.g. reproduce's: its run saved and stopped).
    _exit_at_once(f"\n{str(e) or lost}", 143 if terminated else 130)
  finally:
    for sig, handler in handlers.items():
      signal.signal(sig, handler)


def _exit_at_once(line: str, status: int) -> None:
  print(line, file=sys.stderr, flush=True)
  sys.stdout.flush()
  # Exit now: the `finally` blocks on the way here have released the workdir and closed the
  # logs, and checkpoints are committed atomically. A normal interpreter shutdown would run
  # the exit hooks of whatever library work the failure or signal cut short (e.g. orbax's
  # thread pools, which then print errors after this line).
  os._exit(status)
