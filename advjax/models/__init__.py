"""The networks, built by (role, name) from a config (`advjax.models.registry`).

Classifiers (`create_model(config.model, num_classes)`, `config.model.name`
one of `registry.names('classifier')`) are called as
`model.apply(variables, x, train=bool)` and return logits [B, K];
`return_features=True` also returns the pooled penultimate features. GAN
players are built by `gans.create_generator` / `gans.create_discriminator`,
CycleGAN's by `cyclegan.create_generator` / `cyclegan.create_discriminator`,
all through the same registry: a new network is a flax class with a
`@registry.register(role, name)` line in its module, and the module imported
below.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from advjax.models import cnn, cyclegan, densenet, gans, resnet  # noqa: F401 (register)
from advjax.models.registry import MODELS, as_dict, create, register

__all__ = ["MODELS", "create", "create_model", "count_params", "register"]


def create_model(model_config: Any, num_classes: int,
                 axis_name: str | None = None, dtype: Any = jnp.float32):
  """The classifier named by `model_config.name`, configured by its fields.

  `model_config` is a ConfigDict (or dict) such as
  `dict(name='densenet', depth=100, growth_rate=12)`. `num_classes`,
  `axis_name` (the BatchNorm cross-device axis) and `dtype` (compute dtype)
  come from the arguments.
  """
  options = as_dict(model_config)
  name = options.pop("name", None)
  return create("classifier", name, options, num_classes=num_classes,
                axis_name=axis_name, dtype=dtype)


def count_params(params: Any) -> int:
  """Number of scalars in a parameter pytree."""
  return int(sum(np.prod(np.shape(p)) for p in jax.tree.leaves(params)))
