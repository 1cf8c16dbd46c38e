r"""Prints a Markdown table of finished runs, read from their results.json files.

  python -m experiments.results_table workdirs/*_stsb workdirs/*_sick

The study's published test Pearson (STS Benchmark) is shown beside ours where it exists.
Multi-seed runs (--num_seeds) show mean ± sample std over their seeds.
"""

from __future__ import annotations

import json
import os
import sys

from absl import app

from experiments import study
from simjax import summary


def row(workdir: str) -> str:
  with open(os.path.join(workdir, "results.json")) as f:
    results = json.load(f)
  flags = results["flags"]
  experiment, dataset = flags.get("experiment", "?"), results["data"]["dataset"]
  reported = study.sentence_pearson(experiment) if dataset == "stsb" else None
  step_ms = 1000 * results["seconds_per_step"] if results.get("seconds_per_step") else float("nan")
  per_seed = results.get("per_seed") or [results]
  cells = [_mean_std([r["test"][m] for r in per_seed]) for m in ("pearson", "spearman", "mse")]
  best = ", ".join(str(r["best_epoch"]) for r in per_seed)
  return (
    f"| {experiment} | {dataset} | {'-' if reported is None else f'{reported:.3f}'} | {' | '.join(cells)} | "
    f"{len(per_seed)} | {best} / {results['epochs']} | "
    f"{results['train_seconds']:.0f} | {step_ms:.1f} | `{os.path.basename(os.path.normpath(workdir))}` |"
  )


def _mean_std(values) -> str:
  return summary.mean_std_text(values, ".3f")


def main(argv: list[str]) -> int:
  """`argv[1:]`: the workdirs."""
  workdirs = argv[1:]
  if not workdirs:
    raise app.UsageError("pass one or more workdirs", exitcode=2)
  print(
    "| experiment | dataset | study test Pearson | test Pearson | test Spearman | test MSE "
    "| seeds | best epoch(s) | train s | ms/step | workdir |"
  )
  print("|---|---|---|---|---|---|---|---|---|---|---|")
  missing = []
  for workdir in workdirs:
    if os.path.exists(os.path.join(workdir, "results.json")):
      print(row(workdir))
    else:
      missing.append(workdir)
  if missing:
    print(f"no results.json (unfinished?) in: {', '.join(missing)}", file=sys.stderr)
  return 0


if __name__ == "__main__":
  app.run(main)
