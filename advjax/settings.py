"""Settings read once: config blocks into frozen, validated dataclasses.

Each part of the library that a config steers (an optimiser, a trainer, an
attack) declares a frozen dataclass whose fields and defaults are the only
place those settings are defined. `from_block(cls, config_block, where)`
reads a config block into it once, at start-up: unknown fields, values of the
wrong type and values out of range are one-line `UserError`s naming
`config.<where>.<field>`; traced code then reads only the dataclass.
`to_block(settings)` turns one back into a ConfigDict block (what
`configs/common.py` uses, so configs start from these defaults).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from typing import Any, Iterable, TypeVar

import ml_collections

from advjax.errors import UserError

T = TypeVar("T")


def plain(block: Any) -> dict[str, Any]:
  """A config block (ConfigDict, dict, dataclass or None) as a dict."""
  if block is None:
    return {}
  if isinstance(block, ml_collections.ConfigDict):
    return block.to_dict()
  if dataclasses.is_dataclass(block):
    return dataclasses.asdict(block)
  return dict(block)


def _coerce(name: str, value: Any, default: Any) -> Any:
  """`value` as the type of the field's default."""
  if isinstance(default, bool):
    if isinstance(value, bool):
      return value
  elif isinstance(default, int):
    if isinstance(value, (int, float)) and not isinstance(value, bool) and (
        float(value) == int(value)):
      return int(value)
  elif isinstance(default, float):
    if isinstance(value, (int, float)) and not isinstance(value, bool):
      return float(value)
  elif isinstance(default, str):
    if isinstance(value, str):
      return value
  elif isinstance(default, tuple):
    if isinstance(value, (tuple, list)):
      return tuple(value)
  else:
    return value
  kind = type(default).__name__
  raise UserError(f"{name} must be a {kind}, got {value!r}")


def from_block(cls: type[T], block: Any, where: str, **overrides: Any) -> T:
  """`cls` from the config block `block` (ConfigDict, dict or None).

  Fields the block leaves out keep their defaults; `overrides` win over the
  block. A wrong field name, type or value is a `UserError` naming
  `config.<where>.<field>`.
  """
  fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
  prefix = f"config.{where}." if where else "config."
  given = dict(plain(block), **overrides)
  unknown = sorted(set(given) - set(fields))
  if unknown:
    close = difflib.get_close_matches(unknown[0], list(fields), n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    raise UserError(f"{prefix.rstrip('.')} has no field '{unknown[0]}'{hint}; "
                    f"its fields are {sorted(fields)}")
  kwargs = {}
  for key, value in given.items():
    default = fields[key].default
    if default is dataclasses.MISSING and (
        fields[key].default_factory is not dataclasses.MISSING):
      default = fields[key].default_factory()
    kwargs[key] = _coerce(prefix + key, value, default)
  try:
    return cls(**kwargs)
  except UserError as e:
    raise UserError(f"{prefix}{e}") from None


def to_block(settings: Any, **overrides: Any) -> ml_collections.ConfigDict:
  """A config block holding every field of `settings` (a dataclass or its
  class: then its defaults), with `overrides`."""
  if isinstance(settings, type):
    settings = settings()
  values = dataclasses.asdict(settings)
  values.update(overrides)
  return ml_collections.ConfigDict(values)


# Checks for `__post_init__`: each raises a UserError "<field> ..." that
# `from_block` prefixes with "config.<where>.".


def _value(obj: Any, name: str) -> Any:
  return getattr(obj, name)


def check_choice(obj: Any, name: str, choices: Iterable[str]) -> None:
  value, choices = _value(obj, name), list(choices)
  if value not in choices:
    close = difflib.get_close_matches(str(value), choices, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    raise UserError(f"{name} {value!r} is not one of {choices}{hint}")


def _finite(name: str, value: Any) -> None:
  if isinstance(value, float) and not math.isfinite(value):
    raise UserError(f"{name} must be a finite number, got {value}")


def check_positive(obj: Any, *names: str) -> None:
  for name in names:
    value = _value(obj, name)
    _finite(name, value)
    if not value > 0:
      raise UserError(f"{name} must be > 0, got {value}")


def check_nonnegative(obj: Any, *names: str) -> None:
  for name in names:
    value = _value(obj, name)
    _finite(name, value)
    if not value >= 0:
      raise UserError(f"{name} must be >= 0, got {value}")


def check_in_unit_interval(obj: Any, *names: str) -> None:
  for name in names:
    value = _value(obj, name)
    _finite(name, value)
    if not 0 <= value <= 1:
      raise UserError(f"{name} must lie in [0, 1], got {value}")
