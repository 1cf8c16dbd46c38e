"""The command line: flagfiles, bad input, kill -9 + resume, eval and predict."""

import glob
import hashlib
import json
import os
import re
import resource
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Every experiment's flagfile; *_base.flags hold the shared recipes the others include.
FLAGFILES = sorted(
  os.path.basename(p)
  for p in glob.glob(os.path.join(REPO, "experiments", "*.flags"))
  if not p.endswith("_base.flags")
)


CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def _start_and_signal_after(workdir, checkpoints: int, sig: int, *args) -> subprocess.Popen:
  """Starts a training run, sends `sig` once `workdir` holds `checkpoints` epoch checkpoints,
  and waits for it to end."""
  process = subprocess.Popen(
    _command(*[a for group in args for a in group]),
    cwd=REPO,
    stdout=subprocess.DEVNULL,
    stderr=subprocess.PIPE,
    text=True,
  )
  deadline = time.time() + 240
  while len(glob.glob(str(workdir / "checkpoints" / "[0-9]*"))) < checkpoints and time.time() < deadline:
    time.sleep(0.02)
  process.send_signal(sig)
  process.wait(timeout=120)
  return process


def _venv_with_requirements() -> str:
  """The virtual environment running the tests, if run.sh installed requirements.txt into it
  (then run.sh uses it as it is); else the test is skipped rather than install anything."""
  venv = os.path.dirname(os.path.dirname(sys.executable))
  stamp = os.path.join(venv, ".requirements.sha256")
  with open(os.path.join(REPO, "requirements.txt"), "rb") as f:
    wanted = hashlib.sha256(f.read()).hexdigest()
  if not os.path.exists(stamp) or open(stamp).read().strip() != wanted:
    pytest.skip(f"{venv} was not set up by run.sh (no matching {stamp})")
  return venv


def _command(*args):
  return [sys.executable, "-m", "experiments.main", *args]


def _run(*args, stdin=None, env=None):
  return subprocess.run(
    _command(*args),
    cwd=REPO,
    capture_output=True,
    text=True,
    input=stdin,
    env={**os.environ, **(env or {})},
    timeout=300,
  )


@pytest.fixture
def tiny(prepared, manual_dir, tmp_path):
  """Flags for a tiny, fast run on slices of STS-B."""

  def flags(workdir, epochs=2):
    return [
      "--flagfile=lstm.flags",
      f"--workdir={workdir}",
      f"--data_dir={prepared('stsb')}",
      f"--manual_dir={manual_dir}",
      "--train_split=train[:128]",
      "--eval_split=validation[:32]",
      "--test_split=test[:32]",
      "--hidden_size=8",
      "--embedding_dim=8",
      "--mlp_hidden=8",
      "--max_length=8",  # one length bucket: half the programs to compile
      "--batch_size=32",
      f"--epochs={epochs}",
    ]

  return flags


def test_every_flagfile_parses():
  from absl import flags
  from experiments import cli_flags, main  # noqa: F401  (defines the flags)

  assert set(FLAGFILES) >= {"rnn.flags", "lstm.flags", "lstm_stacked_dropout.flags", "lstm_glove.flags"}
  for name in FLAGFILES:
    flags.FLAGS.unparse_flags()
    cli_flags.parse_flags_with_flagfile_lookup(["main", f"--flagfile={name}"])
    assert flags.FLAGS.experiment == name[: -len(".flags")]
    main._refuse_flags_of_other_tasks(flags.FLAGS.task)  # sets none of the other task's flags
  flags.FLAGS.unparse_flags()


def test_unknown_flag_and_missing_flagfile_are_one_clear_line():
  unknown = _run("--flagfile=lstm.flags", "--hidden_sise=3")
  assert unknown.returncode != 0
  assert "Unknown command line flag 'hidden_sise'" in unknown.stderr
  assert "Traceback" not in unknown.stderr
  missing = _run("--flagfile=nope.flags")
  assert missing.returncode != 0
  assert "flagfile 'nope.flags' not found" in missing.stderr and "experiments" in missing.stderr
  assert "lstm_glove.flags" in missing.stderr  # lists what is available
  bad_value = _run("--flagfile=lstm.flags", "--cell=transformer")
  assert bad_value.returncode != 0 and "--cell" in bad_value.stderr and "Traceback" not in bad_value.stderr
  # A flag of the other task would be ignored: refused, whether it came with the command or a flagfile.
  other_task = _run("--flagfile=cnn_resnet.flags", "--dataset=sick", "--workdir=/nonexistent/never-made")
  assert other_task.returncode == 1 and other_task.stderr.strip() == (
    "error: --dataset: this flag belongs to the similarity task, and this run is cifar10 "
    "(--task=cifar10): remove it, or train with --task=similarity"
  )
  other_task = _run("--flagfile=lstm.flags", "--task=cifar10", "--workdir=/nonexistent/never-made")
  assert other_task.returncode == 1 and "--cell, --dataset, " in other_task.stderr
  assert "these flags belong to the similarity task, and this run is cifar10" in other_task.stderr


def test_a_killed_run_resumes_to_the_same_numbers_and_eval_and_predict_use_a_trained_workdir(
  tiny, tmp_path, prepared, manual_dir
):
  # One trained workdir serves the resume check and the eval/predict checks (one training fewer).
  epochs = 4
  seeds = ["--num_seeds=2", "--seed=4", "--deterministic"]
  workdir = tmp_path / "reference"
  reference = _run(*tiny(workdir, epochs), *seeds)
  assert reference.returncode == 0, reference.stderr
  assert "Mean ± std over 2 seeds [4, 5]" in reference.stdout
  assert "dev Pearson" in reference.stdout and "test Pearson" in reference.stdout
  results = json.load(open(workdir / "results.json"))
  assert results["seeds"] == [4, 5] and results["per_seed"][0]["test"] != results["per_seed"][1]["test"]
  # --deterministic reaches XLA (set before JAX starts) and is recorded with the run.
  assert "--xla_gpu_deterministic_ops=true" in json.load(open(workdir / "run_info.json"))["xla_flags"]

  # A preemption (SIGTERM) once an epoch is saved: the step in progress is saved, one line
  # says where, exit status 143.
  killed = tmp_path / "killed"
  process = _start_and_signal_after(killed, 1, signal.SIGTERM, tiny(killed, epochs), seeds)
  assert process.returncode == 143, "the run ended before it could be stopped"
  last_line = process.stderr.read().strip().splitlines()[-1]
  assert re.fullmatch(
    r"stopped \(SIGTERM\) (in epoch \d after \d of its steps|after epoch \d): checkpoint step \d+ holds it; "
    "rerun the same command to resume from there",
    last_line,
  ), last_line  # which one depends on when the signal came (tests/test_run.py tests each)
  # Rerun; kill -9 once another checkpoint is saved, so the resumed run also inherits an earlier best.
  saved = len(glob.glob(str(killed / "checkpoints" / "[0-9]*")))
  process = _start_and_signal_after(killed, saved + 1, signal.SIGKILL, tiny(killed, epochs), seeds)
  assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed"
  resumed = _run(*tiny(killed, epochs), *seeds)
  assert resumed.returncode == 0, resumed.stderr
  assert f"warning: took over the stale lock {killed / '.lock'} of process {process.pid}" in resumed.stderr
  got = json.load(open(killed / "results.json"))
  assert got["per_seed"] == results["per_seed"] and got["summary"] == results["summary"]  # bit-identical
  assert [json.loads(line)["epoch"] for line in open(killed / "metrics.jsonl")] == list(range(1, epochs + 1))

  # A full disk during a save (here: a 16 kB file size limit, which orbax's sharding file
  # exceeds): one line naming the checkpoint, the one before kept; the rerun ends the same.
  full = tmp_path / "full"
  assert _run(*tiny(full, 1), *seeds).returncode == 0  # epoch 1 saved

  def limit_file_size():  # in the child: writes past the limit fail with EFBIG, as on a full disk
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (16_000, 16_000))

  failed = subprocess.run(
    _command(*tiny(full, epochs), *seeds),
    cwd=REPO,
    capture_output=True,
    text=True,
    preexec_fn=limit_file_size,
  )
  assert failed.returncode == 1
  assert re.fullmatch(
    rf"error: saving checkpoint {full}/(best|checkpoints)/\d+ failed \(File too large, errno 27\); the "
    "checkpoints saved before it are kept: free space .* and rerun the same command to resume",
    failed.stderr.strip(),
  ), failed.stderr[-3000:]
  resumed = _run(*tiny(full, epochs), *seeds)
  assert resumed.returncode == 0, resumed.stderr
  got = json.load(open(full / "results.json"))
  assert got["per_seed"] == results["per_seed"] and got["summary"] == results["summary"]  # bit-identical

  other = _run(*tiny(workdir, epochs), *seeds, "--hidden_size=16")
  assert other.returncode == 1
  assert "model.hidden_size=8 there, 16 now" in other.stderr and "Traceback" not in other.stderr

  eval_flags = [
    "--deterministic",  # the XLA flags of the training run: eval warns about nothing
    "--mode=eval",
    f"--workdir={workdir}",
    f"--data_dir={prepared('stsb')}",
    f"--manual_dir={manual_dir}",
    "--eval_split=validation[:32]",
    "--test_split=test[:32]",
  ]
  evaluated = _run(*eval_flags)
  assert evaluated.returncode == 0, evaluated.stderr
  assert "warning" not in evaluated.stderr  # same machine, code and data as the training run
  evaluation = json.load(open(workdir / "eval.json"))
  for got, want in zip(evaluation["per_seed"], results["per_seed"]):
    assert got["test"] == pytest.approx(want["test"], abs=1e-6)
  # The seeds as one model (the mean of their scores), as the training run reported it.
  assert evaluation["ensemble"]["seeds"] == 2
  assert evaluation["ensemble"]["test"] == pytest.approx(results["ensemble"]["test"], abs=1e-6)
  assert "ensemble (mean score of the 2 seeds)" in evaluated.stdout
  # Elsewhere (here: other recorded versions and data), eval says what differs.
  run_info = json.load(open(workdir / "run_info.json"))
  run_info["versions"]["jax"] = "0.0.1"
  run_info["data"]["source_sha256"]["sts-test.csv"] = "0" * 64
  json.dump(run_info, open(workdir / "run_info.json", "w"))
  elsewhere = _run(*eval_flags)
  assert elsewhere.returncode == 0, elsewhere.stderr
  assert "versions.jax: '0.0.1' at training" in elsewhere.stderr
  assert "data file sts-test.csv: sha256 000000000000... at training" in elsewhere.stderr

  pairs = "A man is playing a guitar.\tA man plays the guitar.\n\nzzqx qqzx\t\n"
  predicted = _run("--mode=predict", f"--workdir={workdir}", stdin=pairs)
  assert predicted.returncode == 0, predicted.stderr
  scores = [float(x) for x in predicted.stdout.split()]
  assert len(scores) == 2 and all(0.0 <= s <= 5.0 for s in scores)  # unknown words and "" still score

  malformed = _run("--mode=predict", f"--workdir={workdir}", stdin="only one column\n")
  assert malformed.returncode == 1
  assert malformed.stderr.strip() == (
    "error: stdin, line 1: expected 'sentence1<TAB>sentence2', found 1 tab-separated field(s)"
  )

  # The trained encoder on other datasets: a table on stdout, transfer.json in the workdir.
  where = [f"--data_dir={prepared('stsb')}", f"--manual_dir={manual_dir}"]
  transferred = _run(
    "--mode=transfer", f"--workdir={workdir}", "--transfer_sets=STS13,STSB", "--transfer_max_pairs=16", *where
  )
  assert transferred.returncode == 0, transferred.stderr
  assert (
    "| STS13 FNWN | 16 | 0 | 0 |" in transferred.stdout and "| **STS13 all** | 48 |" in transferred.stdout
  )
  assert f"transfer recorded in {workdir / 'transfer.json'}" in transferred.stdout
  record = json.load(open(workdir / "transfer.json"))
  assert [s["set"] for s in record["sets"]] == ["FNWN", "headlines", "OnWN", "dev", "test"]
  # An STS-B model trained on train[:128]: whatever of the first dev and test pairs it holds is gone.
  assert all(s["pairs"] + s["removed_training_pairs"] == 16 for s in record["sets"])
  ignored = _run("--mode=eval", f"--workdir={workdir}", "--transfer_sets=STS13", *where)
  assert (
    ignored.stderr.strip()
    == "error: --transfer_sets only apply with --mode=transfer, not --mode=eval: drop them"
  )
  other = _run(
    "--mode=transfer", f"--workdir={workdir}", "--transfer_sets=STS13", "--transfer_max_pairs=16", *where
  )
  assert (
    other.returncode == 1
    and other.stderr.startswith("error: ")
    and "holds a transfer run of other settings (sets" in other.stderr
  )


def test_cifar_train_eval_and_predict_on_the_command_line(cifar_data_dir, tmp_path):
  from PIL import Image

  workdir = tmp_path / "cnn"
  common = [f"--workdir={workdir}", f"--data_dir={cifar_data_dir}", f"--cache_dir={tmp_path / 'cache'}"]
  trained = _run(
    "--flagfile=cnn_gap.flags",
    *common,
    "--train_split=train[:256]",
    "--eval_split=test[:64]",
    "--width=4",
    "--epochs=4",
    "--batch_size=32",
  )
  assert trained.returncode == 0, trained.stderr
  assert "accuracy (test[:64], last epoch)" in trained.stdout and "images/s" in trained.stdout
  history = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
  assert history[-1]["train_loss"] < history[0]["train_loss"] - 0.1
  results = json.load(open(workdir / "results.json"))
  assert set(results["test"]["per_class_accuracy"]) == set(CIFAR_CLASSES)
  assert np.sum(results["test"]["confusion_matrix"]) == 64
  assert results["images_per_second"] > 0 and results["compile_seconds"] > 0
  assert set(results["seconds_to_accuracy"]) == {"0.8", "0.85", "0.9", "0.94"}
  assert results["versions"]["jax"] and results["flags"]["width"] == 4
  assert not os.listdir(workdir / "best")  # nothing is selected on the test split
  assert len(os.listdir(workdir / "checkpoints")) == 3  # the latest 3 of 4 epochs
  # Eval and predict read the task from the workdir: no --task=cifar10 needed, a wrong one refused.
  evaluated = _run("--mode=eval", *common, "--eval_split=test[:64]")
  assert evaluated.returncode == 0, evaluated.stderr
  assert json.load(open(workdir / "eval.json"))["test"] == results["test"]
  wrong = _run("--task=similarity", "--mode=eval", f"--workdir={workdir}")
  assert wrong.returncode == 1 and wrong.stderr.strip() == (
    f"error: {workdir} holds a cifar10 run, not similarity: drop --task (eval and predict read it from the workdir)"
  )

  Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "black.png")
  predicted = _run("--mode=predict", *common, str(tmp_path / "black.png"))
  assert predicted.returncode == 0, predicted.stderr
  path, label = predicted.stdout.strip().split("\t")
  assert path.endswith("black.png") and label in CIFAR_CLASSES
  # run.sh from another folder: relative paths are the caller's, not the repository's.
  via_run_sh = subprocess.run(
    ["bash", os.path.join(REPO, "run.sh"), "--task=cifar10", "--mode=predict", "--workdir=cnn", "black.png"],
    cwd=tmp_path,
    capture_output=True,
    text=True,
    env={**os.environ, "SIMJAX_VENV": _venv_with_requirements()},
    timeout=300,
  )
  assert via_run_sh.returncode == 0, via_run_sh.stderr
  assert via_run_sh.stdout == f"black.png\t{label}\n"
  (tmp_path / "notes.txt").write_text("hello")
  bad = _run("--task=cifar10", "--mode=predict", *common, str(tmp_path / "notes.txt"))
  assert (
    bad.returncode == 1 and "notes.txt: not a readable image" in bad.stderr and "Traceback" not in bad.stderr
  )
