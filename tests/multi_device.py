"""Runs a test script in a fresh process that sees N virtual CPU devices (JAX fixes the device
count at start-up, so each count needs its own process)."""

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_on_devices(script: str, devices: int, *args: str) -> dict:
  """`python -c script args...` with `devices` CPU devices; returns its last stdout line as JSON."""
  env = {
    **os.environ,
    "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
    "JAX_PLATFORMS": "cpu",  # virtual CPU devices, also on a GPU machine
    "PYTHONPATH": REPO,
  }
  done = subprocess.run(
    [sys.executable, "-c", script, *args], capture_output=True, text=True, env=env, timeout=300
  )
  assert done.returncode == 0, done.stderr[-2000:]
  return json.loads(done.stdout.strip().splitlines()[-1])
