import pytest

from experiments import cli_flags, console
from simjax import errors


def test_every_library_error_becomes_one_line_naming_the_flags_to_change():
  diverged = errors.TrainingDiverged("loss became nan at step 9 (epoch 3)", epoch=3, seed=None, kept_step=8)
  assert cli_flags.error_line(diverged) == (
    "loss became nan at step 9 (epoch 3); the last good checkpoint (step 8) is kept: lower --learning_rate "
    "or set --grad_clip_norm in a new --workdir (a workdir with checkpoints resumes only with its own settings)"
  )
  memory = cli_flags.error_line(errors.OutOfDeviceMemory(8, "RESOURCE_EXHAUSTED"))
  assert memory.startswith("8 stacked replicas do not fit") and "--sequential_seeds" in memory
  mismatch = cli_flags.error_line(errors.ConfigMismatchError("w", ["model.width=8 there, 16 now"]))
  assert "model.width=8 there, 16 now" in mismatch and mismatch.endswith("the original settings to resume")
  assert cli_flags.error_line(errors.BatchSizeError(30, 4)).endswith("(e.g. --batch_size=28)")
  data = cli_flags.error_line(errors.DataError("TFDS cifar10 is not prepared under x", settings=("data_dir",)))
  assert data == "TFDS cifar10 is not prepared under x (flags: --data_dir (or TFDS_DATA_DIR))"
  assert "\n" not in "".join([memory, mismatch, data])


def test_sentence_pairs_read_the_same_whatever_the_line_endings_and_byte_order_mark():
  want = (["A man plays.", ""], ["A man is playing.", "x"])
  for data in (
    b"A man plays.\tA man is playing.\n\n\tx\n",
    b"\xef\xbb\xbfA man plays.\tA man is playing.\r\n\tx",  # spreadsheet export: BOM, CRLF
    b"A man plays.\tA man is playing.\r\tx\r",  # old Mac line endings
  ):
    assert console.read_sentence_pairs(data, "pairs.tsv") == want


def test_sentence_pairs_that_are_not_utf8_name_the_file_line_and_byte():
  with pytest.raises(ValueError) as e:
    console.read_sentence_pairs("ok\tfine\nCaf\xe9\tcoffee\n".encode("latin-1"), "pairs.tsv")
  assert str(e.value) == ("pairs.tsv, line 2: not UTF-8 text (byte 0xe9 at column 4); save the file as UTF-8")
