"""Tokenizer, vocabulary and padding for sentence-pair models."""

from __future__ import annotations

import collections
import os
import re
from collections.abc import Iterable, Sequence

import numpy as np

from simjax.tasks.similarity.datasets import DataError

# Runs of word characters, or single punctuation marks. GloVe 6B is lowercase
# and splits punctuation off, so this keeps most tokens findable in it.
_TOKEN = re.compile(r"\w+|[^\w\s]")

PAD, UNK = 0, 1
PAD_WORD, UNK_WORD = "<pad>", "<unk>"  # the tokenizer never produces these (it splits off "<")


def tokenize(sentence: str) -> list[str]:
  """Lowercased word and punctuation tokens, e.g. "Don't!" -> ["don", "'", "t", "!"]."""
  return _TOKEN.findall(sentence.lower())


class Vocabulary:
  """Word <-> id map: PAD=0, UNK=1, then words by descending count (ties alphabetical)."""

  def __init__(self, words: Sequence[str]):
    """`words` lists every entry by id, PAD_WORD and UNK_WORD first (use build/load)."""
    if list(words[:2]) != [PAD_WORD, UNK_WORD]:
      raise DataError(f"vocabulary must start with {PAD_WORD!r}, {UNK_WORD!r}; got {list(words[:2])}")
    self.words = list(words)
    self._ids = {word: i for i, word in enumerate(self.words)}
    if len(self._ids) != len(self.words):
      raise DataError("vocabulary has duplicate words; rebuild it with Vocabulary.build")

  @classmethod
  def build(
    cls, token_lists: Iterable[Sequence[str]], min_count: int = 1, max_size: int | None = None
  ) -> Vocabulary:
    """Vocabulary of the tokens seen at least `min_count` times.

    `max_size` caps len(vocab), PAD and UNK included (the rarest words go).
    """
    counts = collections.Counter(token for tokens in token_lists for token in tokens)
    for special in (PAD_WORD, UNK_WORD):
      counts.pop(special, None)
    # Sorting on (-count, word) makes ids independent of input order.
    ranked = sorted((w for w, n in counts.items() if n >= min_count), key=lambda w: (-counts[w], w))
    if max_size is not None:
      ranked = ranked[: max(max_size - 2, 0)]
    return cls([PAD_WORD, UNK_WORD, *ranked])

  def __len__(self) -> int:
    return len(self.words)

  def __contains__(self, word: str) -> bool:
    return word in self._ids

  def encode(self, tokens: Iterable[str]) -> list[int]:
    return [self._ids.get(token, UNK) for token in tokens]

  def save(self, path: str) -> None:
    """One word per line (line number = id), UTF-8, "\\n" line ends."""
    bad = [w for w in self.words if "\n" in w or "\r" in w or w == ""]
    if bad:
      raise DataError(f"cannot save vocabulary: words {bad[:3]!r} are empty or contain line breaks")
    # newline="" writes "\n" as is, so load() can split on "\n" only and keep
    # words containing other Unicode line separators (\x1c, \u2028, ...) intact.
    tmp = f"{path}.tmp"  # then rename: a kill never leaves a truncated vocabulary
    with open(tmp, "w", encoding="utf-8", newline="") as f:
      f.write("".join(word + "\n" for word in self.words))
    os.replace(tmp, path)

  @classmethod
  def load(cls, path: str) -> Vocabulary:
    try:
      with open(path, encoding="utf-8", newline="") as f:
        text = f.read()
    except (OSError, UnicodeDecodeError) as e:
      raise DataError(f"cannot read vocabulary {path}: {e}; pass a file written by Vocabulary.save") from None
    if not text.endswith("\n"):
      raise DataError(f"vocabulary {path} is empty or truncated (no final newline); save it again")
    return cls(text[:-1].split("\n"))


def encode_batch(
  token_lists: Sequence[Sequence[str]], vocab: Vocabulary, max_length: int
) -> tuple[np.ndarray, np.ndarray]:
  """Token ids int32 [N, max_length] (PAD-filled, truncated) and lengths int32 [N].

  An empty token list gives length 0 and an all-PAD row.
  """
  if max_length < 1:
    raise DataError(f"max_length must be >= 1, got {max_length}")
  ids = np.full((len(token_lists), max_length), PAD, dtype=np.int32)
  lengths = np.zeros(len(token_lists), dtype=np.int32)
  for row, tokens in enumerate(token_lists):
    encoded = vocab.encode(tokens[:max_length])
    ids[row, : len(encoded)] = encoded
    lengths[row] = len(encoded)
  return ids, lengths
