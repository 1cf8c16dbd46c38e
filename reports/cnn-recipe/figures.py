r"""Rebuilds this report's classic-CNN proxy figure from the run folders kept here.

  python reports/cnn-recipe/figures.py     # from the repository root

Each folder holds a run's metrics.jsonl (test accuracy per epoch) and eval_train_10000.json
(the final checkpoint evaluated on train[:10000] without augmentation or dropout: "clean
train" accuracy). A structure learns its training set when clean train accuracy ends above
test accuracy.
"""

from __future__ import annotations

import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))

# (folder, legend label); the order of the legend and the bars.
CLASSIC = [
  ("proxy_cnn_fc_3ep", "cnn_fc"),
  ("proxy_cnn_dropout_3ep_d0.5", "cnn_dropout, dropout 0.5"),
  ("proxy_cnn_dropout_3ep_d0.25", "cnn_dropout, dropout 0.25"),
  ("proxy_cnn_gap_3ep", "cnn_gap"),
  ("proxy_cnn_gap_dropout_3ep", "cnn_gap_dropout, dropout 0.5"),
  ("proxy_cnn_gap_dropout_3ep_d0.25", "cnn_gap_dropout, dropout 0.25"),
]


def _rows(folder: str) -> list[dict]:
  with open(os.path.join(HERE, folder, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f if line.strip()]


def _clean_train(folder: str) -> float:
  with open(os.path.join(HERE, folder, "eval_train_10000.json")) as f:
    return json.load(f)["test"]["accuracy"]  # eval.json names the evaluated split's numbers "test"


def classic(out: str) -> None:
  runs = [(folder, label) for folder, label in CLASSIC if os.path.isdir(os.path.join(HERE, folder))]
  figure, (curves, bars) = plt.subplots(1, 2, figsize=(14, 4.8))
  for folder, label in runs:
    rows = _rows(folder)
    epochs = [r["epoch"] for r in rows]
    (line,) = curves.plot(epochs, [100 * r["test_accuracy"] for r in rows], marker="o", label=label)
    curves.plot([epochs[-1]], [100 * _clean_train(folder)], marker="*", markersize=13, color=line.get_color())
  curves.set(xlabel="epoch", ylabel="accuracy (%)", title="Test accuracy per epoch (*: clean train, end)")
  curves.set_xticks(sorted({r["epoch"] for folder, _ in runs for r in _rows(folder)}))
  curves.grid(alpha=0.3)
  curves.legend(fontsize="small")
  x = range(len(runs))
  test = [100 * _rows(folder)[-1]["test_accuracy"] for folder, _ in runs]
  train = [100 * _clean_train(folder) for folder, _ in runs]
  bars.bar([i - 0.2 for i in x], test, 0.4, label="test")
  bars.bar([i + 0.2 for i in x], train, 0.4, label="clean train (train[:10000])")
  bars.set_xticks(list(x), [label.replace(", ", "\n") for _, label in runs], fontsize="x-small")
  bars.set(ylabel="accuracy (%)", title="After the last epoch", ylim=(40, 90))
  bars.grid(axis="y", alpha=0.3)
  bars.legend(fontsize="small")
  figure.suptitle("Classic CNNs, 3-epoch proxies, CIFAR-10 (JPEG stand-in), 2-core CPU, seed 0")
  figure.tight_layout()
  figure.savefig(out, dpi=110)
  plt.close(figure)
  print(out)


# cnn_dropout at dropout 0.25: the 3-epoch proxy and the 6-epoch one (session 4).
DROPOUT_SCHEDULES = [
  ("proxy_cnn_dropout_3ep_d0.25", "3-epoch schedule"),
  ("proxy_cnn_dropout_6ep_d0.25", "6-epoch schedule"),
]


def dropout_schedules(out: str) -> None:
  runs = [(folder, label) for folder, label in DROPOUT_SCHEDULES if os.path.isdir(os.path.join(HERE, folder))]
  figure, axes = plt.subplots(figsize=(8, 4.8))
  for folder, label in runs:
    rows = _rows(folder)
    epochs = [r["epoch"] for r in rows]
    (line,) = axes.plot(epochs, [100 * r["test_accuracy"] for r in rows], marker="o", label=f"{label}: test")
    axes.plot(
      epochs,
      [100 * r["train_accuracy"] for r in rows],
      linestyle="--",
      color=line.get_color(),
      label=f"{label}: train (augmented, with dropout)",
    )
    axes.plot(
      [epochs[-1]],
      [100 * _clean_train(folder)],
      marker="*",
      markersize=14,
      color=line.get_color(),
      label=f"{label}: clean train, end",
    )
  axes.set(xlabel="epoch", ylabel="accuracy (%)")
  axes.set_title(
    "cnn_dropout (dropout 0.25), CIFAR-10 (JPEG stand-in), 2-core CPU, seed 0", fontsize="medium"
  )
  axes.grid(alpha=0.3)
  axes.legend(fontsize="x-small")
  figure.tight_layout()
  figure.savefig(out, dpi=110)
  plt.close(figure)
  print(out)


if __name__ == "__main__":
  classic(os.path.join(HERE, "proxy_classic_3ep.png"))
  dropout_schedules(os.path.join(HERE, "proxy_cnn_dropout_6ep.png"))
