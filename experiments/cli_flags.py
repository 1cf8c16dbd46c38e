"""The command lines' flags: their definitions, flags -> library configs, flagfile lookup,
and the one error line per library failure that names the flags to change (only experiments/
knows flag names)."""

from __future__ import annotations

import dataclasses
import os
import sys
import typing
from typing import Any

from absl import flags

from experiments import flagfiles
from simjax import errors, optim, settings
from simjax.run_config import RunConfig

FLAGS = flags.FLAGS


def define_training_flags(flag_values: flags.FlagValues = FLAGS) -> None:
  """Flags every task shares: what the design card calls the common flags."""
  flags.DEFINE_enum(
    "mode",
    "train",
    ["train", "eval", "predict", "transfer"],
    "train (resumes from --workdir), eval (best checkpoint on dev and test), predict (from --input), "
    "transfer (sentences: STS12-16, STS-B and SICK-R, written to <workdir>/transfer.json).",
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
  flags.DEFINE_bool(
    "deterministic",
    False,
    "GPU: make XLA's reductions and scatters deterministic (--xla_gpu_deterministic_ops), so "
    "reruns are bit-identical there too; slower. CPU runs are deterministic already.",
    flag_values=flag_values,
  )
  define_settings(RunConfig, flag_values=flag_values)
  define_settings(optim.OptimConfig, flag_values=flag_values)
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
    int_from_env("JAX_NUM_PROCESSES", 1),
    "Multi-process run: how many processes (default: $JAX_NUM_PROCESSES).",
    lower_bound=1,
    flag_values=flag_values,
  )
  flags.DEFINE_integer(
    "process_id",
    int_from_env("JAX_PROCESS_ID", 0),
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


def define_settings(
  config_class: type, *, skip: tuple[str, ...] = (), flag_values: flags.FlagValues = FLAGS
) -> None:
  """A flag for each setting a library config declares (simjax.settings): its name, default,
  help, choices and bounds are the declaration's. The settings of its dataclass bases are left
  to theirs (a task's TrainConfig adds to RunConfig); `skip`: settings whose flag is defined
  elsewhere (shared by the tasks). The flags belong to the calling module, as if it had
  defined them (main.py tells a task's flags by their module)."""
  module_name = sys._getframe(1).f_globals["__name__"]
  types = typing.get_type_hints(config_class)
  inherited = {
    name for base in config_class.__mro__[1:] for name in getattr(base, "__dataclass_fields__", {})
  }
  for field, spec in settings.declared(config_class):
    if field.name in skip or field.name in inherited:
      continue
    common = dict(flag_values=flag_values, module_name=module_name)
    kind = types[field.name]
    bounds = dict(lower_bound=spec.lower, upper_bound=spec.upper)
    if spec.choices is not None:
      flags.DEFINE_enum(field.name, field.default, list(spec.choices), spec.help, **common)
    elif kind is bool:
      flags.DEFINE_bool(field.name, field.default, spec.help, **common)
    elif kind is int:
      flags.DEFINE_integer(field.name, field.default, spec.help, **bounds, **common)
    elif kind is float:
      flags.DEFINE_float(field.name, field.default, spec.help, **bounds, **common)
    elif typing.get_origin(kind) is tuple:
      flags.DEFINE_list(field.name, list(field.default), spec.help, **common)
    else:
      flags.DEFINE_string(field.name, field.default, spec.help, **common)


def int_from_env(name: str, lowest: int) -> int | None:
  """A flag's default from the environment; an unusable value is refused by initialize_distributed."""
  value = os.environ.get(name, "").strip()
  return int(value) if value.isdigit() and int(value) >= lowest else None


def define_compilation_cache_flag(flag_values: flags.FlagValues = FLAGS) -> None:
  flags.DEFINE_string(
    "compilation_cache_dir",
    os.environ.get("SIMJAX_COMPILATION_CACHE_DIR"),
    "JAX's persistent compilation cache: compiled programs are kept in this folder, so rerunning "
    "a command on the same machine skips compilation (default: $SIMJAX_COMPILATION_CACHE_DIR; "
    "unset: no cache). Compile seconds are reported apart from training seconds either way.",
    flag_values=flag_values,
  )


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
