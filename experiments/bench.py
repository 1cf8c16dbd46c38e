r"""CIFAR-10 speed benchmark: one configuration trained N times back to back, timed and summarised.

  python -m experiments.bench --flagfile=cnn_resnet.flags --runs=5
  python -m experiments.bench --flagfile=cnn_resnet.flags --runs=2 --width=8 --epochs=1 \
      --train_split='train[:256]' --eval_split='test[:128]' --out=/tmp/bench

Takes every training flag of `python -m experiments.main` (flagfiles looked up as there) plus
--runs, --out and --keep_workdirs. Run i trains seed --seed+i: a normal training run through
simjax.run, in its own workdir under a temporary folder in --out (removed at the end unless
--keep_workdirs). JAX's persistent compilation cache (--compilation_cache_dir, else
<out>/jax_cache) is on, so runs 2..N load the programs run 1 compiled: the first run's compile
seconds are reported apart from the others'. Writes <out>/<experiment>.json (every flag, each
run's numbers, their summary, device, versions, data) and <out>/<experiment>.md (a short table
with the command that produced it), rewritten after every run, so a stopped bench keeps the
runs it finished. A bench never overwrites another's files: when <out>/<experiment>.json or .md
exists, it refuses to start.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from typing import Any

from absl import app, flags

from experiments import cifar10, cli_flags, console, lifecycle
from experiments import main as training_main  # defines every training flag
from simjax import compilation, run, run_records, summary

FLAGS = flags.FLAGS
DEFAULT_OUT = os.path.join("benchmarks", "bench")
BENCH_FLAGS = ("runs", "out", "keep_workdirs")


def define_flags() -> None:
  """Flags of this command besides the training flags (defined only when it runs)."""
  flags.DEFINE_integer(
    "runs", 5, "Training runs N (seeds --seed ... --seed+N-1), one after another.", lower_bound=1
  )
  flags.DEFINE_string(
    "out", DEFAULT_OUT, "Folder for <experiment>.json / .md, the runs' workdirs and the cache."
  )
  flags.DEFINE_bool("keep_workdirs", False, "Keep each run's workdir (checkpoints, results.json) in --out.")


def check_flags() -> None:
  """Training flags that make no sense for a bench: one error line each."""
  if FLAGS.task != "cifar10":
    sys.exit(
      f"error: --task={FLAGS.task}: the bench measures CIFAR-10 training only; use a CIFAR-10 "
      "flagfile (e.g. --flagfile=cnn_resnet.flags) or --task=cifar10"
    )
  module = training_main.TASKS["similarity"].__name__
  given = sorted(f"--{f.name}" for f in FLAGS.flags_by_module_dict().get(module, []) if f.present)
  if given:
    sys.exit(
      f"error: {', '.join(given)}: flags of the similarity task; the bench trains CIFAR-10: remove them"
    )
  if FLAGS.mode != "train":
    sys.exit(f"error: --mode={FLAGS.mode}: the bench trains; drop --mode")
  if FLAGS["workdir"].present:
    sys.exit("error: --workdir: the bench trains each run in its own workdir under --out; drop --workdir")
  if FLAGS.num_seeds != 1 or FLAGS.sequential_seeds:
    sys.exit(
      "error: --num_seeds / --sequential_seeds: the bench trains one seed per run, "
      "--runs runs one after another (seeds --seed, --seed+1, ...); use --runs"
    )


def check_out() -> None:
  """Refuses a bench whose <out>/<experiment>.json or .md exists: a finished (or stopped) bench
  is a record, never overwritten by another one, which may have other settings."""
  out, experiment = FLAGS.out, FLAGS.experiment
  paths = [os.path.join(out, f"{experiment}{ext}") for ext in (".json", ".md")]
  existing = [p for p in paths if os.path.lexists(p)]
  if not existing:
    return
  try:
    with open(paths[0]) as f:
      earlier = json.load(f)
    stopped = "" if earlier.get("complete") else ", stopped early"
    held = (
      f" (a bench of {earlier.get('date')}: {earlier.get('runs_completed')} of "
      f"{earlier.get('runs_requested')} runs{stopped}; command: {earlier.get('command')})"
    )
  except (OSError, ValueError, AttributeError):  # only the .md, or not a bench's JSON
    held = ""
  sys.exit(
    f"error: {existing[0]} already exists{held}: a bench never overwrites an earlier result; "
    f"pass another --out or --experiment, or move {' and '.join(existing)} away"
  )


def command() -> str:
  """The command as typed (flagfiles unexpanded), quoted so that it can be pasted."""
  return shlex.join(["python", "-m", "experiments.bench", *sys.argv[1:]])


def all_flags() -> dict[str, Any]:
  return dict(sorted({**cli_flags.flag_values(), **{k: FLAGS[k].value for k in BENCH_FLAGS}}.items()))


# --------------------------------------------------------------------------------------
# Runs
# --------------------------------------------------------------------------------------
def train_one(run_index: int, seed: int, workdir: str) -> dict[str, Any]:
  """One training run of seed `seed` in `workdir`; its numbers for the bench."""
  task, train_config = cifar10.task_from_flags()  # a fresh task per run
  config = dataclasses.replace(train_config, seed=seed, num_seeds=1, sequential_seeds=False)
  with compilation.CompileClock() as clock:
    start = time.perf_counter()
    results = run.train_and_evaluate(
      task, config, workdir, flags=cli_flags.flag_values(), command=cli_flags.command_line()
    )
    wall = time.perf_counter() - start
  eval_info = results["data"]["eval"]
  return {
    "run": run_index,
    "seed": seed,
    "test_accuracy": results["test"]["accuracy"],
    "per_class_accuracy": results["test"]["per_class_accuracy"],
    "train_seconds": results["train_seconds"],
    "wall_seconds": wall,
    "compile_seconds": results["compile_seconds"],
    "compile_cache_hits": clock.cache_hits,  # programs loaded from the persistent cache
    "images_per_second": results["images_per_second"],
    "seconds_per_epoch": results["seconds_per_epoch"],
    "epochs": results["epochs"],
    # Each epoch's row (one view unless --tta_each_epoch): the workdir itself is not kept.
    "test_accuracy_per_epoch": [row["test_accuracy"] for row in run_records.read_metrics(workdir)],
    "seconds_to_accuracy": results["per_seed"][0]["seconds_to_accuracy"],
    "data_label": eval_info["label"],
    "eval_split": eval_info["split"],
    "eval_images": int(sum(map(sum, results["test"]["confusion_matrix"]))),
    "train_split": results["data"]["train"]["split"],
    "workdir": os.path.abspath(workdir),
  }


def benchmark() -> dict[str, Any]:
  out = FLAGS.out
  os.makedirs(out, exist_ok=True)
  cache = compilation.enable_persistent_cache(FLAGS.compilation_cache_dir or os.path.join(out, "jax_cache"))
  experiment = FLAGS.experiment
  paths = (os.path.join(out, f"{experiment}.json"), os.path.join(out, f"{experiment}.md"))
  work = tempfile.mkdtemp(prefix=f"{experiment}_work_", dir=out)
  n = FLAGS.runs
  print(
    f"bench {experiment}: {n} run(s), seeds {FLAGS.seed}..{FLAGS.seed + n - 1}; compilation cache {cache}"
  )
  runs: list[dict[str, Any]] = []
  result: dict[str, Any] = {}
  code = run_records.git_state()  # the code the runs use: the checkout may change during a long bench
  try:
    for i in range(n):
      seed = FLAGS.seed + i
      one = train_one(i + 1, seed, os.path.join(work, f"run{i + 1}_seed{seed}"))
      if not FLAGS.keep_workdirs:
        one.pop("workdir")
      runs.append(one)
      print(
        f"run {i + 1}/{n}  seed {seed}  test accuracy {one['test_accuracy']:.4f}  "
        f"train {one['train_seconds']:.2f} s  wall {one['wall_seconds']:.2f} s  "
        f"compile {one['compile_seconds']:.2f} s ({one['compile_cache_hits']} cached programs)",
        flush=True,
      )
      result = summarise(runs, n, cache, experiment, code)
      write(result, *paths)
  except KeyboardInterrupt as e:  # Ctrl-C or SIGTERM: what finished is written; nothing resumes
    kept = f"; {paths[0]} and .md hold those" if runs else ""
    raise type(e)(f"stopped after {len(runs)} of {n} runs{kept}") from None
  finally:
    if FLAGS.keep_workdirs:
      print(f"workdirs kept in {work}")
    else:
      shutil.rmtree(work, ignore_errors=True)
  print()
  print("\n".join(markdown(result)))
  print(f"written: {paths[0]}, {paths[1]}")
  return result


# --------------------------------------------------------------------------------------
# Summary
# --------------------------------------------------------------------------------------
def _spread(values: list[float]) -> dict[str, Any]:
  return {
    "median": statistics.median(values),
    "min": min(values),
    "max": max(values),
    "per_run": values,
  }


def summarise(
  runs: list[dict[str, Any]], requested: int, cache: str, experiment: str, code: dict[str, Any] | None = None
) -> dict[str, Any]:
  """bench JSON: the runs so far, their summary, the flags and the provenance; `code`: the git
  state when the bench started (default: now)."""
  accuracy = [r["test_accuracy"] for r in runs]
  classes = list(runs[0]["per_class_accuracy"])
  compile_seconds = [r["compile_seconds"] for r in runs]
  thresholds = list(runs[0]["seconds_to_accuracy"])
  first = runs[0]
  provenance = run_records.provenance(command())
  return {
    "experiment": experiment,
    "command": command(),
    "date": datetime.date.today().isoformat(),
    "runs_requested": requested,
    "runs_completed": len(runs),
    "complete": len(runs) == requested,
    "seeds": [r["seed"] for r in runs],
    "data": {
      "label": first["data_label"],
      "train_split": first["train_split"],
      "eval_split": first["eval_split"],
      "eval_images": first["eval_images"],
    },
    "epochs": first["epochs"],
    # summary.stats: mean, sample std (ddof=1; 0 for one run), min, max, n.
    "test_accuracy": {**summary.stats(accuracy), "per_run": accuracy},
    "per_class_accuracy_mean": {
      c: statistics.fmean(r["per_class_accuracy"][c] for r in runs) for c in classes
    },
    "train_seconds": _spread([r["train_seconds"] for r in runs]),  # epochs' training, compile excluded
    "wall_seconds": _spread([r["wall_seconds"] for r in runs]),  # the whole training call
    "images_per_second": _spread([r["images_per_second"] for r in runs]),
    "compile_seconds": {
      "first_run": compile_seconds[0],
      "first_run_cache_hits": first["compile_cache_hits"],  # 0: compiled from scratch
      "others_median": statistics.median(compile_seconds[1:]) if len(runs) > 1 else None,
      "per_run": compile_seconds,
    },
    "seconds_to_accuracy": {t: _reached([r["seconds_to_accuracy"][t] for r in runs]) for t in thresholds},
    "runs": runs,
    "flags": all_flags(),
    **{k: v for k, v in provenance.items() if k != "command"},
    **({"git": code} if code is not None else {}),
    "compilation_cache_dir": cache,
  }


def _reached(seconds: list[float | None]) -> dict[str, Any]:
  reached = [s for s in seconds if s is not None]
  return {"median": statistics.median(reached) if reached else None, "runs_reaching": len(reached)}


def write(result: dict[str, Any], json_path: str, md_path: str) -> None:
  run_records.write_json(json_path, result)
  with open(md_path + ".tmp", "w") as f:
    f.write("\n".join(markdown(result)) + "\n")
  os.replace(md_path + ".tmp", md_path)


def _epochs(n: int) -> str:
  return f"{n} epoch" if n == 1 else f"{n} epochs"


def _pct(value: float, digits: int = 2) -> str:
  return f"{100 * value:.{digits}f}"


def markdown(result: dict[str, Any]) -> list[str]:
  """The short human-readable summary: <out>/<experiment>.md and the console."""
  acc, train, wall = result["test_accuracy"], result["train_seconds"], result["wall_seconds"]
  compile_ = result["compile_seconds"]
  device, versions, git = result["device"], result["versions"], result["git"]
  data = result["data"]
  n, requested = result["runs_completed"], result["runs_requested"]
  done = f"{n} runs" if result["complete"] else f"{n} of {requested} runs (stopped early)"
  accuracy = f"{_pct(acc['mean'])} ± {_pct(acc['std'])}%" if n > 1 else f"{_pct(acc['mean'])}%"
  others = compile_["others_median"]
  compile_text = (
    f"{compile_['first_run']:.1f} / {others:.1f}"
    if others is not None
    else f"{compile_['first_run']:.1f} / –"
  )
  lines = [
    f"### Bench `{result['experiment']}`: {done}, {device['count']} × {device['kind']}",
    "",
    f"`{result['command']}`",
    "",
    f"{data['label']}: trained on `{data['train_split']}`, {_epochs(result['epochs'])}; accuracy of the last "
    f"epoch on `{data['eval_split']}` ({data['eval_images']:,} images); seeds {result['seeds'][0]}–"
    f"{result['seeds'][-1]}. {device['platform']}, {device['processor']}; jax {versions.get('jax')}, "
    f"commit {str(git.get('commit'))[:10]}{' (dirty tree)' if git.get('dirty') else ''}; {result['date']}.",
    "",
    "| test accuracy (mean ± sample std) | min / max | train s per run: median (min–max) | "
    "wall s per run (median) | images/s (median) | compile s: first run / others (median) |",
    "|---|---|---|---|---|---|",
    f"| {accuracy} | {_pct(acc['min'])} / {_pct(acc['max'])}% | {train['median']:.2f} ({train['min']:.2f}–"
    f"{train['max']:.2f}) | {wall['median']:.2f} | {result['images_per_second']['median']:,.0f} | {compile_text} |",
    "",
  ]
  reached = [
    f"{_pct(float(t), 0)}%: {r['median']:.2f} s ({r['runs_reaching']}/{n})"
    for t, r in result["seconds_to_accuracy"].items()
    if r["runs_reaching"]
  ]
  if reached:
    lines += ["Training seconds to reach (median of the runs that did): " + ", ".join(reached) + ".", ""]
  if compile_["first_run_cache_hits"]:
    lines += [
      f"The first run loaded {compile_['first_run_cache_hits']} program(s) from the compilation cache "
      f"({result['compilation_cache_dir']}): its compile seconds are not all a compile from scratch.",
      "",
    ]
  lines += [
    "Train s: the epochs' training (compilation excluded); wall s: the whole training call (data "
    "loading, compilation, evaluation, checkpoints).",
    "",
    "| run | seed | test accuracy % | train s | wall s | compile s | cached programs |",
    "|---|---|---|---|---|---|---|",
  ]
  for r in result["runs"]:
    lines.append(
      f"| {r['run']} | {r['seed']} | {_pct(r['test_accuracy'])} | {r['train_seconds']:.2f} | "
      f"{r['wall_seconds']:.2f} | {r['compile_seconds']:.2f} | {r['compile_cache_hits']} |"
    )
  classes = result["per_class_accuracy_mean"]
  lines += [
    "",
    "Per-class test accuracy, mean over runs (%):",
    "",
    "| " + " | ".join(classes) + " |",
    "|" + "---|" * len(classes),
    "| " + " | ".join(_pct(v, 1) for v in classes.values()) + " |",
  ]
  return lines


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  check_flags()
  check_out()  # before anything is trained or written
  console.quiet_library_logs()
  lifecycle.apply_determinism()  # before the first computation
  lifecycle.run_mode(benchmark)


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=cli_flags.parse_flags_with_flagfile_lookup)
