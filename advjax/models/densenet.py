"""DenseNet and DenseNet-BC (Huang et al. 2017, "Densely Connected
Convolutional Networks") for 32x32 and 28x28 images.

Three dense blocks; each layer adds `growth_rate` feature maps computed from
the concatenation of all earlier ones. The BC variant puts a 1x1 bottleneck
(4k channels) before each 3x3 convolution and compresses the channels by
`compression` in the transition layers. DenseNet-BC-100 with k=12 has about
0.8M parameters: the classifier of the unrestricted-adversarial-examples study.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from advjax.errors import UserError
from advjax.example_rng import ExampleDropout
from advjax.models import heads
from advjax.models.conv import Conv
from advjax.models.pooling import mean_pool
from advjax.models.registry import register

_he_normal = nn.initializers.variance_scaling(2.0, "fan_in", "normal")


def layers_per_block(depth: int, bottleneck: bool) -> int:
  """Layers in each of the three dense blocks for a given total depth.

  depth = 3 * n * (2 if bottleneck else 1) + 4 (stem conv, two transition
  convs and the classifier), so n = (depth - 4) // 6 for BC, // 3 otherwise.
  """
  step = 6 if bottleneck else 3
  if depth <= 4 or (depth - 4) % step:
    kind = "DenseNet-BC (bottleneck=True)" if bottleneck else (
        "DenseNet (bottleneck=False)")
    examples = ("10, 16, 22, 40, 100, 190, 250" if bottleneck else
                "7, 10, 13, 40, 100")
    raise UserError(f"{kind} depth must be 4 + a positive multiple of {step} "
                    f"(e.g. {examples}), not {depth}")
  return (depth - 4) // step


@register("classifier", "densenet")
class DenseNet(nn.Module):
  """DenseNet(-BC) classifier (Huang et al. 2017) for 32x32 / 28x28 inputs.

  Layer: [BN-ReLU-conv1x1(4k)]-BN-ReLU-conv3x3(k), output concatenated to its
  input. Transition: BN-ReLU-conv1x1(floor(theta * C))-avgpool 2. Head:
  BN-ReLU-global average pool-Dense. BatchNorm uses `axis_name` so batch
  statistics are averaged over devices under shard_map.
  """
  num_classes: int
  depth: int = 100
  growth_rate: int = 12
  compression: float = 0.5
  bottleneck: bool = True
  dropout_rate: float = 0.0
  axis_name: str | None = None
  dtype: Any = jnp.float32

  def __post_init__(self):
    # Fail when the model is built (before any data is loaded), not at init.
    layers_per_block(self.depth, self.bottleneck)
    if not 0.0 < self.compression <= 1.0:
      raise UserError(f"DenseNet compression must be in (0, 1], "
                      f"not {self.compression}")
    if self.growth_rate < 1:
      raise UserError(f"DenseNet growth_rate must be >= 1, "
                      f"not {self.growth_rate}")
    super().__post_init__()

  @nn.compact
  def __call__(self, x, train: bool, return_features: bool = False):
    """Logits [B, num_classes] (float32), plus pooled features if asked.

    `train` selects batch statistics (updating 'batch_stats', so apply with
    mutable=['batch_stats']) and enables dropout (rng collection 'dropout').
    """
    n_layers = layers_per_block(self.depth, self.bottleneck)
    conv = functools.partial(Conv, use_bias=False, dtype=self.dtype,
                             param_dtype=jnp.float32, kernel_init=_he_normal)
    norm = functools.partial(nn.BatchNorm, use_running_average=not train,
                             momentum=0.9, epsilon=1e-5,
                             axis_name=self.axis_name, dtype=self.dtype,
                             param_dtype=jnp.float32)
    dropout = lambda y: ExampleDropout(self.dropout_rate,
                                       deterministic=not train,
                                       axis_name=self.axis_name)(y)
    k = self.growth_rate

    x = x.astype(self.dtype)
    channels = 2 * k if self.bottleneck else 16
    x = conv(channels, (3, 3), name="stem")(x)
    for block in range(3):
      # Each layer concatenates the block input and all earlier outputs
      # itself. (Concatenating onto the previous layer's input instead makes
      # the gradient of the block input a chain through every layer, which
      # XLA fuses into, and recomputes in, each consumer.)
      pieces = [x]
      for layer in range(n_layers):
        name = f"block{block}_layer{layer}"
        y = x
        if self.bottleneck:
          y = nn.relu(norm(name=f"{name}_bn1")(y))
          y = dropout(conv(4 * k, (1, 1), name=f"{name}_conv1")(y))
        y = nn.relu(norm(name=f"{name}_bn2")(y))
        y = dropout(conv(k, (3, 3), name=f"{name}_conv2")(y))
        pieces.append(y)
        x = jnp.concatenate(pieces, axis=-1)
      if block < 2:
        channels = int(x.shape[-1] * self.compression)
        x = nn.relu(norm(name=f"transition{block}_bn")(x))
        project = conv(channels, (1, 1), name=f"transition{block}_conv")
        if self.dropout_rate and train:
          x = mean_pool(dropout(project(x)), (2, 2))
        else:  # a 1x1 conv commutes with mean pooling: pool first (4x less)
          x = project(mean_pool(x, (2, 2)))
    return heads.pooled_logits(x, norm, self.num_classes, self.dtype,
                               return_features)
