r"""How two runs at once share the CPU: a sentence train step (5 seeds stacked, 64 pairs of 16
tokens, the real task code) of two recipes, study_lstm (the study's: SGD, one direction) and
lstm (ours: Adam, bidirectional, MLP head), each timed alone on every core, alone on half of
them, in two processes at once each pinned to its own half of the cores (what `reproduce
--jobs=2` does), and in two processes at once on every core (`--nosplit_cores`). Writes the
medians and the throughput ratios to OUT (JSON).

  python benchmarks/step_cores.py [OUT]     (default benchmarks/step_cores_cpu.json; Linux, 2+ cores)

Run it on an otherwise idle machine. The worker mode (--worker RECIPE) times the step in this process.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time

import jax
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from simjax import optim  # noqa: E402
from simjax.tasks.similarity import task  # noqa: E402
from simjax.tasks.similarity.models import ModelConfig  # noqa: E402

SEEDS, BATCH, LENGTH, STEPS = 5, 64, 16, 40
VOCAB = 11_473  # STS-B train's
# The model and optimizer of each recipe's flagfile (study_lstm.flags, lstm.flags).
RECIPES = {
  "study_lstm": (
    ModelConfig(VOCAB, embedding_dim=128, hidden_size=128, pooling="last", head="manhattan", init="pytorch"),
    optim.OptimConfig(
      optimizer="sgd", learning_rate=0.1, lr_schedule="plateau", plateau_patience=10, decay_factor=0.1
    ),
  ),
  "lstm": (
    ModelConfig(VOCAB, embedding_dim=50, hidden_size=128, bidirectional=True, pooling="max", head="mlp"),
    optim.OptimConfig(
      optimizer="adam", learning_rate=1e-3, lr_schedule="plateau", plateau_patience=1, grad_clip_norm=5.0
    ),
  ),
}


def time_steps(recipe: str) -> float:
  """Median seconds of `recipe`'s train step."""
  model, optimizer = RECIPES[recipe]
  state = task.create_train_state(list(range(SEEDS)), model, optimizer, steps_per_epoch=90, total_steps=9000)
  rng = np.random.default_rng(0)
  lengths = rng.integers(LENGTH // 2 + 1, LENGTH + 1, size=(SEEDS, BATCH)).astype(np.int32)
  batch = {
    "ids_a": rng.integers(1, model.vocab_size, (SEEDS, BATCH, LENGTH)).astype(np.int32),
    "lengths_a": lengths,
    "ids_b": rng.integers(1, model.vocab_size, (SEEDS, BATCH, LENGTH)).astype(np.int32),
    "lengths_b": lengths[:, ::-1].copy(),
    "score": rng.uniform(0, 5, (SEEDS, BATCH)).astype(np.float32),
    "weight": np.ones((SEEDS, BATCH), np.float32),
    "row": np.zeros((SEEDS, BATCH), np.int32),
  }
  state, _ = task.train_step(state, batch)  # compiles
  jax.block_until_ready(state)
  seconds = []
  for _ in range(STEPS):
    start = time.perf_counter()
    state, _ = task.train_step(state, batch)
    jax.block_until_ready(state)
    seconds.append(time.perf_counter() - start)
  return statistics.median(seconds)


def workers(recipe: str, pinned: list[list[int]] | None, count: int) -> list[float]:
  """`count` worker processes at once (each on its cores if `pinned`); their median step seconds."""
  env = {**os.environ, "PYTHONPATH": REPO}
  commands = []
  for i in range(count):
    prefix = ["taskset", "--cpu-list", ",".join(map(str, pinned[i]))] if pinned else []
    commands.append([*prefix, sys.executable, os.path.abspath(__file__), "--worker", recipe])
  processes = [subprocess.Popen(c, stdout=subprocess.PIPE, text=True, env=env) for c in commands]
  outputs = [p.communicate()[0] for p in processes]
  if any(p.returncode for p in processes):
    raise SystemExit("error: a worker failed (its error is above)")
  return [float(o.strip().splitlines()[-1]) for o in outputs]


def main() -> None:
  if sys.argv[1:2] == ["--worker"]:
    print(time_steps(sys.argv[2]))
    return
  out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(REPO, "benchmarks", "step_cores_cpu.json")
  cores = sorted(os.sched_getaffinity(0))
  if len(cores) < 2:
    raise SystemExit(f"error: this process may use {len(cores)} core(s); the benchmark needs 2 or more")
  half = len(cores) // 2
  step_ms, throughput = {}, {}
  for recipe in RECIPES:
    alone = workers(recipe, None, 1)[0]
    alone_half = workers(recipe, [cores[:half]], 1)[0]
    split = workers(recipe, [cores[:half], cores[half:]], 2)
    shared = workers(recipe, None, 2)
    step_ms[recipe] = {
      "alone": round(alone * 1e3, 1),
      "alone_on_half_the_cores": round(alone_half * 1e3, 1),
      "two_at_once_split_cores": [round(s * 1e3, 1) for s in split],
      "two_at_once_shared_cores": [round(s * 1e3, 1) for s in shared],
    }
    # Throughput of two runs at once against one run alone: 2 steps in the time of the slower one.
    throughput[recipe] = {
      "split_cores": round(2 * alone / max(split), 2),
      "shared_cores": round(2 * alone / max(shared), 2),
    }
    print(recipe, step_ms[recipe], throughput[recipe], flush=True)
  cpu = next(
    (line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
    platform.processor(),
  )
  result = {
    "command": "python benchmarks/step_cores.py" + (f" {sys.argv[1]}" if len(sys.argv) > 1 else ""),
    "what": f"train step of study_lstm.flags and lstm.flags, {SEEDS} seeds stacked, {BATCH} pairs of "
    f"{LENGTH} tokens, median of {STEPS} steps: alone on every core; alone on half of them; two processes at once each on "
    "half of the cores (reproduce --jobs=2); two at once on every core (--nosplit_cores)",
    "machine": {"cpu": cpu, "cores": len(cores)},
    "jax": jax.__version__,
    "commit": subprocess.run(
      ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO
    ).stdout.strip(),
    "dirty": bool(
      subprocess.run(
        ["git", "status", "--porcelain"], capture_output=True, text=True, cwd=REPO
      ).stdout.strip()
    ),
    "step_ms": step_ms,
    "throughput_over_alone": throughput,
  }
  with open(out, "w") as f:
    json.dump(result, f, indent=2)
  print(json.dumps(result, indent=2))


if __name__ == "__main__":
  main()
