"""Sentence-similarity datasets (STS Benchmark, SICK relatedness) as TFDS builders.

The raw files are parsed by the project's own builders so that the exact
release, row counts and parsing rules are under our control (TFDS's `glue/stsb`
is a different release without test scores, and TFDS has no SICK builder).
The builders are prepared TF-free in the `array_record` format and read back
with random access (`as_data_source`).

Row order: every split is stored in the order of the rows in the source file
(`disable_shuffling`), so `load_pairs(..., "train[:256]")` returns the first
256 rows of `sts-train.csv` / `SICK_train.txt`, in file order. Each row keeps
its 0-based position in the file (`index`) and the dataset's own identifier
(`id`) so results can be traced back to the raw files.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import math

import numpy as np
import requests  # a TFDS dependency; honours the same proxy settings as TFDS
import tensorflow_datasets as tfds
from etils import epath

from simjax import errors


class DataError(errors.DataError):
  """Bad or missing input data. The message says what is wrong and how to fix it."""


def _one_line(error: BaseException, limit: int = 200) -> str:
  """First line of an exception message, short enough for a one-line error."""
  lines = str(error).strip().splitlines()
  text = lines[0] if lines else type(error).__name__
  return text if len(text) <= limit else text[: limit - 3] + "..."


def _parse_score(text: str, lo: float, hi: float, where: str) -> float:
  try:
    score = float(text)
  except ValueError:
    raise DataError(f"{where}: score {text!r} is not a number; fix or remove the row") from None
  if not (math.isfinite(score) and lo <= score <= hi):
    raise DataError(f"{where}: score {score} outside [{lo}, {hi}]; fix or remove the row")
  return score


def _csv_rows(path: epath.Path, data: bytes):
  """Yields (line number, columns) of a tab-separated file, quoting disabled.

  Quoting must be off: STS sentences contain raw `"` that would otherwise
  merge rows. Blank lines are skipped (they carry no data).
  """
  try:
    text = data.decode("utf-8")
  except UnicodeDecodeError as e:
    raise DataError(f"{path}: not valid UTF-8 at byte {e.start}; use the original release file") from None
  # newline="" keeps "\r\n" intact so csv strips it (SICK test uses CRLF).
  reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t", quoting=csv.QUOTE_NONE)
  for cols in reader:
    if cols:
      yield reader.line_num, cols


def _rows_after_header(path: epath.Path, data: bytes, header: list[str]):
  """Yields ("<path>: line N", columns) of a tab-separated file whose first row must be
  `header` and whose every row has as many columns."""
  rows = _csv_rows(path, data)
  line, found = next(rows, (1, []))
  if found != header:
    raise DataError(f"{path}: line {line}: expected header {' '.join(header)}, got {found}")
  for line, cols in rows:
    where = f"{path}: line {line}"
    if len(cols) != len(header):
      raise DataError(f"{where}: expected {len(header)} tab-separated columns, got {len(cols)}; fix the row")
    yield where, cols


def _check_reachable(urls: list[str], timeout: float = 10.0) -> None:
  """Raises quickly when the download hosts cannot be reached.

  Offline, TFDS's downloader retries each URL 10 times with backoff, which
  takes minutes before failing; one plain request tells us in seconds.
  """
  for url in urls:
    requests.head(url, timeout=timeout, allow_redirects=True)  # HTTP errors are left to TFDS


class _SentencePairBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Shared logic; subclasses say which files, URLs and parser to use."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release, parsed from the original files."}

  FILES: dict[str, str]  # split -> raw file name
  SUBDIR: str  # optional subfolder of the manual dir holding the files
  URLS: list[str]  # official archives, tried when the manual dir lacks the files
  SCORE_RANGE: tuple[float, float]
  TITLE: str
  HOMEPAGE: str
  CITATION: str

  def __init__(self, *, file_format: str = "array_record", **kwargs):
    # array_record is the random-access format that works without TensorFlow.
    super().__init__(file_format=file_format, **kwargs)

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    # TFDS 4.9.10's default needs the `importlib_resources` backport (only a
    # declared dependency on Python < 3.9) for builders living in a package.
    return epath.Path(__file__)

  def _info(self) -> tfds.core.DatasetInfo:
    lo, hi = self.SCORE_RANGE
    return tfds.core.DatasetInfo(
      builder=self,
      description=f"{self.TITLE}: sentence pairs with gold similarity scores in [{lo:g}, {hi:g}].",
      features=tfds.features.FeaturesDict(
        {
          "index": tfds.features.Scalar(np.int32, doc="0-based row position in the source file"),
          "id": tfds.features.Text(doc="identifier of the pair in the source file"),
          "sentence1": tfds.features.Text(),
          "sentence2": tfds.features.Text(),
          "score": tfds.features.Scalar(np.float32, doc=f"gold score in [{lo:g}, {hi:g}]"),
        }
      ),
      homepage=self.HOMEPAGE,
      citation=self.CITATION,
      # Filled in _split_generators with {"sha256": {file name: digest}}.
      metadata=tfds.core.MetadataDict(),
      # Store rows sorted by their integer key (= file position) instead of
      # TFDS's hash order, so split slicing counts rows in file order.
      disable_shuffling=True,
    )

  def _raw_files(self, dl_manager: tfds.download.DownloadManager) -> dict[str, epath.Path]:
    """Raw file name -> path: from the manual dir if it has them all, else downloaded."""
    names = sorted(self.FILES.values())
    try:
      manual = dl_manager.manual_dir
    except AssertionError:  # TFDS raises this when the folder is missing or empty.
      manual = None
    if manual is not None:
      for folder in (manual, manual / self.SUBDIR):
        if all((folder / name).exists() for name in names):
          return {name: folder / name for name in names}
    try:
      _check_reachable(self.URLS)
      extracted = dl_manager.download_and_extract(self.URLS)
    except Exception as e:  # Offline, proxy, HTTP error...: all end the same way.
      where = getattr(dl_manager, "_manual_dir", None) or "the manual dir"  # only for the message
      raise DataError(
        f"{self.TITLE} raw files not found in {where} and download failed ({_one_line(e)}): "
        f"put {', '.join(names)} in {where} (or its subfolder {self.SUBDIR}/) "
        "or connect to the internet",
        settings=("manual_dir",),
      ) from None
    # Each archive has its own layout: look for the files anywhere inside.
    found = {}
    for root in extracted:
      for path in epath.Path(root).rglob("*"):
        if path.name in names:
          found.setdefault(path.name, path)
    missing = [name for name in names if name not in found]
    if missing:
      raise DataError(
        f"{self.TITLE} archives from {', '.join(self.URLS)} lack {', '.join(missing)}; "
        "put the raw files in the manual dir instead",
        settings=("manual_dir",),
      )
    return found

  def _split_generators(self, dl_manager):
    files = self._raw_files(dl_manager)
    # Parse everything up front: malformed rows fail before anything is written,
    # and the checksums describe exactly the bytes that were parsed.
    checksums, rows = {}, {}
    for split, name in self.FILES.items():
      path = files[name]
      data = path.read_bytes()
      checksums[name] = hashlib.sha256(data).hexdigest()
      rows[split] = list(self._parse(path, data))
    self.info.metadata["sha256"] = dict(sorted(checksums.items()))
    return {split: self._generate_examples(split_rows) for split, split_rows in rows.items()}

  def _generate_examples(self, rows):
    # Integer keys = file position; with disable_shuffling TFDS stores rows sorted by key.
    for index, (pair_id, sentence1, sentence2, score) in enumerate(rows):
      yield (
        index,
        {
          "index": index,
          "id": pair_id,
          "sentence1": sentence1,
          "sentence2": sentence2,
          "score": score,
        },
      )

  def _parse(self, path: epath.Path, data: bytes):
    """Yields (id, sentence1, sentence2, score) in file order."""
    raise NotImplementedError


class StsBenchmark(_SentencePairBuilder):
  """STS Benchmark (Cer et al. 2017), original release with test scores."""

  name = "sts_benchmark"
  FILES = {"train": "sts-train.csv", "validation": "sts-dev.csv", "test": "sts-test.csv"}
  SUBDIR = "stsbenchmark"
  URLS = ["http://ixa2.si.ehu.es/stswiki/images/4/48/Stsbenchmark.tar.gz"]
  SCORE_RANGE = (0.0, 5.0)
  TITLE = "STS Benchmark"
  HOMEPAGE = "http://ixa2.si.ehu.eus/stswiki/index.php/STSbenchmark"
  CITATION = "Cer et al. 2017, SemEval-2017 Task 1: Semantic Textual Similarity."
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
    "Optional (otherwise the official archive is downloaded): put sts-train.csv, "
    "sts-dev.csv and sts-test.csv in the manual dir or its subfolder stsbenchmark/."
  )

  def _parse(self, path, data):
    lo, hi = self.SCORE_RANGE
    for line, cols in _csv_rows(path, data):
      where = f"{path}: line {line}"
      # genre, file, year, id, score, sentence1, sentence2 (+ source, license on some rows)
      if len(cols) not in (7, 9):
        raise DataError(
          f"{where}: expected 7 tab-separated columns (9 with license columns), got {len(cols)}; "
          "fix the row or use the original release file"
        )
      genre, file, year, pair_id, score = cols[:5]
      yield f"{genre}/{file}/{year}/{pair_id}", cols[5], cols[6], _parse_score(score, lo, hi, where)


class SickRelatedness(_SentencePairBuilder):
  """SICK (SemEval-2014 task 1), relatedness scores."""

  name = "sick_relatedness"
  FILES = {"train": "SICK_train.txt", "validation": "SICK_trial.txt", "test": "SICK_test_annotated.txt"}
  SUBDIR = "sick2014"
  URLS = [
    "http://alt.qcri.org/semeval2014/task1/data/uploads/sick_train.zip",
    "http://alt.qcri.org/semeval2014/task1/data/uploads/sick_trial.zip",
    "http://alt.qcri.org/semeval2014/task1/data/uploads/sick_test_annotated.zip",
  ]
  SCORE_RANGE = (1.0, 5.0)
  TITLE = "SICK 2014"
  HOMEPAGE = "https://alt.qcri.org/semeval2014/task1/"
  CITATION = "Marelli et al. 2014, SemEval-2014 Task 1 (SICK). License CC BY-NC-SA 3.0."
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
    "Optional (otherwise the official archives are downloaded): put SICK_train.txt, "
    "SICK_trial.txt and SICK_test_annotated.txt in the manual dir or its subfolder sick2014/."
  )
  HEADER = ["pair_ID", "sentence_A", "sentence_B", "relatedness_score", "entailment_judgment"]

  def _parse(self, path, data):
    lo, hi = self.SCORE_RANGE
    for where, cols in _rows_after_header(path, data, self.HEADER):
      pair_id, sentence1, sentence2, score, _ = cols
      yield pair_id, sentence1, sentence2, _parse_score(score, lo, hi, where)


class SemevalSts(_SentencePairBuilder):
  """SemEval STS 2012-2016 English sets (every scored row), one `train` split, for pre-training
  or extra training data. Rows without a score (unlabeled) are left out. Never for STS-B: the
  STS Benchmark is drawn from these sets (see leakage.py)."""

  name = "semeval_sts"
  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {
    "1.0.0": "Initial release, parsed from the original files.",
    "1.1.0": "Records each file's rows without a score (metadata unscored_rows); the rows are unchanged.",
  }
  YEARS = ("2012", "2013", "2014", "2015", "2016")
  FILES = {"train": "*.tsv"}  # every year's files, in year and file-name order
  SUBDIR = "semeval-sts"
  # The collection the offline copy comes from (brmson/dataset-sts, data/sts/semeval-sts).
  URLS = ["https://github.com/brmson/dataset-sts/archive/refs/heads/master.zip"]
  SCORE_RANGE = (0.0, 5.0)
  TITLE = "SemEval STS 2012-2016"
  HOMEPAGE = "https://github.com/brmson/dataset-sts"
  CITATION = "Agirre et al., SemEval STS tasks 2012-2016 (per-set licences in each year's folder)."
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
    "Optional (otherwise the brmson/dataset-sts archive is downloaded): put the year folders "
    "2012/ ... 2016/ (score<TAB>sentence1<TAB>sentence2 .tsv files) in the manual dir or its "
    "subfolder semeval-sts/."
  )

  def _raw_files(self, dl_manager):
    try:
      manual = dl_manager.manual_dir
    except AssertionError:
      manual = None
    roots = [manual, manual / self.SUBDIR] if manual is not None else []
    root = next((r for r in roots if all((r / y).is_dir() for y in self.YEARS)), None)
    if root is None:
      try:
        _check_reachable(self.URLS)
        extracted = dl_manager.download_and_extract(self.URLS)
      except Exception as e:
        where = getattr(dl_manager, "_manual_dir", None) or "the manual dir"
        raise DataError(
          f"{self.TITLE} files not found in {where} and download failed ({_one_line(e)}): put the "
          f"folders {', '.join(self.YEARS)} in {where} (or its subfolder {self.SUBDIR}/) or connect "
          "to the internet",
          settings=("manual_dir",),
        ) from None
      found = [p for e in extracted for p in epath.Path(e).rglob(self.SUBDIR) if (p / "2012").is_dir()]
      if not found:
        raise DataError(f"{self.URLS[0]} holds no {self.SUBDIR}/2012 folder; use the manual dir instead")
      root = found[0]
    files = sorted(p for y in self.YEARS for p in (root / y).glob("*.tsv"))
    return {f"{p.parent.name}/{p.name}": p for p in files}

  def _split_generators(self, dl_manager):
    files = self._raw_files(dl_manager)
    checksums, rows, unscored = {}, [], {}
    for name, path in files.items():
      data = path.read_bytes()
      checksums[name] = hashlib.sha256(data).hexdigest()
      scored, unscored[name] = self._parse_file(name, path, data)
      rows += scored
    self.info.metadata["sha256"] = checksums
    self.info.metadata["unscored_rows"] = unscored
    return {"train": self._generate_examples(rows)}

  def _parse_file(self, name, path, data) -> tuple[list, int]:
    """The scored rows of one file, (id, sentence1, sentence2, score) with id "<year>/<file>:<line>",
    and how many rows it has without a score (unlabeled: left out)."""
    lo, hi = self.SCORE_RANGE
    scored, unscored = [], 0
    for line, cols in _csv_rows(path, data):
      where = f"{path}: line {line}"
      if len(cols) != 3:
        raise DataError(f"{where}: expected score<TAB>sentence1<TAB>sentence2, got {len(cols)} columns")
      if cols[0].strip():  # unlabeled rows have an empty score
        scored.append((f"{name}:{line}", cols[1], cols[2], _parse_score(cols[0], lo, hi, where)))
      else:
        unscored += 1
    return scored, unscored


class Msrp(_SentencePairBuilder):
  """Microsoft Research Paraphrase Corpus (train, validation = the last 500 pairs of the original
  train, test), its binary label as the score: 1 = paraphrase, 0 = not."""

  name = "msrp"
  FILES = {"train": "msr-para-train.tsv", "validation": "msr-para-val.tsv", "test": "msr-para-test.tsv"}
  SUBDIR = "msrp"
  URLS = ["https://github.com/brmson/dataset-sts/archive/refs/heads/master.zip"]
  SCORE_RANGE = (0.0, 1.0)
  TITLE = "MSRP"
  HOMEPAGE = "https://www.microsoft.com/en-us/download/details.aspx?id=52398"
  CITATION = "Dolan and Brockett 2005, Automatically Constructing a Corpus of Sentential Paraphrases."
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
    "Optional (otherwise the brmson/dataset-sts archive is downloaded): put msr-para-train.tsv, "
    "msr-para-val.tsv and msr-para-test.tsv in the manual dir or its subfolder msrp/."
  )
  HEADER = ["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"]

  def _parse(self, path, data):
    lo, hi = self.SCORE_RANGE
    data = data.removeprefix(b"\xef\xbb\xbf")  # the train file starts with a BOM
    for where, cols in _rows_after_header(path, data, self.HEADER):
      label, id1, id2, sentence1, sentence2 = cols
      yield f"{id1}/{id2}", sentence1, sentence2, _parse_score(label, lo, hi, where)


DATASETS = {"stsb": StsBenchmark, "sick": SickRelatedness}
# Extra training data only (no dev or test split of their own).
AUXILIARY = {"semeval_sts": SemevalSts, "msrp": Msrp}
# A binary label as a similarity score on the STS 0-5 scale, for extra training data: the mean
# STS-B train score of the MSRP train/val pairs that STS-B train also holds (448 pairs: label 0
# -> 2.77, label 1 -> 3.75; tests/tasks/similarity/test_leakage.py measures it again).
LABEL_AS_SIMILARITY = {"msrp": {0.0: 2.75, 1.0: 3.75}}
SCORE_RANGE = {short: cls.SCORE_RANGE for short, cls in {**DATASETS, **AUXILIARY}.items()}


@dataclasses.dataclass(frozen=True)
class SentencePairs:
  """Rows of one split, in source-file order."""

  sentence1: list[str]
  sentence2: list[str]
  score: np.ndarray  # float32 [N]
  ids: list[str]  # dataset identifiers (STS: genre/file/year/id, SICK: pair_ID)
  index: np.ndarray  # int32 [N], 0-based row position in the source file

  def __len__(self) -> int:
    return len(self.ids)

  def take(self, keep: list[int]) -> SentencePairs:
    """The rows at positions `keep`, in that order."""
    return SentencePairs(
      sentence1=[self.sentence1[i] for i in keep],
      sentence2=[self.sentence2[i] for i in keep],
      score=self.score[keep],
      ids=[self.ids[i] for i in keep],
      index=self.index[keep],
    )


def _builder_class(dataset: str) -> type[_SentencePairBuilder]:
  known = {**DATASETS, **AUXILIARY}
  if dataset not in known:
    raise DataError(f"unknown dataset {dataset!r}; choose one of: {', '.join(known)}")
  return known[dataset]


def prepare(dataset: str, data_dir: str | None, manual_dir: str | None) -> tfds.core.DatasetBuilder:
  """Builds `dataset` into `data_dir` once (later calls reuse it) and returns the builder.

  data_dir None -> TFDS default (~/tensorflow_datasets or $TFDS_DATA_DIR).
  manual_dir None -> TFDS default (<data_dir>/downloads/manual); if the raw
  files are not there the official archives are downloaded.
  """
  builder = _builder_class(dataset)(data_dir=data_dir)
  # A no-op when the dataset is already prepared in data_dir.
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  return builder


def load_pairs(dataset: str, split: str, data_dir: str | None, manual_dir: str | None) -> SentencePairs:
  """Reads `split` ("train", "validation", "test", sliced like "train[:256]" or
  "test[:10%]") of `dataset` ("stsb", "sick", or an auxiliary set such as "semeval_sts"),
  preparing it if needed.

  Slices count rows in source-file order. One split per call: '+' and 'all' are refused.
  """
  builder = prepare(dataset, data_dir, manual_dir)
  # One split per call: joined splits ('+', or 'all': every split) would restart the row index
  # mid-way, so `index` would no longer say where a row is; concatenating is the caller's call.
  if "+" in split:
    raise DataError(f"split {split!r}: '+' is not supported; load each split and concatenate them")
  if split.split("[", 1)[0].strip() == "all":
    raise DataError(
      f"split {split!r} of {dataset}: 'all' (every split joined) is not supported; load each of "
      f"{', '.join(builder.info.splits)} that you need and concatenate them"
    )
  try:
    source = builder.as_data_source(split=split)
    num_rows = len(source)  # TFDS only notices reversed slices like [5:2] here.
  except (ValueError, KeyError, TypeError) as e:
    raise DataError(
      f"bad split {split!r} for {dataset} ({_one_line(e)}); use one of "
      f"{', '.join(sorted(builder.info.splits))}, optionally sliced like 'train[:256]' or 'test[:10%]'"
    ) from None
  rows = list(source.__getitems__(range(num_rows)))
  index = np.array([row["index"] for row in rows], dtype=np.int32)
  # Slices are only meaningful if storage is in file order (disable_shuffling). One split is read,
  # so a falling index means the stored split itself is out of order.
  if np.any(np.diff(index) <= 0):
    raise DataError(
      f"{dataset} prepared in {builder.data_dir} is not stored in file order; delete that folder and rerun"
    )
  text = lambda key: [row[key].decode("utf-8") for row in rows]  # noqa: E731
  return SentencePairs(
    sentence1=text("sentence1"),
    sentence2=text("sentence2"),
    score=np.array([row["score"] for row in rows], dtype=np.float32),
    ids=text("id"),
    index=index,
  )


def source_checksums(dataset: str, data_dir: str | None, manual_dir: str | None) -> dict[str, str]:
  """sha256 of each raw source file the prepared dataset was built from: {file name: hex digest}."""
  return dict(prepare(dataset, data_dir, manual_dir).info.metadata["sha256"])


def unscored_rows(dataset: str, data_dir: str | None, manual_dir: str | None) -> dict[str, int]:
  """Rows of each raw file left out for want of a gold score (SemEval STS: {file: count})."""
  return dict(prepare(dataset, data_dir, manual_dir).info.metadata.get("unscored_rows", {}))
