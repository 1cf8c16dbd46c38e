"""experiments.bench on the command line: a real tiny bench, its files against its runs' results."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# A tiny ResNet on data slices, one epoch: what the bench measures does not matter here.
TINY = [
  "--flagfile=cnn_resnet.flags",
  "--width=4",
  "--train_split=train[:256]",
  "--eval_split=test[:128]",
  "--batch_size=64",
  "--epochs=1",
  "--tta=none",
]


def _bench(*args):
  return subprocess.run(
    [sys.executable, "-m", "experiments.bench", *args],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
  )


def test_bench_runs_seeds_back_to_back_and_reports_them(cifar_data_dir, tmp_path):
  out = tmp_path / "out"
  data = [f"--data_dir={cifar_data_dir}", f"--cache_dir={tmp_path / 'cache'}"]
  # No --compilation_cache_dir (the tests' own, from the environment, is overridden): <out>/jax_cache.
  done = _bench(
    *TINY, *data, "--runs=2", "--seed=3", f"--out={out}", "--keep_workdirs", "--compilation_cache_dir="
  )
  assert done.returncode == 0, done.stderr[-3000:]
  bench = json.loads((out / "cnn_resnet.json").read_text())
  md = (out / "cnn_resnet.md").read_text()
  results = [json.loads(open(os.path.join(r["workdir"], "results.json")).read()) for r in bench["runs"]]

  # One line per run as it finishes, then the table.
  lines = [line for line in done.stdout.splitlines() if line.startswith("run ")]
  assert [line.split()[:4] for line in lines] == [["run", "1/2", "seed", "3"], ["run", "2/2", "seed", "4"]]
  assert md.strip() in done.stdout
  # Each run is a normal one-seed training run of the next seed.
  assert [r["seeds"] for r in results] == [[3], [4]] and bench["seeds"] == [3, 4]
  assert bench["complete"] and bench["runs_completed"] == bench["runs_requested"] == 2
  accuracy = [r["test"]["accuracy"] for r in results]
  assert bench["test_accuracy"]["per_run"] == accuracy
  assert bench["test_accuracy"]["mean"] == pytest.approx(np.mean(accuracy))
  assert bench["test_accuracy"]["std"] == pytest.approx(np.std(accuracy, ddof=1))
  assert (bench["test_accuracy"]["min"], bench["test_accuracy"]["max"]) == (min(accuracy), max(accuracy))
  train = [r["train_seconds"] for r in results]
  assert bench["train_seconds"]["per_run"] == train
  assert bench["train_seconds"]["median"] == pytest.approx(np.median(train))
  assert bench["images_per_second"]["median"] == pytest.approx(
    np.median([r["images_per_second"] for r in results])
  )
  assert len(bench["wall_seconds"]["per_run"]) == 2
  for run_, workdir_result in zip(bench["runs"], results):  # each epoch's row, kept past the workdir
    rows = [json.loads(line) for line in open(os.path.join(run_["workdir"], "metrics.jsonl"))]
    assert run_["test_accuracy_per_epoch"] == [row["test_accuracy"] for row in rows]
    assert len(rows) == workdir_result["epochs"]
  assert bench["git"]["commit"] == results[0]["git"]["commit"]  # the code the runs used
  for name, value in bench["per_class_accuracy_mean"].items():
    assert value == pytest.approx(np.mean([r["test"]["per_class_accuracy"][name] for r in results]))
  # Compiled once: the first run compiled into the fresh cache under --out, the second loaded it.
  compile_ = bench["compile_seconds"]
  assert compile_["first_run"] == results[0]["compile_seconds"]
  assert compile_["others_median"] == results[1]["compile_seconds"]
  assert compile_["first_run_cache_hits"] == 0 and bench["runs"][1]["compile_cache_hits"] >= 1
  assert bench["compilation_cache_dir"] == str(out / "jax_cache") and any((out / "jax_cache").iterdir())
  assert results[1]["compilation_cache_dir"] == str(out / "jax_cache")
  # What ran: the command, every flag, the data, the device and versions.
  assert bench["command"].startswith("python -m experiments.bench --flagfile=cnn_resnet.flags --width=4")
  assert (
    bench["flags"]["width"] == 4
    and bench["flags"]["runs"] == 2
    and bench["flags"]["architecture"] == "resnet"
  )
  assert bench["data"]["label"] == results[0]["data"]["eval"]["label"]
  assert bench["data"]["eval_images"] == 128 and bench["data"]["eval_split"] == "test[:128]"
  assert bench["device"] == results[0]["device"] and bench["versions"]["jax"] and bench["date"]
  assert f"`{bench['command']}`" in md and bench["data"]["label"] in md
  assert f"| 2 | 4 | {100 * accuracy[1]:.2f} |" in md

  # A second bench into the same --out is refused before it trains anything: the first's files
  # stay byte for byte, and nothing is added beside them.
  files = {name: (out / name).read_bytes() for name in ("cnn_resnet.json", "cnn_resnet.md")}
  listing = sorted(os.listdir(out))
  refused = _bench(*TINY, *data, "--runs=1", f"--out={out}")
  assert refused.returncode == 1 and not refused.stdout
  assert refused.stderr.strip() == (
    f"error: {out / 'cnn_resnet.json'} already exists (a bench of {bench['date']}: 2 of 2 runs; "
    f"command: {bench['command']}): a bench never overwrites an earlier result; pass another --out "
    f"or --experiment, or move {out / 'cnn_resnet.json'} and {out / 'cnn_resnet.md'} away"
  )
  assert {name: (out / name).read_bytes() for name in files} == files and sorted(os.listdir(out)) == listing

  # Another bench in another --out, sharing that cache: its one run loads every program,
  # and its workdirs are gone afterwards.
  again = tmp_path / "again"
  done = _bench(*TINY, *data, "--runs=1", f"--out={again}", f"--compilation_cache_dir={out / 'jax_cache'}")
  assert done.returncode == 0, done.stderr[-3000:]
  assert sorted(os.listdir(again)) == ["cnn_resnet.json", "cnn_resnet.md"]
  one = json.loads((again / "cnn_resnet.json").read_text())
  assert (
    one["compile_seconds"]["first_run_cache_hits"] >= 1 and one["compile_seconds"]["others_median"] is None
  )
  assert one["test_accuracy"]["std"] == 0.0 and "workdir" not in one["runs"][0]
  assert "loaded" in (again / "cnn_resnet.md").read_text()  # says its first run was not a cold compile


def test_a_bench_stopped_early_is_kept_too(tmp_path):
  out = tmp_path / "out"
  out.mkdir()
  stopped = {
    "experiment": "cnn_resnet",
    "command": "python -m experiments.bench --flagfile=cnn_resnet.flags --runs=5",
    "date": "2026-01-02",
    "runs_requested": 5,
    "runs_completed": 2,
    "complete": False,
  }
  (out / "cnn_resnet.json").write_text(json.dumps(stopped))
  refused = _bench("--flagfile=cnn_resnet.flags", "--runs=1", f"--out={out}")
  assert refused.returncode == 1 and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
  assert refused.stderr.startswith(
    f"error: {out / 'cnn_resnet.json'} already exists (a bench of 2026-01-02: 2 of 5 runs, stopped early; "
    f"command: {stopped['command']}): "
  )
  assert refused.stderr.strip().endswith(f"or move {out / 'cnn_resnet.json'} away")
  assert json.loads((out / "cnn_resnet.json").read_text()) == stopped
  assert os.listdir(out) == ["cnn_resnet.json"]  # refused before anything was written


@pytest.mark.parametrize(
  "args, message",
  [
    (
      ["--flagfile=cnn_resnet.flags", "--task=similarity"],
      "error: --task=similarity: the bench measures CIFAR-10",
    ),
    (["--flagfile=cnn_resnet.flags", "--widht=4"], "error: Unknown command line flag 'widht'"),
    (["--flagfile=cnn_resnet.flags", "--runs=0"], "error: flag --runs=0"),
  ],
)
def test_bad_flags_are_one_error_line(args, message, tmp_path):
  done = _bench(*args, f"--out={tmp_path / 'out'}")
  assert done.returncode == 1
  assert len(done.stderr.strip().splitlines()) == 1 and done.stderr.startswith(message), done.stderr
  assert not (tmp_path / "out").exists()  # refused before anything ran
