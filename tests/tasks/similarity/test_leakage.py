"""The leakage guard: extra training data never holds an evaluation pair, and the check is recorded."""

import json
import pathlib
import re
import shutil

import numpy as np
import pytest

from simjax import optim, run
from simjax.tasks.similarity import datasets, leakage
from simjax.tasks.similarity import task as train
from simjax.tasks.similarity.models import ModelConfig


def test_pairs_match_in_either_order_whatever_the_case_and_spacing():
  assert leakage.pair_key("A  man is\tsinging", "A woman ") == leakage.pair_key("a woman", "a man is singing")
  assert leakage.pair_key("a man", "a dog") != leakage.pair_key("a man", "a dog .")
  evaluation = {"dev": leakage.keys(["A b"], ["c D"]), "test": []}
  assert leakage.check(leakage.keys(["x"], ["y"]), evaluation) == {"dev": 0, "test": 0}
  with pytest.raises(leakage.LeakageError, match=r"holds evaluation pairs \(1 of dev; compared lower-cased"):
    leakage.check(leakage.keys(["x", "C d"], ["y", "a B"]), evaluation)


def test_a_source_the_benchmark_forbids_is_refused():
  leakage.check_source_allowed("sick", "semeval_sts")
  with pytest.raises(leakage.LeakageError, match="semeval_sts may not be training data for stsb: the STS"):
    leakage.check_source_allowed("stsb", "semeval_sts")


@pytest.fixture(scope="module")
def msrp_reads(prepared):
  """`msrp_reads(spec)` -> the MSRP splits TFDS reads for split spec `spec`, or None if TFDS refuses it."""
  builder = datasets.prepare("msrp", prepared("msrp"), None)

  def reads(spec):
    try:
      instructions = builder.info.splits[spec].file_instructions
    except (ValueError, KeyError, NotImplementedError):
      return None
    return {pathlib.Path(i.filename).name.removeprefix("msrp-").split(".")[0] for i in instructions}

  return reads


# MSRP split specs that name its test split: ones TFDS reads, then spellings TFDS refuses (the
# rule refuses them all the same).
NAMING_MSRP_TEST = [
  *("test", "test[:10]", "test[:50%]", "test[-10:]", "test[0shard]", "test\n", "all", "train+test"),
  *("train + test", "validation+test", "test[:10]+train", "train+all"),
  *("TEST", "Test", " test ", "\ttest", "all[:50%]", "ALL", "test [:10]"),
]


@pytest.mark.parametrize("split", NAMING_MSRP_TEST)
def test_every_split_spec_that_names_msrp_test_is_refused_for_stsb(msrp_reads, split):
  reads = msrp_reads(split)
  assert reads is None or "test" in reads
  name = re.escape(f"msrp:{' '.join(split.split())}")
  with pytest.raises(leakage.LeakageError) as error:
    leakage.check_source_allowed("stsb", "msrp", split)
  message = str(error.value)
  assert re.fullmatch(
    rf"{name} may not be training data for stsb: (it reads msrp:test( \('all' is every split\))?, and )?"
    r"the STS Benchmark's readme forbids training STS-B systems on MSRP test; drop it from the extra "
    r"training data(, naming only splits other than test)?",
    message,
  ), message
  assert error.value.settings == ("extra_train",)
  leakage.check_source_allowed("sick", "msrp", split)  # SICK's rules allow MSRP test


@pytest.mark.parametrize("split", ["train", "validation", "train[:100]", "train[-10%:]", "train+validation"])
def test_split_specs_without_msrp_test_pass_the_rule(msrp_reads, split):
  assert msrp_reads(split) and "test" not in msrp_reads(split)
  leakage.check_source_allowed("stsb", "msrp", split)


@pytest.mark.parametrize(
  "source, split", [("semeval_sts", "all"), ("semeval_sts", "train[:10]"), (" SICK ", "test")]
)
def test_a_forbidden_source_is_refused_whatever_the_split(source, split):
  with pytest.raises(leakage.LeakageError, match=f"^{source.strip()} may not be training data for stsb: the"):
    leakage.check_source_allowed("stsb", source, split)


@pytest.mark.parametrize(
  "dataset, kind, message",
  [
    ("stsb", leakage.LeakageError, "msrp:all may not be training data for stsb: it reads msrp:test"),
    (
      "sick",
      datasets.DataError,
      r"split 'all' of msrp: 'all' \(every split joined\) is not supported; load each",
    ),
  ],
)
def test_msrp_all_is_refused_by_the_rule_or_the_loader_never_with_advice_to_delete_data(
  prepared, manual_dir, dataset, kind, message
):
  data_dir, _ = prepared("msrp"), prepared(dataset)
  splits = {
    name: datasets.load_pairs(dataset, split, data_dir, None)
    for name, split in (("train", "train[:16]"), ("dev", "validation[:8]"), ("test", "test[:8]"))
  }
  config = train.DataConfig(
    dataset=dataset, data_dir=data_dir, manual_dir=str(manual_dir), extra_train=("msrp:all",)
  )
  with pytest.raises(kind, match=message) as error:
    train.training_pairs(config, splits)
  assert "delete" not in str(error.value)


@pytest.fixture(scope="module")
def mixed_data(manual_dir, tmp_path_factory):
  """A manual dir with the real SICK files and a small SemEval STS folder in which two rows are
  SICK dev / test pairs in disguise (other order, case and spacing), and a TFDS data_dir."""
  root = tmp_path_factory.mktemp("manual")
  shutil.copytree(manual_dir / "sick2014", root / "sick2014")
  dev = datasets.load_pairs("sick", "validation[:1]", str(root / "tfds"), str(root))
  test = datasets.load_pairs("sick", "test[:1]", str(root / "tfds"), str(root))
  rows = {
    "2012": ["4.0\tA dog runs .\tA dog is running .", f"2.5\t{dev.sentence2[0].upper()}\t{dev.sentence1[0]}"],
    "2013": ["\tunlabeled rows\tare skipped", "0.0\tA cat sleeps .\tThe market fell ."],
    "2014": [f"5.0\t  {test.sentence1[0]}\t{test.sentence2[0]}  "],
    "2015": ["1.0\tOne .\tTwo ."],
    "2016": ["3.0\tThree .\tFour ."],
  }
  for year, lines in rows.items():
    (root / "semeval-sts" / year).mkdir(parents=True)
    (root / "semeval-sts" / year / "set.test.tsv").write_text("\n".join(lines) + "\n")
  return root


def _data(root, dataset, **overrides):
  settings = dict(
    dataset=dataset,
    data_dir=str(root / "tfds"),
    manual_dir=str(root),
    train_split="train[:64]",
    eval_split="validation[:8]",
    test_split="test[:8]",
    max_length=8,
    extra_train=("semeval_sts",),
  )
  return train.DataConfig(**{**settings, **overrides})


def test_evaluation_pairs_are_removed_from_extra_data_and_the_check_is_recorded(mixed_data, tmp_path):
  prepared = train.prepare_data(_data(mixed_data, "sick"), seeds=[0])
  record = prepared.info["leakage_check"]
  assert record["extra"][0]["rows"] == 6  # the scored rows of the five years
  assert record["extra"][0]["removed_evaluation_pairs"] == 2
  assert record["extra"][0]["evaluation_pairs_left"] == {"dev": 0, "test": 0}
  assert prepared.info["rows"]["train_with_extra"] == 64 + 4
  # SemEval's 0-5 scores land on SICK's 1-5 range: 4.0 -> 4.2, 0.0 -> 1.0.
  scores = prepared.splits["train"].score[64:]
  np.testing.assert_allclose(sorted(scores), [1.0, 1.8, 3.4, 4.2], rtol=1e-6)

  # A whole run records the check in results.json.
  config = train.TrainConfig(epochs=1, batch_size=16)
  task = train.SimilarityTask(
    lambda data: ModelConfig(vocab_size=len(data.vocab), embedding_dim=4, hidden_size=4, score_min=1.0),
    _data(mixed_data, "sick"),
    optim.OptimConfig(),
  )
  run.train_and_evaluate(task, config, str(tmp_path / "run"))
  results = json.loads((tmp_path / "run" / "results.json").read_text())
  assert results["data"]["leakage_check"]["extra"][0]["removed_evaluation_pairs"] == 2


def test_stsb_refuses_semeval_sts_before_any_work(mixed_data, manual_dir):
  shutil.copytree(manual_dir / "stsbenchmark", mixed_data / "stsbenchmark", dirs_exist_ok=True)
  with pytest.raises(leakage.LeakageError, match="semeval_sts may not be training data for stsb"):
    train.prepare_data(_data(mixed_data, "stsb"), seeds=[0])


def test_wordnet_synonym_pairs_are_deterministic_keep_scores_and_pass_the_guard(mixed_data, manual_dir):
  shutil.copytree(manual_dir / "wordnet", mixed_data / "wordnet", dirs_exist_ok=True)
  config = _data(mixed_data, "sick", extra_train=(), synonym_pairs=2)
  load = lambda split: datasets.load_pairs("sick", split, config.data_dir, config.manual_dir)  # noqa: E731
  official = load(config.train_split)
  splits = {"train": official, "dev": load(config.eval_split), "test": load(config.test_split)}
  (made, record), (again, _) = (train.training_pairs(config, splits) for _ in range(2))
  assert [r["source"] for r in record["extra"]] == ["wordnet synonyms x2"]
  assert record["extra"][0]["evaluation_pairs_left"] == {"dev": 0, "test": 0}
  assert 64 < len(made.score) <= 64 * 3 and made.sentence1 == again.sentence1
  for i in range(64, len(made.score)):
    source = official.ids.index(made.ids[i].removeprefix("synonyms:"))
    assert made.score[i] == official.score[source]  # a new pair keeps its pair's score
    changed = [
      sum(a != b for a, b in zip(new.split(), old.split()))
      for new, old in (
        (made.sentence1[i], official.sentence1[source]),
        (made.sentence2[i], official.sentence2[source]),
      )
    ]
    assert sorted(changed) in ([0, 1], [1, 1])  # one word swapped in one or both sentences


def test_extra_data_can_be_pre_training_only(mixed_data, tmp_path):
  task = train.SimilarityTask(
    lambda data: ModelConfig(vocab_size=len(data.vocab), embedding_dim=4, hidden_size=4, score_min=1.0),
    _data(mixed_data, "sick", extra_train_epochs=1),
    optim.OptimConfig(),
  )
  config, workdir = train.TrainConfig(epochs=2, batch_size=4), str(tmp_path / "run")
  results = run.train_and_evaluate(task, config, workdir)
  prepared = task.prepare(workdir, config, resuming=True)  # the run's data, as a rerun reads it
  # Epoch 1 trains on the 64 SICK pairs and the 4 SemEval pairs left, epoch 2 on SICK's alone.
  assert [prepared.steps_of(epoch) for epoch in (1, 2)] == [17, 16]
  assert results["data"]["rows"]["train_with_extra"] == 68 and results["epochs"] == 2


def test_msrp_joins_stsb_without_its_dev_and_test_pairs_and_its_labels_are_calibrated(prepared, manual_dir):
  data_dir = prepared("stsb")
  config = train.DataConfig(
    dataset="stsb", data_dir=data_dir, manual_dir=str(manual_dir), extra_train=("msrp", "msrp:validation")
  )
  load = lambda name, split: datasets.load_pairs(name, split, data_dir, str(manual_dir))  # noqa: E731
  splits = {"train": load("stsb", "train"), "dev": load("stsb", "validation"), "test": load("stsb", "test")}
  merged, record = train.training_pairs(config, splits)
  # ../shared/README.md: 121 STS-B dev and 127 test pairs are in MSRP train/val.
  removed = {r["source"]: r["removed_evaluation_pairs"] for r in record["extra"]}
  assert sum(removed.values()) == 121 + 127 and [r["rows"] for r in record["extra"]] == [3576, 500]
  evaluation = set(leakage.keys(splits["dev"].sentence1, splits["dev"].sentence2))
  evaluation |= set(leakage.keys(splits["test"].sentence1, splits["test"].sentence2))
  extra_keys = leakage.keys(merged.sentence1[5749:], merged.sentence2[5749:])
  assert len(merged.score) == 5749 + 4076 - 248 and not evaluation & set(extra_keys)
  assert set(np.unique(merged.score[5749:])) == {2.75, 3.75}
  # The label scores are what STS-B train itself says of the MSRP pairs it holds.
  sts = {}
  for a, b, score in zip(splits["train"].sentence1, splits["train"].sentence2, splits["train"].score):
    sts.setdefault(leakage.pair_key(a, b), []).append(score)
  for label, as_score in datasets.LABEL_AS_SIMILARITY["msrp"].items():
    msrp = [load("msrp", split) for split in ("train", "validation")]
    shared = [
      np.mean(sts[key])
      for pairs in msrp
      for key, value in zip(leakage.keys(pairs.sentence1, pairs.sentence2), pairs.score)
      if value == label and key in sts
    ]
    assert len(shared) > 200 and abs(np.mean(shared) - as_score) < 0.05
  with pytest.raises(leakage.LeakageError, match="msrp:test may not be training data for stsb"):
    train.training_pairs(train.DataConfig(dataset="stsb", extra_train=("msrp:test",)), splits)
