import numpy as np
import pytest

from simjax.tasks.similarity import input_pipeline


def _pairs(n=50, max_length=40, seed=0):
  rng = np.random.default_rng(seed)
  lengths_a = rng.integers(0, max_length + 1, n).astype(np.int32)
  lengths_b = rng.integers(1, max_length + 1, n).astype(np.int32)
  ids_a = np.zeros((n, max_length), np.int32)
  ids_b = np.zeros((n, max_length), np.int32)
  for i in range(n):
    ids_a[i, : lengths_a[i]] = rng.integers(2, 100, lengths_a[i])
    ids_b[i, : lengths_b[i]] = rng.integers(2, 100, lengths_b[i])
  return input_pipeline.EncodedPairs(ids_a, lengths_a, ids_b, lengths_b, np.arange(n, dtype=np.float32))


def test_bucket_lengths():
  assert input_pipeline.bucket_lengths(40) == [8, 16, 32, 40]
  assert input_pipeline.bucket_lengths(8) == [8]
  assert input_pipeline.bucket_lengths(5) == [5]


@pytest.mark.parametrize("shuffle", [False, True])
def test_every_example_once_with_fixed_batch_shape_and_no_truncation(shuffle):
  data = _pairs()
  rngs = (np.random.default_rng(1), np.random.default_rng(2)) if shuffle else (None, None)
  batches = list(input_pipeline.batches(data, 8, 40, shuffle_rng=rngs[0], bucket_order_rng=rngs[1]))
  assert len(batches) == input_pipeline.num_batches(data, 8, 40)
  seen = []
  for batch in batches:
    assert batch["ids_a"].shape[0] == 8
    length = batch["ids_a"].shape[1]
    assert length in (8, 16, 32, 40)
    real = batch["weight"] > 0
    assert np.all(np.maximum(batch["lengths_a"], batch["lengths_b"])[real] <= length)
    for row in np.flatnonzero(real):
      i = int(batch["score"][row])
      np.testing.assert_array_equal(batch["ids_a"][row], data.ids_a[i, :length])
      np.testing.assert_array_equal(batch["ids_b"][row], data.ids_b[i, :length])
      seen.append(i)
    assert np.all(batch["weight"][~real] == 0)
  assert sorted(seen) == list(range(len(data)))


def test_shuffle_is_deterministic_given_the_generator():
  data = _pairs()
  first = [b["score"].tolist() for b in input_pipeline.batches(data, 8, 40, np.random.default_rng(3))]
  again = [b["score"].tolist() for b in input_pipeline.batches(data, 8, 40, np.random.default_rng(3))]
  other = [b["score"].tolist() for b in input_pipeline.batches(data, 8, 40, np.random.default_rng(4))]
  assert first == again
  assert first != other


def test_seeds_sharing_a_bucket_order_get_stackable_batches_of_their_own_examples():
  data = _pairs()

  def epoch(seed):
    return list(
      input_pipeline.batches(
        data, 8, 40, shuffle_rng=np.random.default_rng(seed), bucket_order_rng=np.random.default_rng(7)
      )
    )

  first, second = epoch(0), epoch(1)
  assert [b["ids_a"].shape for b in first] == [b["ids_a"].shape for b in second]
  assert any(not np.array_equal(a["row"], b["row"]) for a, b in zip(first, second))
  stacked = input_pipeline.stack_replica_batches([first[0], second[0]])
  assert stacked["ids_a"].shape == (2, *first[0]["ids_a"].shape)
  np.testing.assert_array_equal(stacked["row"][1], second[0]["row"])
