r"""Folds a device session's output (tools.gpu_session) into the repo, in one command.

  python -m tools.fold_gpu_session <folder>     # the folder holding session.tar.gz

It unpacks session.tar.gz and
  * puts the report folder at reports/<name>/ (report.md, figures, logs, session.json; each
    run's results.json / metrics.jsonl under runs/, which git ignores),
  * copies the benchmarks' JSON into benchmarks/ (named by device), and the speed bench's
    JSON and Markdown (experiments.bench) into benchmarks/bench/ (named by device),
  * rewrites the GPU results section of docs/gpu.md (between its two `gpu-session` markers):
    the five CIFAR-10 structures' accuracy and per-class accuracy beside the study's,
    seconds per epoch, time to 90%, compile seconds, the speed bench, the seeds and
    determinism figures, and what was dropped, each with its command, device and date.
A smoke session (--smoke on a CPU) folds the same way; its section says it is one.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import tarfile
import tempfile

from absl import app, flags

from experiments import lifecycle, study
from simjax import deviceless, run_records
from tools import gpu_session

FLAGS = flags.FLAGS
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BEGIN = "<!-- gpu-session:begin (written by python -m tools.fold_gpu_session) -->"
END = "<!-- gpu-session:end -->"
STRUCTURES = (*study.CNN_STRUCTURES, "cnn_resnet")


def define_flags() -> None:
  flags.DEFINE_string("repo_dir", REPO, "Where reports/ and benchmarks/ are written.")
  flags.DEFINE_string(
    "results_doc", None, "Page whose GPU results section is rewritten (default: <repo_dir>/docs/gpu.md)."
  )


class FoldError(ValueError):
  """The folder is not a device session's output."""


def unpack(source: str, into: str) -> dict:
  """Extracts session.tar.gz from `source` into `into`; returns its session.json."""
  archive = os.path.join(source, "session.tar.gz")
  if not os.path.isfile(archive):
    raise FoldError(f"{archive} not found: pass the folder the device run's files came back to")
  try:
    with tarfile.open(archive) as tar:
      tar.extractall(into, filter="data")  # refuses absolute paths and links out of `into`
  except (tarfile.TarError, EOFError) as e:
    raise FoldError(f"{archive} is damaged ({e}); fetch the device run's files again") from None
  path = os.path.join(into, "session.json")
  if not os.path.isfile(path):
    raise FoldError(f"{archive} holds no session.json: not made by tools.gpu_session")
  with open(path) as f:
    return json.load(f)


def _read(path: str) -> dict | None:
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def _mean_std(summary: dict | None, scale: float = 100.0, digits: int = 1) -> str:
  if not summary:
    return "–"
  if summary["n"] > 1:
    return f"{scale * summary['mean']:.{digits}f} ± {scale * summary['std']:.{digits}f}"
  return f"{scale * summary['mean']:.{digits}f}"


def _seconds(value: float | None, digits: int = 1) -> str:
  return "–" if value is None else f"{value:,.{digits}f}"


def cnn_rows(report_dir: str, plan: dict) -> tuple[list[str], list[str]]:
  """The accuracy/time table and the per-class table of the five structures."""
  table = [
    "| structure | study (official) | ours, stand-in (mean ± std) | n | s / epoch, per seed | "
    "time to 90%, per seed | train s, all seeds | compile s | study train s | command |",
    "|---|---|---|---|---|---|---|---|---|---|",
  ]
  classes = list(study.CLASS_NAMES)
  per_class = ["| structure | " + " | ".join(classes) + " |", "|---|" + "---|" * len(classes)]
  for name in STRUCTURES:
    reported = study.cnn(name)
    study_acc = f"{100 * reported['accuracy']:.0f}%" if reported else "–"
    study_s = _seconds(reported["train_seconds"], 0) if reported else "–"
    command = plan.get("commands", {}).get(name)
    command_text = f"`{' '.join(command)}`" if command else "–"
    if reported:  # the study's row stands whether or not ours ran
      per_class.append(
        f"| {name}, study | " + " | ".join(f"{100 * v:.0f}" for v in reported["per_class"].values()) + " |"
      )
    workdir = os.path.join(report_dir, "runs", name)
    results = _read(os.path.join(workdir, "results.json"))
    if results is None:
      has_metrics = os.path.exists(os.path.join(workdir, run_records.METRICS_FILE))
      history = run_records.read_metrics(workdir) if has_metrics else []
      status = f"not finished: {len(history)} epochs done" if history else "not run"
      if history:
        status += f", last {100 * history[-1]['test_accuracy']:.1f}%"
      table.append(f"| {name} | {study_acc} | {status} | | | | | | {study_s} | {command_text} |")
      continue
    n = len(results["per_seed"])
    sequential = "sequential_seeds" in results
    # Stacked seeds share every epoch: one seed's share of the time is 1/n of it. Sequential
    # seeds each have their own clock: their results.json keeps the first seed's seconds per
    # epoch, and each seed's own time to each accuracy.
    per_seed_epoch = results.get("seconds_per_epoch")
    if per_seed_epoch is not None and not sequential:
      per_seed_epoch /= n
    to_90 = [r["seconds_to_accuracy"].get("0.9") for r in results["per_seed"]]
    reached = [t if sequential else t / n for t in to_90 if t is not None]
    to_90_text = (
      f"{statistics.median(reached):.1f} s ({len(reached)}/{n} seeds)" if reached else f"not reached (0/{n})"
    )
    table.append(
      f"| {name} | {study_acc} | {_mean_std(results['summary'].get('test.accuracy'))}% | {n} "
      f"| {_seconds(per_seed_epoch, 2)} | {to_90_text} | {_seconds(results['train_seconds'])} "
      f"| {_seconds(results.get('compile_seconds'))} | {study_s} | {command_text} |"
    )
    ours = [
      _mean_std(results["summary"].get(f"test.per_class_accuracy.{c}"), 100, 1)
      for c in results["test"]["per_class_accuracy"]
    ]
    per_class.append(f"| {name}, ours | " + " | ".join(ours) + " |")
  return table, per_class


def bench_rows(bench_dir: str, suffix: str) -> list[str]:
  """The speed bench (experiments.bench): one row per benchmarked flagfile."""
  found = []
  if os.path.isdir(bench_dir):
    found = [_read(os.path.join(bench_dir, f)) for f in sorted(os.listdir(bench_dir)) if f.endswith(".json")]
  if not found:
    return ["Speed bench (`experiments.bench`): not run in this session."]
  lines = [
    f"Speed bench (`experiments.bench`): each run trains one seed alone, {found[0]['data']['label']}, "
    "accuracy of the last epoch; train s: the epochs' training, compile excluded; wall s: the whole "
    "training call. Full tables: `benchmarks/bench/`.",
    "",
    "| experiment | runs | test accuracy, % (mean ± sample std) | min / max | train s per run (median) "
    "| wall s per run (median) | compile s: first run / others | command |",
    "|---|---|---|---|---|---|---|---|",
  ]
  for bench in found:
    acc, compile_ = bench["test_accuracy"], bench["compile_seconds"]
    runs = str(bench["runs_completed"])
    if not bench["complete"]:
      runs += f" of {bench['runs_requested']} (stopped)"
    link = f"../benchmarks/{gpu_session.BENCH_DIR}/{bench['experiment']}_{suffix}.md"  # from docs/
    lines.append(
      f"| [{bench['experiment']}]({link}) | {runs} | {_mean_std(acc, 100, 2)} "
      f"| {100 * acc['min']:.2f} / {100 * acc['max']:.2f} | {bench['train_seconds']['median']:.2f} "
      f"| {bench['wall_seconds']['median']:.2f} | {_seconds(compile_['first_run'])} / "
      f"{_seconds(compile_['others_median'])} | `{bench['command']}` |"
    )
  return lines


def seeds_rows(benchmark: dict | None, what: str) -> list[str]:
  if benchmark is None:
    return [f"{what}: not measured in this session."]
  measured = benchmark["measured"]
  one = measured["one seed"]["steady_epoch_seconds"]
  lines = [
    f"{benchmark['what']}, {benchmark['epochs']} epochs (`{benchmark['command']}`):",
    "",
    "| run | wall s (whole run) | steady epoch s | epoch vs one seed |",
    "|---|---|---|---|",
  ]
  order = sorted(measured, key=lambda label: (label != "one seed", "sequential" in label))
  for label in order:  # one seed, N stacked, N sequential
    m = measured[label]
    lines.append(
      f"| {label} | {m['wall_seconds']:.1f} | {m['steady_epoch_seconds']:.3f} "
      f"| {m['steady_epoch_seconds'] / one:.2f}× |"
    )
  return lines


def device_suffix(device: dict) -> str:
  """'gpu_NVIDIA_H200': how folded benchmark files name the device they ran on."""
  return f"{device['platform']}_{device['kind'].replace(' ', '_')}"


def section(session: dict, unpacked: str, report_rel: str) -> list[str]:
  name = session["name"]
  report_dir = os.path.join(unpacked, "reports", name)
  plan = _read(os.path.join(report_dir, "plan.json")) or {}
  device, versions, git = session["device"], session["versions"], session["git"]
  date = session["date"][:10]
  lines = [
    BEGIN,
    "",
    f"**{'Smoke run (tiny models on data slices: checks the script, not the methods)' if session['smoke'] else 'Measured'}"
    f" on {device['count']} × {device['kind']} ({device['platform']}), {date}**, session `{name}`: "
    f"jax {versions.get('jax')}, flax {versions.get('flax')}, commit {str(git.get('commit'))[:10]}"
    f"{' (dirty tree)' if git.get('dirty') else ''}; {session['seconds']:.0f} s wall for all steps. "
    "Command: `bash benchmarks/gpu_session.sh` (prepared by `bash benchmarks/prepare_gpu_session.sh`), "
    f"folded in by `python -m tools.fold_gpu_session`. Full report: [{report_rel}/report.md](../{report_rel}/report.md).",
    "",
    f"CIFAR-10 **(JPEG stand-in)** for ours, official data for the study; {session['num_seeds']} seeds per "
    f"structure, trained {session['cnn_seeds']} (the faster per epoch on this device, measured below); "
    "bf16; accuracy of the last epoch. Per-seed times divide a stacked run's time by n.",
    "",
  ]
  table, per_class = cnn_rows(report_dir, plan)
  lines += table + ["", "Per-class test accuracy, %:", ""] + per_class + [""]
  benchmarks = os.path.join(unpacked, "benchmarks")
  lines += bench_rows(os.path.join(benchmarks, gpu_session.BENCH_DIR), device_suffix(device)) + [""]
  lines += ["Seeds stacked in one program vs one after another:", ""]
  lines += seeds_rows(gpu_session._newest_json(benchmarks, "seeds_cifar10_"), "CNN seeds") + [""]
  lines += seeds_rows(gpu_session._newest_json(benchmarks, "seeds_similarity_"), "Siamese LSTM seeds") + [""]
  det = _read(os.path.join(benchmarks, "deterministic.json")) or {}
  if "deterministic" in det and "nodeterministic" in det:
    off, on = det["nodeterministic"], det["deterministic"]
    lines += [
      f"`--deterministic` (`{on['xla_flags']}`): {off['seconds_per_epoch']:.2f} s per epoch without, "
      f"{on['seconds_per_epoch']:.2f} s with ({on['seconds_per_epoch'] / off['seconds_per_epoch']:.2f}×); "
      f"compile {off['compile_seconds']:.1f} s vs {on['compile_seconds']:.1f} s; test accuracy "
      f"{100 * off['accuracy']:.1f}% vs {100 * on['accuracy']:.1f}% (`{_short(on['command'])}`).",
      "",
    ]
  else:
    lines += ["`--deterministic`: not measured in this session.", ""]
  not_ok = [s for s in session["steps"] if s["status"] != "ok"]
  if not_ok:
    lines += [
      "Steps not completed: "
      + "; ".join(f"{s['step']} ({s['status']}{', ' + s['why'] if s.get('why') else ''})" for s in not_ok)
      + ".",
      "",
    ]
  lines.append(END)
  return lines


def _short(command: str) -> str:
  """'/path/experiments/main.py --flagfile=...' -> 'python -m experiments.main --flagfile=...'."""
  program, _, args = command.partition(" ")
  if program.endswith(".py") and os.sep + "experiments" + os.sep in program:
    program = "python -m experiments." + os.path.basename(program)[:-3]
  return f"{program} {args}".strip()


def _section_bounds(page: str) -> tuple[str, str]:
  """The page's text before and after its GPU results section; one FoldError line when the
  page or its markers are missing (checked before the fold writes anything)."""
  try:
    with open(page) as f:
      text = f.read()
  except OSError as e:
    raise FoldError(
      f"cannot read {page} ({e.strerror or e}): pass --results_doc=<the page with the GPU section>"
    ) from None
  if BEGIN not in text or END not in text:
    raise FoldError(f"{page} has no GPU results section: it needs the lines {BEGIN!r} and {END!r}")
  head, rest = text.split(BEGIN, 1)
  return head, rest.split(END, 1)[1]


def rewrite_section(page: str, lines: list[str]) -> None:
  head, tail = _section_bounds(page)
  with open(page + ".tmp", "w") as f:
    f.write(head + "\n".join(lines) + tail)
  os.replace(page + ".tmp", page)


def fold(source: str, repo_dir: str, results_doc: str) -> str:
  with tempfile.TemporaryDirectory() as unpacked:
    session = unpack(source, unpacked)
    _section_bounds(results_doc)  # a wrong page is refused before reports/ or benchmarks/ change
    name = session["name"]
    report_rel = f"reports/{name}"
    target = os.path.join(repo_dir, report_rel)
    lines = section(session, unpacked, report_rel)
    shutil.rmtree(target, ignore_errors=True)  # the same session folded again replaces itself
    shutil.copytree(os.path.join(unpacked, "reports", name), target)
    for extra in ("session.json", "session.log", "logs"):
      path = os.path.join(unpacked, extra)
      if os.path.isdir(path):
        shutil.copytree(path, os.path.join(target, "session_logs"), dirs_exist_ok=True)
      elif os.path.exists(path):
        shutil.copy2(path, target)
    smi = os.path.join(source, "nvidia-smi.txt")
    if os.path.exists(smi):
      shutil.copy2(smi, target)
    suffix = device_suffix(session["device"])
    benchmarks = os.path.join(unpacked, "benchmarks")
    if os.path.isdir(benchmarks):
      os.makedirs(os.path.join(repo_dir, "benchmarks"), exist_ok=True)
      for f in os.listdir(benchmarks):
        if f.endswith(".json"):
          out = f if f.startswith("seeds_") else f"{f[:-5]}_{suffix}.json"
          shutil.copy2(os.path.join(benchmarks, f), os.path.join(repo_dir, "benchmarks", out))
      bench = os.path.join(benchmarks, gpu_session.BENCH_DIR)  # experiments.bench's <experiment>.json / .md
      if os.path.isdir(bench):
        os.makedirs(os.path.join(repo_dir, "benchmarks", gpu_session.BENCH_DIR), exist_ok=True)
        for f in os.listdir(bench):
          stem, ext = os.path.splitext(f)
          if ext in (".json", ".md"):
            target_file = os.path.join(repo_dir, "benchmarks", gpu_session.BENCH_DIR, f"{stem}_{suffix}{ext}")
            shutil.copy2(os.path.join(bench, f), target_file)
    dumped = os.path.join(unpacked, gpu_session.TARGET_CONFIG)
    if os.path.exists(dumped):  # the deviceless GPU compiles use it from now on
      name = os.path.basename(deviceless.device_config_path(deviceless.gpu_name(session["device"]["kind"])))
      shutil.copy2(dumped, os.path.join(repo_dir, "simjax", "target_configs", name))
    rewrite_section(results_doc, lines)
  print(
    f"folded session {name}: {target}/report.md, {results_doc} (GPU results section), benchmarks/ (bench/)"
  )
  return target


def main(argv):
  if len(argv) != 2:
    raise app.UsageError("pass one folder: the one holding the device run's session.tar.gz")
  page = FLAGS.results_doc or os.path.join(FLAGS.repo_dir, "docs", "gpu.md")
  lifecycle.run_mode(lambda: fold(argv[1], FLAGS.repo_dir, page))


if __name__ == "__main__":
  define_flags()
  app.run(main)
