"""The leakage guard: no evaluation pair in the training data of a run that mixes datasets.

Pairs are compared normalised (lower-cased, whitespace collapsed) and in either order, the
way the offline data's notes measured them. Extra training data loses every pair that is also a
dev or test pair of the evaluated dataset; sources a benchmark's own rules forbid are refused
outright (the STS Benchmark is drawn from SemEval STS 2012-2016, so those sets hold most of
its test pairs; its readme also rules out SICK and MSRP test). The check's outcome is
recorded in results.json (data.leakage_check). The dataset's own official train split is
kept as released: the pairs it shares with its dev and test splits (STS-B: 6 and 7) are part
of the benchmark's definition, and are counted in the record, not removed.
"""

from __future__ import annotations

from typing import Iterable

from simjax import errors

# dataset -> {extra source: why it may not be trained on for that dataset}
FORBIDDEN = {
  "stsb": {
    "semeval_sts": "the STS Benchmark is drawn from SemEval STS 2012-2016 (1,004 of its 1,379 test "
    "pairs are in them) and its readme forbids training on them",
    "sick": "the STS Benchmark's readme forbids training STS-B systems on SICK",
    "msrp:test": "the STS Benchmark's readme forbids training STS-B systems on MSRP test",
  },
}
NORMALISATION = "lower-cased, whitespace collapsed, either order"


class LeakageError(errors.DataError):
  """Training data that holds evaluation pairs, or a source the benchmark forbids."""


def normalise(sentence: str) -> str:
  return " ".join(sentence.lower().split())


def pair_key(sentence1: str, sentence2: str) -> tuple[str, str]:
  """The same key for (a, b) and (b, a)."""
  a, b = normalise(sentence1), normalise(sentence2)
  return (a, b) if a <= b else (b, a)


def keys(sentence1: Iterable[str], sentence2: Iterable[str]) -> list[tuple[str, str]]:
  return [pair_key(a, b) for a, b in zip(sentence1, sentence2)]


def split_names(spec: str) -> list[str]:
  """The split names a TFDS split spec reads, one per `+` part, each the text before its slice with
  surrounding whitespace dropped and case folded: "train[:10%] + TEST" -> ["train", "test"].

  TFDS's own split names are case-sensitive; folding case here only makes the check refuse more
  (a spec TFDS rejects anyway), never less."""
  return [part.split("[", 1)[0].strip().casefold() for part in spec.split("+")]


def check_source_allowed(dataset: str, source: str, split: str = "train") -> None:
  """Refuses a source (any of its splits) or a split spec of a source that reads a split
  `dataset`'s rules forbid: the split itself, sliced ("test[:10]", "test[:50%]"), one part of a
  `+` union ("train+test"), or "all" (every split of the source, so every forbidden one)."""
  rules = FORBIDDEN.get(dataset, {})
  key = source.strip().casefold()
  if key in rules:
    raise LeakageError(
      f"{source.strip()} may not be training data for {dataset}: {rules[key]}; drop it from the extra "
      "training data",
      settings=("extra_train",),
    )
  forbidden = {rule.partition(":")[2]: why for rule, why in rules.items() if rule.startswith(f"{key}:")}
  parts = split_names(split)
  # (part of the spec, forbidden split it reads): "all" reads every split.
  read = [
    (part, hit)
    for part in parts
    for hit in (sorted(forbidden) if part == "all" else [part])
    if hit in forbidden
  ]
  for part, hit in read:
    name = f"{source.strip()}:{' '.join(split.split())}"
    if parts == [hit]:  # the forbidden split alone, whole or sliced
      reason, instead = forbidden[hit], ""
    else:
      every = " ('all' is every split)" if part == "all" else ""
      reason = f"it reads {key}:{hit}{every}, and {forbidden[hit]}"
      instead = f", naming only splits other than {hit}"
    raise LeakageError(
      f"{name} may not be training data for {dataset}: {reason}; drop it from the extra training "
      f"data{instead}",
      settings=("extra_train",),
    )


def evaluation_rows(training_keys: list[tuple[str, str]], evaluation_keys: set[tuple[str, str]]) -> list[int]:
  """Positions of the training pairs that are evaluation pairs."""
  return [i for i, key in enumerate(training_keys) if key in evaluation_keys]


def check(extra_keys: list[tuple[str, str]], evaluation: dict[str, list[tuple[str, str]]]) -> dict[str, int]:
  """Refuses extra training data holding any pair of `evaluation` ({split: keys}); returns
  {split: 0}, the counts checked, for the record."""
  found = {name: len(evaluation_rows(extra_keys, set(split_keys))) for name, split_keys in evaluation.items()}
  leaking = {name: n for name, n in found.items() if n}
  if leaking:
    raise LeakageError(
      "the extra training data holds evaluation pairs ("
      + ", ".join(f"{n} of {name}" for name, n in leaking.items())
      + f"; compared {NORMALISATION}): remove them before training",
      settings=("extra_train",),
    )
  return found
