"""Flags and console plumbing shared by every task's entry point (no library logic)."""

from __future__ import annotations

import codecs
import dataclasses
import logging as std_logging  # absl's logging is `logging` here
import os
import signal
import subprocess
import sys
import time
from typing import Any, Callable

from absl import flags, logging
from tqdm.auto import tqdm

from experiments import flagfiles
from simjax import compilation, distributed, errors, loop, optim, run
from simjax.tasks.base import Task

FLAGS = flags.FLAGS


def define_training_flags(flag_values: flags.FlagValues = FLAGS) -> None:
  """Flags every task shares: what the design card calls the common flags."""
  flags.DEFINE_enum(
    "mode",
    "train",
    ["train", "eval", "predict"],
    "train (resumes from --workdir), eval (best checkpoint on dev and test), predict (from --input).",
    flag_values=flag_values,
  )
  flags.DEFINE_string(
    "experiment", "default", "Experiment name; names the default workdir.", flag_values=flag_values
  )
  flags.DEFINE_string(
    "workdir", None, "Run directory (default: workdirs/<experiment>[_<dataset>]).", flag_values=flag_values
  )
  flags.DEFINE_string(
    "data_dir",
    os.environ.get("TFDS_DATA_DIR"),
    "TFDS data_dir: where datasets are found or prepared (default: $TFDS_DATA_DIR, else TFDS's default).",
    flag_values=flag_values,
  )
  flags.DEFINE_string(
    "train_split", "train", "TFDS split (slicing allowed, e.g. train[:256]).", flag_values=flag_values
  )
  flags.DEFINE_string(
    "eval_split",
    None,
    "Split evaluated every epoch (default: validation for sentences, test for CIFAR-10; eval: the "
    "trained run's own unless given).",
    flag_values=flag_values,
  )
  flags.DEFINE_float(
    "dropout",
    0.0,
    "Dropout rate: between recurrent layers (num_layers > 1) / in the CNN (see --architecture).",
    lower_bound=0.0,
    upper_bound=0.99,
    flag_values=flag_values,
  )
  flags.DEFINE_integer(
    "seed",
    0,
    "Random seed (init, dropout, data order); with --num_seeds, the first.",
    flag_values=flag_values,
  )
  flags.DEFINE_integer(
    "num_seeds",
    1,
    "Train seeds --seed ... --seed+N-1 of this configuration together (jax.vmap in one "
    "compiled program); results.json reports each and their mean, std, min, max.",
    lower_bound=1,
    flag_values=flag_values,
  )
  flags.DEFINE_bool(
    "sequential_seeds",
    False,
    "With --num_seeds: train the seeds one after another (in <workdir>/seed_<s>) instead of "
    "together, when N replicas do not fit in device memory.",
    flag_values=flag_values,
  )
  flags.DEFINE_bool(
    "deterministic",
    False,
    "GPU: make XLA's reductions and scatters deterministic (--xla_gpu_deterministic_ops), so "
    "reruns are bit-identical there too; slower. CPU runs are deterministic already.",
    flag_values=flag_values,
  )
  flags.DEFINE_integer(
    "epochs",
    20,
    "Training epochs (a resumed run continues up to this).",
    lower_bound=1,
    flag_values=flag_values,
  )
  flags.DEFINE_integer("batch_size", 64, "Batch size.", lower_bound=1, flag_values=flag_values)
  flags.DEFINE_float("learning_rate", 1e-3, "Peak learning rate.", lower_bound=0.0, flag_values=flag_values)
  flags.DEFINE_enum("optimizer", "adam", list(optim.OPTIMIZERS), "Optimizer.", flag_values=flag_values)
  flags.DEFINE_enum(
    "lr_schedule",
    "constant",
    list(optim.SCHEDULES),
    "Learning-rate schedule; plateau: multiply by --decay_factor when dev MSE stalls "
    "for --plateau_patience epochs.",
    flag_values=flag_values,
  )
  flags.DEFINE_float("momentum", 0.9, "Momentum for momentum / nesterov.", flag_values=flag_values)
  flags.DEFINE_float(
    "weight_decay",
    0.0,
    "Weight decay: decoupled for adamw, an L2 term in the gradient otherwise.",
    lower_bound=0.0,
    flag_values=flag_values,
  )
  flags.DEFINE_float(
    "grad_clip_norm",
    0.0,
    "Clip gradients to this global norm (0: off).",
    lower_bound=0.0,
    flag_values=flag_values,
  )
  flags.DEFINE_float(
    "warmup_epochs", 0.0, "Linear warmup length in epochs.", lower_bound=0.0, flag_values=flag_values
  )
  flags.DEFINE_float(
    "decay_factor", 0.5, "step / plateau: learning-rate multiplier at each decay.", flag_values=flag_values
  )
  flags.DEFINE_integer(
    "decay_epochs", 10, "step: epochs between decays.", lower_bound=1, flag_values=flag_values
  )
  flags.DEFINE_integer(
    "plateau_patience",
    2,
    "plateau: epochs without improvement before a decay.",
    lower_bound=1,
    flag_values=flag_values,
  )
  flags.DEFINE_integer(
    "keep_checkpoints", 3, "How many latest checkpoints to keep.", lower_bound=1, flag_values=flag_values
  )
  flags.DEFINE_integer(
    "early_stop_patience",
    0,
    "Stop before --epochs once no seed's dev metric (the one that picks the best epoch) has "
    "improved for this many epochs; 0: train every epoch. Each seed's best epoch is the one "
    "a full run would pick unless it improves again later.",
    lower_bound=0,
    flag_values=flag_values,
  )
  flags.DEFINE_float(
    "warmup_start",
    0.0,
    "The warmup starts at this fraction of --learning_rate.",
    lower_bound=0.0,
    upper_bound=1.0,
    flag_values=flag_values,
  )
  flags.DEFINE_float(
    "final_lr_factor",
    0.0,
    "linear: the learning rate falls linearly to this fraction of --learning_rate.",
    lower_bound=0.0,
    upper_bound=1.0,
    flag_values=flag_values,
  )
  flags.DEFINE_float(
    "bias_lr_scale",
    1.0,
    "Normalization biases (the speedrun net's) train at this multiple of the learning rate, "
    "with weight decay divided by it (the same decay per step).",
    lower_bound=0.0,
    flag_values=flag_values,
  )
  flags.DEFINE_integer(
    "lookahead_every",
    0,
    "> 0: lookahead every this many steps, the slow weights an EMA of the fast ones (airbench's).",
    lower_bound=0,
    flag_values=flag_values,
  )
  flags.DEFINE_float(
    "early_epochs",
    0.0,
    "Parameters a model marks as early (the speedrun net's whitening bias) train this many epochs.",
    lower_bound=0.0,
    flag_values=flag_values,
  )
  define_compilation_cache_flag(flag_values=flag_values)
  define_distributed_flags(flag_values=flag_values)


def define_distributed_flags(flag_values: flags.FlagValues = FLAGS) -> None:
  """Several processes, one run (simjax.distributed): every process runs the same command."""
  flags.DEFINE_string(
    "coordinator_address",
    os.environ.get("JAX_COORDINATOR_ADDRESS"),
    "Multi-process run: host:port of process 0, which hosts the coordinator (default: "
    "$JAX_COORDINATOR_ADDRESS; unset: one process, or a Cloud TPU pod slice, joined automatically).",
    flag_values=flag_values,
  )
  flags.DEFINE_integer(
    "num_processes",
    _int_from_env("JAX_NUM_PROCESSES", 1),
    "Multi-process run: how many processes (default: $JAX_NUM_PROCESSES).",
    lower_bound=1,
    flag_values=flag_values,
  )
  flags.DEFINE_integer(
    "process_id",
    _int_from_env("JAX_PROCESS_ID", 0),
    "Multi-process run: this process's id, 0 .. --num_processes - 1 (default: $JAX_PROCESS_ID).",
    lower_bound=0,
    flag_values=flag_values,
  )
  flags.DEFINE_integer(
    "distributed_timeout",
    300,
    "Multi-process run: seconds to wait for every process to join before giving up.",
    lower_bound=1,
    flag_values=flag_values,
  )


def _int_from_env(name: str, lowest: int) -> int | None:
  """A flag's default from the environment; an unusable value is refused by initialize_distributed."""
  value = os.environ.get(name, "").strip()
  return int(value) if value.isdigit() and int(value) >= lowest else None


def initialize_distributed() -> None:
  """--coordinator_address etc. (or a TPU pod slice): joins the run's processes before JAX is
  used; every process but 0 then prints nothing (its errors still reach stderr)."""
  for name, flag, lowest in (("JAX_NUM_PROCESSES", "num_processes", 1), ("JAX_PROCESS_ID", "process_id", 0)):
    value = os.environ.get(name)
    if value is not None and not FLAGS[flag].present and _int_from_env(name, lowest) is None:
      raise errors.DistributedError(f"${name}={value!r} is not a whole number >= {lowest}")
  distributed.initialize(
    FLAGS.coordinator_address,
    FLAGS.num_processes,
    FLAGS.process_id,
    timeout_seconds=FLAGS.distributed_timeout,
    on_timeout=lambda e: _exit_at_once(f"error: {error_line(e)}", 1),
  )
  # jax.distributed installs a SIGTERM handler of its own (its preemption notifier), which would
  # end the process without the checkpoint: the run's handler takes SIGTERM back.
  signal.signal(signal.SIGTERM, _on_stop_signal)
  if not distributed.is_primary():  # at the file descriptor: C++ libraries (gloo) print there too
    sys.stdout.flush()
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def define_compilation_cache_flag(flag_values: flags.FlagValues = FLAGS) -> None:
  flags.DEFINE_string(
    "compilation_cache_dir",
    os.environ.get("SIMJAX_COMPILATION_CACHE_DIR"),
    "JAX's persistent compilation cache: compiled programs are kept in this folder, so rerunning "
    "a command on the same machine skips compilation (default: $SIMJAX_COMPILATION_CACHE_DIR; "
    "unset: no cache). Compile seconds are reported apart from training seconds either way.",
    flag_values=flag_values,
  )


def apply_compilation_cache() -> None:
  """--compilation_cache_dir: before the first computation, like apply_determinism."""
  if FLAGS.compilation_cache_dir:
    compilation.enable_persistent_cache(FLAGS.compilation_cache_dir)


def apply_determinism() -> None:
  """--deterministic: must run before JAX initialises its backend (the first computation)."""
  if FLAGS.deterministic:
    xla_flags = os.environ.get("XLA_FLAGS", "")
    if "--xla_gpu_deterministic_ops" not in xla_flags:
      os.environ["XLA_FLAGS"] = f"{xla_flags} --xla_gpu_deterministic_ops=true".strip()


def seed_summary_lines(results: dict[str, Any], keys: list[tuple[str, str]]) -> list[str]:
  """'test Pearson 0.7190 ± 0.0050 (min 0.71, max 0.73, n=5)' lines from results.json's summary."""
  lines = []
  for label, key in keys:
    s = results["summary"].get(key)
    if s is not None:
      lines.append(
        f"  {label:18s} {s['mean']:.4f} ± {s['std']:.4f}  (min {s['min']:.4f}, max {s['max']:.4f}, n={s['n']})"
      )
  return lines


def train_workdir(task: Task, config: run.RunConfig, workdir: str, columns: list[tuple[str, str, str]]):
  """--mode=train: trains (or resumes) `task` in `workdir` through simjax.run, printing one
  row of `columns` (see EpochTable) per epoch; records the flags and the command line."""
  print(f"workdir: {workdir}")
  table = EpochTable(columns)
  return run.train_and_evaluate(
    task,
    config,
    workdir,
    flags=flag_values(),
    command=command_line(),
    on_epoch=table.print_row,
    stop=STOP,
    on_note=lambda line: print(line, flush=True),
  )


def evaluate_workdir(workdir: str, load: Callable[[str], tuple]) -> dict[str, Any]:
  """--mode=eval of a trained workdir (`load(workdir)` -> state, config, task): writes
  eval.json and warns where this machine, code or data differ from the training run's."""
  results, differences = run.evaluate_trained(workdir, load, FLAGS.batch_size, command=command_line())
  if os.access(workdir, os.W_OK):
    print(f"evaluation recorded in {run.eval_record_path(workdir, results.get('evaluation', {}))}")
  if differences:
    print(f"warning: this evaluation differs from the training run in {workdir}:", file=sys.stderr)
    for line in differences:
      print(f"  {line}", file=sys.stderr)
  return results


def config_from_flags(config_class: type, **values: Any) -> Any:
  """A config dataclass whose fields take the values of the flags of the same name; `values`
  give the fields whose flag differs in name or form (they win)."""
  from_flags = {
    field.name: FLAGS[field.name].value
    for field in dataclasses.fields(config_class)
    if field.name not in values and field.name in FLAGS
  }
  return config_class(**from_flags, **values)


def flags_given(*names: str) -> dict[str, Any]:
  """{name: value} of the flags among `names` given on the command line or in a flagfile: eval
  and predict take a trained run's own setting for the others."""
  return {
    name: FLAGS[name].value for name in names if FLAGS[name].present and FLAGS[name].value not in (None, "")
  }


def optim_config() -> optim.OptimConfig:
  return config_from_flags(optim.OptimConfig)


def command_line() -> str:
  """The command that is running, as results record it."""
  return " ".join(sys.argv)


def flag_values() -> dict[str, Any]:
  """Every flag the entry point defines (absl's own excluded), as recorded in results.json."""
  values = {}
  for module, module_flags in FLAGS.flags_by_module_dict().items():
    if module == "__main__" or module.startswith("experiments") or module.endswith("main.py"):
      values.update({flag.name: flag.value for flag in module_flags})
  return dict(sorted(values.items()))


# --------------------------------------------------------------------------------------
# Flagfiles
# --------------------------------------------------------------------------------------
def parse_flags_with_flagfile_lookup(argv: list[str]) -> list[str]:
  """absl's parsing, with `--flagfile=NAME` looked up in experiments/ too and included
  flagfiles looked up next to the file that includes them (see experiments/flagfiles.py)."""
  try:
    argv = flagfiles.expand(argv)
  except flagfiles.FlagfileError as e:
    sys.exit(f"error: {e}")
  try:
    return FLAGS(argv)
  except flags.Error as e:
    sys.exit(f"error: {e} (--helpshort lists the flags)")


# --------------------------------------------------------------------------------------
# Console
# --------------------------------------------------------------------------------------
class EpochTable:
  """Prints one aligned row per epoch, like the study's tables."""

  def __init__(self, columns: list[tuple[str, str, str]]):
    self.columns = columns  # (header, key, format)
    self._header_printed = False

  def print_row(self, row: dict[str, Any]) -> None:
    if not self._header_printed:
      print("  ".join(f"{header:>12s}" for header, _, _ in self.columns), flush=True)
      self._header_printed = True
    cells = []
    for _, key, fmt in self.columns:
      value = row.get(key)
      cells.append(f"{format(value, fmt):>12s}" if value is not None else f"{'-':>12s}")
    print("  ".join(cells), flush=True)


def progress_bar(total: int, description: str):
  """A progress bar within long epochs, shown only on a terminal."""
  if not distributed.is_primary():  # one bar per run, not one per process
    return tqdm(total=total, disable=True)
  return tqdm(total=total, desc=description, leave=False, unit="step", disable=None, file=sys.stderr)


def read_sentence_pairs(data: bytes, name: str) -> tuple[list[str], list[str]]:
  """'sentence1<TAB>sentence2' lines of a file's (or stdin's) bytes: UTF-8, a leading byte-order
  mark dropped (spreadsheet exports write one), any line ending (\\n, \\r\\n, \\r)."""
  first, second = [], []
  data = data.removeprefix(codecs.BOM_UTF8)
  for line_number, raw in enumerate(data.splitlines(), 1):
    try:
      line = raw.decode("utf-8")
    except UnicodeDecodeError as e:
      raise ValueError(
        f"{name}, line {line_number}: not UTF-8 text (byte 0x{raw[e.start]:02x} at column {e.start + 1}); "
        "save the file as UTF-8"
      ) from None
    if not line:  # a blank line holds no pair; "\t" alone is a pair of empty sentences
      continue
    parts = line.split("\t")
    if len(parts) != 2:
      raise ValueError(
        f"{name}, line {line_number}: expected 'sentence1<TAB>sentence2', "
        f"found {len(parts)} tab-separated field(s)"
      )
    first.append(parts[0])
    second.append(parts[1])
  return first, second


def read_input(path: str, wanted: str) -> bytes:
  """The bytes of the file at `path` ('-': of stdin) that a predict mode reads. One that cannot
  be read is a ValueError saying why in words, then `wanted`: what to pass instead."""
  try:
    if path == "-":
      if sys.stdin is None:  # the shell closed it (`<&-`): Python then has no sys.stdin at all
        raise ValueError(f"stdin is closed: pass {wanted}")
      return sys.stdin.buffer.read()
    with open(path, "rb") as f:
      return f.read()
  except OSError as e:
    raise ValueError(f"{errors.path_problem('stdin' if path == '-' else path, e)}: pass {wanted}") from None


def _quiet_unraisable(unraisable) -> None:
  """Drops one known noise: when orbax fails to restore a damaged checkpoint (simjax then
  warns and falls back), tensorstore's late callbacks reach event loops orbax has already
  closed, and Python would print each as a traceback. Anything else is printed as usual."""
  error = unraisable.exc_value
  if isinstance(error, RuntimeError) and str(error) == "Event loop is closed":
    return
  sys.__unraisablehook__(unraisable)


def _not_from_orbax(record: std_logging.LogRecord) -> bool:
  return f"{os.sep}orbax{os.sep}" not in record.pathname


def quiet_library_logs() -> None:
  """Orbax and TFDS log every step of every save at INFO, and routine notes (e.g. a
  read-only checkpoint folder during eval) at WARNING; keep the console for results unless
  the user asked for more with -v / --verbosity. Real failures arrive as exceptions."""
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.ERROR)
    # Orbax also logs, with its traceback, each failure of its worker threads (e.g. a full
    # disk during a save) before the same failure reaches simjax as an exception.
    std_logging.getLogger("absl").addFilter(_not_from_orbax)
    # ...and the same failure of its other tasks, as Python collects them (simjax uses no asyncio).
    std_logging.getLogger("asyncio").setLevel(std_logging.CRITICAL)
  sys.unraisablehook = _quiet_unraisable
  # simjax's own warnings (e.g. a stale workdir lock taken over) are for the user: one line each.
  simjax_log = std_logging.getLogger("simjax")
  if not simjax_log.handlers:
    handler = std_logging.StreamHandler(sys.stderr)
    handler.setFormatter(std_logging.Formatter("warning: %(message)s"))
    simjax_log.addHandler(handler)
    simjax_log.setLevel(std_logging.WARNING)
    simjax_log.propagate = False


# What to change for each kind of failure, in flag names (the library names none).
_FLAG_OF_SETTING = {
  "data_dir": "--data_dir (or TFDS_DATA_DIR)",
  "manual_dir": "--manual_dir (or SIMJAX_MANUAL_DIR)",
  "cache_dir": "--cache_dir (or SIMJAX_CACHE_DIR; '' disables the cache)",
  "head": "--cnn_head",
  "coordinator_address": "--coordinator_address (or JAX_COORDINATOR_ADDRESS)",
  "num_processes": "--num_processes (or JAX_NUM_PROCESSES)",
  "process_id": "--process_id (or JAX_PROCESS_ID)",
}
_ADVICE = {
  errors.TrainingDiverged: "lower --learning_rate or set --grad_clip_norm in a new --workdir "
  "(a workdir with checkpoints resumes only with its own settings)",
  errors.OutOfDeviceMemory: "rerun with --sequential_seeds (the same seeds one after another, same "
  "results to float tolerance; without --early_stop_patience) or fewer --num_seeds",
  errors.ConfigMismatchError: "use a new --workdir, or the original settings to resume",
  errors.WorkdirLocked: "wait for that run to end, or use another --workdir",
  errors.FinishedRunError: "rerun it with its own settings (its results.json stands), evaluate it "
  "another way with --mode=eval (a record of its own), or train in a new --workdir",
  errors.DataMismatchError: "point --data_dir (or --manual_dir) at the data the run trained on, or "
  "train in a new --workdir",
  errors.WorkdirError: "check --workdir (to train afresh, use a new one)",
}


def error_line(error: BaseException) -> str:
  """One line for a failure: the library's facts, then the flags to change."""
  if isinstance(error, errors.BatchSizeError):
    return (
      f"{error}: set --batch_size to a multiple of {error.devices} (e.g. --batch_size={error.suggestion})"
    )
  if isinstance(error, errors.ProgramTooLarge) and error.fitting_batch_size:
    return (
      f"{error}: rerun with --batch_size={error.fitting_batch_size} (scale --learning_rate with it), "
      "or on more devices"
    )
  for kind, advice in _ADVICE.items():  # most specific first
    if isinstance(error, kind):
      return f"{error}: {advice}"
  settings = getattr(error, "settings", ())
  if settings:
    return f"{error} (flags: {', '.join(_FLAG_OF_SETTING.get(s, f'--{s}') for s in settings)})"
  return str(error)


def stop_process(process: subprocess.Popen, sig: int, wait: float, *, group: bool = False) -> None:
  """Sends `sig` to a child (to its whole process group with `group`) and waits up to `wait`
  seconds for it to end; then SIGKILL and up to 30 seconds more."""
  stop_processes([process], sig, wait, group=group)


def stop_processes(processes: list[subprocess.Popen], sig: int, wait: float, *, group: bool = False) -> None:
  """stop_process for several children at once: each gets `sig` once, then all share the wait
  (a run counts the same signal again, seconds later, as a second request: stop at once)."""
  for signal_, timeout in ((sig, wait), (signal.SIGKILL, 30)):
    alive = [p for p in processes if p.poll() is None]
    for process in alive:
      try:
        if group:
          os.killpg(process.pid, signal_)
        else:
          process.send_signal(signal_)
      except ProcessLookupError:
        pass
    deadline = time.monotonic() + timeout
    for process in alive:
      try:
        process.wait(timeout=max(0.0, deadline - time.monotonic()))
      except subprocess.TimeoutExpired:
        pass


class Terminated(KeyboardInterrupt):
  """SIGTERM (what Colab, spot VMs and job schedulers send before they stop a process),
  raised in the main thread like Ctrl-C."""


# Set by the first SIGTERM or Ctrl-C while a training loop runs (it saves, then stops).
STOP = loop.StopRequest()
_EXIT_STATUS = {"SIGTERM": 143, "SIGINT": 130}


# A scheduler may signal every process of a job (and reproduce passes its signal on to its
# run): the same signal again this soon is that one signal, not a second request.
_REPEAT_SECONDS = 2.0
_first_request: dict[str, float] = {}


def _on_stop_signal(signum, frame) -> None:
  """SIGTERM or Ctrl-C: while training, the first asks for a stop after the step in progress,
  with a checkpoint of it; elsewhere (or a second signal) stops at once."""
  name = signal.Signals(signum).name
  if STOP.requested and name == STOP.reason and time.monotonic() - _first_request[name] < _REPEAT_SECONDS:
    return
  if STOP.requested and STOP.honoured and not _first_request:
    # Already stopping, on another process's request (a multi-process run agreed on it): this
    # process's own first signal asks for what is under way; a second one stops at once.
    _first_request[name] = time.monotonic()
    STOP.reason = name
    return
  if STOP.honoured and not STOP.requested:
    STOP.request(name)
    _first_request[name] = time.monotonic()
    print(
      f"\n{name}: stopping after the "
      + (
        "step in progress"
        if distributed.process_count() == 1
        else "epoch in progress (the processes agree there)"
      )
      + ", with a checkpoint of it "
      f"(send {'Ctrl-C' if name == 'SIGINT' else name} again to stop at once, losing the steps since the last checkpoint)",
      file=sys.stderr,
      flush=True,
    )
    return
  raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def run_mode(fn: Callable[[], None]) -> None:
  """Runs `fn`; expected failures become one line on stderr and exit status 1; Ctrl-C and
  SIGTERM stop it with one line (exit status 130 and 143), a training run after saving
  the step in progress (see _on_stop_signal)."""
  handlers = {sig: signal.signal(sig, _on_stop_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
  try:
    fn()
  except errors.Preempted as e:
    _exit_at_once(f"\n{e}; rerun the same command to resume from there", _EXIT_STATUS.get(e.reason, 143))
  except (errors.SimjaxError, ValueError, OSError, MemoryError) as e:
    if os.environ.get("SIMJAX_TRACEBACK"):  # for debugging: the full stack instead of one line
      raise
    _exit_at_once(f"error: {error_line(e)}", 1)
  except KeyboardInterrupt as e:
    terminated = isinstance(e, Terminated)
    lost = (
      f"{'terminated (SIGTERM)' if terminated else 'interrupted'}: the steps since the last checkpoint "
      "are lost; rerun the same command to resume from the last checkpoint"
    )
    # str(e): the raiser's own account (e.g. reproduce's: its run saved and stopped).
    _exit_at_once(f"\n{str(e) or lost}", 143 if terminated else 130)
  finally:
    for sig, handler in handlers.items():
      signal.signal(sig, handler)


def _exit_at_once(line: str, status: int) -> None:
  print(line, file=sys.stderr, flush=True)
  sys.stdout.flush()
  # Exit now: the `finally` blocks on the way here have released the workdir and closed the
  # logs, and checkpoints are committed atomically. A normal interpreter shutdown would run
  # the exit hooks of whatever library work the failure or signal cut short (e.g. orbax's
  # thread pools, which then print errors after this line).
  os._exit(status)
