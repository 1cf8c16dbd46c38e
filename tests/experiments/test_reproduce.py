"""experiments.reproduce: the quick pipeline end to end on a sentence experiment (tiny model).

The CIFAR half of the report (accuracy and per-class tables, comparison figures) is checked on
the cnn_resnet run of the device script's smoke session (tests/experiments/test_gpu_session.py),
which runs reproduce as well."""

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest

from experiments import lifecycle, reproduce

REPO = pathlib.Path(__file__).resolve().parents[2]


def test_every_study_experiment_has_a_flagfile_and_a_quick_command():
  for experiment in reproduce.EXPERIMENTS:
    argv = reproduce.command(experiment, "reports/x", 5, True, [])
    if experiment.group == "transfer":  # scores a trained workdir (or a baseline's own folder)
      scored = experiment.after or experiment.name
      assert argv[3:5] == ["--mode=transfer", f"--workdir=reports/x/runs/{scored}"]
      assert "--transfer_max_pairs=100" in argv
      continue
    assert (REPO / "experiments" / experiment.flagfile).is_file()
    assert "--num_seeds=5" in argv and "--workdir=reports/x/runs/" + experiment.name in argv
  transfers = {e.name: e for e in reproduce.EXPERIMENTS if e.group == "transfer"}
  assert {e.after for e in transfers.values()} - {None} <= {e.name for e in reproduce.EXPERIMENTS}
  assert "--transfer_encoder=sif" in reproduce.command(transfers["transfer_sif"], "r", 2, False, [])
  # A transfer run brings the run it scores.
  assert {e.name for e in reproduce.selected(["transfer_best_sick"])} == {"best_sick", "transfer_best_sick"}
  assert {e.name for e in reproduce.selected(["sick"])} == {
    "rnn_sick",
    "lstm_sick",
    "lstm_stacked_dropout_sick",
    "lstm_glove_sick",
    "best_sick",
  }
  with pytest.raises(ValueError, match="unknown nope"):
    reproduce.selected(["nope"])


# Prints the flag values of each argv (a JSON list of argvs), parsed with the real definitions.
_PARSE = """
import json, sys
from absl import flags
import experiments.main  # defines every flag
from experiments import cli_flags, flagfiles
out = []
for argv in json.loads(sys.argv[1]):
  flags.FLAGS.unparse_flags()
  flags.FLAGS(flagfiles.expand(argv))
  out.append(cli_flags.flag_values())
print(json.dumps(out, default=repr))
"""


def test_the_ablation_walks_from_the_study_settings_to_our_recipe_one_change_at_a_time():
  steps = [e for e in reproduce.EXPERIMENTS if e.group == "ablation"]
  argvs = [["prog", "--flagfile=study_lstm_glove.flags"], ["prog", "--flagfile=lstm_glove.flags"]]
  argvs += [["prog", f"--flagfile={e.flagfile}", *e.flags] for e in steps]
  done = subprocess.run(
    [sys.executable, "-c", _PARSE, json.dumps(argvs)],
    env={**os.environ, "PYTHONPATH": str(REPO)},
    capture_output=True,
    text=True,
    check=False,
  )
  assert done.returncode == 0, done.stderr
  study_settings, ours, *walked = json.loads(done.stdout)
  differing = lambda a, b: {k for k in a if k != "experiment" and a[k] != b[k]}  # noqa: E731
  assert differing(walked[-1], ours) == set()  # the last step is our recipe
  previous = study_settings
  for step, values, (_, step_flags, _) in zip(steps, walked, reproduce.ABLATION_STEPS, strict=True):
    # Each step changes exactly what it names, and keeps the steps before it.
    assert differing(previous, values) == {f.lstrip("-").split("=")[0] for f in step_flags}, step.name
    assert values["experiment"] == step.name
    previous = values
  assert len({e.label for e in steps}) == len(steps)


def test_extra_flags_for_every_run_must_be_flags_both_tasks_know():
  reproduce.check_extra_flags(
    ["--deterministic", "--nodeterministic", "--epochs=3", "--compilation_cache_dir=/c"]
  )
  for task_flag in ("--dtype=bfloat16", "--max_length=8"):
    with pytest.raises(
      ValueError, match=f"--extra_flags: {task_flag} is not a flag of both tasks; pass it in "
    ):
      reproduce.check_extra_flags([task_flag])


def test_quick_report_is_complete_resumable_and_never_mixed_with_another_study(
  prepared, manual_dir, tmp_path
):
  data_dir = pathlib.Path(prepared("stsb"))
  env = {
    **os.environ,
    "TFDS_DATA_DIR": str(data_dir),
    "SIMJAX_MANUAL_DIR": str(manual_dir),
    "SIMJAX_CACHE_DIR": str(tmp_path / "cache"),
    "PYTHONPATH": str(REPO),
  }
  command = [
    sys.executable,
    "-m",
    "experiments.reproduce",
    "--quick",
    "--only=rnn_stsb",
    f"--reports_dir={tmp_path / 'reports'}",
    "--name=check",
    "--similarity_flags=--hidden_size=16,--mlp_hidden=16,--max_length=8",  # a tiny model, same pipeline
  ]

  def run(*extra):
    return subprocess.run([*command, *extra], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)

  # SIGTERM (a preemption) reaches the training run too: none is left running.
  checkpoints = tmp_path / "reports" / "check" / "runs" / "rnn_stsb" / "checkpoints"
  stopped = subprocess.Popen(
    command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
  )
  deadline = time.time() + 240
  while not list(checkpoints.glob("[0-9]*")) and time.time() < deadline:
    time.sleep(0.05)
  stopped.send_signal(signal.SIGTERM)
  assert stopped.wait(timeout=180) == 143
  assert "terminated (SIGTERM)" in stopped.stderr.read()
  assert not _commands_mentioning(str(checkpoints.parent)), "a training run outlived reproduce"

  first = run()  # resumes the stopped experiment
  assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
  report_dir = tmp_path / "reports" / "check"
  report = (report_dir / "report.md").read_text()
  for heading in (
    "## Sentence similarity: test Pearson",
    "## Sentence similarity: train / dev MSE per epoch",
    "## Figures",
  ):
    assert heading in report
  assert "## CIFAR-10" not in report  # no CIFAR experiment ran: no empty CIFAR tables
  rnn_row = next(line for line in report.splitlines() if line.startswith("| rnn_stsb | stsb |"))
  cells = [c.strip() for c in rnn_row.split("|")[1:-1]]
  assert cells[2] == "0.237" and "±" in cells[3] and cells[4] == "2" and "--num_seeds=2" in cells[8]
  assert cells[6].endswith("(epoch 3)") and cells[7].endswith("(2 seeds)")  # last epoch; ensemble
  results = json.load(open(report_dir / "runs" / "rnn_stsb" / "results.json"))
  assert f"{results['summary']['test.pearson']['mean']:.3f} ±" in cells[3]
  assert [line for line in report.splitlines() if line.startswith("| rnn_stsb | 3 |")]  # last epoch's MSE row
  for figure in ("learning_curves_stsb.png",):
    assert (report_dir / figure).stat().st_size > 10_000
    assert f"![{figure}]({figure})" in report
  assert (report_dir / "logs" / "rnn_stsb.log").read_text().startswith("$ python -m experiments.main")

  again = run("--jobs=2")  # another command for the same plan
  assert again.returncode == 0, again.stderr[-3000:]
  assert again.stdout.count("done, skipped") == 1  # resumable: a finished experiment is not rerun
  report = (report_dir / "report.md").read_text()
  shown = " ".join(["python -m experiments.reproduce", *command[3:]])
  assert f"from the runs of `{shown}`; `{shown} --jobs=2`" in report.splitlines()[2]

  # Another experiment run into the same folder: the report keeps the earlier one's rows too.
  more = run("--only=lstm_stsb")
  assert more.returncode == 0, more.stderr[-3000:]
  report = (report_dir / "report.md").read_text()
  assert rnn_row in report.splitlines() and "\n| lstm_stsb | stsb |" in report

  other = run("--num_seeds=3")
  assert other.returncode == 1
  assert "holds a different study" in other.stderr and "Traceback" not in other.stderr
  assert (report_dir / "report.md").read_text() == report  # untouched

  # The ablation's table and figure, drawn from stand-in runs (copies of this one: what is
  # under test here is the report, not the runs).
  stand_ins = ["study_lstm_glove", "best_stsb"] + [
    f"ablation_{i}" for i in range(1, len(reproduce.ABLATION_STEPS) + 1)
  ]
  for name in stand_ins:
    shutil.copytree(report_dir / "runs" / "rnn_stsb", report_dir / "runs" / name)
  drawn = run("--report_only", "--only=ablation,best_stsb")
  assert drawn.returncode == 0, drawn.stderr[-3000:]
  report = (report_dir / "report.md").read_text()
  assert "## Ablation: from the study's settings to our recipe" in report
  steps = [line for line in report.splitlines() if line.startswith("| ") and "| + " in line]
  assert len(steps) == len(reproduce.ABLATION_STEPS) and all("| +0.000 |" in line for line in steps)
  assert all(len(line.replace("\\|", "").split("|")) == 10 for line in steps)  # 8 cells: no stray |
  assert "| 0 | the study's settings (study_lstm_glove.flags) |" in report
  best = next(line for line in report.splitlines() if line.startswith("| best_stsb | stsb |"))
  assert "0.7840 (InferSent" in best and "| ≥ 0.78 |" in best and "(2 seeds)" in best
  shared = results["data"]["leakage_check"]["official_train_overlap"]  # the run's own record
  assert f"official train shares {shared['dev']} dev / {shared['test']} test pairs" in best
  for figure in ("ablation.png", "learning_curves_study.png"):
    assert (report_dir / figure).stat().st_size > 10_000 and f"![{figure}]({figure})" in report


def _fake(name: str) -> reproduce.Experiment:
  return reproduce.Experiment(name, f"{name}.flags", "similarity", "stsb", {}, 1.0)


def test_runs_at_once_keep_their_own_logs_and_the_first_failure_stops_the_others(tmp_path, capsys):
  # Fake experiments (what is under test is the runner): python -c commands.
  lines = "for i in range(50): print('{0}', i, flush=True)"
  commands = {
    "a": ["python", "-c", lines.format("a")],
    "b": ["python", "-c", lines.format("b")],
    "c": ["python", "-c", lines.format("c")],
  }
  finished = []
  reproduce.run_experiments(
    [_fake(n) for n in "abc"],
    commands,
    str(tmp_path),
    2,
    lambda e: None,
    lambda e, s: finished.append(e.name),
  )
  assert sorted(finished) == ["a", "b", "c"]
  for name in "abc":
    logged = (tmp_path / "logs" / f"{name}.log").read_text().splitlines()
    assert logged[1:] == [f"{name} {i}" for i in range(50)]  # whole lines, its own only
  shown = capsys.readouterr().out.splitlines()
  assert "  [b] b 49" in shown and len([line for line in shown if line.startswith("  [a] a ")]) == 50

  sleeper = ["python", "-c", "import time; print('started', flush=True); time.sleep(120)"]
  commands = {"slow": sleeper, "broken": ["python", "-c", "raise SystemExit(3)"], "never": sleeper}
  start = time.monotonic()
  with pytest.raises(reproduce.ExperimentFailed, match=r"broken failed \(exit 3\)"):
    reproduce.run_experiments(
      [_fake(n) for n in ("slow", "broken", "never")],
      commands,
      str(tmp_path),
      2,
      lambda e: None,
      lambda e, s: None,
    )
  assert time.monotonic() - start < 60  # the slow one was stopped, not waited for
  assert not (tmp_path / "logs" / "never.log").exists()  # nothing new starts after a failure
  assert not _commands_mentioning("time.sleep(120)")

  # SIGTERM (raised as lifecycle.Terminated, here while a finished run is being reported) reaches
  # the run under way, which saves and stops.
  saving = (
    "import signal, sys, time; "
    "signal.signal(signal.SIGTERM, lambda *_: (print('saved', flush=True), sys.exit(143))); "
    "print('started', flush=True); time.sleep(120)"
  )
  commands = {"quick": ["python", "-c", "import time; time.sleep(2)"], "saving": ["python", "-c", saving]}

  def preempted(e, seconds):
    raise lifecycle.Terminated()

  with pytest.raises(lifecycle.Terminated, match="saving ended with exit status 143.*rerun the same command"):
    reproduce.run_experiments(
      [_fake("quick"), _fake("saving")], commands, str(tmp_path), 2, lambda e: None, preempted
    )
  assert (tmp_path / "logs" / "saving.log").read_text().splitlines()[1:] == ["started", "saved"]


def test_a_transfer_run_starts_only_once_the_run_it_scores_has_finished(tmp_path):
  stamp = tmp_path / "trained"
  commands = {
    "train": ["python", "-c", f"import time, pathlib; time.sleep(1); pathlib.Path({str(stamp)!r}).touch()"],
    "score": [
      "python",
      "-c",
      f"import pathlib, sys; sys.exit(0 if pathlib.Path({str(stamp)!r}).exists() else 5)",
    ],
    "other": ["python", "-c", "pass"],
  }
  order = []
  score = reproduce.Experiment(
    "score", "", "similarity", "transfer", {}, 1.0, group="transfer", after="train"
  )
  reproduce.run_experiments(
    [_fake("train"), score, _fake("other")],
    commands,
    str(tmp_path),
    2,
    lambda e: order.append(e.name),
    lambda e, s: None,
  )  # raises ExperimentFailed if `score` ran before `train` had finished
  assert order == ["train", "other", "score"]  # the free job went to the next that could start


def test_the_transfer_table_shows_every_encoder_beside_published_figures(tmp_path):
  def record(spearman, kinds, seeds=None):
    sets = [
      {"group": g, "set": n, "scores": {k: {"spearman": spearman, "pearson": spearman} for k in kinds}}
      for g, n in (("STS12", "MSRpar"), ("STSB", "dev"), ("STSB", "test"), ("SICK-R", "test"))
    ]
    years = {"STS12": {"scores": {k: {"all": {"spearman": spearman + 0.1}} for k in kinds}}}
    return {
      "settings": {"max_pairs": 0},
      "encoder": {"seeds": seeds} if seeds else {},
      "sets": sets,
      "years": years,
    }

  runs = tmp_path / "runs"
  for folder, content in (
    ("best_stsb", record(0.5, ("head", "cosine"), [0, 1])),
    ("transfer_sif", record(0.25, ("cosine",))),
  ):
    (runs / folder).mkdir(parents=True)
    (runs / folder / "transfer.json").write_text(json.dumps(content))
  chosen = [
    e
    for e in reproduce.EXPERIMENTS
    if e.name in ("transfer_best_stsb", "transfer_sif", "transfer_glove_mean")
  ]
  commands = {e.name: reproduce.command(e, str(tmp_path), 2, False, []) for e in chosen}
  lines = reproduce._transfer_lines(str(tmp_path), chosen, commands)
  table = [line for line in lines if line.startswith("| ")]
  assert table[0] == "| encoder | score | STS12 | STSB test | SICK-R |"
  assert table[1:4] == [
    "| best recipe on STS-B, 2 seeds | head | 60.0 | 50.0 | 50.0 |",
    "| best recipe on STS-B, 2 seeds | cosine | 60.0 | 50.0 | 50.0 |",
    "| SIF (no training) | cosine | 35.0 | 25.0 | 25.0 |",
  ]
  assert any("Arora" in line for line in table[4:])  # the published rows, cited
  assert "Not run yet: GloVe mean (no training)" in lines[-1]


def test_a_runs_log_holds_each_line_while_the_run_is_under_way(tmp_path):
  # The fake run prints a line, then waits for the test to have read that line in its log.
  seen = tmp_path / "seen"
  waits = (
    "import os, sys, time; print('started', flush=True); "
    f"deadline = time.time() + 30\nwhile not os.path.exists({str(seen)!r}) and time.time() < deadline: time.sleep(0.05)\n"
    f"sys.exit(0 if os.path.exists({str(seen)!r}) else 7)"
  )
  log = tmp_path / "logs" / "follows.log"

  def watch():
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
      if log.exists() and "started" in log.read_text().splitlines():
        seen.touch()
        return
      time.sleep(0.05)

  watcher = threading.Thread(target=watch)
  watcher.start()
  reproduce.run_experiments(
    [_fake("follows")],
    {"follows": ["python", "-c", waits]},
    str(tmp_path),
    1,
    lambda e: None,
    lambda e, s: None,
  )  # raises ExperimentFailed if the line never reached the log in time
  watcher.join()


def _commands_mentioning(text: str) -> list[str]:
  """Command lines of this machine's running processes that contain `text` (Linux /proc)."""
  found = []
  for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
      with open(f"/proc/{pid}/cmdline", "rb") as f:
        command = f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
      continue
    if text in command:
      found.append(command)
  return found


def test_core_groups_split_the_cores_evenly_and_in_order():
  assert reproduce.core_groups(2, [0, 1]) == [(0,), (1,)]
  assert reproduce.core_groups(2, [0, 1, 2, 3, 4]) == [(0, 1, 2), (3, 4)]
  assert reproduce.core_groups(3, [4, 5, 6, 7]) == [(4, 5), (6,), (7,)]
  assert reproduce.core_groups(1, [0, 1]) is None  # one job: every core
  assert reproduce.core_groups(3, [0, 1]) is None  # fewer cores than jobs: nothing to split


@pytest.mark.skipif(
  not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2 or shutil.which("taskset") is None,
  reason="needs Linux CPU affinity, taskset and 2 cores",
)
def test_runs_at_once_each_get_their_own_cores(tmp_path):
  first, second = sorted(os.sched_getaffinity(0))[:2]
  # Each fake run prints the cores it may use. a and b start together; b ends first, so c starts
  # while a still runs and must get b's cores.
  shows = "import os, time; print(sorted(os.sched_getaffinity(0)), flush=True); time.sleep({})"
  commands = {"a": ["python", "-c", shows.format(3)], "b": ["python", "-c", shows.format(1)]}
  commands["c"] = ["python", "-c", shows.format(0)]
  order = []
  reproduce.run_experiments(
    [_fake(n) for n in "abc"],
    commands,
    str(tmp_path),
    2,
    lambda e: order.append(e.name),
    lambda e, s: order.append(f"{e.name} done"),
    cores=[(first,), (second,)],
  )
  cores = {n: (tmp_path / "logs" / f"{n}.log").read_text().splitlines() for n in "abc"}
  assert cores["a"][1] == f"[{first}]" and cores["b"][1] == f"[{second}]"
  assert order.index("b done") < order.index("c") < order.index("a done")
  assert cores["c"][1] == f"[{second}]"  # b's cores, freed
  assert cores["c"][0].startswith(f"$ taskset --cpu-list {second} python -c")

  # A run with nothing else under way or waiting takes every core.
  commands = {"d": ["python", "-c", shows.format(0)]}
  reproduce.run_experiments(
    [_fake("d")], commands, str(tmp_path), 2, lambda e: None, lambda e, s: None, cores=[(first,), (second,)]
  )
  alone = (tmp_path / "logs" / "d.log").read_text().splitlines()
  assert alone[0].startswith("$ python -c") and alone[1] == str(sorted(os.sched_getaffinity(0)))
