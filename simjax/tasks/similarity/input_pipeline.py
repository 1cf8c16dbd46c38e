"""Sentence pairs -> padded, length-bucketed numpy batches.

Pairs are bucketed by their longer sentence into a few padded lengths (powers of two from
8 up to `max_length`), so the jitted step compiles once per bucket and short sentences are
not padded to the longest one. Every batch has exactly `batch_size` rows: the last batch
of a bucket is filled with weight-0 rows, so all examples are used and shapes stay fixed.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator

import numpy as np

from simjax.tasks.similarity import text

MIN_BUCKET = 8


@dataclasses.dataclass(frozen=True)
class EncodedPairs:
  ids_a: np.ndarray  # int32 [N, max_length], 0-padded
  lengths_a: np.ndarray  # int32 [N]
  ids_b: np.ndarray
  lengths_b: np.ndarray
  score: np.ndarray  # float32 [N]

  def __len__(self) -> int:
    return len(self.score)


def encode_pairs(sentence1, sentence2, score, vocab: text.Vocabulary, max_length: int) -> EncodedPairs:
  ids_a, lengths_a = text.encode_batch([text.tokenize(s) for s in sentence1], vocab, max_length)
  ids_b, lengths_b = text.encode_batch([text.tokenize(s) for s in sentence2], vocab, max_length)
  return EncodedPairs(ids_a, lengths_a, ids_b, lengths_b, np.asarray(score, np.float32))


def bucket_lengths(max_length: int) -> list[int]:
  lengths, length = [], MIN_BUCKET
  while length < max_length:
    lengths.append(length)
    length *= 2
  return lengths + [max_length]


def _bucket_of(data: EncodedPairs, max_length: int) -> tuple[list[int], np.ndarray]:
  buckets = bucket_lengths(max_length)
  longest = np.maximum(data.lengths_a, data.lengths_b)
  return buckets, np.searchsorted(np.asarray(buckets), longest, side="left")


def num_batches(data: EncodedPairs, batch_size: int, max_length: int) -> int:
  _, bucket = _bucket_of(data, max_length)
  counts = np.bincount(bucket)
  return int(np.sum(-(-counts // batch_size)))


def batches(
  data: EncodedPairs,
  batch_size: int,
  max_length: int,
  shuffle_rng: np.random.Generator | None = None,
  bucket_order_rng: np.random.Generator | None = None,
) -> Iterator[dict[str, np.ndarray]]:
  """Yields dicts with ids_a, lengths_a, ids_b, lengths_b, score, weight and row (the
  example's index in `data`, -1 on fill rows).

  With `shuffle_rng`, examples are shuffled within buckets; with `bucket_order_rng`, the
  batches are shuffled across buckets. The sequence of padded lengths depends only on
  the latter, so seeds that share it (stacked replicas: keyed by the epoch alone) get
  batches of equal shapes, each filled with its own examples. Without either, the order
  is fixed (evaluation). Either way the number of batches is `num_batches(...)`.
  """
  if batch_size < 1:
    raise ValueError(f"batch_size must be positive, got {batch_size}")
  buckets, bucket = _bucket_of(data, max_length)
  plan = []  # (padded length, row indices)
  for b, length in enumerate(buckets):
    rows = np.flatnonzero(bucket == b)
    if shuffle_rng is not None:
      rows = shuffle_rng.permutation(rows)
    plan += [(length, rows[i : i + batch_size]) for i in range(0, len(rows), batch_size)]
  if bucket_order_rng is not None:
    plan = [plan[i] for i in bucket_order_rng.permutation(len(plan))]
  for length, rows in plan:
    yield _gather(data, rows, batch_size, length)


def _gather(data: EncodedPairs, rows: np.ndarray, batch_size: int, length: int) -> dict[str, np.ndarray]:
  fill = batch_size - len(rows)

  def pad(x):
    return np.concatenate([x, np.zeros((fill,) + x.shape[1:], x.dtype)]) if fill else x

  return {
    "ids_a": pad(data.ids_a[rows, :length]),
    "lengths_a": pad(data.lengths_a[rows]),
    "ids_b": pad(data.ids_b[rows, :length]),
    "lengths_b": pad(data.lengths_b[rows]),
    "score": pad(data.score[rows]),
    "weight": pad(np.ones(len(rows), np.float32)),
    "row": np.concatenate([rows, np.full(fill, -1)]).astype(np.int32),
  }


def example_batch(batch_size: int, length: int) -> dict[str, np.ndarray]:
  """A batch of `batch_size` fill rows padded to `length`: the arrays every batch has."""
  ids = np.zeros((0, length), np.int32)
  lengths = np.zeros((0,), np.int32)
  empty = EncodedPairs(ids, lengths, ids, lengths, np.zeros((0,), np.float32))
  return _gather(empty, np.zeros((0,), np.int64), batch_size, length)


def stack_replica_batches(replica_batches) -> dict[str, np.ndarray]:
  """One batch per replica -> arrays [replicas, batch, ...] (the replicas' batches must
  come from the same bucket order, so their shapes agree)."""
  shapes = {b["ids_a"].shape for b in replica_batches}
  if len(shapes) != 1:
    raise ValueError(f"replica batches of different shapes {sorted(shapes)}: use one bucket_order_rng")
  return {key: np.stack([b[key] for b in replica_batches]) for key in replica_batches[0]}
