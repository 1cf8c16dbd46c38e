"""Settings declared once. A config dataclass's field made with `setting(...)` carries its help,
its choices, its bounds and whether workdirs written before it lack it; the command line's
flags (experiments/), the validation (`validate`) and config.json's record (`recorded`) all read
that one declaration.

  @dataclasses.dataclass(frozen=True)
  class OptimConfig:
    optimizer: str = setting("adam", "Optimizer.", choices=OPTIMIZERS)
    momentum: float = setting(0.9, "Momentum.", lower=0.0)

    def __post_init__(self):
      validate(self)  # choices and bounds; rules between settings follow here
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

from simjax.errors import ConfigError

_KEY = "simjax.setting"


@dataclasses.dataclass(frozen=True)
class Spec:
  """What a setting's declaration says besides its default."""

  help: str
  choices: tuple[Any, ...] | None = None
  lower: float | None = None  # inclusive
  upper: float | None = None  # inclusive
  #: Workdirs written before the setting existed lack it in config.json: it is recorded there
  #: only when it differs from its default, so they still resume (their runs had the default).
  added_later: bool = False


def setting(
  default: Any,
  help: str,
  *,
  choices: Sequence[Any] | None = None,
  lower: float | None = None,
  upper: float | None = None,
  added_later: bool = False,
) -> Any:
  """A dataclass field declaring a setting (its default must be hashable, as frozen fields are)."""
  spec = Spec(help, tuple(choices) if choices is not None else None, lower, upper, added_later)
  return dataclasses.field(default=default, metadata={_KEY: spec})


def spec_of(field: dataclasses.Field) -> Spec | None:
  """The field's declaration; None for a field not made with `setting`."""
  return field.metadata.get(_KEY)


def declared(config_class: type) -> list[tuple[dataclasses.Field, Spec]]:
  """The declared settings of a config dataclass, in field order. A subclass may give a
  setting another default (`epochs: int = 30`): the declaration stays its base class's."""
  found = []
  for field in dataclasses.fields(config_class):
    specs = (
      spec_of(base.__dataclass_fields__[field.name])
      for base in config_class.__mro__
      if field.name in getattr(base, "__dataclass_fields__", {})
    )
    spec = next((s for s in specs if s is not None), None)
    if spec is not None:
      found.append((field, spec))
  return found


def validate(config: Any) -> None:
  """Raise ConfigError (naming the setting) for a value outside its choices or bounds."""
  for field, spec in declared(type(config)):
    value = getattr(config, field.name)
    if value is None:
      continue
    if spec.choices is not None and value not in spec.choices:
      raise ConfigError(
        f"{field.name} must be one of {', '.join(map(str, spec.choices))}; got {value!r}",
        settings=(field.name,),
      )
    below = spec.lower is not None and not value >= spec.lower  # NaN is outside any bound
    above = spec.upper is not None and not value <= spec.upper
    if below or above:
      if spec.upper is None:
        wanted = f">= {spec.lower}"
      elif spec.lower is None:
        wanted = f"<= {spec.upper}"
      else:
        wanted = f"in [{spec.lower}, {spec.upper}]"
      raise ConfigError(f"{field.name} must be {wanted}, got {value}", settings=(field.name,))


def added_later(config_class: type) -> tuple[str, ...]:
  """Names of the settings older workdirs lack (see Spec.added_later)."""
  return tuple(field.name for field, spec in declared(config_class) if spec.added_later)


def recorded(config: Any) -> dict[str, Any]:
  """The config as config.json records it: `dataclasses.asdict`, less the settings added later
  that are at their defaults (in nested config dataclasses too)."""
  record = dataclasses.asdict(config)
  _drop_added_later_defaults(config, record)
  return record


def _drop_added_later_defaults(config: Any, record: dict[str, Any]) -> None:
  specs = {field.name: spec for field, spec in declared(type(config))}
  for field in dataclasses.fields(config):
    value = getattr(config, field.name)
    spec = specs.get(field.name)
    if spec is not None and spec.added_later and value == field.default:
      del record[field.name]
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
      _drop_added_later_defaults(value, record[field.name])
