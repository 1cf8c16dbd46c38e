import json
import os

import jax
import numpy as np
import pytest

from simjax import errors, optim, run, run_records
from tests.multi_device import run_on_devices
from tests.stop_at import StopAt
from simjax.tasks.similarity import task as train
from simjax.tasks.similarity.models import ModelConfig


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
    max_length=8,  # one length bucket, so one program per step to compile
  )


def _run(
  workdir,
  data_config,
  *,
  epochs=3,
  optim_config=None,
  model=_tiny_model,
  seed=0,
  batch_size=32,
  stop=None,
  **train_settings,
):
  config = train.TrainConfig(epochs=epochs, batch_size=batch_size, seed=seed, **train_settings)
  optim_config = optim_config or optim.OptimConfig(optimizer="adam", learning_rate=3e-3)
  task = train.SimilarityTask(model, data_config, optim_config, **config.task_settings)
  return run.train_and_evaluate(task, config, str(workdir), stop=stop)


def test_loss_goes_down_and_outputs_are_written_and_a_stopped_run_resumes_bit_identical(
  tmp_path, data_config
):
  results = _run(tmp_path, data_config, epochs=4, optim_config=optim.OptimConfig(learning_rate=1e-2))
  # Stopped in the middle of epoch 2 (8 steps per epoch; as a SIGTERM would), then rerun.
  stopped = tmp_path / "stopped"
  with pytest.raises(errors.Preempted, match="in epoch 2 after 3 of its steps"):
    _run(stopped, data_config, epochs=4, optim_config=optim.OptimConfig(learning_rate=1e-2), stop=StopAt(11))
  resumed = _run(stopped, data_config, epochs=4, optim_config=optim.OptimConfig(learning_rate=1e-2))
  assert (resumed["dev"], resumed["test"]) == (results["dev"], results["test"])
  drop = lambda rows: [{k: v for k, v in r.items() if "seconds" not in k} for r in rows]
  assert drop(run_records.read_metrics(str(stopped))) == drop(run_records.read_metrics(str(tmp_path)))

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


def test_stacked_seeds_train_like_single_runs_and_are_summarized(tmp_path, data_config):
  dropout = lambda d: _tiny_model(d, num_layers=2, dropout=0.3)  # per-seed dropout keys matter too
  stacked = _run(tmp_path / "stacked", data_config, epochs=2, model=dropout, seed=3, num_seeds=2)
  # The same seeds one after another: each trains alone, as a one-seed run of its own would.
  singles = _run(
    tmp_path / "singles", data_config, epochs=2, model=dropout, seed=3, num_seeds=2, sequential_seeds=True
  )
  assert stacked["seeds"] == singles["seeds"] == [3, 4]
  # Replica r is seed 3 + r: the same numbers as its own run, up to float summation order.
  for replica, single in zip(stacked["per_seed"], singles["per_seed"]):
    for split in ("dev", "test"):
      assert replica[split] == pytest.approx(single[split], rel=1e-4, abs=1e-5)
    assert replica["best_epoch"] == single["best_epoch"]
  rows = run_records.read_metrics(str(tmp_path / "stacked"))
  single_rows = run_records.read_metrics(str(tmp_path / "singles"))
  for r in range(2):
    got = [row["per_seed"]["train_mse"][r] for row in rows]
    assert got == pytest.approx([row["per_seed"]["train_mse"][r] for row in single_rows], rel=1e-4)
  # Seeds differ from each other, and the summary is their statistics.
  pearsons = [r["test"]["pearson"] for r in stacked["per_seed"]]
  assert len(set(pearsons)) == 2
  summary = stacked["summary"]["test.pearson"]
  assert summary["n"] == 2
  assert summary["mean"] == pytest.approx(np.mean(pearsons))
  assert summary["std"] == pytest.approx(np.std(pearsons, ddof=1))
  assert (summary["min"], summary["max"]) == (min(pearsons), max(pearsons))
  assert stacked["test"]["pearson"] == pytest.approx(np.mean(pearsons))
  assert json.load(open(tmp_path / "stacked" / "results.json"))["summary"] == stacked["summary"]
  # The same seed gives bit-identical numbers: tests/experiments/test_main.py (a killed and resumed run).


def test_a_batch_larger_than_the_train_split_is_refused_before_any_work(tmp_path, data_config):
  with pytest.raises(errors.ConfigError, match="batch size 100000 is larger than the 256 sentence pairs"):
    _run(tmp_path / "run", data_config, batch_size=100_000)
  assert not (tmp_path / "run").exists()


def test_frozen_embeddings_do_not_move(tmp_path, data_config):
  import dataclasses

  glove_config = dataclasses.replace(data_config, embeddings="glove")
  results = _run(
    tmp_path,
    glove_config,
    epochs=1,
    optim_config=optim.OptimConfig(),
    model=lambda d: _tiny_model(d, embedding_dim=50, freeze_embeddings=True),
    num_seeds=2,  # each seed's own noise rows for words GloVe lacks
  )
  assert results["data"]["glove_coverage_of_train_vocab"] > 0.9
  state, _, task = train.load_trained(str(tmp_path))
  prepared = train.prepare_data(glove_config, seeds=[0, 1], vocab=task.vocab)
  np.testing.assert_array_equal(
    state.params["encoder"]["embedding"]["embedding"], prepared.embedding_matrices
  )
  # Not frozen: the same run moves them.
  results = _run(
    tmp_path / "tuned",
    glove_config,
    epochs=1,
    optim_config=optim.OptimConfig(),
    model=lambda d: _tiny_model(d, embedding_dim=50),
  )
  state, _, _ = train.load_trained(str(tmp_path / "tuned"))
  assert not np.allclose(state.params["encoder"]["embedding"]["embedding"], prepared.embedding_matrices)


def train_tiny(data_dir: str, manual_dir: str, workdir: str) -> dict:
  """A tiny run on this process's devices (tests.multi_device runs it on 1 and on 4)."""
  data = train.DataConfig(
    dataset="stsb",
    data_dir=data_dir,
    manual_dir=manual_dir,
    train_split="train[:256]",
    eval_split="validation[:64]",
    test_split="test[:64]",
    max_length=8,
  )
  task = train.SimilarityTask(_tiny_model, data, optim.OptimConfig(learning_rate=1e-2))
  results = run.train_and_evaluate(task, train.TrainConfig(epochs=2, batch_size=32), workdir)
  losses = [r["train_mse"] for r in run_records.read_metrics(workdir)]
  # Eval and predict from the workdir, on the same devices (the state is restored onto one).
  state, _, loaded = train.load_trained(
    workdir, data_dir=data_dir, manual_dir=manual_dir, test_split="test[:64]"
  )
  evaluated, _ = loaded.evaluate_trained(state, 32)
  return {"devices": jax.device_count(), "test": results["test"], "losses": losses, "eval": evaluated[0]}


def test_four_devices_give_the_losses_of_one(prepared, manual_dir, tmp_path):
  data_dir = prepared("stsb")
  outputs = {
    devices: run_on_devices(train_tiny, devices, data_dir, str(manual_dir), str(tmp_path / str(devices)))
    for devices in (1, 4)
  }
  assert outputs[4]["devices"] == 4
  np.testing.assert_allclose(outputs[4]["losses"], outputs[1]["losses"], rtol=1e-4)
  np.testing.assert_allclose(outputs[4]["test"]["pearson"], outputs[1]["test"]["pearson"], rtol=1e-4)
  for devices in (1, 4):  # a model evaluated from its workdir scores what its training reported
    np.testing.assert_allclose(
      outputs[devices]["eval"]["test"]["pearson"], outputs[devices]["test"]["pearson"], rtol=1e-5
    )


def test_a_step_too_large_for_the_device_is_refused_before_training_naming_a_batch_that_fits(
  tmp_path, data_config, monkeypatch
):
  from simjax import deviceless, replicas, sharding

  # An accelerator whose memory holds the train step at batch size 8, not at 32 (the check runs
  # on accelerators only). The step at the data's longest bucket is the largest.
  model = ModelConfig(vocab_size=64, embedding_dim=8, hidden_size=8, head="mlp", mlp_hidden=8)

  def needs(batch_size):
    listed = train.programs(
      sharding.data_mesh(), model, optim.OptimConfig(), batch_size=batch_size, num_seeds=1, max_length=8
    )
    return deviceless.needs(deviceless.compile(next(p for p in listed if p.name == "train_step")))

  assert needs(8) < needs(16) < needs(32)
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  monkeypatch.setattr(replicas, "device_memory_bytes", lambda: (needs(8) + needs(16)) // 2)
  with pytest.raises(errors.ProgramTooLarge, match=r"train_step program at batch size 32 .* batch size 8 fits"):
    _run(tmp_path, data_config, epochs=1, model=lambda data: model, optim_config=optim.OptimConfig())
  assert not (tmp_path / "metrics.jsonl").exists() and not (tmp_path / "results.json").exists()
