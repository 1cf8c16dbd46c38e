r"""Every run's programs compiled for TPU and GPU without either: memory at full size, roofline.

  ./run.sh deviceless                                   every run below, every target
  ./run.sh deviceless --runs=cnn_resnet --targets=h200 --out=/tmp/fit.json

For each run (a flagfile, at its own batch size, seeds and data sizes), the programs a run on
an accelerator compiles (CIFAR-10: the fused epoch and the evaluations; sentences: the train
and eval steps at the longest bucket; simjax.programs) are compiled by XLA's TPU and GPU
compilers (simjax.deviceless) for one device of each target, without the device. --out gets,
per run and target: each program's memory per device and whether the largest fits; FLOPs and
bytes per epoch and per run; and the roofline lower bound of a run on each target with the
peak figures assumed. A Markdown table is written beside it. Every time here is an estimate,
a bound no implementation can beat; the measured column is left for a run on the device.
Needs the compilers (`pip install 'simjax[deviceless]'`; run.sh sets up the environment) and
the data (for the splits' sizes and the vocabularies). Refuses to overwrite an existing --out.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import sys
import time
import types
from typing import Any

import jax
import numpy as np
from absl import app, flags
from jax.sharding import Mesh

from experiments import cifar10, cli_flags, flagfiles, lifecycle, sentence_similarity
from experiments import main as training_main  # noqa: F401 (defines every training flag)
from simjax import deviceless, run_records
from simjax.programs import Program
from simjax.sharding import DATA_AXIS
from simjax.tasks.cifar10 import input_pipeline
from simjax.tasks.cifar10 import task as cifar_training
from simjax.tasks.similarity import input_pipeline as sentence_input
from simjax.tasks.similarity import task as sentence_training

FLAGS = flags.FLAGS

# Every run the project documents: its flagfiles, and the notebook's accelerator run.
RUNS = {
  **{
    name: [f"--flagfile={name}.flags"]
    for name in (
      "cnn_fc",
      "cnn_dropout",
      "cnn_gap",
      "cnn_gap_dropout",
      "cnn_resnet",
      "cifar_speedrun",
      "rnn",
      "lstm",
      "lstm_stacked_dropout",
      "lstm_glove",
      "best_stsb",
      "best_sick",
      "study_rnn",
      "study_lstm",
      "study_lstm_stacked_dropout",
      "study_lstm_glove",
    )
  },
  "notebook_cnn_resnet_bf16": ["--flagfile=cnn_resnet.flags", "--dtype=bfloat16"],
}
# What a run shrinks to for the compile checks of the test suite (`small=True`): tiny widths,
# batches and splits, two stacked seeds; the same programs, only their shapes change.
SMALL_CIFAR = dict(width=4, fc_units=(16,))
# 8x8 images compile about 4x quicker for TPU than 32x32; the speedrun net (a 2x2 whitening
# conv, then three poolings by 2) needs 10x10 to keep a 1x1 map at the end.
SMALL_IMAGE = {"cnn": 8, "resnet": 8, "speedrun": 10}
SMALL_SENTENCES = dict(vocab_size=64, embedding_dim=8, hidden_size=8, mlp_hidden=8)
SMALL_BATCH, SMALL_SEEDS = 4, 2  # one example per device on four (XLA's TPU compiler is quickest)


@dataclasses.dataclass
class Built:
  """A run's programs on a mesh, and what its roofline needs."""

  task: str  # "cifar10" | "similarity"
  programs: list[Program]
  dtype: str  # compute dtype
  epochs: int
  batch_size: int
  num_seeds: int
  #: The programs a run on an accelerator executes every epoch (the others: CPU or resume only).
  per_epoch: tuple[str, ...]


def build(argv: list[str], mesh, *, small: bool = False) -> Built:
  """The programs the run of `argv` (flags, flagfiles) compiles, on `mesh`. Full size needs
  the data (the splits' sizes; the sentences' vocabulary); small does not. The flags are parsed
  for this alone and left unparsed after."""
  FLAGS.unparse_flags()
  FLAGS(["deviceless", *_expanded(argv)])
  try:
    return _build(mesh, small)
  finally:
    FLAGS.unparse_flags()


def _build(mesh, small: bool) -> Built:
  seeds = SMALL_SEEDS if small else FLAGS.num_seeds
  batch_size = SMALL_BATCH if small else FLAGS.batch_size
  if FLAGS.task == "cifar10":
    task, config = cifar10.task_from_flags()
    model = dataclasses.replace(task.model, **SMALL_CIFAR) if small else task.model
    train_images = (
      4 * batch_size if small else input_pipeline.split_rows(task.data.train_split, task.data.data_dir)
    )
    eval_images = 20 if small else input_pipeline.split_rows(task.data.eval_split, task.data.data_dir)
    programs = cifar_training.programs(
      mesh, model, task.optim, batch_size=batch_size, num_seeds=seeds, train_images=train_images,
      eval_images=eval_images, augmentation=task.data.augmentation, label_smoothing=config.label_smoothing,
      tta=task.data.tta, tta_each_epoch=task.data.tta_each_epoch,
      image_size=SMALL_IMAGE[model.architecture] if small else 32,
    )  # fmt: skip
    per_epoch = tuple(p.name for p in programs if p.name == "epoch" or p.name.startswith("predict"))
    return Built("cifar10", programs, model.dtype, config.epochs, batch_size, seeds, per_epoch)
  data = sentence_similarity.data_config()
  max_length = 16 if small else data.max_length
  if small:
    vocab = SMALL_SENTENCES["vocab_size"]
    prepared = types.SimpleNamespace(vocab=range(vocab), embedding_matrices=None)
    model = sentence_similarity.model_config_for(prepared)
    # A stacked encoder keeps two layers: the dropout between layers and the layer loop are there.
    model = dataclasses.replace(model, **SMALL_SENTENCES, num_layers=min(model.num_layers, 2))
    calls = {"train_step": 1, "eval_step": 1}
  else:
    prepared = sentence_training.prepare_data(data, seeds=[FLAGS.seed])
    model = sentence_similarity.model_config_for(prepared)
    calls = {
      name: sentence_input.num_batches(prepared.splits[split], batch_size, max_length)
      for name, split in (("train_step", "train"), ("eval_step", "dev"))
    }
  programs = [
    dataclasses.replace(program, counted_per_epoch=calls[program.name])
    for program in sentence_training.programs(
      mesh, model, cli_flags.optim_config(), batch_size=batch_size, num_seeds=seeds, max_length=max_length
    )
  ]
  return Built("similarity", programs, "float32", FLAGS.epochs, batch_size, seeds, tuple(calls))


def _expanded(argv: list[str]) -> list[str]:
  return flagfiles.expand(["deviceless", *argv])[1:]


# --------------------------------------------------------------------------------------
# The benchmark: memory, FLOPs and bytes per run and target
# --------------------------------------------------------------------------------------
def costs(argv: list[str]) -> dict[str, Any]:
  """FLOPs and bytes (before fusion) per epoch and per run, from XLA's cost analysis of the
  programs lowered for this machine: the count does not depend on the target (XLA reports
  none for programs lowered for devices that are not here)."""
  built = build(argv, Mesh(np.array(jax.devices()[:1]), (DATA_AXIS,)))
  per_epoch = {"flops": 0.0, "bytes_before_fusion": 0.0}
  for program in built.programs:
    if program.name in built.per_epoch:
      cost = deviceless.cost(deviceless.lower(program))
      per_epoch["flops"] += cost["flops"] * program.counted_per_epoch
      per_epoch["bytes_before_fusion"] += cost["bytes"] * program.counted_per_epoch
  return {
    "task": built.task,
    "dtype": built.dtype,
    "batch_size": built.batch_size,
    "num_seeds": built.num_seeds,
    "epochs": built.epochs,
    "calls_per_epoch": {p.name: p.counted_per_epoch for p in built.programs if p.name in built.per_epoch},
    "per_epoch": per_epoch,
    "per_run": {k: v * built.epochs for k, v in per_epoch.items()},
  }


def measure(name: str, argv: list[str], target: str, log=print) -> dict[str, Any]:
  """One run's per-epoch programs compiled for one device of `target`: memory and fit (and on
  TPUs, the bytes the compiled program moves, after fusion)."""
  spec = deviceless.TARGETS[target]
  built = build(argv, deviceless.mesh(target, 1))
  programs, fused_bytes = {}, 0.0
  for program in built.programs:
    if program.name not in built.per_epoch:
      continue
    start = time.perf_counter()
    lowered = deviceless.lower(program)
    refused = None
    try:
      compiled = deviceless.compile_lowered(lowered)
    except jax.errors.JaxRuntimeError as e:  # XLA's TPU compiler refuses what does not fit
      if not deviceless.out_of_memory(e):
        raise
      compiled, refused = None, str(e).splitlines()[0][:300]
    seconds = time.perf_counter() - start
    record = {"compile_seconds": round(seconds, 1)}
    if compiled is None:
      record.update(fits=False, refused=refused)
      fused_bytes = None
    else:
      memory = deviceless.memory(compiled)
      record.update(memory=memory, fits=memory["total"] <= spec.memory_bytes)
      after = deviceless.bytes_after_fusion(compiled)
      fused_bytes = (
        None if after is None or fused_bytes is None else fused_bytes + after * program.counted_per_epoch
      )
    programs[program.name] = record
    shown = (
      f"{record['memory']['total'] / 2**30:.2f} GiB" if compiled is not None else "refused: out of memory"
    )
    log(f"  {name} on {target}: {program.name} compiled in {seconds:.0f} s, {shown}")
  compiled_sizes = [p["memory"]["total"] for p in programs.values() if "memory" in p]
  return {
    "programs": programs,
    "memory_bytes": max(compiled_sizes) if compiled_sizes else None,
    "device_memory_bytes": spec.memory_bytes,
    "fits": all(p["fits"] for p in programs.values()),
    "bytes_after_fusion_per_epoch": fused_bytes,
  }


def roofline(record: dict[str, Any]) -> dict[str, Any]:
  """A run's lower bound on every target (compiled here or roofline only): FLOPs at the peak
  matrix rate of its dtype, and bytes at full memory bandwidth, whichever takes longer. Bytes:
  after fusion as XLA's TPU compiler counts them where a TPU was compiled for; else none
  (bytes before fusion overstate traffic, so they would not give a lower bound)."""
  fused = [t.get("bytes_after_fusion_per_epoch") for t in record["targets"].values() if "error" not in t]
  fused = next((b for b in fused if b), None)
  epochs, flops = record["costs"]["epochs"], record["costs"]["per_run"]["flops"]
  bytes_ = fused * epochs if fused else 0.0
  bounds = {}
  for name, spec in {**deviceless.TARGETS, **deviceless.ROOFLINE_ONLY}.items():
    seconds, bound = deviceless.roofline(flops, bytes_, spec, record["costs"]["dtype"])
    # The measured time: only a run on the device fills it.
    bounds[name] = {"seconds_per_run": seconds, "bound": bound, "measured_seconds_per_run": None}
  return {
    "bytes_per_run": bytes_ or None,
    "bytes": "after fusion (TPU compile)" if fused else "not counted",
    "targets": bounds,
  }


def markdown(report: dict[str, Any]) -> str:
  """The report as two tables: memory and fit per target; FLOPs, bytes and roofline bounds."""
  targets = list(report["targets"])
  bounds = list(deviceless.TARGETS) + list(deviceless.ROOFLINE_ONLY)
  lines = [
    "Estimates from XLA's compilers without the devices; measured times come only from runs on them.",
    "",
    f"Command: `{report['command']}` ({report['date']}, jax {report['versions'].get('jax')})",
    "",
    "Memory per device of the largest per-epoch program at the run's batch size (GiB), and whether it fits:",
    "",
    "| run | batch | seeds | " + " | ".join(targets) + " |",
    "|---" * (3 + len(targets)) + "|",
  ]
  for name, run in report["runs"].items():
    cells = []
    for t in targets:
      r = run["targets"].get(t)
      if r is None or "error" in r:
        cells.append("—" if r is None else "error")
      elif r["memory_bytes"] is None:
        cells.append("does not fit (compiler)")
      else:
        cells.append(f"{r['memory_bytes'] / 2**30:.2f} ({'fits' if r['fits'] else 'DOES NOT FIT'})")
    c = run.get("costs", {})
    lines.append(
      f"| {name} | {c.get('batch_size', '')} | {c.get('num_seeds', '')} | " + " | ".join(cells) + " |"
    )
  lines += [
    "",
    "A run's work and its roofline lower bound in seconds (c: compute-bound, m: memory-bound); "
    "the measured column is filled only by a run on the device:",
    "",
    "| run | dtype | epochs | TFLOP/run | GB/run (after fusion) | "
    + " | ".join(f"{t} s" for t in bounds)
    + " | measured s |",
    "|---" * (5 + len(bounds) + 1) + "|",
  ]
  for name, run in report["runs"].items():
    if "roofline" not in run:
      continue
    c, r = run["costs"], run["roofline"]
    gb = f"{r['bytes_per_run'] / 1e9:,.0f}" if r["bytes_per_run"] else "—"
    cells = " | ".join(
      f"{r['targets'][t]['seconds_per_run']:.3g} ({r['targets'][t]['bound'][0]})" for t in bounds
    )
    lines.append(
      f"| {name} | {c['dtype']} | {c['epochs']} | {c['per_run']['flops'] / 1e12:,.1f} | {gb} | {cells} | |"
    )
  return "\n".join(lines) + "\n"


def define_flags() -> None:
  flags.DEFINE_list("runs", list(RUNS), f"Runs to compile: {', '.join(RUNS)}.")
  flags.DEFINE_list("targets", list(deviceless.TARGETS), f"Targets: {', '.join(deviceless.TARGETS)}.")
  flags.DEFINE_string("out", os.path.join("benchmarks", "deviceless.json"), "Report (JSON; .md beside it).")


def main(argv) -> None:
  del argv
  runs, targets, out = list(FLAGS.runs), list(FLAGS.targets), FLAGS.out
  unknown = [r for r in runs if r not in RUNS] + [t for t in targets if t not in deviceless.TARGETS]
  if unknown:
    sys.exit(
      f"error: unknown run or target {', '.join(unknown)}; runs: {', '.join(RUNS)}; targets: {', '.join(deviceless.TARGETS)}"
    )
  if os.path.exists(out):
    sys.exit(f"error: {out} exists: a finished report is never rewritten; choose another --out")
  missing = sorted(
    {deviceless.TARGETS[t].platform for t in targets}
    - set(filter(deviceless.compiler_installed, ("tpu", "cuda")))
  )
  if missing:
    sys.exit(
      f"error: the deviceless {' and '.join(p.upper() for p in missing)} compiler is not installed: run "
      "./run.sh deviceless (it installs them), or pip install 'simjax[deviceless]'"
    )
  lifecycle.run_mode(lambda: _report(runs, targets, out))


def _report(runs: list[str], targets: list[str], out: str) -> None:
  command = "./run.sh deviceless " + " ".join(a for a in sys.argv[1:])
  report = {
    "command": command.strip(),
    "date": datetime.date.today().isoformat(),
    "estimates": "compiled without the devices; memory from XLA's memory analysis, FLOPs from its cost "
    "analysis (a loop body counted once: the fused epoch and the evaluation are multiplied by their "
    "steps, the recurrent encoders' time loop is not: their FLOPs are a lower bound)",
    "versions": run_records.versions(),
    "targets": {t: dataclasses.asdict(deviceless.TARGETS[t]) for t in targets},
    "roofline_only": {t: dataclasses.asdict(s) for t, s in deviceless.ROOFLINE_ONLY.items()},
    "runs": {},
  }
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  try:
    for name in runs:
      entry = report["runs"][name] = {"args": RUNS[name], "costs": costs(RUNS[name]), "targets": {}}
      for target in targets:
        try:
          entry["targets"][target] = measure(name, RUNS[name], target)
        except jax.errors.JaxRuntimeError as e:  # a program that does not compile is a finding
          entry["targets"][target] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}
          print(f"  {name} on {target}: {entry['targets'][target]['error']}", file=sys.stderr)
        entry["roofline"] = roofline(entry)
        _write(out, report)
  except KeyboardInterrupt as e:
    kept = f"{out} holds the runs finished before it" if os.path.exists(out) else "nothing was written"
    raise type(e)(f"\nstopped: {kept}; to finish, rerun the missing --runs with another --out") from None
  print(f"wrote {out} and {os.path.splitext(out)[0]}.md")


def _write(out: str, report: dict[str, Any]) -> None:
  """Rewritten after every target, so a stopped report keeps what it finished."""
  tmp = f"{out}.tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(report, f, indent=1)
  os.replace(tmp, out)
  with open(f"{os.path.splitext(out)[0]}.md", "w", encoding="utf-8") as f:
    f.write(markdown(report))


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=cli_flags.parse_flags_with_flagfile_lookup)
