"""Tokenizer, vocabulary and batch encoding."""

import numpy as np
import pytest

from simjax.tasks.similarity.datasets import DataError
from simjax.tasks.similarity.text import PAD, UNK, Vocabulary, encode_batch, tokenize


def test_tokenize():
  assert tokenize("A man's 3.5-inch Flute!") == [
    "a",
    "man",
    "'",
    "s",
    "3",
    ".",
    "5",
    "-",
    "inch",
    "flute",
    "!",
  ]
  assert tokenize("  ") == []
  # Unicode letters stay in words; mojibake and control characters become their own tokens.
  assert tokenize("Café President\u201aÄôs") == ["café", "president", "\u201a", "äôs"]
  assert tokenize("Treasury\x12s") == ["treasury", "\x12", "s"]


def test_vocabulary_order_and_encode():
  vocab = Vocabulary.build([["b", "a", "c"], ["a", "c", "d"], ["a"]])
  # PAD, UNK, then by count (a=3, c=2), ties alphabetical (b, d).
  assert vocab.words == ["<pad>", "<unk>", "a", "c", "b", "d"] and len(vocab) == 6
  assert vocab.encode(["a", "d", "zebra"]) == [2, 5, UNK]
  assert Vocabulary.build([["a", "c", "d"], ["b", "a", "c"], ["a"]]).words == vocab.words  # order-free


def test_vocabulary_min_count_max_size():
  tokens = [["a", "a", "a", "b", "b", "c"]]
  assert Vocabulary.build(tokens, min_count=2).words == ["<pad>", "<unk>", "a", "b"]
  assert Vocabulary.build(tokens, max_size=3).words == ["<pad>", "<unk>", "a"]


def test_vocabulary_round_trip(tmp_path):
  odd = ["naïve", "\u201aÄô", "\x12", "a\x1cb", "x\u2028y", "tab\tword", " ", "<pad>x", "日本"]
  vocab = Vocabulary.build([odd, ["the", "the"]])
  path = tmp_path / "vocab.txt"
  vocab.save(str(path))
  loaded = Vocabulary.load(str(path))
  assert loaded.words == vocab.words and loaded.encode(odd) == vocab.encode(odd)
  assert path.read_text(encoding="utf-8").split("\n")[:3] == ["<pad>", "<unk>", "the"]


def test_vocabulary_bad_input(tmp_path):
  with pytest.raises(DataError, match="line breaks"):
    Vocabulary.build([["a\nb"]]).save(str(tmp_path / "v.txt"))
  (tmp_path / "bad.txt").write_text("hello\nworld\n", encoding="utf-8")
  with pytest.raises(DataError, match="must start with"):
    Vocabulary.load(str(tmp_path / "bad.txt"))
  with pytest.raises(DataError, match="cannot read vocabulary"):
    Vocabulary.load(str(tmp_path / "missing.txt"))


def test_encode_batch_pads_and_truncates():
  vocab = Vocabulary.build([["a", "b", "c"]])
  ids, lengths = encode_batch([["a", "b", "c", "a"], ["c"], [], ["zzz", "a"]], vocab, max_length=3)
  a, b, c = vocab.encode(["a", "b", "c"])
  assert ids.dtype == np.int32 and lengths.dtype == np.int32 and ids.shape == (4, 3)
  np.testing.assert_array_equal(ids, [[a, b, c], [c, PAD, PAD], [PAD, PAD, PAD], [UNK, a, PAD]])
  np.testing.assert_array_equal(lengths, [3, 1, 0, 2])
  assert encode_batch([], vocab, 4)[0].shape == (0, 4)
  with pytest.raises(DataError, match="max_length"):
    encode_batch([["a"]], vocab, 0)
