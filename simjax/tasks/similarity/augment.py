"""New training pairs from WordNet synonyms (MaLSTM's augmentation of SICK).

Each new pair is a train pair with one word of each sentence swapped for a synonym from the
word's most frequent WordNet sense (words in base form only); it keeps the pair's score. Words are chosen at random
with a fixed generator, so the same settings always give the same pairs (and one vocabulary
for every seed). WordNet 3.0 is read by NLTK: from `<manual_dir>/wordnet` when that folder
exists (copied once into `<nltk_data>/corpora/wordnet`, as NLTK reads only its own data
folders), else from NLTK's data path, downloaded there with nltk.download if missing.
"""

from __future__ import annotations

import functools
import os
import re
import shutil

import numpy as np

from simjax.tasks.similarity.datasets import DataError

# Function words, never swapped (their "synonyms" in WordNet are unrelated senses).
_STOP = frozenset(
  "a an the is are was were be been being am and or but not no nor of in on at to for from by with "
  "as into onto over under up down out off than then there here this that these those it its he she "
  "they them his her their we us our you your i me my one two some any all each every other another "
  "do does did doing has have had having can could will would shall should may might must very".split()
)
_WORD = re.compile(r"^[A-Za-z]{3,}$")
SENSES = 1  # synonyms come from the word's most frequent sense only (others drift: man -> serviceman)


def wordnet(manual_dir: str | None, nltk_data: str):
  """NLTK's WordNet reader, from the offline copy when there is one."""
  try:
    import nltk  # imported here: only runs that augment need it
  except ImportError:
    raise DataError("WordNet synonyms need NLTK: pip install nltk (it is in requirements.txt)") from None
  source = os.path.join(manual_dir, "wordnet") if manual_dir else None
  if source and os.path.isdir(source):
    target = os.path.join(nltk_data, "corpora", "wordnet")
    if not os.path.isfile(os.path.join(target, "index.sense")):
      partial = target + ".partial"
      shutil.rmtree(partial, ignore_errors=True)
      shutil.copytree(source, partial)
      os.replace(partial, target)
  if nltk_data not in nltk.data.path:
    nltk.data.path.insert(0, nltk_data)
  try:
    nltk.data.find("corpora/wordnet")
  except LookupError:
    if not nltk.download("wordnet", download_dir=nltk_data, quiet=True):
      raise DataError(
        f"WordNet not found (no {source or '<manual_dir>/wordnet'} folder) and nltk.download failed: put "
        "the WordNet 3.0 database files in <manual_dir>/wordnet or connect to the internet",
        settings=("manual_dir",),
      ) from None
  from nltk.corpus import wordnet as reader

  reader.ensure_loaded()
  return reader


class Synonyms:
  """word -> its one-word WordNet synonyms (lower case, sorted), cached."""

  def __init__(self, reader):
    self.reader = reader

  @functools.lru_cache(maxsize=None)
  def __call__(self, word: str) -> tuple[str, ...]:
    lower = word.lower()
    # Inflected words are left alone: WordNet gives base forms ("buttering" -> "butter").
    if lower in _STOP or not _WORD.match(word) or self.reader.morphy(lower) not in (None, lower):
      return ()
    found = set()
    for synset in self.reader.synsets(lower)[:SENSES]:
      for lemma in synset.lemma_names():
        name = lemma.lower()
        if name != lower and _WORD.match(name):
          found.add(name)
    return tuple(sorted(found))


def _swap_one(sentence: str, synonyms: Synonyms, rng: np.random.Generator) -> str | None:
  words = sentence.split()
  choices = [i for i, w in enumerate(words) if synonyms(w)]
  if not choices:
    return None
  i = choices[rng.integers(len(choices))]
  options = synonyms(words[i])
  words[i] = options[rng.integers(len(options))]
  return " ".join(words)


def synonym_pairs(
  sentence1: list[str],
  sentence2: list[str],
  scores: np.ndarray,
  copies: int,
  synonyms: Synonyms,
  seed: int = 0,
) -> tuple[list[str], list[str], np.ndarray, list[int]]:
  """`copies` new pairs per pair (fewer where a sentence has no word with a synonym): the
  sentences, their scores, and the position of the pair each came from."""
  rng = np.random.default_rng(seed)
  new1, new2, origin = [], [], []
  for copy in range(copies):
    for i, (a, b) in enumerate(zip(sentence1, sentence2)):
      swapped_a, swapped_b = _swap_one(a, synonyms, rng), _swap_one(b, synonyms, rng)
      if swapped_a is None and swapped_b is None:
        continue
      new1.append(swapped_a or a)
      new2.append(swapped_b or b)
      origin.append(i)
  return new1, new2, np.asarray(scores, np.float32)[origin], origin
