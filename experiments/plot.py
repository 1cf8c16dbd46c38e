r"""Figures from finished CIFAR-10 workdirs (PNG, matplotlib).

  python -m experiments.plot --out=plots [--names=a,b,...] workdirs/cnn_fc workdirs/cnn_dropout \
      workdirs/cnn_gap workdirs/cnn_gap_dropout [workdirs/cnn_resnet]

Writes <out>/comparison.png (train loss and test accuracy per epoch, one line per workdir:
the study's comparison of the structures) and <out>/per_class_accuracy.png (grouped bars).
The data label (e.g. "CIFAR-10 (JPEG stand-in)") comes from each run's results.json.
Multi-seed runs (--num_seeds) are drawn as their mean with a band from the lowest to the
highest seed, and bars with ± one standard deviation.

`learning_curves()` draws sentence-similarity runs: train and dev MSE per epoch.
"""

from __future__ import annotations

import json
import logging
import os
import sys

import numpy as np
from absl import app, flags

from simjax import run_records

FLAGS = flags.FLAGS


def define_flags() -> None:
  flags.DEFINE_string("out", "plots", "Folder for the PNG files.")
  flags.DEFINE_list(
    "names", [], "Comma-separated legend names, one per workdir (default: each run's --experiment)."
  )


def _load(workdir: str) -> dict:
  results_path = os.path.join(workdir, "results.json")
  metrics_path = os.path.join(workdir, run_records.METRICS_FILE)
  for path in (results_path, metrics_path):
    if not os.path.exists(path):
      raise FileNotFoundError(f"{path} not found: is {workdir} a finished CIFAR-10 run?")
  with open(results_path) as f:
    results = json.load(f)
  if "per_class_accuracy" not in results.get("test", {}):
    raise ValueError(f"{workdir} is not a CIFAR-10 run (no per-class accuracy in results.json)")
  history = run_records.read_metrics(workdir)
  name = results.get("flags", {}).get("experiment") or os.path.basename(os.path.normpath(workdir))
  return {"name": name, "results": results, "history": history, "label": results["data"]["eval"]["label"]}


class MissingPlotDependency(ImportError):
  """matplotlib is not installed; the message says how to install it."""


def _quiet_font_cache_note(record: logging.LogRecord) -> bool:
  """False for matplotlib's note that it is building its font cache (first use, > 5 s): a
  delay explained, not a problem."""
  return not str(record.msg).startswith("Matplotlib is building the font cache")


def _quiet_matplotlib_notes() -> None:
  """Under absl (reproduce, this module's command) Python's root logger prints INFO records in
  absl's format, so matplotlib's notes (e.g. "generated new fontManager" when it builds its font
  cache on a first run) would come out as stray log lines. Its warnings still do, and a
  level set for matplotlib's logger beforehand is kept."""
  matplotlib_log = logging.getLogger("matplotlib")
  if matplotlib_log.level == logging.NOTSET:
    matplotlib_log.setLevel(logging.WARNING)
  logging.getLogger("matplotlib.font_manager").addFilter(_quiet_font_cache_note)  # added once only


def _pyplot():
  _quiet_matplotlib_notes()  # before the import, which builds the font cache when there is none
  try:  # imported here: optional (reproduce's tables work without it), and slow to import
    import matplotlib

    matplotlib.use("Agg")  # files only; works without a display
    import matplotlib.pyplot as plt
    import matplotlib.ticker  # noqa: F401
  except ImportError:
    raise MissingPlotDependency(
      "plotting needs matplotlib: pip install matplotlib (it is in requirements.txt)"
    ) from None
  return matplotlib, plt


def _curve(axis, history: list[dict], key: str, label: str, scale: float = 1.0) -> None:
  """Mean over seeds per epoch, with a min-max band when the run has several seeds."""
  epochs = [row["epoch"] for row in history]
  (line,) = axis.plot(epochs, [scale * row[key] for row in history], label=label)
  per_seed = [row.get("per_seed", {}).get(key) for row in history]
  if all(values and len(values) > 1 for values in per_seed):
    low = [scale * min(values) for values in per_seed]
    high = [scale * max(values) for values in per_seed]
    axis.fill_between(epochs, low, high, color=line.get_color(), alpha=0.2, linewidth=0)


def plot(workdirs: list[str], out: str, names: list[str] | None = None) -> list[str]:
  """`names` label the runs (default: each run's --experiment)."""
  matplotlib, plt = _pyplot()
  runs = [_load(w) for w in workdirs]
  if names:
    if len(names) != len(runs):
      raise ValueError(f"--names: {len(names)} names for {len(runs)} workdirs")
    for run, name in zip(runs, names):
      run["name"] = name
  labels = sorted({run["label"] for run in runs})
  data_label = " + ".join(labels)
  os.makedirs(out, exist_ok=True)

  figure, (loss_axis, accuracy_axis) = plt.subplots(1, 2, figsize=(12, 4.5))
  for run in runs:
    eval_key = next(k for k in run["history"][0] if k.endswith("_accuracy") and k != "train_accuracy")
    final = run["results"]["test"]["accuracy"]
    _curve(loss_axis, run["history"], "train_loss", run["name"])
    _curve(accuracy_axis, run["history"], eval_key, f"{run['name']} ({100 * final:.1f}%)", scale=100)
  loss_axis.set(xlabel="epoch", ylabel="train loss", title="Training loss")
  accuracy_axis.set(xlabel="epoch", ylabel="test accuracy (%)", title="Test accuracy")
  for axis in (loss_axis, accuracy_axis):
    axis.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    axis.grid(alpha=0.3)
    axis.legend()
  figure.suptitle(f"CNN structures on {data_label}")
  figure.tight_layout()
  comparison = os.path.join(out, "comparison.png")
  figure.savefig(comparison, dpi=120)
  plt.close(figure)

  classes = list(runs[0]["results"]["test"]["per_class_accuracy"])
  figure, axis = plt.subplots(figsize=(12, 4.5))
  width = 0.8 / len(runs)
  for i, run in enumerate(runs):
    per_class = run["results"]["test"]["per_class_accuracy"]
    positions = [c + (i - (len(runs) - 1) / 2) * width for c in range(len(classes))]
    summary = run["results"].get("summary", {})
    errors = [100 * summary.get(f"test.per_class_accuracy.{c}", {}).get("std", 0.0) for c in classes]
    axis.bar(positions, [100 * per_class[c] for c in classes], width, yerr=errors, label=run["name"])
  axis.set_xticks(range(len(classes)), classes)
  axis.set(ylabel="test accuracy (%)", title=f"Per-class test accuracy, {data_label}", ylim=(0, 100))
  axis.grid(axis="y", alpha=0.3)
  axis.legend(ncol=min(len(runs), 5), fontsize="small")
  figure.tight_layout()
  per_class_path = os.path.join(out, "per_class_accuracy.png")
  figure.savefig(per_class_path, dpi=120)
  plt.close(figure)
  return [comparison, per_class_path]


def _save(plt, figure, out: str, name: str) -> str:
  figure.tight_layout()
  os.makedirs(out, exist_ok=True)
  path = os.path.join(out, name)
  figure.savefig(path, dpi=120)
  plt.close(figure)
  return path


def learning_curves(
  workdirs: list[str], out: str, title: str = "", study: dict[str, dict[int, dict]] | None = None
) -> str:
  """<out>/learning_curves.png: train and dev MSE per epoch of sentence-similarity runs.
  `study` ({run folder name: {epoch: {"train_mse", "dev_mse"}}}) adds the epochs the study
  printed, as markers in the run's colour."""
  _, plt = _pyplot()
  figure, (train_axis, dev_axis) = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
  for workdir in workdirs:
    history = run_records.read_metrics(workdir)
    if not history or "train_mse" not in history[0]:
      raise ValueError(f"{workdir} is not a finished sentence-similarity run (no train_mse in metrics.jsonl)")
    name = os.path.basename(os.path.normpath(workdir))
    _curve(train_axis, history, "train_mse", name)
    _curve(dev_axis, history, "dev_mse", name)
    reported = (study or {}).get(name)
    if reported:
      epochs = sorted(reported)
      for axis, key in ((train_axis, "train_mse"), (dev_axis, "dev_mse")):
        colour = axis.get_lines()[-1].get_color()
        values = [reported[e][key] for e in epochs]
        axis.plot(epochs, values, "o--", color=colour, alpha=0.7, markersize=4, label=f"{name}: the study")
  train_axis.set(xlabel="epoch", ylabel="MSE", title="Train MSE")
  dev_axis.set(xlabel="epoch", title="Dev MSE")
  for axis in (train_axis, dev_axis):
    axis.grid(alpha=0.3)
    axis.legend(fontsize="small")
  if title:
    figure.suptitle(title)
  return _save(plt, figure, out, "learning_curves.png")


def ablation(
  steps: list[tuple[str, list[float]]], out: str, title: str = "", study: float | None = None
) -> str:
  """<out>/ablation.png: test Pearson of each step (its seeds as dots, their mean as a bar
  with ± one standard deviation), top to bottom in step order; `study` as a dashed line."""
  _, plt = _pyplot()
  figure, axis = plt.subplots(figsize=(9, 0.55 * len(steps) + 1.6))
  rows = np.arange(len(steps))[::-1]
  for row, (label, values) in zip(rows, steps):
    values = np.asarray(values, float)
    std = values.std(ddof=1) if len(values) > 1 else 0.0
    axis.barh(row, values.mean(), xerr=std, color="tab:blue", alpha=0.35, capsize=3)
    axis.plot(values, np.full(len(values), row), "o", color="tab:blue", markersize=3)
    axis.text(values.mean(), row + 0.3, f" {values.mean():.3f}", va="center", fontsize="small")
  if study is not None:
    axis.axvline(study, color="tab:red", linestyle="--", label=f"the study: {study:.3f}")
    axis.legend(fontsize="small", loc="lower right")
  axis.set_yticks(rows, [label for label, _ in steps], fontsize="small")
  axis.set(xlabel="test Pearson (seeds as dots, mean ± std as bars)", title=title)
  axis.grid(alpha=0.3, axis="x")
  return _save(plt, figure, out, "ablation.png")


def main(argv: list[str]) -> int:
  """`argv[1:]`: the workdirs (absl has parsed --out and --names)."""
  workdirs = argv[1:]
  if not workdirs:
    raise app.UsageError("pass one or more finished CIFAR-10 workdirs", exitcode=2)
  try:
    for path in plot(workdirs, FLAGS.out, [n for n in FLAGS.names if n] or None):
      print(path)
  except (OSError, ValueError, MissingPlotDependency) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  define_flags()
  app.run(main)
