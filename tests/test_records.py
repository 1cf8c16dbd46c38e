"""The record rule (simjax/run.py): a finished run's results.json and data record describe exactly
what was trained and evaluated, and no rerun rewrites them with other settings. On the fake
task of tests/test_run.py, one class of settings at a time: where the data is (free), the data
itself (data.json), what is trained or evaluated (config.json), the run's length (epochs, early
stopping), how it runs (never counts); then eval records and the workdir itself."""

import dataclasses
import json
import os
import re

import pytest

from simjax import errors, optim, run, settings
from simjax.tasks.base import Task
from simjax.tasks.cifar10 import task as cifar10
from simjax.tasks.similarity import task as similarity
from tests.example_task import LinearTask
from tests.test_run import SGD, Scripted, train


def snapshot(workdir):
  """Every record file of `workdir` (and below), by path: its bytes."""
  return {
    os.path.relpath(os.path.join(folder, name), workdir): open(os.path.join(folder, name), "rb").read()
    for folder, _, names in os.walk(workdir)
    if "checkpoints" not in folder and "best" not in folder and "tensorboard" not in folder
    for name in names
    if name.endswith(".json") or name.endswith(".jsonl")
  }


class Described(LinearTask):
  """LinearTask whose data record and evaluation are settings: `data` (what prepare reports) and
  `split` (the evaluated split, as a task's evaluation() names it)."""

  def __init__(self, data=None, split="dev", evaluation_shift=0.0):
    super().__init__(SGD)
    self.data_record, self.split, self.evaluation_shift = data or {"rows": 64}, split, evaluation_shift

  def prepare(self, workdir, config, *, resuming):
    return dataclasses.replace(super().prepare(workdir, config, resuming=resuming), info=self.data_record)

  def evaluation(self):
    return {"dev": self.split}

  def evaluate_trained(self, state, batch_size):
    data = super().prepare("", run.RunConfig(epochs=1, batch_size=batch_size), resuming=True)
    return [{"dev": {"mse": m["mse"] + self.evaluation_shift}} for m in self.evaluate(data, state)], {}


def _load(task):
  return lambda workdir: (
    run.load_trained(workdir, lambda config, _: task)[0],
    {"train": {"seed": 0, "num_seeds": 1}},
    task,
  )


# --------------------------------------------------------------------------------------
# A finished run
# --------------------------------------------------------------------------------------
def test_a_finished_run_rerun_as_asked_returns_its_record_untouched(tmp_path):
  workdir = tmp_path / "run"
  results = train(workdir, epochs=2, num_seeds=2)
  before = snapshot(workdir)
  rows, notes = [], []
  again = run.train_and_evaluate(
    Scripted(),
    # How it runs never counts: more checkpoints kept, another set of flags recorded.
    run.RunConfig(epochs=2, batch_size=16, num_seeds=2, keep_checkpoints=5),
    str(workdir),
    flags={"keep_checkpoints": 5},
    on_epoch=rows.append,
    on_note=notes.append,
  )
  assert again == json.loads(json.dumps(results))  # the record as written, nothing recomputed
  assert snapshot(workdir) == before  # no file rewritten
  assert [row["epoch"] for row in rows] == [1, 2]  # the epochs' table, replayed
  assert notes == [
    f"{workdir} holds this run, finished (2 epochs of epochs=2); its results.json "
    f"(recorded {results['recorded_at']}) stands as it is: nothing to train"
  ]
  assert results["run_settings"]["epochs"] == 2 and results["run_settings"]["num_seeds"] == 2


def test_a_finished_run_is_never_rewritten_with_fewer_epochs(tmp_path):
  workdir = tmp_path / "run"
  train(workdir, epochs=2)
  before = snapshot(workdir)
  with pytest.raises(errors.FinishedRunError) as error:
    train(workdir, epochs=1)
  assert str(error.value) == (
    f"workdir {workdir} holds a finished run (2 epochs of epochs=2); epochs=1 (asked 2 then) would "
    "train nothing more and only rewrite its results"
  )
  assert snapshot(workdir) == before


def test_more_epochs_train_on_and_keep_the_earlier_records(tmp_path):
  workdir = tmp_path / "run"
  train(workdir, epochs=2)
  earlier = snapshot(workdir)
  notes = []
  longer = run.train_and_evaluate(
    Scripted(), run.RunConfig(epochs=3, batch_size=16), str(workdir), on_note=notes.append
  )
  assert longer["epochs"] == 3 and longer["run_settings"]["epochs"] == 3
  kept = workdir / "earlier" / "epochs_2"
  assert notes == [
    f"the run in {workdir} finished after 2 epochs; training on to 3: its records so far are kept in {kept}"
  ]
  assert (kept / "results.json").read_bytes() == earlier["results.json"]  # as it was
  assert (kept / "run_info.json").read_bytes() == earlier["run_info.json"]  # the first start's
  # The same as a 3-epoch run from scratch (a constant schedule).
  assert longer["per_seed"] == train(tmp_path / "three", epochs=3)["per_seed"]


def test_early_stopping_says_so_and_a_stalled_run_is_not_rewritten_by_more_epochs(tmp_path):
  script = {
    0: [3.0, 1.0, 2.0, 2.0, 2.0, 0.5, 2.0, 2.0, 2.0, 2.0],
    1: [4.0, 3.0, 2.0, 2.5, 2.5, 2.5] + [2.5] * 4,
  }
  workdir = tmp_path / "run"
  notes = []
  config = run.RunConfig(epochs=8, batch_size=16, num_seeds=2, early_stop_patience=2)
  early = run.train_and_evaluate(Scripted(script=script), config, str(workdir), on_note=notes.append)
  assert early["epochs"] == 5
  assert notes == ["stopped early after epoch 5 of 8: no seed improved dev score for 2 epochs"]
  before = snapshot(workdir)
  with pytest.raises(errors.FinishedRunError) as error:  # its patience has run out already
    train(workdir, Scripted(script=script), epochs=10, num_seeds=2, early_stop_patience=2)
  assert str(error.value) == (
    f"workdir {workdir} holds a finished run (stopped early after epoch 5 of 8, early_stop_patience=2); "
    "epochs=10 (asked 8 then) with no seed improved for 2 epochs would train nothing more and only "
    "rewrite its results"
  )
  with pytest.raises(errors.FinishedRunError, match=r"early_stop_patience=1 \(asked 2 then\)"):
    train(workdir, Scripted(script=script), epochs=8, num_seeds=2, early_stop_patience=1)
  assert snapshot(workdir) == before


def test_a_run_with_more_epochs_trained_than_asked_is_refused(tmp_path):
  workdir = tmp_path / "run"
  with pytest.raises(KeyboardInterrupt):  # killed in epoch 4: checkpoints of 3 epochs, no results
    train(workdir, Scripted(interrupt_epoch=4), epochs=4)
  with pytest.raises(errors.ConfigError, match="holds a run trained for 3 epochs already: train at least 3"):
    train(workdir, epochs=2)
  assert not (workdir / "results.json").exists()


def test_results_without_checkpoints_are_never_trained_over(tmp_path):
  workdir = tmp_path / "run"
  train(workdir, epochs=1)
  for folder in ("checkpoints", "best"):
    for step in (workdir / folder).iterdir():
      step.rename(tmp_path / f"{folder}_{step.name}")  # a record copied without its checkpoints
  before = snapshot(workdir)
  for asked in ({"epochs": 1}, {"epochs": 1, "batch_size": 32}):  # its own, or others
    with pytest.raises(
      errors.WorkdirError, match="holds the results of a finished run but none of its checkpoints"
    ):
      train(workdir, **asked)
    assert snapshot(workdir) == before


def test_seeds_one_after_another_follow_the_same_rule(tmp_path):
  workdir = tmp_path / "run"
  train(workdir, epochs=2, num_seeds=2, sequential_seeds=True)
  before = snapshot(workdir)
  again = train(workdir, epochs=2, num_seeds=2, sequential_seeds=True)
  assert snapshot(workdir) == before and again["epochs"] == 2
  with pytest.raises(errors.FinishedRunError):
    train(workdir, epochs=1, num_seeds=2, sequential_seeds=True)
  longer = train(workdir, epochs=3, num_seeds=2, sequential_seeds=True)
  assert longer["epochs"] == 3 and longer["run_settings"]["num_seeds"] == 2
  for folder in ("", "seed_0", "seed_1"):
    assert (workdir / folder / "earlier" / "epochs_2" / "results.json").read_bytes() == before[
      os.path.join(folder, "results.json") if folder else "results.json"
    ]


# --------------------------------------------------------------------------------------
# The data record
# --------------------------------------------------------------------------------------
def test_the_data_record_is_the_first_starts_and_other_data_is_refused(tmp_path):
  workdir = tmp_path / "run"
  record = {"rows": 64, "splits": {"test": "test[:800]"}, "leakage": {"removed": 216}, "data_dir": "/a"}
  with pytest.raises(KeyboardInterrupt):
    train(workdir, _interrupted(Described(record), epoch=2), epochs=3)
  assert json.loads((workdir / "data.json").read_text()) == record
  # The data somewhere else (a location: its record says by checksum what it is): resumed.
  moved = {**record, "data_dir": "/b"}
  results = train(workdir, Described(moved), epochs=3)
  assert results["data"] == record  # what the run trained on from its first epoch
  # Another test split (so another leakage removal): refused, on a finished run too.
  other = {**record, "splits": {"test": "test"}, "leakage": {"removed": 248}}
  before = snapshot(workdir)
  with pytest.raises(errors.DataMismatchError) as error:
    train(workdir, Described(other), epochs=3)
  assert error.value.differences == [
    "leakage.removed=216 there, 248 now",
    "splits.test='test[:800]' there, 'test' now",
  ]
  assert snapshot(workdir) == before


def _interrupted(task, epoch):
  original = task.epoch_plan

  def epoch_plan(data, e):
    if e == epoch:
      raise KeyboardInterrupt
    return original(data, e)

  task.epoch_plan = epoch_plan
  return task


# --------------------------------------------------------------------------------------
# What each task's config.json guards
# --------------------------------------------------------------------------------------
def test_only_where_the_data_is_may_change_between_runs_of_a_workdir():
  assert similarity.SimilarityTask.free_data_fields == ("data_dir", "manual_dir")
  assert cifar10.Cifar10Task.free_data_fields == ("data_dir", "cache_dir")


def _similarity_config(**data):
  task = similarity.SimilarityTask(lambda _: None, similarity.DataConfig(**data), optim.OptimConfig())
  task.model = similarity.ModelConfig(vocab_size=10)
  return task.run_config()


def _cifar_config(**data):
  return cifar10.Cifar10Task(
    cifar10.ModelConfig(), cifar10.DataConfig(**data), optim.OptimConfig()
  ).run_config()


@pytest.mark.parametrize(
  "config, setting, value",
  [
    (_similarity_config, "test_split", "test[:800]"),  # what the final numbers are of
    (_similarity_config, "eval_split", "validation[:64]"),  # what picks the best epoch
    (_cifar_config, "eval_split", "train[:1000]"),
    (_cifar_config, "tta", "flip"),
    (_cifar_config, "tta_each_epoch", False),
  ],
)
def test_what_the_record_says_is_in_config_json_and_where_the_data_is_is_not(config, setting, value):
  default = config()
  assert config(**{setting: value})["data"][setting] == value  # guarded
  # Workdirs written before these settings were guarded lack them: at their defaults, the same config.
  assert setting not in default["data"] or setting == "eval_split" and config is _similarity_config
  assert config(data_dir="/elsewhere") == default


@dataclasses.dataclass(frozen=True)
class SplitData:
  rows: int = 64
  test_split: str = settings.setting("test", "The test split.", added_later=True)


@dataclasses.dataclass(frozen=True)
class NoModel:
  pass


class WithTestSplit(LinearTask):
  """LinearTask with a data setting guarded since a later version (as test_split is)."""

  run_config = Task.run_config  # the base class's, which leaves such settings out at their defaults

  def __init__(self, test_split="test"):
    super().__init__(SGD)
    self.model, self.data = NoModel(), SplitData(test_split=test_split)


def _train_split(workdir, test_split):
  return run.train_and_evaluate(
    WithTestSplit(test_split),
    run.RunConfig(epochs=1, batch_size=16),
    str(workdir),
    flags={"test_split": test_split},
  )


def test_a_workdir_from_before_a_setting_counted_is_guarded_by_what_its_run_recorded(tmp_path):
  default, sliced = tmp_path / "default", tmp_path / "sliced"
  _train_split(default, "test")
  assert "test_split" not in json.loads((default / "config.json").read_text())["data"]
  _train_split(default, "test")  # its own settings: no difference found
  with pytest.raises(
    errors.ConfigMismatchError, match=r"data\.test_split=its default there, 'test\[:8\]' now"
  ):
    _train_split(default, "test[:8]")
  _train_split(sliced, "test[:8]")
  config = json.loads((sliced / "config.json").read_text())
  assert config["data"]["test_split"] == "test[:8]"
  del config["data"]["test_split"]  # as a workdir written before test_split counted has it
  (sliced / "config.json").write_text(json.dumps(config))
  _train_split(sliced, "test[:8]")  # its own: the flags it recorded say so
  with pytest.raises(errors.ConfigMismatchError) as error:
    _train_split(sliced, "test")
  assert error.value.differences == ["data.test_split='test[:8]' there, its default now"]


# --------------------------------------------------------------------------------------
# Eval records
# --------------------------------------------------------------------------------------
def test_an_evaluation_another_way_writes_a_record_of_its_own(tmp_path):
  workdir = tmp_path / "run"
  run.train_and_evaluate(Described(split="dev"), run.RunConfig(epochs=1, batch_size=16), str(workdir))
  assert json.loads((workdir / "results.json").read_text())["evaluation"] == {"dev": "dev"}
  own, _ = run.evaluate_trained(str(workdir), _load(Described(split="dev")), 16)
  assert json.loads((workdir / "eval.json").read_text())["evaluation"] == {"dev": "dev"}
  other, _ = run.evaluate_trained(str(workdir), _load(Described(split="train[:32]")), 16)
  assert json.loads((workdir / "eval_dev-train_32.json").read_text())["evaluation"] == {"dev": "train[:32]"}
  assert json.loads((workdir / "eval.json").read_text())["evaluation"] == {"dev": "dev"}  # untouched
  # The same evaluation again replaces its own record only.
  run.evaluate_trained(str(workdir), _load(Described(split="train[:32]", evaluation_shift=1.0)), 16)
  assert json.loads((workdir / "eval_dev-train_32.json").read_text())["dev"]["mse"] == pytest.approx(
    other["dev"]["mse"] + 1.0
  )
  assert json.loads((workdir / "eval.json").read_text())["dev"] == own["dev"]
  # A name that another evaluation holds (two settings that sanitise alike) is refused.
  with pytest.raises(
    errors.WorkdirError, match=r"eval_dev-train_32.json holds an evaluation with other settings"
  ):
    run.evaluate_trained(str(workdir), _load(Described(split="train_32")), 16)


def test_a_damaged_record_is_one_error_naming_it_and_is_kept(tmp_path):
  workdir = tmp_path / "run"
  train(workdir, epochs=1)
  (workdir / "results.json").write_text('{"epochs": 1, "per_')  # cut short
  with pytest.raises(errors.WorkdirError, match=r"results\.json is not a readable record \(.*\): restore it"):
    train(workdir, epochs=2)
  assert (workdir / "results.json").read_text() == '{"epochs": 1, "per_'


def test_a_workdir_that_is_a_file_is_one_clear_error(tmp_path):
  path = tmp_path / "file"
  path.write_text("not a workdir")
  with pytest.raises(errors.WorkdirError, match=re.escape(f"workdir {path} is a file, not a folder")):
    train(path)
  with pytest.raises(errors.WorkdirError, match=re.escape(f"workdir {path} is a file, not a folder")):
    run.evaluate_trained(str(path), _load(Described()), 16)
  assert path.read_text() == "not a workdir"
