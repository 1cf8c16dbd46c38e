"""Runs a test's function on N virtual CPU devices. JAX fixes the device count at start-up, so
N > 1 needs a fresh process; one device is this process itself when it is a single CPU (no
second start-up and import)."""

import inspect
import json
import os
import subprocess
import sys

import jax

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_on_devices(function, devices: int, *args: str) -> dict:
  """`function(*args)` with `devices` CPU devices: a module-level function of a test file that
  returns JSON-able data; the result comes back through JSON either way."""
  if devices == jax.device_count() == 1 and jax.default_backend() == "cpu":
    return json.loads(json.dumps(function(*args)))
  module = os.path.relpath(inspect.getfile(function), REPO)[: -len(".py")].replace(os.sep, ".")
  script = (
    f"import json, sys\nfrom {module} import {function.__name__} as f\nprint(json.dumps(f(*sys.argv[1:])))"
  )
  env = {
    **os.environ,
    "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}".strip(),
    "JAX_PLATFORMS": "cpu",  # virtual CPU devices, also on a GPU machine
    "PYTHONPATH": REPO,
  }
  done = subprocess.run(
    [sys.executable, "-c", script, *args], cwd=REPO, capture_output=True, text=True, env=env, timeout=300
  )
  assert done.returncode == 0, done.stderr[-2000:]
  return json.loads(done.stdout.strip().splitlines()[-1])
