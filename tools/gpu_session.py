r"""Every GPU measurement the project needs, as one command that fits within 10 minutes on one GPU.

  bash benchmarks/gpu_session.sh                   # on the device: installs the carried wheels, then this
  SIMJAX_SMOKE=1 bash benchmarks/gpu_session.sh    # on a CPU: the same steps on data slices, < 2 min
  python -m tools.gpu_session --smoke --out=/tmp/o   # the same, without the wrapper

This is the one place that lists the project's device benchmarks. The steps run in this
order, most valuable first; each has a time cap, and a step that would not fit in what is
left of --budget_seconds is dropped and listed as such (so the drop order, least valuable
first, is the reverse):

  bench           the CIFAR-10 speed bench (experiments.bench): cifar_speedrun.flags, 10 runs
                  one after another, compiled once; accuracy mean ± std, train / wall / compile
                  seconds per run (a missing flagfile fails this step with one line; the rest go on)
  cnn_seeds       CNN seeds stacked (one vmapped program) vs sequential, ResNet, bf16: the
                  faster per epoch is how every study run below trains its seeds
  cnn_resnet      reproduce cnn_resnet, full data, bf16, --num_seeds seeds: seconds per
                  epoch, seconds to 90% (stand-in), final accuracy, compile seconds apart
  lstm_seeds      8 stacked Siamese LSTM seeds vs one seed vs 8 sequential runs
  deterministic   cnn_resnet for 2 epochs with and without --deterministic
  cnn_gap, cnn_fc, cnn_dropout, cnn_gap_dropout   reproduce each study structure

Everything lands in --out (at most 8 files come back from a device): session.json (each
step's status, seconds and commands; device, versions, date, what was dropped),
session.log (this console), session.tar.gz (the GPU's target config for deviceless compiles,
the report folder with report.md and figures,
each run's results.json / metrics.jsonl / run_info.json / logs, the benchmarks' JSON, the
bench's JSON and Markdown).
`python -m tools.fold_gpu_session DIR` folds that into reports/, benchmarks/ and docs/gpu.md.

--smoke runs the steps on data slices with tiny models (the classic structures' steps are
cnn_resnet's with another flagfile, so it skips them), through the same code paths as
the device run (the fused lax.scan epoch forced on, bfloat16, stacked seeds, the report
writer, the packing), so the test suite keeps this script working.
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
import tarfile
import tempfile
import time
from typing import Callable

from absl import app, flags

from experiments import console, lifecycle, study
from simjax import deviceless, run_records

FLAGS = flags.FLAGS
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARCHIVE = "session.tar.gz"
SUMMARY = "session.json"
CONSOLE = "session.log"
TARGET_CONFIG = "target_config.txtpb"  # the GPU's exact description, for deviceless GPU compiles
BENCH_DIR = "bench"  # under benchmarks/, here and in the repo
# Workdir contents that stay on the device: checkpoints are large and useless elsewhere.
NOT_PACKED = {"checkpoints", "best", "tensorboard"}


def define_flags() -> None:
  flags.DEFINE_bool(
    "smoke",
    os.environ.get("SIMJAX_SMOKE", "") not in ("", "0"),
    "Data slices and tiny models: every step's code path in about a minute on a CPU "
    "(default: $SIMJAX_SMOKE).",
  )
  flags.DEFINE_string(
    "out", os.environ.get("OUT") or "gpu_out", "Output folder (default: $OUT, else gpu_out)."
  )
  flags.DEFINE_string(
    "work_dir",
    os.path.join(tempfile.gettempdir(), "simjax_session"),
    "Scratch folder for workdirs and checkpoints (not packed).",
  )
  flags.DEFINE_string("name", None, "Report name (default: gpu-<date>, or smoke with --smoke).")
  flags.DEFINE_float(
    "budget_seconds",
    450.0,
    "Wall seconds for all steps; a step that does not fit in what is left is dropped.",
    lower_bound=0.0,
  )
  flags.DEFINE_integer(
    "num_seeds", None, "Seeds per CNN study run (default: 3; 2 with --smoke).", lower_bound=1
  )
  flags.DEFINE_list("steps", [], "Run only these steps (default: all, in order).")


# --------------------------------------------------------------------------------------
# Sizes: the only difference between the device run and the smoke run
# --------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Sizes:
  num_seeds: int  # seeds per CNN study run
  quick: bool  # reproduce --quick (data slices)
  cifar: tuple[str, ...]  # flags added to every CIFAR training command
  cnn_bench: tuple[str, ...]  # benchmark_seeds flags for stacked vs sequential CNN seeds
  lstm_bench: tuple[str, ...]  # benchmark_seeds flags for the Siamese LSTM seeds
  speed_bench: tuple[str, ...]  # experiments.bench flags (its flagfile and --runs included)
  deterministic: tuple[str, ...]  # flags of the two cnn_resnet runs timed with/without --deterministic
  caps: dict[str, float]  # step -> seconds at most
  needs: dict[str, float]  # step -> dropped when less than this is left
  steps: tuple[str, ...] | None = None  # None: every step


DEVICE = Sizes(
  num_seeds=3,
  quick=False,
  # bf16 convolutions and matmuls on the tensor cores; parameters and BatchNorm stay float32.
  cifar=("--dtype=bfloat16",),
  # cnn_resnet.flags' batch, 80 steps per epoch; 3 epochs so epochs 2 and 3 run compiled.
  cnn_bench=(
    "--task=cifar10",
    "--num_seeds=3",
    "--epochs=3",
    "--train_split=train[:10240]",
    "--batch_size=128",
    "--dtype=bfloat16",
  ),
  # The full STS-B train split, 2 epochs: 8 sequential runs are 16 epochs.
  lstm_bench=("--task=similarity", "--num_seeds=8", "--epochs=2"),
  # The speedrun recipe as its flagfile has it (its batch and epochs), in bfloat16, 10 seeds.
  speed_bench=("--flagfile=cifar_speedrun.flags", "--dtype=bfloat16", "--runs=10"),
  deterministic=("--epochs=2",),
  caps={
    "bench": 180,
    "cnn_seeds": 90,
    "cnn_resnet": 200,
    "lstm_seeds": 90,
    "deterministic": 80,
    "classic": 120,
  },
  needs={
    "bench": 60,
    "cnn_seeds": 30,
    "cnn_resnet": 60,
    "lstm_seeds": 30,
    "deterministic": 30,
    "classic": 45,
  },
)
_SMOKE_CIFAR = (
  "--dtype=bfloat16",
  "--epoch_loop=scan",  # the device's fused epoch, forced on the CPU
  "--width=4",
  "--fc_units=8",
  "--train_split=train[:128]",
  "--eval_split=test[:64]",
  "--batch_size=32",
  "--epochs=1",
)
SMOKE = Sizes(
  num_seeds=2,
  quick=True,
  cifar=_SMOKE_CIFAR,
  cnn_bench=(
    "--task=cifar10",
    "--num_seeds=2",
    "--epochs=2",
    "--train_split=train[:64]",
    "--eval_split=test[:32]",
    "--batch_size=32",
    "--width=4",
    "--dtype=bfloat16",
    "--epoch_loop=scan",
  ),
  lstm_bench=(
    "--task=similarity",
    "--num_seeds=2",
    "--epochs=2",
    "--train_split=train[:64]",
    "--eval_split=validation[:32]",
    "--hidden_size=8",
    "--max_length=8",  # one length bucket: a quarter of the programs to compile
  ),
  # The bench's code path with a flagfile that exists today and cnn_resnet's smoke programs
  # (one seed per run: the compilation cache may already hold them), 2 runs.
  speed_bench=("--flagfile=cnn_resnet.flags", *_SMOKE_CIFAR, "--runs=2"),
  deterministic=(),  # _SMOKE_CIFAR already has --epochs=1
  caps=dict.fromkeys(("bench", "cnn_seeds", "cnn_resnet", "lstm_seeds", "deterministic", "classic"), 300),
  needs=dict.fromkeys(("bench", "cnn_seeds", "cnn_resnet", "lstm_seeds", "deterministic", "classic"), 0),
  # The four classic structures run the same step as cnn_resnet (reproduce, other flagfile).
  steps=("bench", "cnn_seeds", "cnn_resnet", "lstm_seeds", "deterministic"),
)


# --------------------------------------------------------------------------------------
# Steps
# --------------------------------------------------------------------------------------
@dataclasses.dataclass
class Session:
  sizes: Sizes
  work: str
  name: str
  cnn_seeds: str = "stacked"  # set by the cnn_seeds step
  records: list[dict] = dataclasses.field(default_factory=list)

  @property
  def reports_dir(self) -> str:
    return os.path.join(self.work, "reports")

  @property
  def benchmarks_dir(self) -> str:
    return os.path.join(self.work, "benchmarks")

  @property
  def bench_dir(self) -> str:
    """experiments.bench's --out: <experiment>.json and .md (packed, folded into benchmarks/bench/)."""
    return os.path.join(self.benchmarks_dir, BENCH_DIR)


@dataclasses.dataclass(frozen=True)
class Step:
  name: str
  what: str
  kind: str  # key into Sizes.caps / needs
  commands: Callable[[Session], list[list[str]]]
  after: Callable[[Session], dict] = lambda session: {}


def _module(name: str, *args: str) -> list[str]:
  return [sys.executable, "-m", f"experiments.{name}", *args]


def _reproduce(session: Session, *only: str, report_only: bool = False) -> list[str]:
  sizes = session.sizes
  return _module(
    "reproduce",
    f"--only={','.join(only)}",
    f"--name={session.name}",
    f"--reports_dir={session.reports_dir}",
    f"--num_seeds={sizes.num_seeds}",
    f"--cnn_seeds={session.cnn_seeds}",
    f"--cifar10_flags={','.join(sizes.cifar)}",
    *(["--quick"] if sizes.quick else []),
    *(["--report_only"] if report_only else []),
  )


def _bench(session: Session, flags_: tuple[str, ...]) -> list[str]:
  return _module("benchmark_seeds", *flags_, f"--out={session.benchmarks_dir}")


def _speed_bench(session: Session) -> list[str]:
  # Called as the step starts: only this session's bench files are packed and summarised.
  shutil.rmtree(session.bench_dir, ignore_errors=True)
  return _module("bench", *session.sizes.speed_bench, f"--out={session.bench_dir}")


def _speed_bench_summary(session: Session) -> dict:
  """The bench's headline numbers for session.json (its files hold the rest)."""
  found = _newest_json(session.bench_dir, "")
  if found is None:
    return {"why": "no bench result"}
  return {
    "experiment": found["experiment"],
    "runs": found["runs_completed"],
    "test_accuracy": {k: found["test_accuracy"][k] for k in ("mean", "std", "min", "max")},
    "train_seconds_median": found["train_seconds"]["median"],
    "wall_seconds_median": found["wall_seconds"]["median"],
    "compile_seconds": {k: found["compile_seconds"][k] for k in ("first_run", "others_median")},
    "data": found["data"]["label"],
    "command": found["command"],
  }


def _choose_cnn_seeds(session: Session) -> dict:
  """Stacked or sequential for the study runs: whichever trained the seeds faster per epoch."""
  found = _newest_json(session.benchmarks_dir, "seeds_cifar10_")
  if found is None:
    return {"cnn_seeds": session.cnn_seeds, "why": "no benchmark result: kept the default"}
  session.cnn_seeds = found["faster"]
  return {"cnn_seeds": session.cnn_seeds, "measured": found["measured"]}


def _deterministic_commands(session: Session) -> list[list[str]]:
  commands = []
  for switch in ("--nodeterministic", "--deterministic"):
    workdir = os.path.join(session.work, "deterministic", switch.lstrip("-"))
    commands.append(
      _module(
        "main",
        "--flagfile=cnn_resnet.flags",
        *session.sizes.cifar,
        *session.sizes.deterministic,
        switch,
        f"--workdir={workdir}",
      )
    )
  return commands


def _deterministic_summary(session: Session) -> dict:
  summary = {}
  for switch in ("nodeterministic", "deterministic"):
    path = os.path.join(session.work, "deterministic", switch, "results.json")
    if os.path.exists(path):
      with open(path) as f:
        results = json.load(f)
      summary[switch] = {
        "seconds_per_epoch": results["seconds_per_epoch"],
        "compile_seconds": results["compile_seconds"],
        "accuracy": results["test"]["accuracy"],
        "xla_flags": results["xla_flags"],
        "command": results["command"],
      }
  # Kept as a file so the fold command finds it in the archive.
  run_records.write_json(os.path.join(session.benchmarks_dir, "deterministic.json"), summary)
  return summary


STEPS = [
  Step(
    "bench",
    "CIFAR-10 speed bench: one flagfile, N runs one after another",
    "bench",
    lambda s: [_speed_bench(s)],
    _speed_bench_summary,
  ),
  Step(
    "cnn_seeds",
    "CNN seeds: stacked vs sequential (ResNet, bf16)",
    "cnn_seeds",
    lambda s: [_bench(s, s.sizes.cnn_bench)],
    _choose_cnn_seeds,
  ),
  Step("cnn_resnet", "reproduce cnn_resnet", "cnn_resnet", lambda s: [_reproduce(s, "cnn_resnet")]),
  Step(
    "lstm_seeds",
    "Siamese LSTM seeds: 8 stacked vs 1 vs 8 sequential",
    "lstm_seeds",
    lambda s: [_bench(s, s.sizes.lstm_bench)],
  ),
  Step(
    "deterministic",
    "cnn_resnet with and without --deterministic",
    "deterministic",
    _deterministic_commands,
    _deterministic_summary,
  ),
  *(
    Step(name, f"reproduce {name}", "classic", lambda s, name=name: [_reproduce(s, name)])
    for name in ("cnn_gap", "cnn_fc", "cnn_dropout", "cnn_gap_dropout")
  ),
]
assert {step.name for step in STEPS} >= set(study.CNN_STRUCTURES)  # every study structure is measured


def _newest_json(folder: str, prefix: str) -> dict | None:
  if not os.path.isdir(folder):
    return None
  paths = [
    os.path.join(folder, f) for f in os.listdir(folder) if f.startswith(prefix) and f.endswith(".json")
  ]
  if not paths:
    return None
  with open(max(paths, key=os.path.getmtime)) as f:
    return json.load(f)


# --------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------
class Console:
  """Prints and keeps every line in session.log."""

  def __init__(self, path: str):
    self.file = open(path, "a", buffering=1)  # noqa: SIM115 (open for the whole session)

  def __call__(self, line: str) -> None:
    print(line, flush=True)
    self.file.write(line + "\n")


def run_command(argv: list[str], log_path: str, timeout: float, env: dict) -> tuple[str, float]:
  """Runs argv (its output appended to log_path) in its own process group; on timeout the
  whole group (reproduce's training children too) is stopped. Returns (status, seconds)."""
  start = time.perf_counter()
  with open(log_path, "a") as log:
    log.write(f"$ {' '.join(argv)}\n")
    log.flush()
    process = subprocess.Popen(
      argv, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
      code = process.wait(timeout=max(timeout, 1.0))
    except subprocess.TimeoutExpired:
      lifecycle.stop_process(process, signal.SIGTERM, 10, group=True)
      return f"timed out after {timeout:.0f} s", time.perf_counter() - start
  return ("ok" if code == 0 else f"failed (exit {code})"), time.perf_counter() - start


def _tail(path: str, lines: int = 8) -> list[str]:
  try:
    with open(path) as f:
      return f.read().splitlines()[-lines:]
  except OSError:
    return []


def run_session() -> str:
  unknown = sorted(set(FLAGS.steps) - {s.name for s in STEPS})
  if unknown:
    raise ValueError(f"--steps: unknown {', '.join(unknown)}; choose from {', '.join(s.name for s in STEPS)}")
  sizes = SMOKE if FLAGS.smoke else DEVICE
  if FLAGS.num_seeds:
    sizes = dataclasses.replace(sizes, num_seeds=FLAGS.num_seeds)
  today = datetime.date.today().isoformat()
  name = FLAGS.name or ("smoke" if FLAGS.smoke else f"gpu-{today}")
  out, work = os.path.abspath(FLAGS.out), os.path.abspath(FLAGS.work_dir)
  os.makedirs(out, exist_ok=True)
  os.makedirs(os.path.join(work, "logs"), exist_ok=True)
  session = Session(sizes, work, name)
  say = Console(os.path.join(out, CONSOLE))
  wanted = FLAGS.steps or sizes.steps
  steps = [s for s in STEPS if not wanted or s.name in wanted]
  env = {
    **os.environ,
    "PYTHONPATH": os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")])),
    "PYTHONUNBUFFERED": "1",
    "XLA_PYTHON_CLIENT_PREALLOCATE": "false",  # one process at a time, but never grab 75% up front
  }
  # Reruns on the same machine, and sequential seeds (the same program), compile nothing twice.
  env.setdefault("SIMJAX_COMPILATION_CACHE_DIR", os.path.join(work, "jax_cache"))
  start = time.perf_counter()
  reserve = 20.0  # the final report and the packing
  if not FLAGS.smoke:
    say(f"target config: {_dump_target_config(work, env)}")
  say(
    f"session {name}: {'smoke (data slices, tiny models)' if FLAGS.smoke else 'device'} run, "
    f"budget {FLAGS.budget_seconds:.0f} s, {len(steps)} steps; out {out}"
  )
  for i, step in enumerate(steps, 1):
    left = FLAGS.budget_seconds - (time.perf_counter() - start) - reserve
    record = {"step": step.name, "what": step.what, "commands": []}
    if left < sizes.needs[step.kind]:
      record.update(status="dropped", why=f"{left:.0f} s left, needs about {sizes.needs[step.kind]:.0f} s")
      say(f"[{i}/{len(steps)}] {step.name}: dropped ({record['why']})")
      session.records.append(record)
      continue
    timeout = min(sizes.caps[step.kind], left)
    log_path = os.path.join(work, "logs", f"{step.name}.log")
    say(f"[{i}/{len(steps)}] {step.name}: {step.what} (at most {timeout:.0f} s)")
    step_start, status = time.perf_counter(), "ok"
    for argv in step.commands(session):
      record["commands"].append(" ".join(["python", *argv[1:]]))
      remaining = timeout - (time.perf_counter() - step_start)
      status, _ = run_command(argv, log_path, remaining, env)
      if status != "ok":
        break
    record.update(
      status=status, seconds=round(time.perf_counter() - step_start, 1), log=f"logs/{step.name}.log"
    )
    try:
      record["result"] = step.after(session)
    except (OSError, ValueError, KeyError) as e:
      record["result"] = {"error": str(e)}
    say(f"[{i}/{len(steps)}] {step.name}: {status} in {record['seconds']:.0f} s")
    if status != "ok":
      for line in _tail(log_path):
        say(f"    {line}")
    session.records.append(record)

  # The report over every CNN structure, run or not (those not run say so).
  log_path = os.path.join(work, "logs", "report.log")
  if os.path.exists(os.path.join(session.reports_dir, name, "plan.json")):
    status, _ = run_command(_reproduce(session, "cifar10", report_only=True), log_path, 120, env)
    say(f"report: {status}")
  summary = _summary(session, time.perf_counter() - start)
  run_records.write_json(os.path.join(work, SUMMARY), summary)
  run_records.write_json(os.path.join(out, SUMMARY), summary)
  archive = pack(session, out)
  dropped = [r["step"] for r in session.records if r["status"] == "dropped"]
  failed = [r["step"] for r in session.records if r["status"] not in ("ok", "dropped")]
  say(f"dropped (least valuable first): {', '.join(reversed(dropped))}" if dropped else "dropped: none")
  if failed:
    say(f"not ok: {', '.join(failed)} (their logs are in the archive)")
  say(
    f"packed: {archive} ({os.path.getsize(archive) / 2**20:.1f} MiB); {time.perf_counter() - start:.0f} s in all"
  )
  say.file.close()
  return archive


def _dump_target_config(work: str, env: dict) -> str:
  """The GPU's exact target config, which XLA's GPU compiler writes into its dump folder when it
  compiles on the device: packed as target_config.txtpb; fold_gpu_session commits it, and the
  deviceless GPU compiles use it from then on instead of the spec-sheet one."""
  dump = os.path.join(work, "xla_dump")
  program = "import jax, jax.numpy as jnp; print(jax.jit(lambda x: x @ x)(jnp.ones((8, 8))).sum())"
  dump_env = {**env, "XLA_FLAGS": f"{env.get('XLA_FLAGS', '')} --xla_dump_to={dump}".strip()}
  try:
    subprocess.run(
      [sys.executable, "-c", program], env=dump_env, timeout=180, check=True, capture_output=True
    )
  except (subprocess.SubprocessError, OSError) as e:
    return f"not dumped ({type(e).__name__})"
  found = deviceless.find_dumped_target_config(dump)
  if found is None:
    return f"not found in XLA's dump folder {dump}"
  shutil.copy2(found, os.path.join(work, TARGET_CONFIG))
  return f"{TARGET_CONFIG} ({os.path.basename(found)})"


def _summary(session: Session, seconds: float) -> dict:
  return {
    "name": session.name,
    "smoke": FLAGS.smoke,
    "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    "budget_seconds": FLAGS.budget_seconds,
    "seconds": round(seconds, 1),
    "num_seeds": session.sizes.num_seeds,
    "cnn_seeds": session.cnn_seeds,
    "steps": session.records,
    "device": run_records.device_info(),
    "versions": run_records.versions(),
    "git": run_records.git_state(REPO),
    "compilation_cache_dir": os.environ.get("SIMJAX_COMPILATION_CACHE_DIR")
    or os.path.join(session.work, "jax_cache"),
  }


def pack(session: Session, out: str) -> str:
  """session.tar.gz: the report folder (no checkpoints), logs, benchmarks and the summary."""
  archive = os.path.join(out, ARCHIVE)

  def keep(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
    return None if NOT_PACKED & set(info.name.split("/")) else info

  with tarfile.open(archive + ".tmp", "w:gz") as tar:
    for part in (os.path.join("reports", session.name), "benchmarks", "logs", SUMMARY, TARGET_CONFIG):
      path = os.path.join(session.work, part)
      if os.path.exists(path):
        tar.add(path, arcname=part, filter=keep)
    console_log = os.path.join(out, CONSOLE)
    if os.path.exists(console_log):
      tar.add(console_log, arcname=CONSOLE)
  os.replace(archive + ".tmp", archive)
  return archive


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  console.quiet_library_logs()
  lifecycle.run_mode(run_session)


if __name__ == "__main__":
  define_flags()
  app.run(main)
