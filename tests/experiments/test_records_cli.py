"""The record rule on the command line: a finished run's results.json and leakage record are
never rewritten by a rerun with other settings; each refusal and each note is one line."""

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run(*args):
  return subprocess.run(
    [sys.executable, "-m", "experiments.main", *args], cwd=REPO, capture_output=True, text=True, timeout=300
  )


def test_a_finished_run_with_extra_data_is_never_rewritten_by_a_rerun(prepared, manual_dir, tmp_path):
  data_dir = prepared("stsb")
  assert prepared("msrp") == data_dir
  workdir = tmp_path / "run"
  flags = [
    "--flagfile=lstm.flags",
    f"--workdir={workdir}",
    f"--data_dir={data_dir}",
    f"--manual_dir={manual_dir}",
    "--train_split=train[:128]",
    "--eval_split=validation[:32]",
    "--extra_train=msrp",
    "--hidden_size=8",
    "--embedding_dim=8",
    "--mlp_hidden=8",
    "--max_length=8",  # one length bucket: half the programs to compile
    "--batch_size=64",
    "--epochs=2",
  ]
  trained = _run(*flags, "--test_split=test[:800]")
  assert trained.returncode == 0, trained.stderr
  record = (workdir / "results.json").read_bytes()
  leakage = json.loads(record)["data"]["leakage_check"]["extra"][0]
  assert leakage["source"] == "msrp" and leakage["evaluation_pairs_left"] == {"dev": 0, "test": 0}

  # Another test split would evaluate another set and remove other pairs from MSRP: refused.
  other_test = _run(*flags, "--test_split=test")
  assert other_test.returncode == 1
  assert other_test.stderr.strip() == (
    f"error: workdir {workdir} belongs to a different configuration (data.test_split='test[:800]' "
    "there, its default now): use a new --workdir, or the original settings to resume"
  )
  # Fewer epochs would train nothing and only rewrite the record: refused.
  fewer = _run(*flags, "--test_split=test[:800]", "--epochs=1")
  assert fewer.returncode == 1 and "\n" not in fewer.stderr.strip()  # one line
  assert fewer.stderr.startswith(f"error: workdir {workdir} holds a finished run (")
  assert "epochs=1 (asked 2 then) would train nothing more and only rewrite its results: rerun it with" in (
    fewer.stderr
  )
  # The same command: the record stands, untouched.
  again = _run(*flags, "--test_split=test[:800]")
  assert again.returncode == 0, again.stderr
  assert f"{workdir} holds this run, finished (" in again.stdout
  assert (workdir / "results.json").read_bytes() == record

  # Evaluated as trained (eval takes the run's own splits): eval.json, the same test numbers.
  where = ["--mode=eval", f"--workdir={workdir}", f"--data_dir={data_dir}", f"--manual_dir={manual_dir}"]
  own = _run(*where)
  assert own.returncode == 0, own.stderr
  assert f"evaluation recorded in {workdir / 'eval.json'}" in own.stdout
  evaluation = json.loads((workdir / "eval.json").read_text())
  assert evaluation["evaluation"] == {"dev": "validation[:32]", "test": "test[:800]"}
  assert evaluation["test"]["pearson"] == json.loads(record)["test"]["pearson"]
  assert evaluation["training_overlap"]["extra"] == {"dev": 0, "test": 0} and "warning" not in own.stderr
  # On the whole test split: a record of its own, which names the splits it evaluated.
  whole = _run(*where, "--test_split=test")
  assert whole.returncode == 0, whole.stderr
  path = workdir / "eval_dev-validation_32_test-test.json"
  assert f"evaluation recorded in {path}" in whole.stdout
  whole_record = json.loads(path.read_text())
  assert whole_record["evaluation"] == {"dev": "validation[:32]", "test": "test"}
  # MSRP train holds STS-B test pairs past test[:800], which the run did not remove: said, and kept.
  in_extra = whole_record["training_overlap"]["extra"]["test"]
  assert in_extra > 0
  assert (
    f"warning: {in_extra} test pairs (test) are in the run's extra training data: these numbers are "
    "not of unseen pairs"
  ) in whole.stderr
  assert json.loads((workdir / "eval.json").read_text()) == evaluation
  assert (workdir / "results.json").read_bytes() == record
