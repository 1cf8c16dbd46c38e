"""Shared pytest fixtures: raw data location and TFDS datasets prepared once per session."""

import os
import pathlib
import shutil
import sys
import tempfile

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
# XLA's TPU and GPU compilers, for the deviceless compile checks (tests/test_deviceless.py): run.sh
# installs them into a folder of their own ($SIMJAX_DEVICELESS_DIR), apart from the environment
# runs train in. JAX finds them there once the folder is on sys.path before it starts a backend;
# JAX_PLATFORMS=cpu keeps every test on the CPU (simjax.deviceless.ENVIRONMENT), also for the
# command lines the tests start, which inherit it.
DEVICELESS_DIR = os.environ.get("SIMJAX_DEVICELESS_DIR") or str(REPO / ".venv" / "deviceless")
if os.path.isdir(DEVICELESS_DIR):
  sys.path.insert(0, DEVICELESS_DIR)
  # (the xdist workers each load libtpu: ALLOW_MULTIPLE_LIBTPU_LOAD lets them)
  os.environ.update({"JAX_PLATFORMS": "cpu", "TPU_SKIP_MDS_QUERY": "1", "ALLOW_MULTIPLE_LIBTPU_LOAD": "1"})

from simjax import compilation  # noqa: E402 (JAX reads its platforms when first imported)

# On a GPU machine, tests start JAX subprocesses beside this one: none may grab 75% of the memory.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
# Compiling, not computing, is most of what the tests spend (tiny models, a few steps). XLA's
# CPU backend at optimisation level 1 compiles much faster than at its default and still runs
# these models fast (level 0 compiles faster but runs slowly): the suite took 3:01 instead of
# 4:01 on 2 idle cores. Set before JAX starts its backend, so this process and every command
# line the tests start (they inherit it) compile the same way, and a test only ever compares
# numbers computed under one setting. To test at another level, set
# XLA_FLAGS=--xla_backend_optimization_level=N yourself.
if "--xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_backend_optimization_level=1".strip()
# The tests and the command lines they start (experiments.main, reproduce) share one JAX
# compilation cache, so a program compiled by one test is loaded by the next
# (the tiny models repeat). Tests of the cache itself use folders of their own.
# The xdist workers inherit the folder from the controller (their environment is its copy), so
# all workers share it; the process that made it removes it at the end of the session.
_MADE_CACHE_DIR = None
if not os.environ.get("SIMJAX_COMPILATION_CACHE_DIR"):
  _MADE_CACHE_DIR = os.environ["SIMJAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(
    prefix="simjax-test-jax-cache-"
  )
compilation.enable_persistent_cache(os.environ["SIMJAX_COMPILATION_CACHE_DIR"])


def pytest_sessionfinish(session, exitstatus):
  if _MADE_CACHE_DIR:
    shutil.rmtree(_MADE_CACHE_DIR, ignore_errors=True)


@pytest.fixture(scope="session")
def manual_dir() -> pathlib.Path:
  """Folder with stsbenchmark/ and sick2014/ raw files: $SIMJAX_MANUAL_DIR, else ../shared/data."""
  env = os.environ.get("SIMJAX_MANUAL_DIR")
  path = pathlib.Path(env) if env else REPO.parent / "shared" / "data"
  if not (path / "stsbenchmark").is_dir() or not (path / "sick2014").is_dir():
    # CI always has the data beside the checkout: there, missing data is a failure.
    (pytest.fail if os.environ.get("CI") else pytest.skip)(
      f"raw STS/SICK files not found in {path} (need stsbenchmark/ and sick2014/); "
      "set SIMJAX_MANUAL_DIR to a folder holding them"
    )
  return path


@pytest.fixture(scope="session")
def prepared(manual_dir, tmp_path_factory):
  """`prepared(name)` -> TFDS data_dir holding dataset `name`, built at most once per session."""
  from simjax.tasks.similarity import datasets

  data_dir = tmp_path_factory.mktemp("tensorflow_datasets")
  done = set()

  def get(name: str) -> str:
    if name not in done:
      datasets.prepare(name, str(data_dir), str(manual_dir))
      done.add(name)
    return str(data_dir)

  return get


@pytest.fixture(scope="session")
def cifar_data_dir() -> str:
  """A TFDS data_dir holding cifar10/: $TFDS_DATA_DIR if it has one, else ../shared/tensorflow_datasets."""
  candidates = [os.environ.get("TFDS_DATA_DIR"), str(REPO.parent / "shared" / "tensorflow_datasets")]
  for path in filter(None, candidates):
    if (pathlib.Path(path) / "cifar10").is_dir():
      return path
  (pytest.fail if os.environ.get("CI") else pytest.skip)(
    f"no prepared TFDS cifar10 in {candidates}: set TFDS_DATA_DIR to a data_dir holding cifar10/"
  )
