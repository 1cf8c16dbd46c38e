r"""One command reproduces the whole study, with N seeds per experiment, and writes a report.

  python -m experiments.reproduce                       # everything, 5 seeds (states its duration)
  python -m experiments.reproduce --only=similarity     # the sentence half (STS-B and SICK)
  python -m experiments.reproduce --quick               # same pipeline on data slices, < 10 min on CPU
  ./run.sh reproduce --quick                            # the same, inside the project's venv

Each experiment is `python -m experiments.main --flagfile=... --num_seeds=N` in
reports/<name>/runs/<experiment>; its console output is also kept in reports/<name>/logs/.
Rerunning the same command skips finished experiments (and resumes an interrupted one
from its checkpoints). reports/<name>/report.md puts, for every number the study
reported, the study's value beside ours (mean ± sample std over seeds), n and the command;
figures are written next to it. A report folder holding a different plan is refused.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from typing import Callable

from absl import app, flags

from experiments import cli_flags, lifecycle, plot, study, transfer_table
from simjax import run_records
from simjax.summary import mean_std_text

FLAGS = flags.FLAGS


def define_flags() -> None:
  """Flags of this command (defined only when it runs, so importing it defines none)."""
  flags.DEFINE_string(
    "name", None, "Report folder name (default: study, or study-quick with --quick); rerun with it to resume."
  )
  flags.DEFINE_string("reports_dir", "reports", "Where report folders are written.")
  flags.DEFINE_bool("quick", False, "Data slices and few epochs: checks the whole pipeline in minutes.")
  flags.DEFINE_integer("num_seeds", None, "Seeds per experiment (default: 5; 2 with --quick).", lower_bound=1)
  flags.DEFINE_list(
    "only",
    [],
    "Run only these experiments or groups (similarity, cifar10, stsb, sick, ours, study, ablation, cnn, "
    "or names like lstm_stsb).",
  )
  flags.DEFINE_list(
    "extra_flags",
    [],
    "Flags added to every experiment's command, flags both tasks know (e.g. --deterministic); "
    "a task's own flags go in --similarity_flags / --cifar10_flags (a task refuses the other's).",
  )
  flags.DEFINE_list(
    "similarity_flags", [], "Flags added to every sentence experiment (e.g. --max_length=32)."
  )
  flags.DEFINE_list(
    "cifar10_flags", [], "Flags added to every CIFAR-10 experiment (e.g. --dtype=bfloat16 on a GPU)."
  )
  flags.DEFINE_enum(
    "cnn_seeds",
    "auto",
    ["auto", "stacked", "sequential"],
    "How a CNN experiment trains its seeds: stacked (one vmapped program) or sequential (one "
    "after another); auto: sequential on CPU, stacked on an accelerator (benchmarks/gpu_session "
    "measures both there).",
  )
  flags.DEFINE_integer(
    "jobs",
    1,
    "Experiments run at once, each on its own share of the CPU cores (see --split_cores); on one GPU "
    "they share its memory. benchmarks/reproduce_jobs.sh measures what it gains.",
    lower_bound=1,
  )
  flags.DEFINE_bool(
    "split_cores",
    True,
    "With --jobs=N > 1, give each run its own 1/N of this process's CPU cores (Linux taskset), so "
    "XLA's CPU threads of the runs do not contend (run_info.json records how many a run had); "
    "--nosplit_cores lets every run use every core.",
  )
  flags.DEFINE_bool("report_only", False, "Write report.md from the finished experiments; run nothing.")


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STUDY_SOURCE = study.SOURCE
MSE_TABLE_EPOCHS = (1, 5, 10, 20, 30, 40, 50, 85, 100)  # and every epoch the study printed


class ExperimentFailed(RuntimeError):
  """An experiment's command exited with an error (its log says why)."""


@dataclasses.dataclass(frozen=True)
class Experiment:
  name: str  # also the run's folder
  flagfile: str
  task: str  # similarity | cifar10
  dataset: str  # stsb | sick | cifar10
  study: (
    dict  # what the study reported: {"test.pearson": 0.237} / {"test.accuracy": 0.82, "train_seconds": 2511}
  )
  cpu_seconds_per_seed: float  # measured on the 2-core CPU (full run), to state the expected duration
  group: str = "ours"  # ours | study (the study's own settings) | ablation | cnn; --only takes it too
  variant: str | None = None  # the study's sentence variant it stands beside (rnn, lstm, ...)
  flags: tuple[str, ...] = ()  # added after the flagfile (an ablation step's changes)
  label: str = ""  # an ablation step: what it changes
  published: tuple[str, float] | None = None  # a best recipe: the published number to beat
  target: float | None = None  # a best recipe: the test Pearson it aims at (mean over seeds)
  after: str | None = None  # a transfer run: the experiment whose trained workdir it scores
  encoder: str = "trained"  # a transfer run: trained (the workdir of `after`) or a baseline


def _sentence(variant: str, dataset: str, seconds: float) -> Experiment:
  pearson = study.sentence_pearson(variant)
  reported = {"test.pearson": pearson} if dataset == "stsb" and pearson is not None else {}
  return Experiment(
    f"{variant}_{dataset}", f"{variant}.flags", "similarity", dataset, reported, seconds, variant=variant
  )


def _study_setting(variant: str, seconds: float) -> Experiment:
  """A study variant with the study's own settings (study_<variant>.flags), on STS-B as the study."""
  pearson = study.sentence_pearson(variant)
  return Experiment(
    f"study_{variant}",
    f"study_{variant}.flags",
    "similarity",
    "stsb",
    {} if pearson is None else {"test.pearson": pearson},
    seconds,
    group="study",
    variant=variant,
  )


def _cnn(structure: str) -> Experiment:
  found = study.cnn(structure)
  reported = (
    {} if found is None else {"test.accuracy": found["accuracy"], "train_seconds": found["train_seconds"]}
  )
  # 30 epochs of 50,000 images at about 125 images/s per seed on 2 CPU cores.
  return Experiment(structure, f"{structure}.flags", "cifar10", "cifar10", reported, 12_000.0, group="cnn")


# The ablation: from the study's settings (study_lstm_glove, its best variant) toward our
# recipe (lstm_glove.flags), one change at a time, each step keeping the ones before it. The
# last step is our recipe (tests/experiments/test_reproduce.py checks that they agree).
ABLATION_START = "study_lstm_glove"
ABLATION_STEPS = (
  ("best dev epoch of 12, not the last of 100", ("--epochs=12",), 60.0),
  (
    "Adam 1e-3 (x0.5 after 1 epoch without dev improvement), clip 5, not SGD 0.1",
    (
      "--optimizer=adam",
      "--learning_rate=1e-3",
      "--plateau_patience=1",
      "--decay_factor=0.5",
      "--grad_clip_norm=5",
    ),
    30.0,
  ),
  ("bidirectional", ("--bidirectional",), 50.0),
  ("max pooling, not the last state", ("--pooling=max",), 50.0),
  ("MLP head on [|u-v|, u*v], not exp(-|u-v|_1)", ("--head=mlp",), 50.0),
  ("50,000 GloVe words added to the vocabulary", ("--pretrained_vocab_size=50000",), 50.0),
  ("flax's initialisation, not PyTorch's", ("--init=flax",), 50.0),
)


def _ablation() -> list[Experiment]:
  steps, changes = [], ()
  for i, (label, step_flags, seconds) in enumerate(ABLATION_STEPS, 1):
    changes += step_flags
    steps.append(
      Experiment(
        f"ablation_{i}",
        "study_lstm_glove.flags",
        "similarity",
        "stsb",
        {},
        seconds,
        group="ablation",
        flags=(f"--experiment=ablation_{i}", *changes),
        label=label,
      )
    )
  return steps


def _best(name: str, dataset: str, published: tuple[str, float], target: float, seconds: float) -> Experiment:
  return Experiment(
    name,
    f"{name}.flags",
    "similarity",
    dataset,
    {},
    seconds,
    group="best",
    published=published,
    target=target,
  )


# Our best recipes against the best published Siamese / sentence-encoder numbers.
BEST = [
  # Seconds a seed measured while another run shared the CPU (2026-11-30): upper bounds.
  _best("best_sick", "sick", ("MaLSTM, AAAI 2016", 0.8822), 0.885, 450.0),
  _best("best_stsb", "stsb", ("InferSent, fastText vectors", 0.784), 0.78, 185.0),
]


def _transfer(label: str, after: str | None = None, encoder: str = "trained") -> Experiment:
  """A transfer run (--mode=transfer): a trained experiment's workdir, or a baseline, on STS12-16,
  STS-B and SICK-R; its record is transfer.json in the workdir it scores (a baseline: its own)."""
  name = f"transfer_{after or encoder}"
  return Experiment(
    name, "", "similarity", "transfer", {}, 20.0, group="transfer", label=label, after=after, encoder=encoder
  )


# The encoders of the transfer table: ours on each dataset, the best recipes, the study's settings'
# best variant, and the baselines without training.
TRANSFER = [
  _transfer("ours on STS-B (lstm_glove)", "lstm_glove_stsb"),
  _transfer("ours on SICK (lstm_glove)", "lstm_glove_sick"),
  _transfer("best recipe on STS-B", "best_stsb"),
  _transfer("best recipe on SICK", "best_sick"),
  _transfer("the study's settings, its best variant (study_lstm_glove)", "study_lstm_glove"),
  _transfer("GloVe mean (no training)", encoder="glove_mean"),
  _transfer("SIF (no training)", encoder="sif"),
]

# Published figures for the same sets (x 100), each with its paper, table and metric: Sentence-BERT's
# Table 1 is what the transfer table shows (Spearman of the cosine, a year's subsets pooled, STS-B
# test); SIF's Table 1 is Pearson, a year's subsets averaged (its STS12 has MSRvid, its STS13 SMT).
_SBERT = "Reimers & Gurevych 2019 (Sentence-BERT), Table 1: Spearman, cosine, pooled"
_SIF = "Arora, Liang & Ma 2017 (SIF), Table 1: Pearson, mean of a year's subsets"
PUBLISHED_TRANSFER = [
  ("Avg. GloVe embeddings", _SBERT, {"STS12": 55.14, "STS13": 70.66, "STS14": 59.73, "STS15": 68.25, "STS16": 63.66, "STSB test": 58.02, "SICK-R": 53.76}),
  ("InferSent (GloVe)", _SBERT, {"STS12": 52.86, "STS13": 66.75, "STS14": 62.15, "STS15": 72.77, "STS16": 66.87, "STSB test": 68.03, "SICK-R": 65.65}),
  ("avg-GloVe", _SIF, {"STS12": 52.5, "STS13": 42.3, "STS14": 54.2, "STS15": 52.7, "SICK-R": 65.9}),
  ("GloVe+WR (SIF)", _SIF, {"STS12": 56.2, "STS13": 56.6, "STS14": 68.5, "STS15": 71.7, "SICK-R": 72.2}),
]  # fmt: skip

# The sentence experiments' seconds a seed: their training seconds (5 seeds stacked) on the 2-core
# AMD EPYC CPU machine (jax 0.10.2), over 5; the ablation's and best recipes' are set above.
EXPERIMENTS = [
  *(
    _sentence(variant, dataset, seconds)
    for dataset in ("stsb", "sick")
    for variant, seconds in (
      ("rnn", 13.0),
      ("lstm", 30.0),
      ("lstm_stacked_dropout", 100.0),
      ("lstm_glove", 30.0),
    )
  ),
  *(
    _study_setting(variant, seconds)
    for variant, seconds in (
      ("rnn", 30.0),
      ("lstm", 290.0),
      ("lstm_glove", 290.0),  # before the stacked one, the longest: the ablation starts here
      ("lstm_stacked_dropout", 700.0),
    )
  ),
  *_ablation(),
  *BEST,
  *TRANSFER,
  *(_cnn(structure) for structure in (*study.CNN_STRUCTURES, "cnn_resnet")),
]
CNN_STRUCTURES = study.CNN_STRUCTURES
QUICK_FLAGS = {
  "similarity": [
    "--train_split=train[:512]",
    "--eval_split=validation[:256]",
    "--test_split=test[:256]",
    "--epochs=3",
  ],
  "cifar10": ["--train_split=train[:512]", "--eval_split=test[:500]", "--epochs=2", "--batch_size=128"],
  "transfer": ["--transfer_max_pairs=100"],
}


# --------------------------------------------------------------------------------------
# Plan and runs
# --------------------------------------------------------------------------------------
def selected(only: list[str]) -> list[Experiment]:
  if not only:
    return list(EXPERIMENTS)
  chosen = [e for e in EXPERIMENTS if {e.name, e.task, e.dataset, e.group} & set(only)]
  if any(e.group == "ablation" for e in chosen):  # the ablation starts from the study's settings
    chosen = [e for e in EXPERIMENTS if e in chosen or e.name == ABLATION_START]
  scored = {e.after for e in chosen}  # a transfer run needs the workdir it scores
  chosen = [e for e in EXPERIMENTS if e in chosen or e.name in scored]
  known = {name for e in EXPERIMENTS for name in (e.name, e.task, e.dataset, e.group)}
  unknown = sorted(set(only) - known)
  if unknown:
    raise ValueError(f"--only: unknown {', '.join(unknown)}; choose from {', '.join(sorted(known))}")
  return chosen


def command(
  experiment: Experiment,
  report_dir: str,
  num_seeds: int,
  quick: bool,
  extra: list[str],
  backend: str = "gpu",
  cnn_seeds: str = "auto",
) -> list[str]:
  if experiment.group == "transfer":
    workdir = os.path.join(report_dir, "runs", experiment.after or experiment.name)
    args = ["--mode=transfer", f"--workdir={workdir}"]
    if experiment.encoder != "trained":
      args.append(f"--transfer_encoder={experiment.encoder}")
    return ["python", "-m", "experiments.main", *args, *(QUICK_FLAGS["transfer"] if quick else []), *extra]
  args = [f"--flagfile={experiment.flagfile}", *experiment.flags]
  if experiment.task == "similarity":
    args.append(f"--dataset={experiment.dataset}")
  args += [f"--num_seeds={num_seeds}", f"--workdir={os.path.join(report_dir, 'runs', experiment.name)}"]
  if cnn_seeds == "auto":
    # Stacked CNN replicas become grouped convolutions, which XLA's CPU backend runs about
    # 3x slower per image than separate runs (measured: 37 vs 125 images/s, 2 seeds).
    cnn_seeds = "sequential" if backend == "cpu" else "stacked"
  if experiment.task == "cifar10" and cnn_seeds == "sequential" and num_seeds > 1:
    args.append("--sequential_seeds")
  if quick:
    args += QUICK_FLAGS[experiment.task]
  return ["python", "-m", "experiments.main", *args, *extra]


def check_plan(report_dir: str, plan: dict) -> None:
  """A report folder belongs to one plan: refuse to mix another study's results into it."""
  path = os.path.join(report_dir, "plan.json")
  if not os.path.exists(path) and os.path.isdir(report_dir) and os.listdir(report_dir):
    raise ValueError(f"{report_dir} is not empty and holds no plan.json: pass another --name")
  if os.path.exists(path):
    with open(path) as f:
      saved = json.load(f)
    saved_commands = saved["commands"]
    clashes = [
      name
      for name, c in plan["commands"].items()
      if name in saved_commands and _without_workdir(saved_commands[name]) != _without_workdir(c)
    ]
    if clashes or saved.get("num_seeds") != plan["num_seeds"] or saved.get("quick") != plan["quick"]:
      raise ValueError(
        f"{report_dir} holds a different study (quick={saved.get('quick')}, num_seeds={saved.get('num_seeds')}"
        f"{', other commands for ' + ', '.join(clashes) if clashes else ''}): pass another --name, "
        "or delete that folder to replace it"
      )
    plan = {**plan, "commands": {**saved_commands, **plan["commands"]}, "history": _history(saved)}
  # Every command that has run experiments into this folder, in the order they last ran.
  plan["history"] = [c for c in plan.get("history", []) if c != plan["command"]] + [plan["command"]]
  run_records.write_json(path, plan)


def _history(plan: dict) -> list[str]:
  return plan.get("history") or [plan["command"]]


def _without_workdir(argv: list[str]) -> list[str]:
  # The workdir is always runs/<name> of the report folder, however --reports_dir was spelled.
  return [a for a in argv if not a.startswith("--workdir=")]


# Lines of runs that go at once (--jobs) reach the console whole, one at a time.
_CONSOLE = threading.Lock()


class Running:
  """One experiment's command under way: its output is shown (each line after `prefix`) and
  appended to logs/<name>.log by a thread of its own."""

  def __init__(
    self,
    experiment: Experiment,
    argv: list[str],
    report_dir: str,
    prefix: str,
    env: dict,
    cores: tuple[int, ...] | None = None,
  ):
    os.makedirs(os.path.join(report_dir, "logs"), exist_ok=True)
    self.experiment = experiment
    self.cores = cores
    self.log_path = os.path.join(report_dir, "logs", f"{experiment.name}.log")
    self.start = time.perf_counter()
    # taskset execs the command: the process (and the signals sent to it) is the run itself.
    pinned = ["taskset", "--cpu-list", ",".join(map(str, cores))] if cores else []
    self._log = open(self.log_path, "a", buffering=1)  # line by line: `tail -f` follows the run
    self._log.write(f"$ {' '.join(pinned + argv)}\n")
    self._log.flush()
    self.process = subprocess.Popen(
      [*pinned, sys.executable, *argv[1:]],
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
      bufsize=1,
      env=env,
    )
    self._prefix = prefix
    self._reader = threading.Thread(target=self._copy_output, daemon=True)
    self._reader.start()

  def _copy_output(self) -> None:
    for line in self.process.stdout:
      with _CONSOLE:
        sys.stdout.write(self._prefix + line)
        sys.stdout.flush()
      self._log.write(line)
    self._log.close()

  def finished(self) -> bool:
    """The command has ended and all its output is shown and logged."""
    return self.process.poll() is not None and not self._reader.is_alive()

  def wait_for_output(self) -> None:
    self._reader.join(timeout=30)


def core_groups(jobs: int, cores: list[int]) -> list[tuple[int, ...]] | None:
  """`cores` split into `jobs` groups of consecutive cores, as even as they go (the first groups
  take the remainder); None when there are fewer cores than jobs (nothing to split)."""
  if jobs < 2 or len(cores) < jobs:
    return None
  size, extra = divmod(len(cores), jobs)
  groups, start = [], 0
  for i in range(jobs):
    end = start + size + (i < extra)
    groups.append(tuple(cores[start:end]))
    start = end
  return groups


def available_core_groups(jobs: int) -> list[tuple[int, ...]] | None:
  """This process's CPU cores split among `jobs` runs, or None where that cannot be done here
  (one job, fewer cores than jobs, no CPU affinity: not Linux, or no taskset)."""
  if not hasattr(os, "sched_getaffinity") or shutil.which("taskset") is None:
    return None
  return core_groups(jobs, sorted(os.sched_getaffinity(0)))


def run_experiments(
  todo: list[Experiment],
  commands: dict[str, list[str]],
  report_dir: str,
  jobs: int,
  on_started: Callable[[Experiment], None],
  on_finished: Callable[[Experiment, float], None],
  cores: list[tuple[int, ...]] | None = None,
) -> None:
  """Runs the experiments' commands, `jobs` at a time, in order; `on_started(experiment)` before
  each, `on_finished(experiment, wall seconds)` after. With `cores` (one group per job), each run
  is pinned to a group no other run under way holds. The first to fail stops the others (with a
  checkpoint: a rerun resumes them) and raises ExperimentFailed. Ctrl-C or SIGTERM is passed on
  to every run under way, each of which saves the step in progress and stops; no training
  outlives this call."""
  if cores is not None and len(set(cores)) < jobs:
    raise ValueError(f"{jobs} jobs need {jobs} different core groups, got {len(set(cores))}")
  env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")]))}
  if jobs > 1 and "XLA_PYTHON_CLIENT_MEM_FRACTION" not in env:
    # On one GPU the runs share its memory: each takes its part, not JAX's default 75%.
    env["XLA_PYTHON_CLIENT_MEM_FRACTION"] = f"{0.9 / jobs:.2f}"
  waiting, running = list(todo), []
  try:
    while waiting or running:
      while len(running) < jobs:
        # The first that may start: a transfer run waits for the run it scores.
        busy = {e.name for e in waiting} | {r.experiment.name for r in running}
        experiment = next((e for e in waiting if e.after not in busy), None)
        if experiment is None:
          break
        waiting.remove(experiment)
        on_started(experiment)
        prefix = "  " if jobs == 1 else f"  [{experiment.name}] "
        held = {r.cores for r in running}
        # Alone (nothing else under way or waiting), a run takes every core.
        alone = not running and not waiting
        free = None if cores is None or alone else next(group for group in cores if group not in held)
        running.append(Running(experiment, commands[experiment.name], report_dir, prefix, env, free))
      time.sleep(0.05)
      for run in [r for r in running if r.finished()]:
        running.remove(run)
        if run.process.returncode != 0:
          if running:
            print(f"{run.experiment.name} failed: stopping the runs under way (a rerun resumes them)")
            _stop(running, signal.SIGTERM)
          raise ExperimentFailed(
            f"{run.experiment.name} failed (exit {run.process.returncode}); see {run.log_path}. Rerun to resume."
          )
        on_finished(run.experiment, time.perf_counter() - run.start)
  except KeyboardInterrupt as e:  # Ctrl-C or SIGTERM
    terminated = isinstance(e, lifecycle.Terminated)
    _stop(running, signal.SIGTERM if terminated else signal.SIGINT)
    ended = "; ".join(f"{r.experiment.name} ended with exit status {r.process.returncode}" for r in running)
    raise type(e)(
      f"{'terminated (SIGTERM)' if terminated else 'interrupted'}: "
      + (f"{ended} (see the last lines above); " if running else "")
      + "rerun the same command to resume"
    ) from None
  finally:
    for run in running:  # whatever ended this loop, no training outlives this command
      if run.process.poll() is None:
        run.process.kill()
        run.process.wait()


def _stop(running: list[Running], sig: int) -> None:
  """Passes `sig` on to every run (a terminal's Ctrl-C or a scheduler may have reached them
  already: each takes the copy for the same signal) and waits for them to save and stop. A
  second signal here is passed on as well: the runs then stop at once."""
  processes = [r.process for r in running]
  try:
    lifecycle.stop_processes(processes, sig, 120)
  except KeyboardInterrupt:
    lifecycle.stop_processes(processes, sig, 30)
  for run in running:
    run.wait_for_output()  # the runs' last lines


def finished(experiment: Experiment, report_dir: str) -> bool:
  if experiment.group == "transfer":
    return os.path.exists(_transfer_record(report_dir, experiment))
  return os.path.exists(os.path.join(report_dir, "runs", experiment.name, "results.json"))


def _transfer_record(report_dir: str, experiment: Experiment) -> str:
  return os.path.join(report_dir, "runs", experiment.after or experiment.name, "transfer.json")


# --------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------
def _load_run(report_dir: str, experiment: Experiment):
  workdir = os.path.join(report_dir, "runs", experiment.name)
  path = os.path.join(workdir, "results.json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    results = json.load(f)
  return results, run_records.read_metrics(workdir)


def _provenance_text(experiments: list[Experiment], loaded: dict) -> str:
  """The commits the runs were made with, and how many CPU cores each could use (its timings
  depend on them), each with the runs it holds for."""

  def grouped(describe) -> str:
    groups: dict[str, list[str]] = {}
    for e in experiments:
      if loaded.get(e.name) is not None:
        groups.setdefault(describe(loaded[e.name][0]), []).append(e.name)
    if len(groups) == 1:
      return next(iter(groups))
    return "; ".join(f"{key} ({', '.join(names)})" for key, names in groups.items())

  def commit(results: dict) -> str:
    git = results["git"]
    return f"{str(git['commit'])[:10]}{' (dirty tree)' if git['dirty'] else ''}"

  def cores(results: dict) -> str:
    count = results["device"].get("cpu_cores_available")
    return "not recorded" if count is None else str(count)

  return f"Code: commit {grouped(commit)}. CPU cores a run could use: {grouped(cores)}"


def _mean_std(summary: dict | None, scale: float = 1.0, digits: int = 3) -> str:
  if not summary:
    return "–"
  mean, std = scale * summary["mean"], scale * summary["std"]
  return f"{mean:.{digits}f} ± {std:.{digits}f}" if summary["n"] > 1 else f"{mean:.{digits}f}"


def _values_text(values: list[float], digits: int = 3) -> str:
  return mean_std_text(values, f".{digits}f")


def _last_epoch(results: dict) -> str:
  s = results["summary"].get("last_epoch.test.pearson")
  return "–" if s is None else f"{_mean_std(s)} (epoch {results['epochs']})"


def _ensemble(results: dict) -> str:
  ensemble = results.get("ensemble")
  return "–" if ensemble is None else f"{ensemble['test']['pearson']:.3f} ({ensemble['seeds']} seeds)"


def _leakage_text(results: dict) -> str:
  check = results.get("data", {}).get("leakage_check")
  if check is None:
    return "–"
  own = check["official_train_overlap"]
  parts = [f"official train shares {own['dev']} dev / {own['test']} test pairs"]
  for extra in check["extra"]:
    left = extra["evaluation_pairs_left"]
    parts.append(
      f"{extra['source']}: {extra['rows']:,} rows, {extra['removed_evaluation_pairs']} evaluation pairs "
      f"removed, {left['dev'] + left['test']} left"
    )
  return "; ".join(parts)


def _best_lines(experiments: list[Experiment], loaded: dict, commands: dict) -> list[str]:
  best = [e for e in experiments if e.group == "best"]
  if not best:
    return []
  lines = [
    "",
    "## Best recipes against the published numbers",
    "",
    "Mean ± std of single seeds (each at its best dev epoch), and the ensemble (the mean score "
    "of the seeds) in its own column. The leakage check is the run's own record (results.json, "
    "data.leakage_check; pairs compared lower-cased, whitespace collapsed, either order).",
    "",
    "| recipe | dataset | published | target | ours (mean ± std) | n | ensemble | leakage check | command |",
    "|---|---|---|---|---|---|---|---|---|",
  ]
  for e in best:
    run = loaded[e.name]
    command = " ".join(commands[e.name])
    published = f"{e.published[1]:.4f} ({e.published[0]})"
    if run is None:
      lines.append(f"| {e.name} | {e.dataset} | {published} | ≥ {e.target} | not run | | | | `{command}` |")
      continue
    s = run[0]["summary"]["test.pearson"]
    lines.append(
      f"| {e.name} | {e.dataset} | {published} | ≥ {e.target} | {_mean_std(s)} | {s['n']} | {_ensemble(run[0])} "
      f"| {_leakage_text(run[0])} | `{command}` |"
    )
  return lines


def _transfer_lines(report_dir: str, experiments: list[Experiment], commands: dict) -> list[str]:
  """Every encoder on STS12-16, STS-B and SICK-R (its transfer.json), beside published figures."""
  encoders = [e for e in experiments if e.group == "transfer"]
  if not encoders:
    return []
  rows, missing = [], []
  for e in encoders:
    path = _transfer_record(report_dir, e)
    if not os.path.exists(path):
      missing.append(f"{e.label} (`{' '.join(commands[e.name])}`)")
      continue
    with open(path) as f:
      record = json.load(f)
    seeds = record.get("encoder", {}).get("seeds")
    label = f"{e.label}{f', {len(seeds)} seeds' if seeds else ''}"
    rows += [(label, record, kind) for kind in ("head", "cosine") if kind in record["sets"][0]["scores"]]
  lines = [
    "",
    "## Transfer: every encoder on STS12-16, STS-B and SICK-R",
    "",
    "Spearman × 100 of each encoder's scores against the gold scores: `head` is the score a model "
    "was trained to output, `cosine` the cosine of its two sentence vectors (the unsupervised "
    "setting of the published tables). STS12-16: the year's subsets pooled (SentEval's `all`); "
    "STS-B and SICK-R: test. Ours: mean over seeds, each at its best dev epoch; the pairs an "
    "encoder trained on are removed from every set first (counts, per-subset figures, Pearson and "
    "SentEval's mean / wmean: each run's transfer.json, and `--mode=transfer` prints them). "
    "Our STS12 lacks MSRvid (not in the offline SemEval collection); the baselines use GloVe 6B "
    "50-d, SIF with word frequencies by Zipf's law over GloVe's frequency rank.",
    "",
  ]
  if rows:
    lines += transfer_table.summary_lines(rows)
    if any(record["settings"].get("max_pairs") for _, record, _ in rows):
      lines += ["", "(quick: the first pairs of each set only; not comparable with published figures)"]
  lines += ["", "Published figures for the same sets (other word vectors and training data; cited):", ""]
  lines += transfer_table.published_lines(PUBLISHED_TRANSFER)
  if missing:
    lines += ["", "Not run yet: " + "; ".join(missing)]
  return lines


def _ablation_path(experiments: list[Experiment]) -> list[tuple[Experiment, str]]:
  """The ablation's rows: its start (the study's settings), then its steps."""
  steps = [e for e in experiments if e.group == "ablation"]
  if not steps:
    return []
  start = next(e for e in EXPERIMENTS if e.name == ABLATION_START)
  return [(start, "the study's settings (study_lstm_glove.flags)")] + [(e, f"+ {e.label}") for e in steps]


def _ablation_lines(experiments: list[Experiment], loaded: dict, commands: dict) -> list[str]:
  path = _ablation_path(experiments)
  if not path:
    return []
  lines = [
    "",
    "## Ablation: from the study's settings to our recipe, one change at a time (STS-B)",
    "",
    "Each step keeps the changes above it; the last row is our recipe (lstm_glove.flags). Test "
    "Pearson of each seed's best dev epoch; Δ is the change of the mean from the row above.",
    "",
    "| step | change | test Pearson (mean ± std) | n | Δ | last epoch | ensemble | command |",
    "|---|---|---|---|---|---|---|---|",
  ]
  previous = None
  for i, (e, label) in enumerate(path):
    label = label.replace("|", "\\|")  # a table cell: |u-v| would end it
    run = loaded.get(e.name)
    command = " ".join(commands.get(e.name, [])) or "see above"
    if run is None:
      lines.append(f"| {i} | {label} | not run | | | | | `{command}` |")
      previous = None
      continue
    s = run[0]["summary"]["test.pearson"]
    delta = "" if previous is None else f"{s['mean'] - previous:+.3f}"
    lines.append(
      f"| {i} | {label} | {_mean_std(s)} | {s['n']} | {delta} | {_last_epoch(run[0])} | {_ensemble(run[0])} "
      f"| `{command}` |"
    )
    previous = s["mean"]
  return lines


def write_report(report_dir: str, plan: dict, experiments: list[Experiment]) -> str:
  """reports/<name>/report.md, one function per section, from the runs in the folder."""
  loaded = {e.name: _load_run(report_dir, e) for e in experiments}
  commands = plan["commands"]
  lines = [
    *_header_lines(report_dir, plan, experiments, loaded),
    *_pearson_lines(experiments, loaded, commands),
    *_ablation_lines(experiments, loaded, commands),
    *_best_lines(experiments, loaded, commands),
    *_transfer_lines(report_dir, experiments, commands),
    *_mse_lines(experiments, loaded),
    *_cifar_lines(experiments, loaded, commands),
    *_figure_lines(report_dir, experiments, loaded),
    *_reproduce_lines(plan),
  ]
  path = os.path.join(report_dir, "report.md")
  with open(path + ".tmp", "w") as f:
    f.write("\n".join(lines))
  os.replace(path + ".tmp", path)
  return path


def _header_lines(report_dir: str, plan: dict, experiments: list[Experiment], loaded: dict) -> list[str]:
  """The title, what generated the report, the hardware and code, the seeds and the data label."""
  any_results = next((r for r, _ in filter(None, loaded.values())), None)
  lines = [f"# Reproduction report: {os.path.basename(os.path.normpath(report_dir))}", ""]
  lines.append(
    f"Generated {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')} from the runs of "
    + "; ".join(f"`{c}`" for c in _history(plan))
    + f"{' (quick: data slices and few epochs; not comparable with the study)' if plan['quick'] else ''}."
  )
  if any_results is not None:
    device = any_results["device"]
    lines.append(
      f"Hardware: {device['count']} × {device['kind']} ({device['platform']}; host {device['processor']}, "
      f"{device['cpu_count']} CPUs). {_provenance_text(experiments, loaded)}; "
      f"jax {any_results['versions']['jax']}, flax {any_results['versions']['flax']}."
    )
  lines += [
    f"Seeds per experiment: {plan['num_seeds']} (ours: mean ± sample std over seeds; the study reported "
    "single runs). Study values are from " + STUDY_SOURCE + ". **CIFAR-10 here is the JPEG stand-in** "
    "(a JPEG-encoded copy of the official images): our CIFAR accuracies are on it, the study's on the official data.",
    "",
  ]
  return lines


def _pearson_lines(experiments: list[Experiment], loaded: dict, commands: dict) -> list[str]:
  """Each sentence experiment's test Pearson beside the study's (ablation and best: their own tables)."""
  lines = [
    "## Sentence similarity: test Pearson",
    "",
    "Ours: each seed at its best dev epoch (mean ± std, n, min – max); at the last epoch (what a "
    "study that trains a fixed number of epochs reports); and the ensemble, the mean score of the "
    "seeds. study_* rows use the study's own settings (study_*.flags); the others our recipe.",
    "",
    "| experiment | dataset | study | ours (mean ± std) | n | min – max | last epoch | ensemble | command |",
    "|---|---|---|---|---|---|---|---|---|",
  ]
  for e in (
    e for e in experiments if e.task == "similarity" and e.group not in ("ablation", "best", "transfer")
  ):
    run = loaded[e.name]
    pearson = e.study.get("test.pearson")
    study_text = f"{pearson:.3f}" if pearson is not None else "–"
    if run is None:
      lines.append(
        f"| {e.name} | {e.dataset} | {study_text} | not run | | | | | `{' '.join(commands[e.name])}` |"
      )
      continue
    s = run[0]["summary"]["test.pearson"]
    lines.append(
      f"| {e.name} | {e.dataset} | {study_text} | {_mean_std(s)} | {s['n']} | {s['min']:.3f} – {s['max']:.3f} "
      f"| {_last_epoch(run[0])} | {_ensemble(run[0])} | `{' '.join(commands[e.name])}` |"
    )
  return lines


def _mse_lines(experiments: list[Experiment], loaded: dict) -> list[str]:
  """Train / dev MSE per epoch beside the epochs the study printed."""
  lines = []
  lines += [
    "",
    "## Sentence similarity: train / dev MSE per epoch (mean ± std over seeds)",
    "",
    "The study columns are the epochs the study printed (STS-B; its own settings, see "
    "experiments/study.json); ours are this recipe's.",
    "",
    "| experiment | epoch | study train MSE | train MSE | study dev MSE | dev MSE | dev Pearson |",
    "|---|---|---|---|---|---|---|",
  ]
  for e in (e for e in experiments if e.task == "similarity" and e.group != "ablation"):
    run = loaded[e.name]
    if run is None:
      continue
    history = run[1]
    reported = study.sentence_mse(e.variant) if e.dataset == "stsb" and e.variant else {}
    wanted = [
      row
      for row in history
      if row["epoch"] in MSE_TABLE_EPOCHS or row["epoch"] in reported or row is history[-1]
    ]
    for row in wanted:
      per_seed = row.get("per_seed", {})
      at = reported.get(row["epoch"], {})
      study_train = f"{at['train_mse']:.3f}" if at else "–"
      study_dev = f"{at['dev_mse']:.3f}" if at else "–"
      lines.append(
        f"| {e.name} | {row['epoch']} | {study_train} | {_values_text(per_seed.get('train_mse', [row['train_mse']]))} "
        f"| {study_dev} | {_values_text(per_seed.get('dev_mse', [row['dev_mse']]))} "
        f"| {_values_text(per_seed.get('dev_pearson', [row['dev_pearson']]))} |"
      )
  return lines


def _cifar_lines(experiments: list[Experiment], loaded: dict, commands: dict) -> list[str]:
  """The CNNs' test accuracy and training time beside the study's, then per-class accuracy."""
  cnn = [e for e in experiments if e.task == "cifar10"]
  if not cnn:
    return []
  lines = []
  lines += [
    "",
    "## CIFAR-10 CNNs: test accuracy (last epoch) and training time",
    "",
    "Ours: CIFAR-10 (JPEG stand-in). Training seconds exclude compilation and cover all seeds "
    "(trained together, or one after another where the command says --sequential_seeds); per "
    "seed is that divided by n.",
    "",
    "| structure | study accuracy | ours (mean ± std) | n | study train s | ours train s (all seeds) "
    "| s per seed | command |",
    "|---|---|---|---|---|---|---|---|",
  ]
  for e in cnn:
    run = loaded[e.name]
    study_acc = e.study.get("test.accuracy")
    study_s = e.study.get("train_seconds")
    study_acc_text = f"{100 * study_acc:.0f}%" if study_acc is not None else "–"
    study_s_text = f"{study_s:,.0f}" if study_s is not None else "–"
    if run is None:
      lines.append(
        f"| {e.name} | {study_acc_text} | not run | | {study_s_text} | | | `{' '.join(commands[e.name])}` |"
      )
      continue
    results = run[0]
    s = results["summary"]["test.accuracy"]
    n = s["n"]
    lines.append(
      f"| {e.name} | {study_acc_text} | {_mean_std(s, 100, 1)}% | {n} | {study_s_text} "
      f"| {results['train_seconds']:,.0f} | {results['train_seconds'] / n:,.0f} | `{' '.join(commands[e.name])}` |"
    )
  done = [(e, loaded[e.name][0]) for e in cnn if loaded[e.name] is not None]
  if done:
    classes = list(done[0][1]["test"]["per_class_accuracy"])
    lines += [
      "",
      "### Per-class test accuracy, % (mean ± std over seeds; CIFAR-10 JPEG stand-in)",
      "",
      "| structure | " + " | ".join(classes) + " |",
      "|---|" + "---|" * len(classes),
    ]
    for e, results in done:
      cells = [_mean_std(results["summary"].get(f"test.per_class_accuracy.{c}"), 100, 1) for c in classes]
      lines.append(f"| {e.name} | " + " | ".join(cells) + " |")
      reported = study.cnn(e.name)
      if reported is not None:  # the study's classes are in CIFAR-10's label order, as ours
        cells = [f"{100 * v:.0f}" for v in reported["per_class"].values()]
        lines.append(f"| {e.name}, study | " + " | ".join(cells) + " |")
  return lines


def _figure_lines(report_dir: str, experiments: list[Experiment], loaded: dict) -> list[str]:
  figures = _figures(report_dir, experiments, loaded)
  if any(e.group == "ablation" for e in experiments):
    figures += _ablation_figure(report_dir, experiments, loaded)
  if figures:
    return ["", "## Figures", ""] + [f"![{name}]({name})" for name in figures]
  return []


def _reproduce_lines(plan: dict) -> list[str]:
  return [
    "",
    "## Reproduce",
    "",
    f"`{plan['command']}` (rerunning skips finished experiments). Each run's workdir under "
    "`runs/` holds results.json (per-seed results and summary), metrics.jsonl, run_info.json "
    "(flags, versions, device, git commit, data checksums) and checkpoints; `logs/` holds "
    "each run's console output.",
    "",
  ]


def _ablation_figure(report_dir: str, experiments: list[Experiment], loaded: dict) -> list[str]:
  steps = []
  for i, (e, label) in enumerate(_ablation_path(experiments)):
    run = loaded.get(e.name)
    if run is not None:
      steps.append((f"{i}. {label}", [r["test"]["pearson"] for r in run[0]["per_seed"]]))
  if len(steps) < 2:
    return []
  try:
    plot.ablation(
      steps,
      report_dir,
      "From the study's settings to our recipe (STS-B)",
      study.sentence_pearson("lstm_glove"),
    )
  except plot.MissingPlotDependency as e:
    print(f"warning: figures skipped: {e}", file=sys.stderr)
    return []
  return ["ablation.png"]


def _figures(report_dir: str, experiments: list[Experiment], loaded: dict) -> list[str]:

  written = []
  try:
    study_names = [e.name for e in experiments if e.group == "study" and loaded[e.name] is not None]
    if study_names:
      path = plot.learning_curves(
        [os.path.join(report_dir, "runs", n) for n in study_names],
        report_dir,
        "The study's settings on STS-B: ours (lines, mean of seeds) and the study's printed epochs (markers)",
        study={e.name: study.sentence_mse(e.variant) for e in experiments if e.group == "study"},
      )
      os.replace(path, os.path.join(report_dir, "learning_curves_study.png"))
      written.append("learning_curves_study.png")
    for dataset in ("stsb", "sick"):
      names = [
        e.name
        for e in experiments
        if e.dataset == dataset and e.group == "ours" and loaded[e.name] is not None
      ]
      if names:
        path = plot.learning_curves(
          [os.path.join(report_dir, "runs", n) for n in names], report_dir, f"Sentence similarity, {dataset}"
        )
        final = f"learning_curves_{dataset}.png"
        os.replace(path, os.path.join(report_dir, final))
        written.append(final)
    cnn = [e.name for e in experiments if e.name in CNN_STRUCTURES and loaded[e.name] is not None]
    cnn += [e.name for e in experiments if e.name == "cnn_resnet" and loaded[e.name] is not None]
    if cnn:
      paths = plot.plot([os.path.join(report_dir, "runs", n) for n in cnn], report_dir)
      written += [os.path.basename(p) for p in paths]
  except plot.MissingPlotDependency as e:
    print(f"warning: figures skipped: {e}", file=sys.stderr)
  except (OSError, ValueError, KeyError) as e:  # a figure must never cost the tables
    print(f"warning: a figure could not be drawn ({e}); the tables are complete", file=sys.stderr)
  return written


# --------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------
def check_extra_flags(extra: list[str]) -> None:
  """--extra_flags reach both tasks' runs, and a task refuses the other's flags: only flags
  both know (experiments.cli_flags') belong there, checked before any run starts."""
  shared = flags.FlagValues()
  cli_flags.define_training_flags(shared)
  for flag in extra:
    name = flag.lstrip("-").split("=", 1)[0]
    if name not in shared and not (name.startswith("no") and name[2:] in shared):  # --noflip style
      raise ValueError(
        f"--extra_flags: {flag} is not a flag of both tasks; pass it in --similarity_flags or "
        "--cifar10_flags (a run refuses the other task's flags)"
      )


def reproduce(argv_command: str) -> str:
  check_extra_flags(FLAGS.extra_flags)
  experiments = selected(FLAGS.only)
  num_seeds = FLAGS.num_seeds or (2 if FLAGS.quick else 5)
  name = FLAGS.name or ("study-quick" if FLAGS.quick else "study")
  report_dir = os.path.join(FLAGS.reports_dir, name)
  needs_backend = FLAGS.cnn_seeds == "auto" and any(e.task == "cifar10" for e in experiments)
  backend = _backend() if needs_backend else "any"
  task_flags = {"similarity": FLAGS.similarity_flags, "cifar10": FLAGS.cifar10_flags}
  commands = {
    e.name: command(
      e, report_dir, num_seeds, FLAGS.quick, FLAGS.extra_flags + task_flags[e.task], backend, FLAGS.cnn_seeds
    )
    for e in experiments
  }
  plan = {"command": argv_command, "quick": FLAGS.quick, "num_seeds": num_seeds, "commands": commands}
  if FLAGS.report_only:
    if not os.path.exists(os.path.join(report_dir, "plan.json")):
      raise ValueError(
        f"{report_dir} holds no plan.json: nothing to report (run without --report_only first)"
      )
    with open(os.path.join(report_dir, "plan.json")) as f:
      saved = json.load(f)
    # Experiments never started get the command they would have run, shown as "not run".
    path = write_report(
      report_dir,
      {**saved, "commands": {**commands, **saved["commands"]}},
      _reported(experiments, saved["commands"]),
    )
    print(f"report written: {path}")
    return path
  os.makedirs(report_dir, exist_ok=True)
  check_plan(report_dir, plan)
  with open(os.path.join(report_dir, "plan.json")) as f:
    plan = json.load(f)
  plan["command"] = argv_command

  reported = _reported(experiments, plan["commands"])
  todo = [e for e in experiments if not finished(e, report_dir)]
  print(
    f"report: {report_dir}  ({len(experiments)} experiments, {num_seeds} seeds each, {len(todo)} to run; "
    "rerun the same command to resume)"
  )
  if todo and not FLAGS.quick:
    estimate = sum(e.cpu_seconds_per_seed * num_seeds for e in todo)
    at_once = (
      f"; --jobs={FLAGS.jobs} runs them sooner (two at once: 1.18x on that CPU, docs/reproduce.md)"
      if FLAGS.jobs > 1
      else ""
    )
    print(
      f"expected duration on a 2-core CPU: about {_duration(estimate)} one at a time (measured per seed; a GPU "
      f"is far faster for the CNNs){at_once}. Interrupt at any time: rerunning resumes."
    )
  elif todo:
    print("expected duration: about 14 minutes on a 2-core CPU (measured: docs/reproduce.md)")
  for i, e in enumerate(experiments, 1):
    if e not in todo:
      print(f"[{i}/{len(experiments)}] {e.name}: done, skipped")
  cores = available_core_groups(FLAGS.jobs) if FLAGS.split_cores else None
  if FLAGS.jobs > 1 and len(todo) > 1:
    shares = (
      "" if cores is None else f", each on CPU cores {' | '.join(','.join(map(str, g)) for g in cores)}"
    )
    print(
      f"{min(FLAGS.jobs, len(todo))} experiments at a time (--jobs={FLAGS.jobs}{shares}); each one's "
      f"output also in {report_dir}/logs/"
    )
  position = {e.name: i for i, e in enumerate(experiments, 1)}

  def on_started(e: Experiment) -> None:
    print(f"[{position[e.name]}/{len(experiments)}] {e.name}: {' '.join(commands[e.name])}", flush=True)

  def on_finished(e: Experiment, seconds: float) -> None:
    print(f"[{position[e.name]}/{len(experiments)}] {e.name}: finished in {seconds:.0f} s", flush=True)
    write_report(report_dir, plan, reported)  # a partial report after each experiment

  run_experiments(todo, commands, report_dir, FLAGS.jobs, on_started, on_finished, cores)
  path = write_report(report_dir, plan, reported)
  print(f"report written: {path}")
  return path


def _reported(experiments: list[Experiment], planned: dict[str, list[str]]) -> list[Experiment]:
  """What a report covers: this command's experiments and every one the folder's plan holds."""
  return [e for e in EXPERIMENTS if e in experiments or e.name in planned]


def _backend() -> str:
  """JAX's default backend, asked in a child process: this one must not take the
  accelerator's memory away from the experiments it starts."""
  done = subprocess.run(
    [sys.executable, "-c", "import jax; print(jax.default_backend())"],
    capture_output=True,
    text=True,
    env={**os.environ, "XLA_PYTHON_CLIENT_PREALLOCATE": "false"},
    timeout=300,
  )
  return done.stdout.strip().splitlines()[-1] if done.returncode == 0 and done.stdout.strip() else "unknown"


def _duration(seconds: float) -> str:
  return f"{seconds / 3600:.1f} h" if seconds >= 5400 else f"{seconds / 60:.0f} min"


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  shown = "python -m experiments.reproduce " + " ".join(a for a in sys.argv[1:])

  def run():
    try:
      reproduce(shown.strip())
    except ExperimentFailed as e:
      raise ValueError(str(e)) from None  # one line, like every other failure

  lifecycle.run_mode(run)


if __name__ == "__main__":
  define_flags()
  app.run(main)
