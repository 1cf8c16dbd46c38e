"""What a run leaves in its workdir besides checkpoints: metrics, results, provenance."""

from __future__ import annotations

import datetime
import functools
import json
import math
import os
import platform
import subprocess
import tomllib
from importlib import metadata
from typing import Any, Iterable

import jax

from simjax import distributed

METRICS_FILE = "metrics.jsonl"
RESULTS_FILE = "results.json"
RUN_INFO_FILE = "run_info.json"
_PACKAGES = (
  "jax",
  "jaxlib",
  "flax",
  "optax",
  "orbax-checkpoint",
  "tensorflow-datasets",
  "array-record",
  "numpy",
  "scipy",
)


def write_json(path: str, obj: Any) -> None:
  """Writes strict JSON (see `dumps`) atomically (temporary file + rename), so a kill never
  leaves half a file. In a multi-process run only process 0 writes records (the others skip)."""
  if not distributed.is_primary():
    return
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f"{path}.tmp"
  with open(tmp, "w") as f:
    f.write(dumps(obj, indent=2) + "\n")
  os.replace(tmp, path)


def dumps(obj: Any, **kwargs) -> str:
  """Strict JSON, as every parser reads it: an undefined number (NaN, infinity; e.g. the
  correlation of constant predictions) is null, numpy and jax values are plain numbers."""
  return json.dumps(_strict(obj), sort_keys=True, allow_nan=False, default=str, **kwargs)


def _strict(value: Any) -> Any:
  if isinstance(value, dict):
    return {k: _strict(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_strict(v) for v in value]
  if hasattr(value, "tolist"):  # numpy / jax scalars and arrays
    return _strict(value.tolist())
  if isinstance(value, float) and not math.isfinite(value):
    return None
  return value


def versions() -> dict[str, str | None]:
  found = {"python": platform.python_version(), "simjax": package_version()}
  for name in _PACKAGES:
    try:
      found[name] = metadata.version(name)
    except metadata.PackageNotFoundError:
      found[name] = "not installed"
  return found


def device_info() -> dict[str, Any]:
  devices = jax.devices()
  return {
    "platform": devices[0].platform,
    "kind": devices[0].device_kind,
    "count": len(devices),
    **({"processes": jax.process_count()} if jax.process_count() > 1 else {}),  # multi-process runs only
    "host": platform.node(),
    "processor": _cpu_model() or platform.processor() or platform.machine(),
    "cpu_count": os.cpu_count(),
    # The cores this process may run on (a taskset, e.g. reproduce --jobs, or a container can
    # allow fewer than cpu_count): XLA sizes its CPU thread pool by it, so CPU timings depend on it.
    **({"cpu_cores_available": len(os.sched_getaffinity(0))} if hasattr(os, "sched_getaffinity") else {}),
  }


def _cpu_model() -> str | None:
  """e.g. 'AMD EPYC 7B13' (Linux), so CPU timings name their hardware."""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return None


def cpu_flags(names=("avx2", "avx512f", "avx512_bf16", "amx_tile")) -> dict[str, bool]:
  """Whether the CPU has each of these instruction-set flags (Linux; {} elsewhere): CPU
  benchmarks record them, since XLA's CPU code paths depend on them."""
  try:
    with open("/proc/cpuinfo") as f:
      have = set(next(line for line in f if line.startswith("flags")).split(":", 1)[1].split())
  except (OSError, StopIteration):
    return {}
  return {name: name in have for name in names}


@functools.cache  # read once: every record's provenance asks
def package_version() -> str | None:
  """simjax's own version. The source tree's pyproject.toml when the package is imported from
  one: that is the code that runs, even where another copy is installed (e.g. PYTHONPATH set to
  the checkout); else the installed distribution's; None if neither says."""
  pyproject = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "pyproject.toml")
  try:
    with open(pyproject, "rb") as f:
      project = tomllib.load(f).get("project")
    if isinstance(project, dict) and project.get("name") == "simjax" and project.get("version"):
      return str(project["version"])
  except (OSError, tomllib.TOMLDecodeError):
    pass  # no source tree around the package: an installed copy
  try:
    return metadata.version("simjax")
  except metadata.PackageNotFoundError:
    return None


def git_state(path: str | None = None) -> dict[str, Any]:
  """The commit of the code that ran, and whether its work tree had uncommitted changes.
  `path`: a file or folder of that code (default: this module). Both are None unless git
  tracks `path` in the work tree it lies in: a copy installed into, say, a .venv/ inside some
  other repository is not that repository's code (versions()["simjax"] says what it is)."""
  path = os.path.abspath(path or __file__)
  folder = path if os.path.isdir(path) else os.path.dirname(path)

  def git(*args: str) -> str:
    return subprocess.run(
      ["git", *args], cwd=folder, capture_output=True, text=True, check=True, timeout=10
    ).stdout.strip()

  try:
    # Fails outside a work tree, and for an untracked or ignored path (a folder: no file of it tracked).
    git("ls-files", "--error-unmatch", "--", "." if path == folder else os.path.basename(path))
    commit = git("rev-parse", "HEAD")
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(dirty)}
  except (OSError, subprocess.SubprocessError):
    return {"commit": None, "dirty": None}


def provenance(command: str | None = None) -> dict[str, Any]:
  """Versions, device, code state and the time; `command` is the command line that ran (a
  front end knows it; None where there is none)."""
  return {
    "versions": versions(),
    "device": device_info(),
    "git": git_state(),
    "command": command,
    "xla_flags": os.environ.get("XLA_FLAGS", ""),  # e.g. --xla_gpu_deterministic_ops=true
    "compilation_cache_dir": jax.config.jax_compilation_cache_dir,  # None: every program compiled afresh
    # run_info.json is written at the start, results.json at the end: together, the wall time.
    "recorded_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
  }


def provenance_differences(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
  """What differs between a training run's records (run_info.json) and now: package
  versions, device, code commit, and the data's source checksums. Empty if nothing."""
  differences = []
  for section, keys in (
    ("versions", None),
    ("device", ("platform", "kind", "count")),
    ("git", ("commit", "dirty")),
  ):
    before, now = recorded.get(section) or {}, current.get(section) or {}
    for key in keys or sorted(set(before) | set(now)):
      if before.get(key) != now.get(key):
        differences.append(f"{section}.{key}: {before.get(key)!r} at training, {now.get(key)!r} now")
  if recorded.get("xla_flags", "") != current.get("xla_flags", ""):
    differences.append(
      f"XLA_FLAGS: {recorded.get('xla_flags', '')!r} at training, {current.get('xla_flags', '')!r} now"
    )
  before = _checksums(recorded.get("data", {}))
  now = _checksums(current.get("data", {}))
  for name in sorted(set(before) & set(now)):
    if before[name] != now[name]:
      differences.append(
        f"data file {name}: sha256 {before[name][:12]}... at training, {now[name][:12]}... now"
      )
  return differences


def _checksums(data_info: dict[str, Any]) -> dict[str, str]:
  """{file: sha256} from a run's data info (sentence datasets: "source_sha256"; images: per split)."""
  found = dict(data_info.get("source_sha256") or {})
  for value in data_info.values():
    if isinstance(value, dict) and "source_sha256" in value:
      found.update(value["source_sha256"])
  return found


class MetricsLog:
  """One JSON line per epoch in metrics.jsonl, mirrored to TensorBoard event files; in a
  multi-process run, written by process 0 only."""

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, METRICS_FILE)
    self._tensorboard_dir = os.path.join(workdir, "tensorboard")
    self._writer = None
    self._writes = distributed.is_primary()

  def reset(self, history: Iterable[dict[str, Any]]) -> None:
    """Rewrites the file from checkpointed history, dropping epochs a killed run logged
    after its last checkpoint (they will be trained again)."""
    if not self._writes:
      return
    tmp = self.path + ".tmp"
    with open(tmp, "w") as f:
      for row in history:
        f.write(dumps(row) + "\n")
    os.replace(tmp, self.path)

  def write(self, row: dict[str, Any]) -> None:
    if not self._writes:
      return
    with open(self.path, "a") as f:
      f.write(dumps(row) + "\n")
    writer = self._tensorboard()
    if writer is not None:
      for key, value in row.items():
        if key != "epoch" and isinstance(value, (int, float)):
          writer.add_scalar(key, value, global_step=row["epoch"])
      writer.flush()

  def _tensorboard(self):
    if self._writer is None:
      try:
        from tensorboardX import SummaryWriter
      except ImportError:  # optional: metrics.jsonl has everything
        return None
      self._writer = SummaryWriter(self._tensorboard_dir)
    return self._writer

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()


def read_metrics(workdir: str) -> list[dict[str, Any]]:
  path = os.path.join(workdir, METRICS_FILE)
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]
