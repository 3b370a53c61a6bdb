"""Settings read once: config blocks into frozen, validated dataclasses.

One owner for every default: the dataclass. Each part of the library that a
config steers declares a frozen dataclass whose fields and defaults are the
only place those settings are defined: the root run settings and the dataset
(`advjax.run_settings.RunSettings`), checkpoints, optimisers, each trainer's
block and the blocks it reads (`config.model` where the model registry cannot
check it, `config.sample`, `config.eval`, `config.distill`), adversarial
training and every adversary. Configs (`configs/common.py`) build their
blocks with `to_block(cls, **changes)` and write only what they change; code
never writes a fallback (`config.get(key, default)`).

`from_block(cls, config_block, where)` (or `read(cls, config, where)`, which
finds the block in the root config) reads a block once, at start-up: unknown
fields, values of the wrong type and values out of range are one-line
`UserError`s naming `config.<where>.<field>`; traced code then reads only the
dataclass. A field whose value is itself a block is declared with
`block_field(cls)` and read into `cls` the same way.

Whether a field may change when a run is resumed is metadata on the field:
`extends_run(default, reason)` marks one that only extends or observes the
run (its length, an interval, what evaluation measures); every other field is
part of the run (`advjax.config_changes`). `@register(where)` records which
config path a dataclass reads, so `extending_fields()` lists every such field
by its dotted path.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from typing import Any, Callable, Iterable, TypeVar

import ml_collections

from advjax.errors import UserError

T = TypeVar("T")

EXTENDS_RUN = "extends_run"  # field metadata: why a change only extends
BLOCK = "block"  # field metadata: the dataclass of a nested block

# config path ('' = the root) -> the dataclasses that read the block there.
BLOCKS: dict[str, list[type]] = {}


def extends_run(default: Any, reason: str) -> Any:
  """A dataclass field whose change on resume only extends or observes the
  run (`reason` says how); see `advjax.config_changes`."""
  return dataclasses.field(default=default, metadata={EXTENDS_RUN: reason})


def block_field(cls: type, default_none: bool = False) -> Any:
  """A field holding the nested block `cls` (read with `from_block`);
  `default_none`: absent unless the config gives it."""
  if default_none:
    return dataclasses.field(default=None, metadata={BLOCK: cls})
  return dataclasses.field(default_factory=cls, metadata={BLOCK: cls})


def register(where: str) -> Callable[[type[T]], type[T]]:
  """Class decorator: the dataclass reads the config block at `where`
  (dotted; '' for the root's own fields). Several trainers may register a
  dataclass at the same path (each reads its own `config.eval`)."""
  def add(cls: type[T]) -> type[T]:
    known = BLOCKS.setdefault(where, [])
    if cls not in known:
      known.append(cls)
    return cls
  return add


def _leaves(cls: type, prefix: str = "") -> Iterable[tuple[str, Any]]:
  """(dotted path, field) of every field of `cls`, nested blocks walked."""
  for f in dataclasses.fields(cls):
    if BLOCK in f.metadata:
      yield from _leaves(f.metadata[BLOCK], f"{prefix}{f.name}.")
    else:
      yield prefix + f.name, f


def _registered() -> Iterable[tuple[str, Any]]:
  """(dotted config path, field) of every field of a registered block."""
  for where, classes in BLOCKS.items():
    for cls in classes:
      yield from _leaves(cls, f"{where}." if where else "")


def extending_fields() -> dict[str, str]:
  """{dotted config path: reason} of every registered field marked
  `extends_run` (the modules that declare them must have been imported:
  `advjax.trainers` imports every trainer)."""
  return dict(sorted((path, f.metadata[EXTENDS_RUN])
                     for path, f in _registered()
                     if EXTENDS_RUN in f.metadata))


def registered_defaults() -> dict[str, Any]:
  """{dotted config path: default} of every field of a registered block
  (the first registered where blocks share a path)."""
  out: dict[str, Any] = {}
  for path, f in _registered():
    if f.default is not dataclasses.MISSING:
      out.setdefault(path, f.default)
    elif f.default_factory is not dataclasses.MISSING:
      out.setdefault(path, f.default_factory())
  return out


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
    nested = fields[key].metadata.get(BLOCK)
    if nested is not None:
      kwargs[key] = None if value is None else from_block(
          nested, value, f"{where}.{key}" if where else key)
      continue
    default = fields[key].default
    if default is dataclasses.MISSING and (
        fields[key].default_factory is not dataclasses.MISSING):
      default = fields[key].default_factory()
    kwargs[key] = _coerce(prefix + key, value, default)
  try:
    return cls(**kwargs)
  except UserError as e:
    raise UserError(f"{prefix}{e}") from None


def read(cls: type[T], config: Any, where: str) -> T:
  """`cls` from the block at the dotted path `where` of the root `config`
  (an absent block: the defaults)."""
  block = config
  for key in where.split("."):
    block = block[key] if block is not None and key in block else None
  return from_block(cls, block, where)


def _values(settings: Any) -> dict[str, Any]:
  """The fields of a settings dataclass as a nested dict, leaving out the
  optional blocks it does not give."""
  out = {}
  for f in dataclasses.fields(settings):
    value = getattr(settings, f.name)
    if BLOCK in f.metadata:
      if value is None:
        continue
      value = _values(value)
    out[f.name] = value
  return out


def to_block(settings: Any, **overrides: Any) -> ml_collections.ConfigDict:
  """A config block holding every field of `settings` (a dataclass, or its
  class: then its defaults, with `overrides` checked by the class)."""
  if isinstance(settings, type):
    settings = settings(**overrides)
    overrides = {}
  values = _values(settings)
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
