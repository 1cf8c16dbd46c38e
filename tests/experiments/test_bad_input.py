"""Bad input to predict (a closed stdin, a directory, a missing file, a huge image) and a first
run of reproduce (matplotlib building its font cache): one clear line each, never a traceback."""

import json
import logging
import os
import shutil
import struct
import subprocess
import sys
import warnings
import zlib

import pytest

from experiments import plot
from simjax.tasks.cifar10 import input_pipeline

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PAIRS = "a file of 'sentence1<TAB>sentence2' lines, or pipe one in"


def _run(*args, closed_stdin=False, module="experiments.main", env=None):
  command = [sys.executable, "-m", module, *args]
  if closed_stdin:  # as a shell's `<&-` does: the program starts without a file descriptor 0
    command = ["bash", "-c", 'exec "$@" <&-', "bash", *command]
  return subprocess.run(
    command,
    check=False,
    cwd=REPO,
    capture_output=True,
    text=True,
    stdin=None if closed_stdin else subprocess.DEVNULL,
    env={**os.environ, **(env or {})},
    timeout=300,
  )


def _one_error_line(done) -> str:
  assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
  lines = done.stderr.strip().splitlines()
  assert len(lines) == 1, done.stderr
  return lines[0]


def _png_header(path, width: int, height: int) -> str:
  """A PNG that declares width x height 8-bit grey pixels and holds none: a few dozen bytes
  however large it claims to be, and all that a reader's size check sees."""

  def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

  header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
  path.write_bytes(
    b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
  )
  return str(path)


@pytest.fixture(scope="module")
def sentence_workdir(prepared, manual_dir, tmp_path_factory) -> str:
  """A tiny trained STS-B workdir, shared by this file's tests."""
  workdir = tmp_path_factory.mktemp("bad_input") / "lstm"
  trained = _run(
    "--flagfile=lstm.flags",
    f"--workdir={workdir}",
    f"--data_dir={prepared('stsb')}",
    f"--manual_dir={manual_dir}",
    "--train_split=train[:64]",
    "--eval_split=validation[:16]",
    "--test_split=test[:16]",
    "--hidden_size=8",
    "--embedding_dim=8",
    "--mlp_hidden=8",
    "--max_length=8",  # one length bucket: half the programs to compile
    "--batch_size=16",
    "--epochs=1",
  )
  assert trained.returncode == 0, trained.stderr
  return str(workdir)


def test_sentence_predict_names_a_closed_stdin_a_directory_and_a_missing_file(sentence_workdir, tmp_path):
  predict = ["--mode=predict", f"--workdir={sentence_workdir}"]
  closed = _run(*predict, closed_stdin=True)
  assert _one_error_line(closed) == f"error: stdin is closed: pass {PAIRS}"
  closed_dash = _run(*predict, "-", closed_stdin=True)
  assert _one_error_line(closed_dash) == f"error: stdin is closed: pass {PAIRS}"
  folder = _run(*predict, str(tmp_path))
  assert _one_error_line(folder) == f"error: {tmp_path} is a directory: pass {PAIRS}"
  missing = _run(*predict, str(tmp_path / "pairs.tsv"))
  assert _one_error_line(missing) == f"error: {tmp_path / 'pairs.tsv'} does not exist: pass {PAIRS}"


def test_cifar_predict_names_a_directory_a_missing_file_and_a_huge_image(tmp_path):
  # The images are read before the model loads: a bad one is refused without touching a workdir.
  predict = ["--task=cifar10", "--mode=predict", f"--workdir={tmp_path / 'never_trained'}"]
  folder = _run(*predict, str(tmp_path))
  assert _one_error_line(folder) == f"error: {tmp_path} is a directory: pass PNG or JPEG files"
  missing = _run(*predict, str(tmp_path / "cat.png"))
  assert _one_error_line(missing) == f"error: {tmp_path / 'cat.png'} does not exist: pass PNG or JPEG files"
  huge = _png_header(tmp_path / "huge.png", 30000, 30000)  # 900 megapixels: over PIL's own limit
  assert _one_error_line(_run(*predict, huge)) == (
    f"error: {huge}: more than 178 megapixels is larger than the 40 megapixels read here; "
    "downscale it first (the model sees 32x32)"
  )
  assert not os.path.exists(tmp_path / "never_trained")


@pytest.mark.parametrize(
  "width, height, size",
  [
    (8000, 6000, "8000x6000 pixels"),  # over the limit here, under PIL's
    (10000, 10000, "10000x10000 pixels"),  # over PIL's warning limit
    (30000, 30000, "more than 178 megapixels"),  # over PIL's error limit (twice the warning's)
  ],
)
def test_every_image_over_the_limit_gets_the_same_line_and_no_warning(tmp_path, width, height, size):
  path = _png_header(tmp_path / "big.png", width, height)
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # PIL's DecompressionBombWarning would be printed before the error
    with pytest.raises(input_pipeline.DataError) as raised:
      input_pipeline.read_images([path])
  assert str(raised.value) == (
    f"{path}: {size} is larger than the 40 megapixels read here; downscale it first (the model sees 32x32)"
  )


def test_a_first_reproduce_prints_no_matplotlib_log_line(sentence_workdir, tmp_path):
  # A report folder holding one finished run: --report_only draws its learning curves.
  report = tmp_path / "reports" / "study"
  shutil.copytree(sentence_workdir, report / "runs" / "lstm_stsb")
  (report / "plan.json").write_text(
    json.dumps({"command": "x", "quick": True, "num_seeds": 1, "commands": {}})
  )
  mplconfig = tmp_path / "matplotlib"  # empty: matplotlib builds its font cache, and logs that
  done = _run(
    f"--reports_dir={tmp_path / 'reports'}",
    "--name=study",
    "--only=lstm_stsb",
    "--report_only",
    module="experiments.reproduce",
    env={"MPLCONFIGDIR": str(mplconfig)},
  )
  assert done.returncode == 0, done.stderr
  assert done.stderr == ""
  assert done.stdout == f"report written: {report / 'report.md'}\n"
  assert (report / "learning_curves_stsb.png").is_file() and os.listdir(mplconfig)  # the cache was built


def test_matplotlib_warnings_still_show_but_not_its_notes(caplog):
  plot._pyplot()
  caplog.set_level(logging.INFO)  # the root logger's level under absl
  font_manager = logging.getLogger("matplotlib.font_manager")
  font_manager.info("generated new fontManager")
  font_manager.warning("Matplotlib is building the font cache; this may take a moment.")
  font_manager.warning("findfont: Font family %r not found.", "Nope")
  assert [r.getMessage() for r in caplog.records] == ["findfont: Font family 'Nope' not found."]
