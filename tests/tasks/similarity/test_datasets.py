"""STS Benchmark / SICK builders: real files prepared once per session (see conftest)."""

import shutil

import numpy as np
import pytest
import requests

from simjax.tasks.similarity import datasets
from simjax.tasks.similarity.datasets import DataError

# sha256 of the original release files (as listed in shared/README.md).
STS_SHA256 = {
  "sts-dev.csv": "5d7e944d8b02734b07bfdb5df67db3420c64bed153fcaa1ba47ad03480cf4234",
  "sts-test.csv": "affe45928a66ee5a708531233c95b7dacbbdc57f974f002a3d32ea0180cf816a",
  "sts-train.csv": "0f71910b59aa1ad973c5897f0791f3b0965a92b8f82b1a95f3eea9f4162fda82",
}


@pytest.mark.parametrize(
  "name, sizes",
  [
    ("stsb", {"train": 5749, "validation": 1500, "test": 1379}),
    ("sick", {"train": 4500, "validation": 500, "test": 4927}),
  ],
)
def test_row_counts_and_score_range(prepared, name, sizes):
  data_dir = prepared(name)
  lo, hi = datasets.SCORE_RANGE[name]
  for split, size in sizes.items():
    pairs = datasets.load_pairs(name, split, data_dir, None)
    assert len(pairs) == len(pairs.sentence1) == len(pairs.sentence2) == pairs.score.shape[0] == size
    assert pairs.score.dtype == np.float32
    assert pairs.score.min() == lo and pairs.score.max() == hi  # both ends are used in every split
    np.testing.assert_array_equal(pairs.index, np.arange(size))  # file order
    assert len(set(pairs.ids)) == size  # ids identify rows within a split


def test_semeval_sts_is_every_scored_row_of_2012_to_2016(prepared):
  pairs = datasets.load_pairs("semeval_sts", "train", prepared("semeval_sts"), None)
  assert len(pairs) == 13_278  # ../shared/README.md: 13,278 scored rows; unlabeled ones left out
  assert pairs.score.min() == 0.0 and pairs.score.max() == 5.0
  assert pairs.ids[0].startswith("2012/") and pairs.ids[-1].startswith("2016/")
  assert len(datasets.source_checksums("semeval_sts", prepared("semeval_sts"), None)) == 25  # files


def test_semeval_sts_refuses_a_missing_year_offline(tmp_path, no_network, manual_dir):
  shutil.copytree(manual_dir / "semeval-sts", tmp_path / "manual" / "semeval-sts")
  shutil.rmtree(tmp_path / "manual" / "semeval-sts" / "2015")
  with pytest.raises(DataError, match="SemEval STS 2012-2016 files not found in .* and download failed"):
    datasets.prepare("semeval_sts", str(tmp_path / "data"), str(tmp_path / "manual"))


def test_sts_known_rows(prepared):
  pairs = datasets.load_pairs("stsb", "train", prepared("stsb"), None)
  assert (pairs.ids[0], pairs.sentence1[0], pairs.sentence2[0], pairs.score[0]) == (
    "main-captions/MSRvid/2012test/0001",
    "A plane is taking off.",
    "An air plane is taking off.",
    5.0,
  )
  # Quirks of the official file are kept: control character (line 2919), mojibake (line 4967).
  assert pairs.sentence1[2918].startswith("Treasury\x12s long-range plan")
  assert pairs.sentence1[4966] == "NA President\u201aÄôs message on the World Press Freedom Day"
  # A row with the two extra license columns still has the right sentences and score.
  test = datasets.load_pairs("stsb", "test", prepared("stsb"), None)
  assert (
    test.sentence2[-1] == "North Korea Delegation Meets With South Korean Officials" and test.score[-1] == 0.0
  )


def test_sick_known_rows(prepared):
  pairs = datasets.load_pairs("sick", "train", prepared("sick"), None)
  assert (pairs.ids[0], pairs.sentence1[0], pairs.score[0]) == (
    "1",
    "A group of kids is playing in a yard and an old man is standing in the background",
    np.float32(4.5),
  )
  test = datasets.load_pairs("sick", "test", prepared("sick"), None)  # CRLF file: no "\r" left over
  assert test.ids[-1] == "9996" and not any(s.endswith("\r") for s in test.sentence2)


def test_slices_follow_file_order(prepared):
  full = datasets.load_pairs("stsb", "train", prepared("stsb"), None)
  head = datasets.load_pairs("stsb", "train[:256]", prepared("stsb"), None)
  assert len(head) == 256 and head.ids == full.ids[:256]
  np.testing.assert_array_equal(head.score, full.score[:256])
  tail = datasets.load_pairs("stsb", "test[-10%:]", prepared("stsb"), None)
  np.testing.assert_array_equal(tail.index, np.arange(1379 - len(tail), 1379))


def test_checksums_recorded(prepared):
  assert datasets.source_checksums("stsb", prepared("stsb"), None) == STS_SHA256
  assert sorted(datasets.source_checksums("sick", prepared("sick"), None)) == [
    "SICK_test_annotated.txt",
    "SICK_train.txt",
    "SICK_trial.txt",
  ]


@pytest.mark.parametrize("split", ["trian", "train[:abc]", "train[5:2]", "train+test", "test[:0]"])
def test_bad_split(prepared, split):
  with pytest.raises(DataError, match="split"):
    datasets.load_pairs("stsb", split, prepared("stsb"), None)


@pytest.mark.parametrize("split", ["all", "all\n", "all[:50%]"])
def test_all_is_refused_with_what_to_load_instead(prepared, split):
  with pytest.raises(DataError) as error:
    datasets.load_pairs("stsb", split, prepared("stsb"), None)
  assert str(error.value) == (
    f"split {split!r} of stsb: 'all' (every split joined) is not supported; load each of train, "
    "validation, test that you need and concatenate them"
  )


class _Reversed:
  """A data source read back to front: a split stored out of file order."""

  def __init__(self, source):
    self.source = source

  def __len__(self):
    return len(self.source)

  def __getitems__(self, keys):
    return self.source.__getitems__([len(self.source) - 1 - k for k in keys])


def test_a_split_stored_out_of_order_is_reported(prepared, monkeypatch):
  read = datasets.StsBenchmark.as_data_source
  monkeypatch.setattr(
    datasets.StsBenchmark, "as_data_source", lambda self, split: _Reversed(read(self, split))
  )
  with pytest.raises(
    DataError, match=r"^stsb prepared in .* is not stored in file order; delete that folder"
  ):
    datasets.load_pairs("stsb", "test[:10]", prepared("stsb"), None)


def test_unknown_dataset():
  with pytest.raises(DataError, match="choose one of: stsb, sick"):
    datasets.load_pairs("sts", "train", None, None)


def _write_sts(folder, train_lines):
  folder.mkdir(parents=True, exist_ok=True)
  good = "main-captions\tMSRvid\t2012test\t0001\t5.000\tA plane is taking off.\tAn air plane is taking off.\n"
  (folder / "sts-train.csv").write_text("".join(train_lines), encoding="utf-8")
  (folder / "sts-dev.csv").write_text(good, encoding="utf-8")
  (folder / "sts-test.csv").write_text(good, encoding="utf-8")
  return good


@pytest.mark.parametrize(
  "bad_line, message",
  [
    ("g\tf\t2012\t0002\t5.000\tonly one sentence\n", "expected 7 tab-separated columns"),
    ("g\tf\t2012\t0002\tfive\ta\tb\n", "score 'five' is not a number"),
    ("g\tf\t2012\t0002\t5.5\ta\tb\n", r"score 5.5 outside \[0.0, 5.0\]"),
  ],
  ids=["columns", "score", "range"],
)
def test_malformed_row(tmp_path, bad_line, message):
  manual = tmp_path / "manual"
  good = _write_sts(manual / "stsbenchmark", [])
  _write_sts(manual / "stsbenchmark", [good, good, bad_line])
  with pytest.raises(DataError, match=rf"sts-train\.csv: line 3: {message}"):
    datasets.prepare("stsb", str(tmp_path / "data"), str(manual))


def test_manual_dir_files_at_top_level(tmp_path):
  good = _write_sts(tmp_path / "manual", [])
  _write_sts(tmp_path / "manual", [good, good.replace("0001", "0002")])
  pairs = datasets.load_pairs("stsb", "train", str(tmp_path / "data"), str(tmp_path / "manual"))
  assert pairs.ids == ["main-captions/MSRvid/2012test/0001", "main-captions/MSRvid/2012test/0002"]


@pytest.fixture
def no_network(monkeypatch):
  """Every HTTP request (our reachability check and TFDS's downloader) fails at once."""

  def refuse(*args, **kwargs):
    raise requests.ConnectionError("network disabled in test")

  monkeypatch.setattr(requests.Session, "send", refuse)


@pytest.mark.parametrize(
  "name, files", [("stsb", "sts-dev.csv, sts-test.csv, sts-train.csv"), ("sick", "SICK_test_annotated.txt")]
)
def test_missing_files_offline(tmp_path, no_network, name, files):
  empty = tmp_path / "manual"
  empty.mkdir()
  with pytest.raises(DataError, match="download failed") as error:
    datasets.prepare(name, str(tmp_path / "data"), str(empty))
  message = str(error.value)
  assert files in message and str(empty) in message and "network disabled in test" in message
  assert "\n" not in message


def test_sick_malformed(tmp_path):
  folder = tmp_path / "manual" / "sick2014"
  folder.mkdir(parents=True)
  header = "pair_ID\tsentence_A\tsentence_B\trelatedness_score\tentailment_judgment\r\n"
  row = "1\tA dog runs\tA dog is running\t4.5\tENTAILMENT\r\n"
  (folder / "SICK_train.txt").write_text(header + row, encoding="utf-8", newline="")
  (folder / "SICK_trial.txt").write_text(header + row.replace("4.5", "0.5"), encoding="utf-8", newline="")
  (folder / "SICK_test_annotated.txt").write_text(row, encoding="utf-8", newline="")  # header missing
  with pytest.raises(DataError, match=r"SICK_trial\.txt: line 2: score 0.5 outside \[1.0, 5.0\]"):
    datasets.prepare("sick", str(tmp_path / "data"), str(tmp_path / "manual"))
  (folder / "SICK_trial.txt").write_text(header + row, encoding="utf-8", newline="")
  with pytest.raises(DataError, match=r"SICK_test_annotated\.txt: line 1: expected header"):
    datasets.prepare("sick", str(tmp_path / "data"), str(tmp_path / "manual"))
