"""Compilation: JAX's persistent compilation cache, and how long a run spends compiling.

`enable_persistent_cache(folder)` makes every compiled program land in `folder`, so a rerun of
the same command on the same machine (same JAX, same device) loads its programs instead of
compiling them again. `CompileClock` adds up the time JAX reports for tracing, lowering and
compiling (jax.monitoring events), so results can report compile seconds apart from training
seconds, whichever way a task compiles (ahead of time, or on first use of each shape).
"""

from __future__ import annotations

import os
import threading

import jax
from jax import monitoring

# Durations JAX records for each program it builds (jax._src.dispatch): tracing to a jaxpr,
# lowering to MLIR, and the backend compile (skipped on a persistent-cache hit, where the
# retrieval is timed instead).
_COMPILE_EVENTS = (
  "/jax/core/compile/jaxpr_trace_duration",
  "/jax/core/compile/jaxpr_to_mlir_module_duration",
  "/jax/core/compile/backend_compile_duration",
  "/jax/compilation_cache/cache_retrieval_time_sec",
)
_CACHE_HIT_EVENT = "/jax/compilation_cache/cache_hits"


def enable_persistent_cache(folder: str) -> str:
  """Caches every compiled program in `folder` (created if needed); returns its absolute path.

  Call before the first computation. The cache key covers the program, the JAX version and
  the device, so a folder can be shared between machines and versions without wrong hits.
  """
  folder = os.path.abspath(os.path.expanduser(folder))
  try:
    os.makedirs(folder, exist_ok=True)
  except OSError as e:
    raise OSError(f"cannot create the compilation cache folder {folder}: {e.strerror}") from None
  if not os.access(folder, os.W_OK):
    raise OSError(f"the compilation cache folder {folder} is not writable")
  jax.config.update("jax_compilation_cache_dir", folder)
  # Every program, however quick to compile: the point is that a rerun compiles nothing.
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  return folder


def persistent_cache_dir() -> str | None:
  return jax.config.jax_compilation_cache_dir


class CompileClock:
  """Seconds JAX spent building programs while the clock was running (all threads).

  with CompileClock() as clock: ...; clock.seconds, clock.cache_hits
  """

  def __init__(self):
    self.seconds = 0.0
    self.cache_hits = 0
    self._lock = threading.Lock()

  def _on_duration(self, event: str, duration: float, **_) -> None:
    if event in _COMPILE_EVENTS:
      with self._lock:
        self.seconds += duration

  def _on_event(self, event: str, **_) -> None:
    if event == _CACHE_HIT_EVENT:
      with self._lock:
        self.cache_hits += 1

  def __enter__(self) -> "CompileClock":
    monitoring.register_event_duration_secs_listener(self._on_duration)
    monitoring.register_event_listener(self._on_event)
    return self

  def __exit__(self, *exc) -> None:
    monitoring.unregister_event_duration_listener(self._on_duration)
    monitoring.unregister_event_listener(self._on_event)
