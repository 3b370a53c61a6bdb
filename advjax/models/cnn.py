"""A small convolutional classifier for quick runs (the quickstart).

A VGG-style stack (Simonyan & Zisserman 2015: stages of 3x3 conv, then a
2x2 max-pool) with BatchNorm (Ioffe & Szegedy 2015) after every conv.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from advjax.errors import UserError
from advjax.example_rng import ExampleDropout
from advjax.models.conv import Conv
from advjax.models.pooling import max_pool
from advjax.models.registry import register

_he_normal = nn.initializers.variance_scaling(2.0, "fan_in", "normal")


@register("classifier", "cnn")
class SmallCNN(nn.Module):
  """Stages of (conv-BN-ReLU) x convs_per_stage + max-pool, then a hidden
  dense layer.

  468,010 parameters at the default widths with 28x28x1 inputs and 10
  classes (most of them in the hidden layer); sized for the Fashion-MNIST
  quickstart on a CPU. `features` are the hidden-layer activations.
  """
  num_classes: int
  widths: Sequence[int] = (32, 64)
  convs_per_stage: int = 2
  hidden: int = 128
  dropout_rate: float = 0.0
  axis_name: str | None = None
  dtype: Any = jnp.float32

  def __post_init__(self):
    if (not self.widths or min(self.widths) < 1 or self.hidden < 1
        or self.convs_per_stage < 1):
      raise UserError(f"SmallCNN needs non-empty positive widths and hidden "
                      f"size, not widths={self.widths}, hidden={self.hidden}")
    super().__post_init__()

  @nn.compact
  def __call__(self, x, train: bool, return_features: bool = False):
    """Logits [B, num_classes] (float32), plus the hidden features if asked.

    `train` uses batch statistics (apply with mutable=['batch_stats']) and
    enables dropout (rng collection 'dropout'; each example's mask drawn
    from its global index, `advjax.example_rng.ExampleDropout`).
    """
    x = x.astype(self.dtype)
    for i, width in enumerate(self.widths):
      for j in range(self.convs_per_stage):
        x = Conv(width, (3, 3), use_bias=False, dtype=self.dtype,
                 kernel_init=_he_normal, name=f"conv{i}_{j}")(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9,
                         epsilon=1e-5, axis_name=self.axis_name,
                         dtype=self.dtype, name=f"bn{i}_{j}")(x)
        x = nn.relu(x)
      x = max_pool(x, (2, 2))
    x = x.reshape((x.shape[0], -1))
    x = nn.Dense(self.hidden, dtype=self.dtype, name="hidden")(x)
    features = nn.relu(x)
    x = ExampleDropout(self.dropout_rate, deterministic=not train,
                       axis_name=self.axis_name)(features)
    logits = nn.Dense(self.num_classes, dtype=self.dtype, name="logits")(x)
    logits = logits.astype(jnp.float32)
    if return_features:
      return logits, features.astype(jnp.float32)
    return logits
