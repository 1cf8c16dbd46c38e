"""The numbers of the study we reproduce, read from experiments/study.json (its one copy here).

study.json is the study's own record (single PyTorch runs on the official data), copied
into the project so reports never depend on files outside it. Reports, tables and figures
read the study's values through this module.
"""

from __future__ import annotations

import json
import os
from typing import Any

PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "study.json")
SOURCE = "the study's slides (official data; single runs)"

with open(PATH) as _f:
  STUDY: dict[str, Any] = json.load(_f)

CNN_STRUCTURES = tuple(STUDY["cifar10"]["structures"])  # cnn_fc, cnn_dropout, cnn_gap, cnn_gap_dropout
# The study's class names, in CIFAR-10's label order (TFDS: airplane, automobile, ...).
CLASS_NAMES = ("plane", "car", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def sentence_pearson(variant: str) -> float | None:
  """STS-B test Pearson the study reported for a sentence variant (rnn, lstm, ...), if any."""
  found = STUDY["similarity"]["variants"].get(variant)
  return None if found is None else found["test_pearson"]


def sentence_mse(variant: str) -> dict[int, dict[str, float]]:
  """{epoch: {"train_mse", "dev_mse"}} of the epochs the study printed (STS-B)."""
  found = STUDY["similarity"]["variants"].get(variant) or {}
  return {int(epoch): values for epoch, values in found.get("epochs", {}).items()}


def cnn(structure: str) -> dict[str, Any] | None:
  """{"accuracy" (fraction), "train_seconds", "per_class" ({class: fraction})} or None."""
  found = STUDY["cifar10"]["structures"].get(structure)
  if found is None:
    return None
  return {
    "name": found["name"],
    "accuracy": found["accuracy"] / 100,
    "train_seconds": found["train_seconds"],
    "per_class": {c: v / 100 for c, v in found["per_class"].items()},
  }
