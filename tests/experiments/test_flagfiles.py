"""experiments.flagfiles: layered flagfiles expanded like absl, includes found from any directory."""

import json
import os
import pathlib
import subprocess
import sys

import pytest
from absl import flags

from experiments import flagfiles

REPO = pathlib.Path(__file__).resolve().parents[2]
EXPERIMENTS = REPO / "experiments"
VARIANTS = sorted(p.name for p in EXPERIMENTS.glob("*.flags") if not p.name.endswith("_base.flags"))
BASES = sorted(p.name for p in EXPERIMENTS.glob("*_base.flags"))

# Parses each variant with the real flag definitions twice: by absl itself from experiments/ (where
# absl's own include lookup, relative to the current directory, finds the bases), and through
# flagfiles.expand from the current directory (another one). Prints {name: [absl, expand]}.
_PARSE_VARIANTS = """
import json, os, sys
from absl import flags
import experiments.main  # defines every flag
from experiments import cli_flags, flagfiles
def parsed(argv):
  flags.FLAGS.unparse_flags()
  flags.FLAGS(argv)
  values = cli_flags.flag_values()
  return {"values": values, "present": {k: flags.FLAGS[k].present for k in values}}

results, here = {}, os.getcwd()
for name in sys.argv[1:]:
  os.chdir(flagfiles.EXPERIMENTS_DIR)
  by_absl = parsed(["prog", "--flagfile=" + name])
  os.chdir(here)
  results[name] = [by_absl, parsed(flagfiles.expand(["prog", "--flagfile=" + name]))]
print(json.dumps(results, default=repr))
"""


def _write(directory: pathlib.Path, name: str, *lines: str) -> pathlib.Path:
  directory.mkdir(parents=True, exist_ok=True)
  path = directory / name
  path.write_text("".join(line + "\n" for line in lines))
  return path


@pytest.fixture(scope="module")
def real_variants(tmp_path_factory) -> dict:
  """{variant: [values parsed by absl, values parsed from expand]}, expanded from another directory."""
  result = subprocess.run(
    [sys.executable, "-c", _PARSE_VARIANTS, *VARIANTS],
    check=False,
    cwd=tmp_path_factory.mktemp("elsewhere"),
    env={**os.environ, "PYTHONPATH": str(REPO)},
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode == 0, result.stderr
  return json.loads(result.stdout)


def _differing(a: dict, b: dict) -> set[str]:
  return {k for k in a["values"] if a["values"][k] != b["values"][k]}


def test_nested_includes_expand_in_place_and_later_lines_win(tmp_path):
  _write(tmp_path, "base.flags", "# a comment", "--a=1", "", "  --b=2  ", "// another comment")
  _write(tmp_path, "variant.flags", "# variant", "--flagfile=base.flags", "--b=3")
  argv = ["prog", "--x=0", "--flagfile=variant.flags", "--c=4", "positional"]
  expanded = flagfiles.expand(argv, directory=str(tmp_path))
  assert expanded == ["prog", "--x=0", "--a=1", "--b=2", "--b=3", "--c=4", "positional"]

  values = flags.FlagValues()
  for name in "abcx":
    flags.DEFINE_integer(name, 0, "", flag_values=values)
  assert values(expanded) == ["prog", "positional"]
  assert (values.a, values.b, values.c, values.x) == (1, 3, 4, 0)  # the variant's line beats the base's


def test_matches_absl_where_absl_can_find_the_files(tmp_path, monkeypatch):
  """absl resolves includes against the current directory: there both must give the same arguments."""
  _write(tmp_path, "inner.flags", "--a=1", "# comment", "//comment", "--list=x,y", "  ", "--nob")
  _write(tmp_path, "outer.flags", "--b", "--flagfile=inner.flags", "-flagfile=inner.flags", "--a=2")
  _write(tmp_path, "other.flags", "--c=3")
  monkeypatch.chdir(tmp_path)
  args = [
    "--flagfile=outer.flags",
    "--flagfile",
    "other.flags",
    "-flagfile=other.flags",
    "-flagfile",
    "inner.flags",
    "--flagfile=",
    "--d=4",
    "--",
    "--flagfile=outer.flags",
  ]
  by_absl = flags.FlagValues().read_flags_from_files(args, force_gnu=True)
  assert flagfiles.expand(["prog", *args], directory=str(tmp_path / "nowhere")) == ["prog", *by_absl]
  assert by_absl[-2:] == ["--", "--flagfile=outer.flags"]  # nothing after "--" is expanded


def test_includes_are_found_next_to_the_including_file_from_another_directory(tmp_path, monkeypatch):
  configs = tmp_path / "configs"
  _write(configs, "common_base.flags", "--shared=1")
  _write(configs / "sub", "deep_base.flags", "--flagfile=../common_base.flags", "--deep=1")
  _write(configs, "variant.flags", "--flagfile=sub/deep_base.flags", "--own=1")
  monkeypatch.chdir(_write(tmp_path / "elsewhere", "unrelated.flags").parent)

  expected = ["prog", "--shared=1", "--deep=1", "--own=1"]
  # A bare name on the command line: looked up in `directory` (experiments/ by default).
  assert flagfiles.expand(["prog", "--flagfile=variant.flags"], directory=str(configs)) == expected
  # A path relative to the current directory: its includes still resolve next to it.
  assert (
    flagfiles.expand(["prog", "--flagfile=../configs/variant.flags"], directory=str(tmp_path)) == expected
  )


def test_a_name_in_the_current_directory_comes_first(tmp_path, monkeypatch):
  _write(tmp_path / "defaults", "x.flags", "--from=defaults")
  _write(tmp_path / "cwd", "x.flags", "--from=cwd")
  monkeypatch.chdir(tmp_path / "cwd")
  assert flagfiles.expand(["prog", "--flagfile=x.flags"], directory=str(tmp_path / "defaults")) == [
    "prog",
    "--from=cwd",
  ]


def test_a_base_included_twice_is_not_a_cycle(tmp_path):
  _write(tmp_path, "base.flags", "--a=1")
  _write(tmp_path, "left.flags", "--flagfile=base.flags", "--l=1")
  _write(tmp_path, "both.flags", "--flagfile=left.flags", "--flagfile=base.flags")
  expanded = flagfiles.expand(["prog", "--flagfile=both.flags"], directory=str(tmp_path))
  assert expanded == ["prog", "--a=1", "--l=1", "--a=1"]


def test_an_include_cycle_is_an_error(tmp_path):
  _write(tmp_path, "a.flags", "--a=1", "--flagfile=b.flags")
  _write(tmp_path, "b.flags", "--flagfile=a.flags")
  _write(tmp_path, "self.flags", "--flagfile=self.flags")
  with pytest.raises(
    flagfiles.FlagfileError, match=r"includes itself: .*a\.flags -> .*b\.flags -> .*a\.flags"
  ):
    flagfiles.expand(["prog", "--flagfile=a.flags"], directory=str(tmp_path))
  with pytest.raises(flagfiles.FlagfileError, match="'self.flags' includes itself"):
    flagfiles.expand(["prog", "--flagfile=self.flags"], directory=str(tmp_path))


def test_a_missing_include_names_the_file_where_it_was_looked_for_and_what_exists(tmp_path, monkeypatch):
  monkeypatch.chdir(_write(tmp_path / "cwd", "unrelated.txt").parent)
  variant = _write(tmp_path / "configs", "variant.flags", "--a=1", "--flagfile=gone_base.flags")
  _write(tmp_path / "configs", "other.flags")
  with pytest.raises(flagfiles.FlagfileError) as raised:
    flagfiles.expand(["prog", "--flagfile=variant.flags"], directory=str(tmp_path / "configs"))
  message = str(raised.value)
  assert "\n" not in message
  assert f"flagfile 'gone_base.flags' (included by {variant}) not found" in message
  assert str(tmp_path / "cwd" / "gone_base.flags") in message
  assert str(tmp_path / "configs" / "gone_base.flags") in message
  assert message.endswith(f"available in {tmp_path / 'configs'}: other.flags, variant.flags")


def test_a_missing_flagfile_on_the_command_line_lists_the_experiments_flagfiles():
  with pytest.raises(flagfiles.FlagfileError, match="flagfile 'nope.flags' not found") as raised:
    flagfiles.expand(["prog", "--flagfile=nope.flags"])
  assert str(EXPERIMENTS / "nope.flags") in str(raised.value)
  assert all(name in str(raised.value) for name in VARIANTS)
  with pytest.raises(flagfiles.FlagfileError, match="--flagfile with no file name"):
    flagfiles.expand(["prog", "--a=1", "--flagfile"])


def test_every_variant_parses_as_absl_parses_it_from_another_directory(real_variants):
  assert set(real_variants) == set(VARIANTS) and len(VARIANTS) >= 9
  for name, (by_absl, by_expand) in real_variants.items():
    assert by_expand == by_absl, name  # values and how often each flag was set
    assert by_expand["values"]["experiment"] == name.removesuffix(".flags")


def test_variants_differ_exactly_in_what_the_study_varies(real_variants):
  parsed = {name.removesuffix(".flags"): expanded for name, (_, expanded) in real_variants.items()}
  assert _differing(parsed["rnn"], parsed["lstm"]) == {"experiment", "cell"}
  assert _differing(parsed["lstm"], parsed["lstm_stacked_dropout"]) == {"experiment", "num_layers", "dropout"}
  assert _differing(parsed["lstm"], parsed["lstm_glove"]) == {
    "experiment",
    "embeddings",
    "freeze_embeddings",
    "pretrained_vocab_size",
  }
  # The study's own settings: the same four variants, and the epochs it trained.
  assert _differing(parsed["study_rnn"], parsed["study_lstm"]) == {"experiment", "cell", "epochs"}
  assert _differing(parsed["study_lstm"], parsed["study_lstm_stacked_dropout"]) == {
    "experiment",
    "num_layers",
    "dropout",
    "epochs",
  }
  assert {name: parsed[f"study_{name}"]["values"]["epochs"] for name in ("rnn", "lstm", "lstm_glove")} == {
    "rnn": 30,
    "lstm": 85,
    "lstm_glove": 100,
  }
  assert _differing(parsed["lstm"], parsed["study_lstm"]) >= {"optimizer", "bidirectional", "pooling", "head"}
  assert parsed["study_lstm_glove"]["values"]["embeddings"] == "glove"
  assert parsed["study_lstm_glove"]["values"]["pretrained_vocab_size"] == 0
  assert _differing(parsed["cnn_fc"], parsed["cnn_dropout"]) == {"experiment", "dropout"}
  assert _differing(parsed["cnn_fc"], parsed["cnn_gap"]) == {"experiment", "cnn_head"}
  assert _differing(parsed["cnn_gap"], parsed["cnn_gap_dropout"]) == {"experiment", "dropout"}
  assert _differing(parsed["cnn_fc"], parsed["cnn_resnet"]) == {
    "experiment",
    "architecture",
    "label_smoothing",
    "learning_rate",
    "batch_size",
    "epochs",
    "tta",  # the ResNet's recipe evaluates 6 views (reports/cnn-recipe)
  }


def test_bases_are_included_and_variants_repeat_no_line():
  expansions = {name: flagfiles.expand(["prog", f"--flagfile={name}"])[1:] for name in VARIANTS}
  for name, args in expansions.items():
    assert len(set(args)) == len(args), f"{name} repeats a line of its base: {args}"
  included = set()
  for name in VARIANTS + BASES:
    for line in (EXPERIMENTS / name).read_text().splitlines():
      if line.startswith("--flagfile="):
        included.add(line.removeprefix("--flagfile="))
  assert set(BASES) and included == set(BASES)  # every base is used, every include is a base
  for name in BASES:  # a base never names the experiment: each variant names itself
    assert not any(a.startswith("--experiment=") for a in flagfiles.expand(["prog", f"--flagfile={name}"]))
