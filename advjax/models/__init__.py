"""Classifier models, built by name from a config.

`create_model(config.model, num_classes)` with `config.model.name` one of
`MODELS` and the other fields passed to the module as keyword arguments.
Every model is called as `model.apply(variables, x, train=bool)` and returns
logits ([B, num_classes]); `return_features=True` also returns the pooled
penultimate features.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import ml_collections

from advjax.errors import UserError
from advjax.models.cnn import SmallCNN
from advjax.models.densenet import DenseNet

# name -> flax Module class. Other model families (e.g. GAN generators and
# critics) add themselves with `register_model`.
MODELS: dict[str, type] = {
    "cnn": SmallCNN,
    "densenet": DenseNet,
}

# Fields set by `create_model`'s arguments rather than by the config.
_MANAGED_FIELDS = ("num_classes", "axis_name", "dtype")


def register_model(name: str, cls: type) -> None:
  """Makes `create_model` build `cls` for `config.model.name == name`."""
  if name in MODELS and MODELS[name] is not cls:
    raise ValueError(f"model name '{name}' is already registered to "
                     f"{MODELS[name].__name__}")
  MODELS[name] = cls


def _config_fields(cls) -> set[str]:
  return {f.name for f in dataclasses.fields(cls)} - {"parent", "name"}


def create_model(model_config: Any, num_classes: int,
                 axis_name: str | None = None, dtype: Any = jnp.float32):
  """The flax module named by `model_config.name`, configured by its fields.

  `model_config` is a ConfigDict (or dict) such as
  `dict(name='densenet', depth=100, growth_rate=12)`; list values become
  tuples so the module stays hashable. `num_classes`, `axis_name` (the
  BatchNorm cross-device axis) and `dtype` (compute dtype) come from the
  arguments, for modules that have those fields.
  """
  if isinstance(model_config, ml_collections.ConfigDict):
    kwargs = model_config.to_dict()
  else:
    kwargs = dict(model_config)
  name = kwargs.pop("name", None)
  if name not in MODELS:
    raise UserError(f"unknown model.name {name!r}; choose one of "
                    f"{sorted(MODELS)}")
  cls = MODELS[name]
  fields = _config_fields(cls)
  settable = fields - set(_MANAGED_FIELDS)
  for key in kwargs:
    if key not in settable:
      raise UserError(f"model '{name}' has no option '{key}'; its options "
                      f"are {sorted(settable)}")
  kwargs = {k: (tuple(v) if isinstance(v, list) else v)
            for k, v in kwargs.items()}
  managed = dict(num_classes=num_classes, axis_name=axis_name, dtype=dtype)
  kwargs.update({k: v for k, v in managed.items() if k in fields})
  return cls(**kwargs)


def count_params(params: Any) -> int:
  """Number of scalars in a parameter pytree."""
  return int(sum(np.prod(np.shape(p)) for p in jax.tree.leaves(params)))
