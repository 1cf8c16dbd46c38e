"""GloVe loading (package and text file) and the embedding matrix."""

import json
import os
import pathlib
import subprocess
import sys
import time

import numpy as np
import pytest

from simjax.tasks.similarity.datasets import DataError
from simjax.tasks.similarity.glove import embedding_matrix, load_glove, token_coverage
from simjax.tasks.similarity.text import PAD, UNK, Vocabulary

REPO = pathlib.Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def glove():
  start = time.perf_counter()
  words, vectors = load_glove()
  return words, vectors, time.perf_counter() - start


def test_package_vectors(glove):
  words, vectors, seconds = glove
  assert vectors.shape == (400000, 50) and vectors.dtype == np.float32 and len(words) == 400000
  assert words[0] == "the" and np.isfinite(vectors).all()
  assert seconds < 10  # ~0.5 s normally; generous bound against slow CI disks


def test_text_file(tmp_path):
  path = tmp_path / "tiny.txt"
  path.write_text("the 0.1 0.2 0.3\ncat -1 2.5 1e-3\n\u201aÄô 0 0 1\n", encoding="utf-8")
  words, vectors = load_glove(str(path))
  assert words == ["the", "cat", "\u201aÄô"] and vectors.dtype == np.float32
  np.testing.assert_allclose(vectors[1], [-1.0, 2.5, 0.001])
  # word2vec-style header lines are skipped.
  path.write_text("2 2\na 1 2\nb 3 4\n", encoding="utf-8")
  assert load_glove(str(path))[1].shape == (2, 2)


@pytest.mark.parametrize("bad_line", ["dog 1 2\n", "dog 1 x 2\n", "\n"])
def test_text_file_malformed(tmp_path, bad_line):
  path = tmp_path / "bad.txt"
  path.write_text("the 0.1 0.2 0.3\n" + bad_line, encoding="utf-8")
  with pytest.raises(DataError, match=r"bad\.txt: line 2: expected a word and 3 numbers"):
    load_glove(str(path))


def test_missing_file(tmp_path):
  with pytest.raises(DataError, match="cannot open GloVe file"):
    load_glove(str(tmp_path / "nope.txt"))


def test_embedding_matrix():
  words = ["the", "cat", "sat"]
  vectors = np.array([[1, 2], [3, 4], [5, 6]], dtype=np.float32)
  vocab = Vocabulary.build([["cat", "the", "the", "dog"]])  # <pad> <unk> the cat dog
  matrix, coverage = embedding_matrix(vocab, words, vectors, seed=0)
  assert matrix.shape == (5, 2) and matrix.dtype == np.float32
  np.testing.assert_array_equal(matrix[PAD], [0, 0])
  np.testing.assert_array_equal(matrix[vocab.encode(["the", "cat"])], [[1, 2], [3, 4]])
  assert coverage == pytest.approx(2 / 3)
  again, _ = embedding_matrix(vocab, words, vectors, seed=0)
  other, _ = embedding_matrix(vocab, words, vectors, seed=1)
  np.testing.assert_array_equal(matrix, again)
  dog = vocab.encode(["dog"])[0]
  assert not np.array_equal(matrix[[UNK, dog]], other[[UNK, dog]])


def test_embedding_matrix_with_package_vectors(glove):
  words, vectors, _ = glove
  vocab = Vocabulary.build([["the", "plane", "is", "taking", "off", "."], ["qwzxvbnmqq"]])
  matrix, coverage = embedding_matrix(vocab, words, vectors, seed=3)
  assert coverage == pytest.approx(6 / 7)
  np.testing.assert_array_equal(matrix[vocab.encode(["the"])[0]], vectors[0])
  # Random rows have the GloVe scale.
  noise = matrix[vocab.encode(["qwzxvbnmqq"])[0]]
  assert 0.2 < noise.std() < 1.5


def test_token_coverage_counts_tokens_and_sentences_as_the_models_read_them():
  found = token_coverage(
    ["A cat sat.", "The zqx sat on the zqx!", ""], ["a", "cat", "sat", ".", "the", "on", "!"]
  )
  assert found == {
    "tokens": 4 + 7,
    "tokens_without_vector": 2,
    "sentences": 3,
    "sentences_with_a_word_without_vector": 1,
    "words_without_vector": ["zqx"],
  }


def test_coverage_command_on_the_sentence_data(prepared, tmp_path):
  data_dir = prepared("stsb")
  output = tmp_path / "coverage.json"
  done = subprocess.run(
    [
      sys.executable,
      "-m",
      "experiments.glove_coverage",
      "--datasets=stsb",
      f"--data_dir={data_dir}",
      f"--output={output}",
    ],
    cwd=REPO,
    env={**os.environ, "PYTHONPATH": str(REPO)},
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert done.returncode == 0, done.stderr[-3000:]
  found = json.loads(output.read_text())
  assert list(found) == ["stsb:train", "stsb:validation", "stsb:test"]
  assert found["stsb:train"]["sentences"] == 2 * 5749
  for name, counts in found.items():
    assert 0 < counts["tokens_without_vector"] < counts["tokens"] / 50  # GloVe 6B covers most words
    share = counts["tokens_without_vector"] / counts["tokens"]
    assert f"| {name} | {counts['tokens']:,} | {share:.2%} |" in done.stdout
