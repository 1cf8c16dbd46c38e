r"""What --early_stop_patience would have done to finished runs: replays each run's recorded
per-seed dev metric (metrics.jsonl) through the training loop's own rule (simjax.loop.stalled)
and prints, per patience, the epoch the run would have stopped after, how many seeds' best
epochs would change, and the epochs saved.

  python benchmarks/early_stop_replay.py reports/similarity-study/runs/*/ [--metric=dev_pearson]

A stopped run is the first epochs of the full run, so this replay is exact for the best epochs
(the numbers at a best epoch that stays are the full run's).
"""

from __future__ import annotations

import json
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from simjax import loop  # noqa: E402

PATIENCES = (2, 3, 4)


def replay(per_seed: list[list[float]], patience: int) -> int:
  """The epoch a run whose epochs' dev values (higher is better) are `per_seed` [epoch][seed] stops after."""
  best = [None] * len(per_seed[0])
  for epoch, values in enumerate(per_seed, 1):
    for r, value in enumerate(values):
      if best[r] is None or value > best[r]["value"]:
        best[r] = {"epoch": epoch, "value": value}
    if loop.stalled(best, epoch, patience):
      return epoch
  return len(per_seed)


def main() -> None:
  metric = next((a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("--metric=")), "dev_pearson")
  runs = [a for a in sys.argv[1:] if not a.startswith("--")]
  if not runs:
    raise SystemExit(__doc__)
  print("stop: the epoch the run would end after; changed: seeds whose best epoch comes later")
  print(f"{'run':30} {'epochs':>6}  " + "  ".join(f"patience {p}: stop, changed" for p in PATIENCES))
  for workdir in runs:
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
      print(f"{workdir}: no metrics.jsonl, skipped")
      continue
    with open(path) as f:
      rows = [json.loads(line) for line in f]
    per_seed = [row["per_seed"][metric] for row in rows]
    if not per_seed:
      print(f"{workdir}: no finished epoch, skipped")
      continue
    final_best = [
      max(range(len(per_seed)), key=lambda e: per_seed[e][r]) + 1 for r in range(len(per_seed[0]))
    ]
    cells = []
    for patience in PATIENCES:
      stop = replay(per_seed, patience)
      changed = sum(b > stop for b in final_best)
      cells.append(f"{stop:>15}, {changed:<7}")
    name = os.path.basename(os.path.normpath(workdir))
    print(f"{name:30} {len(rows):>6}  " + "  ".join(cells))


if __name__ == "__main__":
  main()
