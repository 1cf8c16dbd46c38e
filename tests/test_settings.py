"""Settings declared once (simjax.settings): the declaration is the validation, the record in
config.json, and (through experiments/cli_flags.py) the command line's flag."""

from __future__ import annotations

import dataclasses
import math

import pytest
from absl import flags

import experiments.main  # noqa: F401  (defines the command line's flags)
from experiments import cli_flags
from simjax import errors, optim, settings
from simjax.run_config import RunConfig
from simjax.tasks.cifar10 import models as cifar10_models
from simjax.tasks.cifar10 import input_pipeline, task as cifar10
from simjax.tasks.similarity import models as similarity_models, task as similarity


@dataclasses.dataclass(frozen=True)
class Inner:
  size: int = settings.setting(3, "A size.", lower=1)
  extra: bool = settings.setting(False, "Added later.", added_later=True)

  def __post_init__(self):
    settings.validate(self)


@dataclasses.dataclass(frozen=True)
class Toy:
  kind: str = settings.setting("a", "The kind.", choices=("a", "b"))
  rate: float = settings.setting(0.5, "A rate.", lower=0.0, upper=1.0)
  names: tuple[str, ...] = settings.setting((), "Names.", added_later=True)
  path: str | None = settings.setting(None, "A path.")
  inner: Inner = Inner()
  plain: int = 7  # not a declared setting: no flag, no check

  def __post_init__(self):
    settings.validate(self)


@pytest.mark.parametrize(
  "bad, message",
  [
    ({"kind": "c"}, "kind must be one of a, b; got 'c'"),
    ({"rate": 1.5}, r"rate must be in \[0.0, 1.0\], got 1.5"),
    ({"rate": math.nan}, r"rate must be in \[0.0, 1.0\], got nan"),
  ],
)
def test_a_value_outside_its_declaration_is_refused_naming_the_setting(bad, message):
  with pytest.raises(errors.ConfigError, match=message) as e:
    Toy(**bad)
  assert e.value.settings == tuple(bad)
  with pytest.raises(errors.ConfigError, match="size must be >= 1, got 0"):
    Inner(size=0)


def test_settings_added_later_are_recorded_only_away_from_their_defaults_nested_too():
  assert settings.added_later(Toy) == ("names",)
  assert settings.recorded(Toy()) == {
    "kind": "a",
    "rate": 0.5,
    "path": None,
    "inner": {"size": 3},
    "plain": 7,
  }
  changed = settings.recorded(Toy(names=("x",), inner=Inner(extra=True)))
  assert changed["names"] == ("x",) and changed["inner"] == {"size": 3, "extra": True}


def test_the_flags_are_the_declarations():
  values = flags.FlagValues()
  cli_flags.define_settings(Toy, skip=("path",), flag_values=values)
  assert sorted(values) == ["kind", "names", "rate"]  # declared and not skipped only
  assert values["kind"].parser.enum_values == ["a", "b"] and values["kind"].help.endswith("The kind.")
  values(["prog", "--kind=b", "--rate=0.25", "--names=x,y"])
  assert (values.kind, values.rate, values.names) == ("b", 0.25, ["x", "y"])
  with pytest.raises(flags.IllegalFlagValueError):
    values["rate"].parse("2")  # the declaration's bounds, at parse time


@pytest.mark.parametrize(
  "config_class",
  [
    RunConfig,
    optim.OptimConfig,
    similarity.DataConfig,
    similarity_models.ModelConfig,
    similarity.TrainConfig,
    cifar10.DataConfig,
    cifar10_models.ModelConfig,
    cifar10.TrainConfig,
    input_pipeline.Augmentation,
  ],
)
def test_every_declared_library_setting_is_a_flag_of_the_command_line_with_its_default(config_class):
  for field, spec in settings.declared(config_class):
    if field.name == "eval_split":  # every task's flag, its default per task
      continue
    flag = flags.FLAGS[field.name]
    default = list(field.default) if isinstance(field.default, tuple) else field.default
    assert flag.help.endswith(spec.help), field.name
    if field.name not in TASK_DEFAULTS:
      assert flag.default == default, field.name


# A task's TrainConfig may give a shared setting another default for library use (the flagfiles
# set them for the command line); the declaration, bounds and help stay RunConfig's.
TASK_DEFAULTS = ("epochs", "batch_size")


def test_a_subclass_that_changes_a_default_keeps_the_declaration():
  assert cifar10.TrainConfig().epochs == 30
  with pytest.raises(errors.ConfigError, match="epochs must be >= 1, got 0"):
    cifar10.TrainConfig(epochs=0)
