"""Transfer evaluation: a trained workdir and the baselines on STS12-16, STS-B and SICK-R."""

import json

import numpy as np
import pytest
import scipy.stats

from experiments import transfer_table
from simjax import optim, run
from simjax.errors import WorkdirError
from simjax.tasks.similarity import datasets, input_pipeline, leakage, transfer
from simjax.tasks.similarity import task as train
from simjax.tasks.similarity.models import ModelConfig

EXTRA = 20  # the first rows of SemEval STS (2012 MSRpar test, in file order) the tiny model trains on


@pytest.fixture(scope="module")
def trained(prepared, manual_dir, tmp_path_factory):
  """A tiny two-seed SICK workdir that also trained on the first SemEval STS rows."""
  data_dir = prepared("semeval_sts")
  prepared("stsb"), prepared("sick")  # one data_dir holds every set
  data = train.DataConfig(
    dataset="sick",
    data_dir=data_dir,
    manual_dir=str(manual_dir),
    train_split="train[:64]",
    eval_split="validation[:32]",
    test_split="test[:32]",
    max_length=8,
    extra_train=(f"semeval_sts:train[:{EXTRA}]",),
  )
  model = lambda d: ModelConfig(  # noqa: E731
    vocab_size=len(d.vocab), embedding_dim=8, hidden_size=8, head="mlp", mlp_hidden=8, score_min=1.0
  )
  workdir = tmp_path_factory.mktemp("transfer") / "run"
  task = train.SimilarityTask(model, data, optim.OptimConfig(optimizer="adam", learning_rate=3e-3))
  run.train_and_evaluate(task, train.TrainConfig(epochs=1, batch_size=16, num_seeds=2), str(workdir))
  return workdir, data_dir, str(manual_dir)


def test_a_trained_workdir_is_scored_on_every_set_without_the_pairs_it_trained_on(trained):
  workdir, data_dir, manual_dir = trained
  record, path = transfer.transfer_trained(
    str(workdir), batch_size=16, data_dir=data_dir, manual_dir=manual_dir, max_pairs=30
  )
  names = [f"{s['group']} {s['set']}" for s in record["sets"]]
  want = [f"{g} {s}" for g, (_, subsets) in transfer.STS_YEARS.items() for s in subsets]
  assert names == [*want, "STSB dev", "STSB test", "SICK-R test"]
  by_name = dict(zip(names, record["sets"]))
  # The SemEval rows the model trained on are removed from the set they come from, and counted.
  assert (by_name["STS12 MSRpar"]["removed_training_pairs"], by_name["STS12 MSRpar"]["pairs"]) == (
    EXTRA,
    30 - EXTRA,
  )
  assert all(s["removed_training_pairs"] == 0 for n, s in by_name.items() if n != "STS12 MSRpar")
  assert record["years"]["STS12"]["removed_training_pairs"] == EXTRA
  assert record["encoder"]["training_pairs"] == {"train_split": 64, "extra": EXTRA}
  assert (
    by_name["STS13 FNWN"]["pairs"] == 30 and by_name["STS15 answers-forums"]["unscored_rows_skipped"] == 1625
  )
  for s in record["sets"]:  # both scores, every seed, a correlation on every set
    assert set(s["scores"]) == {"head", "cosine"}
    assert all(len(k["per_seed"]) == 2 and np.isfinite(k["spearman"]) for k in s["scores"].values())

  # The head's figure is the model's own score, as eval computes it.
  state, config, task = train.load_trained(str(workdir), data_dir=data_dir, manual_dir=manual_dir)
  sick = datasets.load_pairs("sick", "test[:30]", data_dir, manual_dir)
  encoded = input_pipeline.encode_pairs(sick.sentence1, sick.sentence2, sick.score, task.vocab, 8)
  own = [scipy.stats.spearmanr(p, sick.score).statistic for p in train.predict(state, encoded, 16, 8)]
  got = [r["spearman"] for r in by_name["SICK-R test"]["scores"]["head"]["per_seed"]]
  np.testing.assert_allclose(got, own, rtol=1e-6)

  # Recorded; replaced by the same settings, never by others.
  assert json.loads(open(path).read())["sets"] == json.loads(json.dumps(record["sets"]))
  before = open(path).read()
  with pytest.raises(WorkdirError, match="other settings \\(max_pairs 30, now 8\\)"):
    transfer.transfer_trained(
      str(workdir), batch_size=16, data_dir=data_dir, manual_dir=manual_dir, max_pairs=8
    )
  with pytest.raises(datasets.DataError, match="unknown transfer sets STS99; choose from STS12, "):
    transfer.transfer_trained(
      str(workdir), batch_size=16, data_dir=data_dir, manual_dir=manual_dir, groups=("STS99",)
    )
  assert open(path).read() == before


def test_no_scored_pair_is_a_training_pair_in_either_order_or_case():
  pairs = datasets.SentencePairs(
    ["A dog runs.", "A cat sleeps.", "It rains."],
    ["The dog is running.", "Nobody is here.", "It is wet."],
    np.array([4.0, 0.5, 3.0], np.float32),
    ["a", "b", "c"],
    np.arange(3, dtype=np.int32),
  )
  seen = {leakage.pair_key("the DOG is running.", "a dog  runs."), leakage.pair_key("x", "y")}
  [kept] = transfer.remove_seen([transfer.EvalSet("STSB", "test", pairs, 0)], seen)
  assert (kept.removed, kept.pairs.ids) == (1, ["b", "c"])


def _toy_sets():
  rng = np.random.default_rng(0)

  def pairs(n):
    return datasets.SentencePairs(
      [f"s{i} a" for i in range(n)], [f"t{i} b" for i in range(n)], rng.uniform(0, 5, n).astype(np.float32),
      [str(i) for i in range(n)], np.arange(n, dtype=np.int32),
    )  # fmt: skip

  return [
    transfer.EvalSet("STS13", "one", pairs(20), 3),
    transfer.EvalSet("STS13", "two", pairs(50), 0),
    transfer.EvalSet("SICK-R", "test", pairs(10), 0),
  ]


def test_a_year_is_reported_pooled_and_as_the_mean_and_weighted_mean_of_its_subsets():
  sets = _toy_sets()
  noise = {len(s.pairs): np.random.default_rng(len(s.pairs)).normal(size=len(s.pairs)) for s in sets}

  def scorer(first, second):  # two "seeds": the gold score plus noise, and its negation
    gold = next(s.pairs.score for s in sets if s.pairs.sentence1 == first)
    return {"cosine": np.stack([gold + 3 * noise[len(first)], -gold])}

  record = transfer.score_sets(sets, scorer, known={"a"}.__contains__)
  assert list(record["years"]) == ["STS13"]  # a year of subsets; STS-B and SICK-R are sets of their own
  year = record["years"]["STS13"]["scores"]["cosine"]
  gold = np.concatenate([s.pairs.score for s in sets[:2]])
  pooled = np.concatenate([s.pairs.score + 3 * noise[len(s.pairs)] for s in sets[:2]])
  assert year["all"]["per_seed"][0]["pearson"] == pytest.approx(scipy.stats.pearsonr(pooled, gold).statistic)
  assert year["all"]["per_seed"][1]["spearman"] == pytest.approx(-1.0)
  one, two = (s["scores"]["cosine"]["per_seed"][0]["spearman"] for s in record["sets"][:2])
  seed0 = {"mean": (one + two) / 2, "wmean": (20 * one + 50 * two) / 70}
  for figure, value in seed0.items():  # the seeds' mean: seed 1 scores -1 on every subset
    assert year[figure]["spearman"] == pytest.approx((value - 1.0) / 2)
  assert record["sets"][0]["unscored_rows_skipped"] == 3
  # "s0 a" / "t0 b": one word of four known, every second sentence without one.
  assert record["sets"][0]["unknown_token_fraction"] == 0.75
  assert (
    record["sets"][0]["sentences_without_a_known_word"] == 20 and record["sets"][0]["empty_sentences"] == 0
  )

  lines = transfer_table.set_lines(record)
  assert lines[0].startswith(
    "| set | pairs | removed (trained on) | unscored rows skipped | unknown words | cosine Spearman"
  )
  assert [line.split(" | ")[0] for line in lines[2:]] == [
    "| STS13 one", "| STS13 two", "| **STS13 all**", "| **STS13 mean**", "| **STS13 wmean**", "| SICK-R test"
  ]  # fmt: skip
  summary = transfer_table.summary_lines(
    [("ours", record, "cosine"), ("none", {"sets": [], "years": {}}, "cosine")]
  )
  assert summary[0] == "| encoder | score | STS13 | SICK-R |"
  assert (
    summary[2]
    == f"| ours | cosine | {100 * year['all']['spearman']:.1f} | {100 * record['sets'][2]['scores']['cosine']['spearman']:.1f} |"
  )
  assert summary[3] == "| none | cosine | - | - |"


def test_baselines_on_a_toy_vocabulary():
  words = ["the", "dog", "runs", "cat"]
  vectors = np.array([[1.0, 1.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 3.0], [0.0, 2.0, 0.5]])
  mean = transfer.WordVectorBaseline("glove_mean", words, vectors)
  np.testing.assert_allclose(
    mean.sentence_vectors(["The dog runs", "xyz", "dog"]), [[1 / 3, 1, 1], [0, 0, 0], [0, 2, 0]]
  )
  scores = mean(["Dog runs.", "the dog", "unknown words"], ["runs dog", "cat", "dog"])["cosine"]
  np.testing.assert_allclose(
    scores[0][:2],
    [1.0, np.dot([0.5, 1.5, 0], [0, 2, 0.5]) / np.linalg.norm([0.5, 1.5, 0]) / np.linalg.norm([0, 2, 0.5])],
  )
  assert scores[0][2] == 0.0  # no known word: no vector, cosine 0

  p = np.array([0.5, 0.2, 0.2, 0.1])
  sif = transfer.WordVectorBaseline("sif", words, vectors, probabilities=p)
  sentences = ["the dog", "the cat runs", "dog runs", "cat"]
  weighted = np.array([
    (1e-3 / (1e-3 + p[[0, 1]])) @ vectors[[0, 1]] / 2,
    (1e-3 / (1e-3 + p[[0, 3, 2]])) @ vectors[[0, 3, 2]] / 3,
    (1e-3 / (1e-3 + p[[1, 2]])) @ vectors[[1, 2]] / 2,
    (1e-3 / (1e-3 + p[[3]])) @ vectors[[3]],
  ])  # fmt: skip
  u = np.linalg.svd(weighted)[2][0]
  got = sif.sentence_vectors(sentences)
  np.testing.assert_allclose(got, weighted - np.outer(weighted @ u, u), atol=1e-12)
  np.testing.assert_allclose(got @ u, 0.0, atol=1e-12)  # the common direction is gone
  zipf = transfer.zipf_probabilities(4)
  np.testing.assert_allclose(zipf, np.array([1, 1 / 2, 1 / 3, 1 / 4]) / (25 / 12))


def test_a_baseline_folder_is_not_a_trained_workdir(trained):
  workdir, data_dir, manual_dir = trained
  with pytest.raises(WorkdirError, match="holds a trained run: give a baseline a folder of its own"):
    transfer.transfer_baseline("sif", str(workdir), data_dir=data_dir, manual_dir=manual_dir)
