"""Every network of the library, found by (role, name) from a config.

Roles: 'classifier' (`config.model.name`), 'generator' and 'discriminator'
(the two players of a GAN or a CycleGAN, `config.model.name` naming the
family). A model module registers its flax classes with

    @register("classifier", "cnn")
    class SmallCNN(nn.Module): ...

and `create(role, name, options, **managed)` builds one: `options` (from the
config) may set any field of the class except the managed ones, which come
from the caller (`num_classes`, `image_shape`, `axis_name`, `dtype`, ...) and
are passed only to classes that have them. Adding a network is one class and
one `register` line.
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any, Callable, Mapping

import ml_collections

from advjax.errors import UserError

ROLES = ("classifier", "generator", "discriminator")

# (role, name) -> flax Module class.
MODELS: dict[tuple[str, str], type] = {}


def register(role: str, name: str) -> Callable[[type], type]:
  """Class decorator: `create(role, name, ...)` builds the class."""
  if role not in ROLES:
    raise ValueError(f"model role '{role}' is not one of {ROLES}")

  def add(cls: type) -> type:
    known = MODELS.get((role, name))
    if known is not None and known is not cls:
      raise ValueError(f"{role} model '{name}' is already registered to "
                       f"{known.__name__}")
    MODELS[(role, name)] = cls
    return cls
  return add


def names(role: str) -> list[str]:
  """The registered names of `role`."""
  return sorted(n for r, n in MODELS if r == role)


def as_dict(options: Any) -> dict[str, Any]:
  """A config block (ConfigDict, dict or None) as a plain dict."""
  if options is None:
    return {}
  if isinstance(options, ml_collections.ConfigDict):
    return options.to_dict()
  return dict(options)


def options_of(cls: type) -> list[str]:
  """Fields of a flax module class a config may set."""
  return sorted({f.name for f in dataclasses.fields(cls)}
                - {"parent", "name"})


def create(role: str, name: str, options: Mapping[str, Any] | None = None,
           **managed: Any):
  """The `role` network registered as `name`, configured by `options`.

  List values become tuples (modules must stay hashable). Each managed
  keyword is passed when the class has that field; `options` may not set
  one. Unknown names and options are one-line `UserError`s.
  """
  cls = MODELS.get((role, name))
  if cls is None:
    close = difflib.get_close_matches(str(name), names(role), n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    raise UserError(f"unknown {role} model {name!r}; {hint}choose one of "
                    f"{names(role)}")
  fields = options_of(cls)
  settable = sorted(set(fields) - set(managed))
  kwargs = as_dict(options)
  for key in kwargs:
    if key not in settable:
      raise UserError(f"{role} model '{name}' ({cls.__name__}) has no option "
                      f"'{key}'; its options are {settable}")
  kwargs = {k: (tuple(v) if isinstance(v, list) else v)
            for k, v in kwargs.items()}
  kwargs.update({k: v for k, v in managed.items() if k in fields})
  return cls(**kwargs)
