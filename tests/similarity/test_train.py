import json
import os

import numpy as np
import pytest

from simjax import optim, run_records
from simjax.checkpoints import ConfigMismatchError
from simjax.loop import TrainingDiverged
from simjax.similarity import train
from simjax.similarity.models import ModelConfig

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _tiny_model(data, **overrides):
  settings = dict(embedding_dim=8, hidden_size=8, head="mlp", mlp_hidden=8)
  return ModelConfig(vocab_size=len(data.vocab), **{**settings, **overrides})


@pytest.fixture
def data_config(prepared, manual_dir):
  return train.DataConfig(
    dataset="stsb",
    data_dir=prepared("stsb"),
    manual_dir=str(manual_dir),
    train_split="train[:256]",
    eval_split="validation[:64]",
    test_split="test[:64]",
    max_length=16,
  )


def _run(workdir, data_config, *, epochs=3, optim_config=None, model=_tiny_model, seed=0, **train_settings):
  return train.train_and_evaluate(
    model,
    data_config,
    optim_config or optim.OptimConfig(optimizer="adam", learning_rate=3e-3),
    train.TrainConfig(epochs=epochs, batch_size=32, seed=seed, **train_settings),
    str(workdir),
  )


def _params(workdir):
  import jax

  state, _, _ = train.load_trained(str(workdir))
  return jax.tree_util.tree_leaves(jax.device_get(state.params))


def test_loss_goes_down_and_outputs_are_written(tmp_path, data_config):
  results = _run(tmp_path, data_config, epochs=4, optim_config=optim.OptimConfig(learning_rate=1e-2))
  history = run_records.read_metrics(str(tmp_path))
  assert [row["epoch"] for row in history] == [1, 2, 3, 4]
  assert history[-1]["train_mse"] < 0.8 * history[0]["train_mse"]
  for split in ("dev", "test"):
    assert set(results[split]) == {"pearson", "spearman", "mse"}
  saved = json.load(open(tmp_path / "results.json"))
  assert saved["test"] == pytest.approx(results["test"])
  assert saved["versions"]["jax"] and saved["device"]["count"] >= 1
  assert saved["data"]["source_sha256"]["sts-train.csv"].startswith("0f71910b")
  assert os.listdir(tmp_path / "tensorboard")


def test_same_seed_same_numbers_other_seed_other_numbers(tmp_path, data_config):
  first = _run(tmp_path / "a", data_config, epochs=1)
  again = _run(tmp_path / "b", data_config, epochs=1)
  other = _run(tmp_path / "c", data_config, epochs=1, seed=1)
  assert first["test"] == again["test"]  # bit-identical on CPU
  assert first["test"] != other["test"]
  for a, b in zip(_params(tmp_path / "a"), _params(tmp_path / "b")):
    np.testing.assert_array_equal(a, b)


def test_stacked_seeds_train_like_single_runs_and_are_summarized(tmp_path, data_config):
  dropout = lambda d: _tiny_model(d, num_layers=2, dropout=0.3)  # per-seed dropout keys matter too
  stacked = _run(tmp_path / "stacked", data_config, epochs=2, model=dropout, seed=3, num_seeds=3)
  singles = [_run(tmp_path / f"seed{s}", data_config, epochs=2, model=dropout, seed=s) for s in (3, 4, 5)]
  assert stacked["seeds"] == [3, 4, 5]
  # Replica r is seed 3 + r: the same numbers as its own run, up to float summation order.
  for replica, single in zip(stacked["per_seed"], singles):
    for split in ("dev", "test"):
      assert replica[split] == pytest.approx(single[split], rel=1e-4, abs=1e-5)
    assert replica["best_epoch"] == single["best_epoch"]
  rows = run_records.read_metrics(str(tmp_path / "stacked"))
  for r, s in enumerate((3, 4, 5)):
    single_rows = run_records.read_metrics(str(tmp_path / f"seed{s}"))
    got = [row["per_seed"]["train_mse"][r] for row in rows]
    assert got == pytest.approx([row["train_mse"] for row in single_rows], rel=1e-4)
  # Seeds differ from each other, and the summary is their statistics.
  pearsons = [r["test"]["pearson"] for r in stacked["per_seed"]]
  assert len(set(pearsons)) == 3
  summary = stacked["summary"]["test.pearson"]
  assert summary["n"] == 3
  assert summary["mean"] == pytest.approx(np.mean(pearsons))
  assert summary["std"] == pytest.approx(np.std(pearsons, ddof=1))
  assert (summary["min"], summary["max"]) == (min(pearsons), max(pearsons))
  assert stacked["test"]["pearson"] == pytest.approx(np.mean(pearsons))
  assert json.load(open(tmp_path / "stacked" / "results.json"))["summary"] == stacked["summary"]
  # The fallback for short memory: the same seeds one after another, the same layout.
  sequential = _run(
    tmp_path / "sequential", data_config, epochs=2, model=dropout, seed=3, num_seeds=3, sequential_seeds=True
  )
  assert sequential["seeds"] == [3, 4, 5]
  for a, b in zip(sequential["per_seed"], singles):
    assert a["test"] == b["test"]  # each seed's own run, in <workdir>/seed_<s>
  assert sorted(os.listdir(tmp_path / "sequential")) >= ["metrics.jsonl", "results.json", "seed_3", "seed_4"]
  merged = run_records.read_metrics(str(tmp_path / "sequential"))
  assert [len(row["per_seed"]["train_mse"]) for row in merged] == [3, 3]
  # Its seeds load as one stacked state (eval / predict), in seed order.
  state, config, _ = train.load_trained(str(tmp_path / "sequential"))
  assert state.step.shape == (3,) and config["train"]["num_seeds"] == 3
  prepared = train.prepare_data(
    data_config, seeds=[3, 4, 5], vocab=train.load_trained(str(tmp_path / "seed3"))[2]
  )
  for got, want in zip(train.evaluate(state, prepared.splits["test"], 32, 16), sequential["per_seed"]):
    assert got == pytest.approx(want["test"], abs=1e-6)
  # Stacked and sequential runs never share a workdir.
  with pytest.raises(ConfigMismatchError, match="holds a --sequential_seeds run"):
    _run(tmp_path / "sequential", data_config, epochs=2, model=dropout, seed=3, num_seeds=3)
  with pytest.raises(ConfigMismatchError, match="holds a run with stacked seeds"):
    _run(
      tmp_path / "stacked", data_config, epochs=2, model=dropout, seed=3, num_seeds=3, sequential_seeds=True
    )


def test_stacked_seeds_resume_bit_identically(tmp_path, data_config):
  uninterrupted = _run(tmp_path / "a", data_config, epochs=3, num_seeds=2)
  _run(tmp_path / "b", data_config, epochs=1, num_seeds=2)
  resumed = _run(tmp_path / "b", data_config, epochs=3, num_seeds=2)
  assert resumed["per_seed"] == uninterrupted["per_seed"]
  assert (
    run_records.read_metrics(str(tmp_path / "b"))[-1]["per_seed"]
    == (run_records.read_metrics(str(tmp_path / "a"))[-1]["per_seed"])
  )
  for a, b in zip(_params(tmp_path / "a"), _params(tmp_path / "b")):
    np.testing.assert_array_equal(a, b)


def test_resume_continues_to_the_same_result(tmp_path, data_config):
  uninterrupted = _run(tmp_path / "a", data_config, epochs=3)
  _run(tmp_path / "b", data_config, epochs=1)  # "stopped" after one epoch...
  resumed = _run(tmp_path / "b", data_config, epochs=3)  # ...and the same command run again
  assert resumed["test"] == uninterrupted["test"]
  assert [r["epoch"] for r in run_records.read_metrics(str(tmp_path / "b"))] == [1, 2, 3]


def test_workdir_of_another_configuration_is_refused(tmp_path, data_config):
  _run(tmp_path, data_config, epochs=1)
  with pytest.raises(ConfigMismatchError, match=r"model\.hidden_size=8 there, 16 now"):
    _run(tmp_path, data_config, epochs=1, model=lambda d: _tiny_model(d, hidden_size=16))


def test_divergence_stops_and_keeps_the_last_good_checkpoint(tmp_path, data_config):
  _run(tmp_path, data_config, epochs=1, optim_config=optim.OptimConfig(optimizer="sgd", learning_rate=0.01))
  good = sorted(os.listdir(tmp_path / "checkpoints"))
  # Same configuration file, so resuming is allowed; then the learning rate explodes.
  config_path = tmp_path / "config.json"
  config = json.load(open(config_path))
  config["optim"]["learning_rate"] = 1e39
  json.dump(config, open(config_path, "w"))
  with pytest.raises(
    TrainingDiverged, match=rf"at step \d+ \(epoch 2\).*last good checkpoint \(step {good[-1]}\)"
  ):
    _run(tmp_path, data_config, epochs=2, optim_config=optim.OptimConfig(optimizer="sgd", learning_rate=1e39))
  assert sorted(os.listdir(tmp_path / "checkpoints")) == good


def test_a_workdir_whose_first_epoch_diverged_accepts_new_settings(tmp_path, data_config):
  with pytest.raises(TrainingDiverged, match="no checkpoint was written yet"):
    _run(tmp_path, data_config, epochs=1, optim_config=optim.OptimConfig(optimizer="sgd", learning_rate=1e39))
  results = _run(tmp_path, data_config, epochs=1)  # the advice followed, same --workdir
  assert np.isfinite(results["test"]["mse"])


def test_plateau_schedule_halves_the_learning_rate_when_dev_mse_stalls(tmp_path, data_config):
  _run(
    tmp_path,
    data_config,
    epochs=8,
    optim_config=optim.OptimConfig(
      optimizer="adam", learning_rate=0.05, lr_schedule="plateau", plateau_patience=1, decay_factor=0.5
    ),
  )
  history = run_records.read_metrics(str(tmp_path))
  scales = [row["learning_rate_scale"] for row in history]  # the scale each epoch trained with
  dev_mse = [row["dev_mse"] for row in history]
  assert scales[0] == 1.0
  for epoch in range(1, len(history)):
    # patience 1: an epoch whose dev MSE is no new best halves the next epoch's rate.
    stalled = dev_mse[epoch - 1] >= min(dev_mse[: epoch - 1], default=float("inf"))
    assert scales[epoch] == scales[epoch - 1] * (0.5 if stalled else 1.0)
  assert min(scales) < 1.0


def test_frozen_embeddings_do_not_move(tmp_path, data_config):
  import dataclasses

  glove_config = dataclasses.replace(data_config, embeddings="glove")
  results = train.train_and_evaluate(
    lambda d: _tiny_model(d, embedding_dim=50, freeze_embeddings=True),
    glove_config,
    optim.OptimConfig(),
    train.TrainConfig(epochs=1, batch_size=32),
    str(tmp_path),
  )
  assert results["data"]["glove_coverage_of_train_vocab"] > 0.9
  state, _, vocab = train.load_trained(str(tmp_path))
  prepared = train.prepare_data(glove_config, seeds=[0], vocab=vocab)
  np.testing.assert_array_equal(
    state.params["encoder"]["embedding"]["embedding"], prepared.embedding_matrices
  )
  # Not frozen: the same run moves them.
  results = train.train_and_evaluate(
    lambda d: _tiny_model(d, embedding_dim=50),
    glove_config,
    optim.OptimConfig(),
    train.TrainConfig(epochs=1, batch_size=32),
    str(tmp_path / "tuned"),
  )
  state, _, _ = train.load_trained(str(tmp_path / "tuned"))
  assert not np.allclose(state.params["encoder"]["embedding"]["embedding"], prepared.embedding_matrices)


MULTI_DEVICE_SCRIPT = r"""
import json, sys
import jax
from simjax import optim, run_records
from simjax.similarity import train
from simjax.similarity.models import ModelConfig
data = train.DataConfig(dataset="stsb", data_dir=sys.argv[1], manual_dir=sys.argv[2], train_split="train[:256]",
                        eval_split="validation[:64]", test_split="test[:64]", max_length=16)
results = train.train_and_evaluate(
  lambda d: ModelConfig(vocab_size=len(d.vocab), embedding_dim=8, hidden_size=8, head="mlp", mlp_hidden=8),
  data, optim.OptimConfig(learning_rate=1e-2), train.TrainConfig(epochs=2, batch_size=32), sys.argv[3])
print(json.dumps({"devices": jax.device_count(), "test": results["test"],
                  "losses": [r["train_mse"] for r in run_records.read_metrics(sys.argv[3])]}))
"""


def test_four_devices_give_the_losses_of_one(prepared, manual_dir, tmp_path):
  import subprocess
  import sys

  outputs = {}
  for devices in (1, 4):
    env = {
      **os.environ,
      "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
      "JAX_PLATFORMS": "cpu",  # the 4 devices are virtual CPU devices, also on a GPU machine
      "PYTHONPATH": REPO,
    }
    done = subprocess.run(
      [
        sys.executable,
        "-c",
        MULTI_DEVICE_SCRIPT,
        prepared("stsb"),
        str(manual_dir),
        str(tmp_path / str(devices)),
      ],
      capture_output=True,
      text=True,
      env=env,
      timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    outputs[devices] = json.loads(done.stdout.strip().splitlines()[-1])
  assert outputs[4]["devices"] == 4
  np.testing.assert_allclose(outputs[4]["losses"], outputs[1]["losses"], rtol=1e-4)
  np.testing.assert_allclose(outputs[4]["test"]["pearson"], outputs[1]["test"]["pearson"], rtol=1e-4)
