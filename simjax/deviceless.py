"""Compiling for TPUs and GPUs that are not here: XLA's own TPU and GPU compilers, on this CPU.

`mesh(target, devices)` gives a mesh of abstract devices of a target (a TPU v5e or v6e slice,
NVIDIA H200s); a task's `programs(mesh, ...)` (simjax.programs) then builds the programs a run
compiles, with abstract inputs on that mesh, and `compile(program)` runs the real compiler for
that device. What the compile proves and tells: that the program compiles (no operation the
backend lacks), its collectives on several devices, its memory (arguments, outputs,
temporaries: `memory`), and, with `cost`, its FLOPs and bytes for a roofline.

The compilers are optional (the `deviceless` extra; run.sh installs them for the tests into a
folder of their own): libtpu for TPUs, the CUDA plugin for GPUs, both without their device
and without the NVIDIA libraries. The process must start with JAX_PLATFORMS=cpu and
TPU_SKIP_MDS_QUERY=1 (`ENVIRONMENT`), their folder on sys.path before JAX starts its backends.

GPU compiles need a target config (the GPU's description). simjax/target_configs holds one
written from the H200's spec sheet (approximate); a file named `<gpu>_device.txtpb` there,
dumped on the device itself (the device session does: tools.gpu_session), is used
instead once it exists.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
from typing import Any, Callable, Sequence

import jax
import numpy as np
from jax.experimental import topologies
from jax.sharding import Mesh

from simjax import replicas
from simjax.errors import ConfigError, ProgramTooLarge
from simjax.programs import Program
from simjax.sharding import DATA_AXIS

GIB = 2**30
TARGET_CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "target_configs")


@dataclasses.dataclass(frozen=True)
class Target:
  """A device kind to compile for, and what its roofline assumes (per chip or GPU)."""

  name: str
  platform: str  # "tpu" | "cuda"
  topology: str  # a 4-device topology: one-device meshes take its first device ("" roofline only)
  memory_bytes: int  # the memory a program may use (HBM)
  peak_bf16_flops: float  # dense matrix throughput, per second
  #: float32 programs at JAX's default matmul precision: one bfloat16 pass on TPUs (the bf16
  #: peak), TF32 tensor cores on NVIDIA GPUs (the dense TF32 peak).
  peak_f32_flops: float
  memory_bandwidth: float  # bytes per second
  source: str  # where the figures come from


# Published peaks, dense (NVIDIA's headline tensor figures include 2:4 sparsity: half of them);
# docs/accelerators.md has the table with its sources.
TARGETS = {
  "tpu_v5e": Target(
    "tpu_v5e", "tpu", "v5e:2x2", 16 * GIB, 197e12, 197e12, 819e9, "cloud.google.com/tpu/docs/v5e"
  ),
  "tpu_v6e": Target(
    "tpu_v6e", "tpu", "v6e:2x2", 32 * GIB, 918e12, 918e12, 1638e9, "cloud.google.com/tpu/docs/v6e"
  ),
  "h200": Target("h200", "cuda", "1x1x4", 141 * 10**9, 989e12, 494.7e12, 4.8e12, "NVIDIA H200 SXM datasheet"),
}
# Roofline only: compiled as the H200 is (the same compiler, SM 9.0 or 8.0), not compiled here.
ROOFLINE_ONLY = {
  "h100": Target("h100", "cuda", "", 80 * 10**9, 989e12, 494.7e12, 3.35e12, "NVIDIA H100 SXM datasheet"),
  "a100": Target("a100", "cuda", "", 80 * 10**9, 312e12, 156e12, 2.039e12, "NVIDIA A100 80GB SXM datasheet"),
}
_COMPILER_MODULES = {"tpu": "libtpu", "cuda": "jax_plugins.xla_cuda12"}
_COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "collective-permute", "all-to-all")


class CompilerMissing(ConfigError):
  """The deviceless compiler of a platform is not installed."""


# What a process that compiles without devices needs in its environment before JAX starts
# (run.sh and tests/conftest.py set it). Several processes may load libtpu at once (e.g. test
# workers): no device is locked anyway.
ENVIRONMENT = {"JAX_PLATFORMS": "cpu", "TPU_SKIP_MDS_QUERY": "1", "ALLOW_MULTIPLE_LIBTPU_LOAD": "1"}


def compiler_installed(platform: str) -> bool:
  try:
    return importlib.util.find_spec(_COMPILER_MODULES[platform]) is not None
  except ModuleNotFoundError:
    return False


def target_config(gpu: str = "h200") -> tuple[str, str]:
  """(text proto, file name) of the GPU's target config: the one dumped on a device if the
  repository has it, else the spec-sheet one."""
  for name in (f"{gpu}_device.txtpb", f"{gpu}_spec_sheet.txtpb"):
    path = os.path.join(TARGET_CONFIGS, name)
    if os.path.exists(path):
      with open(path, encoding="utf-8") as f:
        return f.read(), name
  raise ConfigError(f"no target config for {gpu} in {TARGET_CONFIGS}")


def gpu_name(device_kind: str) -> str:
  """'NVIDIA H200' -> 'h200': the name target config files go by."""
  found = re.search(r"\b([A-Z]\d{2,3})\b", device_kind)
  return found.group(1).lower() if found else re.sub(r"\W+", "_", device_kind.lower()).strip("_")


def device_config_path(gpu: str) -> str:
  """Where a target config dumped on the GPU itself goes (the GPU compiles prefer it)."""
  return os.path.join(TARGET_CONFIGS, f"{gpu}_device.txtpb")


def find_dumped_target_config(dump_dir: str) -> str | None:
  """The target config XLA's GPU compiler wrote into its dump folder (XLA_FLAGS=--xla_dump_to),
  where a program was compiled on the GPU itself; None if there is none."""
  for root, _, files in os.walk(dump_dir):
    for name in sorted(files):
      if name.endswith("gpu_target_config.pbtxt"):
        return os.path.join(root, name)
  return None


def devices(target: str) -> list[Any]:
  """The abstract devices of `target`'s 4-device topology (no device needed)."""
  spec = TARGETS[target]
  if not compiler_installed(spec.platform):
    raise CompilerMissing(
      f"the {spec.platform.upper()} compiler is not installed: pip install 'simjax[deviceless]' "
      "(run.sh test installs it for the tests)"
    )
  if spec.platform == "tpu":
    return list(topologies.get_topology_desc(spec.topology, "tpu").devices)
  config, _ = target_config(target)
  return list(
    topologies.get_topology_desc(platform="cuda", target_config=config, topology=spec.topology).devices
  )


def mesh(target: str, count: int) -> Mesh:
  """A data-parallel mesh (simjax.sharding's axis) of `count` (1 or 4) abstract devices of `target`."""
  available = devices(target)
  if count > len(available):
    raise ConfigError(f"{target}: {count} devices asked, the topology has {len(available)}")
  return Mesh(np.array(available[:count]), (DATA_AXIS,))


def lower(program: Program) -> jax.stages.Lowered:
  return program.fn.trace(*program.args).lower()


def compile(program: Program) -> jax.stages.Compiled:  # noqa: A001 (the compile of XLA)
  """The program compiled for the devices its inputs are placed on."""
  return compile_lowered(lower(program))


def compile_lowered(lowered: jax.stages.Lowered) -> jax.stages.Compiled:
  """`lowered.compile()`, past JAX's persistent compilation cache: that cache is for programs
  this machine runs, and a program for devices that are not here can be neither stored there
  nor loaded from it."""
  before = jax.config.jax_enable_compilation_cache
  jax.config.update("jax_enable_compilation_cache", False)
  try:
    return lowered.compile()
  finally:
    jax.config.update("jax_enable_compilation_cache", before)


_COMPILE = object()


def refuse_if_too_large(
  name: str, build: Callable[[int], Program], batch_size: int, multiple: int, compiled: Any = _COMPILE
) -> None:
  """On an accelerator: raises ProgramTooLarge, naming the largest batch size that fits, if
  program `name` (`build(batch_size)`; `compiled` if given: its compile, None where the
  compiler refused it for memory) needs more than one device's memory. Nothing on CPUs: there
  the operating system decides."""
  if jax.default_backend() == "cpu":
    return
  limit = replicas.device_memory_bytes()
  need = needs(compile_or_none(build(batch_size)) if compiled is _COMPILE else compiled)
  if limit is None or (need is not None and need <= limit):
    return
  raise ProgramTooLarge(name, batch_size, need, limit, fitting_batch_size(build, batch_size, limit, multiple))


def fitting_batch_size(
  build: Callable[[int], Program], batch_size: int, limit: int, multiple: int
) -> int | None:
  """The largest batch size below `batch_size` (halving it, a multiple of `multiple`) whose
  program `build(size)` fits in `limit` bytes per device; None if none does. Compiled for the
  devices its inputs are placed on (this machine's at run time, or deviceless)."""
  size = batch_size // 2 // multiple * multiple
  while size >= multiple:
    need = needs(compile_or_none(build(size)))
    if need is not None and need <= limit:
      return size
    size = size // 2 // multiple * multiple
  return None


def compile_or_none(program: Program) -> jax.stages.Compiled | None:
  """The compiled program, or None when the compiler refuses it for lack of device memory
  (XLA's TPU compiler does; the GPU compiler leaves it to `memory`)."""
  try:
    return compile(program)
  except jax.errors.JaxRuntimeError as e:
    if out_of_memory(e):
      return None
    raise


def out_of_memory(error: Exception) -> bool:
  return "RESOURCE_EXHAUSTED" in str(error) or "out of memory" in str(error).lower()


def needs(compiled: jax.stages.Compiled | None) -> int | None:
  """Bytes per device a compiled program needs at once (None: it was refused for memory)."""
  return None if compiled is None else memory(compiled)["total"]


def collectives(compiled: jax.stages.Compiled) -> set[str]:
  """The cross-device operations in the compiled program (e.g. {"all-reduce"})."""
  text = compiled.as_text()
  return {name for name in _COLLECTIVES if re.search(rf"\b{name}(-start)?\(", text)}


def memory(compiled: jax.stages.Compiled) -> dict[str, int]:
  """Bytes per device: arguments, outputs, aliased (donated) ones, temporaries, code, and the
  peak the program needs at once (arguments + outputs - aliased + temporaries)."""
  stats = compiled.memory_analysis()
  record = {
    "arguments": int(stats.argument_size_in_bytes),
    "outputs": int(stats.output_size_in_bytes),
    "aliased": int(stats.alias_size_in_bytes),
    "temporaries": int(stats.temp_size_in_bytes),
    "code": int(stats.generated_code_size_in_bytes),
  }
  record["total"] = record["arguments"] + record["outputs"] - record["aliased"] + record["temporaries"]
  return record


def cost(lowered: jax.stages.Lowered) -> dict[str, float]:
  """FLOPs and bytes accessed (before fusion) of one call of a program lowered for this
  machine's devices, a loop's body counted once. The count does not depend on the target; XLA
  gives none for programs lowered for devices that are not here."""
  analysis = _first(lowered.cost_analysis())
  if analysis is None:
    raise ConfigError(
      "XLA has no cost analysis of this lowering: lower the program for this machine's devices"
    )
  return {"flops": float(analysis.get("flops", 0.0)), "bytes": float(analysis.get("bytes accessed", 0.0))}


def bytes_after_fusion(compiled: jax.stages.Compiled) -> float | None:
  """Bytes one call moves as the compiled program's backend counts them after fusion (XLA's TPU
  compiler does, deviceless too; None where the backend gives no count, e.g. the GPU's)."""
  analysis = _first(compiled.cost_analysis())
  value = analysis.get("bytes accessed") if analysis else None
  return None if value is None else float(value)


def _first(analysis: Any) -> dict[str, float] | None:
  if isinstance(analysis, (list, tuple)):
    return analysis[0] if analysis else None
  return analysis


def roofline(flops: float, bytes_: float, target: Target, dtype: str) -> tuple[float, str]:
  """The time below which no implementation on `target` can run this work, the larger of its
  compute time at the peak matrix rate of `dtype` and its memory time at full bandwidth, and
  which one it is ("compute" or "memory")."""
  peak = target.peak_bf16_flops if dtype == "bfloat16" else target.peak_f32_flops
  compute, memory = flops / peak, bytes_ / target.memory_bandwidth
  return max(compute, memory), "compute" if compute >= memory else "memory"


# --------------------------------------------------------------------------------------
# Export: one serialized program for several platforms
# --------------------------------------------------------------------------------------
def export(program: Program, platforms: Sequence[str]) -> tuple[bytes, Any]:
  """The program exported for `platforms` (e.g. ("tpu", "cuda", "cpu")) and serialized, taking
  and returning flat lists of arrays (so that any state type serializes); and the treedef of
  its outputs, to rebuild them. Static arguments are part of the program."""
  flat_args, in_tree = jax.tree_util.tree_flatten(program.args, is_leaf=_is_abstract)
  positions = [i for i, leaf in enumerate(flat_args) if _is_abstract(leaf)]
  out_tree = []

  def flat(*arrays):
    leaves = list(flat_args)
    for i, array in zip(positions, arrays):
      leaves[i] = array
    outputs, tree = jax.tree_util.tree_flatten(program.fn(*jax.tree_util.tree_unflatten(in_tree, leaves)))
    out_tree[:] = [tree]
    return outputs

  abstract_arrays = [jax.ShapeDtypeStruct(flat_args[i].shape, flat_args[i].dtype) for i in positions]
  exported = jax.export.export(jax.jit(flat), platforms=tuple(platforms))(*abstract_arrays)
  return exported.serialize(), out_tree[0]


def call_exported(serialized: bytes, out_tree: Any, args: Any) -> Any:
  """Runs a serialized export (see `export`) on this machine's backend with concrete `args`."""
  exported = jax.export.deserialize(serialized)
  arrays = [leaf for leaf in jax.tree_util.tree_leaves(args) if isinstance(leaf, (jax.Array, np.ndarray))]
  return jax.tree_util.tree_unflatten(out_tree, exported.call(*arrays))


def _is_abstract(leaf: Any) -> bool:
  return isinstance(leaf, jax.ShapeDtypeStruct)


def example_inputs(args: Any, seed: int = 0) -> Any:
  """Concrete arrays for abstract inputs, on this machine's default device: floats small normal
  values, integers 0-3 (valid as indices, lengths, token ids and step counts), uint8 and
  uint32 (pixels, PRNG keys) any value."""
  rng = np.random.default_rng(seed)

  def fill(leaf):
    if not _is_abstract(leaf):
      return leaf
    dtype = np.dtype(leaf.dtype)
    if dtype in (np.uint8, np.uint32):
      return jax.numpy.asarray(rng.integers(0, np.iinfo(dtype).max, leaf.shape, dtype=dtype, endpoint=True))
    if np.issubdtype(dtype, np.integer):
      return jax.numpy.asarray(rng.integers(0, 4, leaf.shape).astype(dtype))
    if dtype == np.bool_:
      return jax.numpy.asarray(rng.integers(0, 2, leaf.shape).astype(bool))
    return jax.numpy.asarray((0.05 * rng.standard_normal(leaf.shape)).astype(dtype))

  return jax.tree_util.tree_map(fill, args, is_leaf=_is_abstract)
