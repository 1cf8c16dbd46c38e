"""Every program a run compiles, compiled for TPU v5e and NVIDIA H200 without either device,
and exported for both.

The programs come from the runs' own flagfiles, through the builders runs compile with
(simjax.programs), shrunk to tiny widths, batches and splits with two stacked seeds
(experiments.deviceless, small=True): compile time, not the checks, decides the sizes. Each
architecture and encoder once; float32 and bfloat16 both. The compilers are XLA's own (libtpu,
the CUDA plugin), installed by run.sh for the tests; CI has them, so nothing here is skipped
there.
"""

import os

import jax
import numpy as np
import pytest
from jax.sharding import Mesh

from experiments import deviceless as runs
from simjax import deviceless, optim
from simjax.sharding import DATA_AXIS
from simjax.tasks.similarity import task as sentence_task
from simjax.tasks.similarity.models import ModelConfig

# run -> extra flags: the classic CNN, the ResNet and the speedrun net, each encoder.
CASES = {
  "cnn_dropout": [],
  "cnn_resnet": ["--dtype=bfloat16"],
  "cifar_speedrun": ["--dtype=bfloat16"],
  "rnn": [],
  "lstm": [],
  "lstm_stacked_dropout": [],
  "lstm_glove": [],
}
MESHES = [("tpu_v5e", 1), ("tpu_v5e", 4), ("h200", 1), ("h200", 4)]
# Programs that average gradients over the batch: split over 4 devices, they must reduce across them.
TRAINING = ("train_step", "epoch")


@pytest.fixture(scope="module")
def compilers():
  missing = [p for p in ("tpu", "cuda") if not deviceless.compiler_installed(p)]
  if missing:
    (pytest.fail if os.environ.get("CI") else pytest.skip)(
      f"the deviceless compilers for {', '.join(missing)} are not installed: run the tests with "
      "./run.sh test (it installs them), or pip install 'simjax[deviceless]'"
    )


def _args(run):
  return [*runs.RUNS[run], *CASES[run]]


def _bytes(tree) -> int:
  return sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize for x in jax.tree_util.tree_leaves(tree))


@pytest.mark.parametrize("target,count", MESHES, ids=[f"{t}x{n}" for t, n in MESHES])
@pytest.mark.parametrize("run", CASES)
def test_every_program_compiles_for_the_device(run, target, count, compilers):
  built = runs.build(_args(run), deviceless.mesh(target, count), small=True)
  assert {p.name for p in built.programs} >= set(built.per_epoch)
  for program in built.programs:
    compiled = deviceless.compile(program)
    memory = deviceless.memory(compiled)
    # The replicated first input is whole on every device: the train state for training (all
    # of it is used), its parameters for evaluation (XLA drops inputs a program never reads).
    first = program.args[0]
    needed = _bytes(first if program.name in TRAINING or not hasattr(first, "params") else first.params)
    assert memory["arguments"] >= needed, program.name
    assert memory["total"] >= memory["arguments"]
    found = deviceless.collectives(compiled)
    if count == 1:
      assert not found, f"{program.name} on one device has collectives {found}"
    elif program.name in TRAINING:
      assert "all-reduce" in found, f"{program.name} on {count} devices reduces nothing across them"


@pytest.mark.parametrize("run", CASES)
def test_exports_for_tpu_and_gpu_and_reproduces_on_cpu(run, compilers):
  mesh = Mesh(np.array(jax.devices()[:1]), (DATA_AXIS,))
  built = runs.build(_args(run), mesh, small=True)
  for program in built.programs:
    serialized, out_tree = deviceless.export(program, ("tpu", "cuda", "cpu"))
    assert jax.export.deserialize(serialized).platforms == ("tpu", "cuda", "cpu")
    inputs = deviceless.example_inputs(program.args)
    # Copies: the training programs donate the state's buffers.
    expected = program.fn(*jax.tree_util.tree_map(lambda x: x.copy() if hasattr(x, "copy") else x, inputs))
    got = deviceless.call_exported(serialized, out_tree, inputs)
    assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(expected)
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(expected)):
      # The exported module is the same program lowered for three platforms at once; XLA may
      # fuse its float arithmetic differently, which moves a result by a few float32 ulps
      # (seen: 1.5e-8 on values of order 0.1), never more. Integers (steps, classes) are exact.
      a, b = np.asarray(a), np.asarray(b)
      if np.issubdtype(a.dtype, np.integer):
        np.testing.assert_array_equal(a, b, err_msg=program.name)
      else:
        np.testing.assert_allclose(
          a.astype(np.float64), b.astype(np.float64), rtol=1e-5, atol=1e-6, err_msg=program.name
        )


def test_the_gpu_compiles_prefer_a_target_config_dumped_on_the_device(tmp_path, monkeypatch):
  assert (
    deviceless.gpu_name("NVIDIA H200") == "h200" and deviceless.gpu_name("NVIDIA H100 80GB HBM3") == "h100"
  )
  text, name = deviceless.target_config("h200")
  assert name == "h200_spec_sheet.txtpb" or name == "h200_device.txtpb"
  assert 'device_description_str: "NVIDIA H200"' in text
  # XLA writes the config it compiled for into its dump folder; the device session copies it from there.
  (tmp_path / "dump" / "module").mkdir(parents=True)
  (tmp_path / "dump" / "module" / "module_0001.gpu_target_config.pbtxt").write_text("gpu_device_info {}")
  assert deviceless.find_dumped_target_config(str(tmp_path / "dump")).endswith("gpu_target_config.pbtxt")
  assert deviceless.find_dumped_target_config(str(tmp_path)) is not None
  assert deviceless.find_dumped_target_config(str(tmp_path / "dump" / "none")) is None
  monkeypatch.setattr(deviceless, "TARGET_CONFIGS", str(tmp_path))
  (tmp_path / "h200_spec_sheet.txtpb").write_text("spec")
  assert deviceless.target_config("h200") == ("spec", "h200_spec_sheet.txtpb")
  (tmp_path / "h200_device.txtpb").write_text("dumped")
  assert deviceless.target_config("h200") == ("dumped", "h200_device.txtpb")


def test_the_largest_batch_that_fits_is_found_by_halving():
  mesh = Mesh(np.array(jax.devices()[:1]), (DATA_AXIS,))

  def build(batch_size):
    (program,) = [p for p in _sentence_programs(mesh, batch_size) if p.name == "eval_step"]
    return program

  need = {b: deviceless.needs(deviceless.compile(build(b))) for b in (4, 8, 16)}
  assert need[4] < need[8] < need[16]
  assert deviceless.fitting_batch_size(build, 16, need[8], multiple=1) == 8
  assert deviceless.fitting_batch_size(build, 16, (need[4] + need[8]) // 2, multiple=4) == 4
  assert deviceless.fitting_batch_size(build, 16, need[4] - 1, multiple=4) is None


def _sentence_programs(mesh, batch_size):
  model = ModelConfig(vocab_size=32, embedding_dim=8, hidden_size=8)
  return sentence_task.programs(
    mesh, model, optim.OptimConfig(), batch_size=batch_size, num_seeds=1, max_length=16
  )
