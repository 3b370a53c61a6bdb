"""Pre-activation residual networks for 32x32 images: PreActResNet-18 (He et
al. 2016, "Identity Mappings in Deep Residual Networks") and Wide ResNets
(Zagoruyko & Komodakis 2016, "Wide Residual Networks"), the classifiers of
the adversarial-training papers on CIFAR (Rice et al. 2020 and Wong et al.
2020 use PreActResNet-18; Zhang et al. 2019, Gowal et al. 2021 and Rebuffi
et al. 2021 WRN-28-10 and wider).

A pre-activation block is BN-ReLU-conv3x3-BN-ReLU-conv3x3 with an identity
shortcut, or a 1x1 convolution of the first BN-ReLU's output where the
shape changes. PreActResNet-18 has stages of 2 blocks at 64, 128, 256 and
512 channels (strides 1, 2, 2, 2) after a 3x3 stem, about 11.2M parameters
for 10 classes. WRN-d-k has three stages of (d - 4) / 6 blocks at 16k, 32k
and 64k channels after a 16-channel stem: WRN-28-10 has about 36.5M.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from advjax.errors import UserError
from advjax.models import heads
from advjax.models.conv import Conv
from advjax.models.registry import register

_he_normal = nn.initializers.variance_scaling(2.0, "fan_in", "normal")


class _PreActBlock(nn.Module):
  """BN-ReLU-conv3x3(stride)-BN-ReLU-conv3x3, plus the shortcut."""
  channels: int
  stride: int
  conv: Any
  norm: Any

  @nn.compact
  def __call__(self, x):
    y = nn.relu(self.norm(name="bn1")(x))
    shortcut = x
    if self.stride != 1 or x.shape[-1] != self.channels:
      shortcut = self.conv(self.channels, (1, 1),
                           strides=(self.stride, self.stride),
                           name="shortcut")(y)
    y = self.conv(self.channels, (3, 3), strides=(self.stride, self.stride),
                  name="conv1")(y)
    y = nn.relu(self.norm(name="bn2")(y))
    y = self.conv(self.channels, (3, 3), name="conv2")(y)
    return y + shortcut


def _layers(module, train: bool):
  conv = functools.partial(Conv, use_bias=False, dtype=module.dtype,
                           param_dtype=jnp.float32, kernel_init=_he_normal)
  norm = functools.partial(nn.BatchNorm, use_running_average=not train,
                           momentum=0.9, epsilon=1e-5,
                           axis_name=module.axis_name, dtype=module.dtype,
                           param_dtype=jnp.float32)
  return conv, norm


def _stages(x, stages, conv, norm):
  for s, (channels, blocks, stride) in enumerate(stages):
    for b in range(blocks):
      x = _PreActBlock(channels, stride if b == 0 else 1, conv, norm,
                       name=f"stage{s}_block{b}")(x)
  return x


@register("classifier", "preact_resnet")
class PreActResNet(nn.Module):
  """PreActResNet (He et al. 2016); `blocks` per stage, (2, 2, 2, 2) is
  PreActResNet-18, (3, 4, 6, 3) PreActResNet-34."""
  num_classes: int
  blocks: tuple[int, ...] = (2, 2, 2, 2)
  width: int = 64
  axis_name: str | None = None
  dtype: Any = jnp.float32

  def __post_init__(self):
    if not self.blocks or min(self.blocks) < 1 or self.width < 1:
      raise UserError(f"PreActResNet needs blocks >= 1 per stage and width "
                      f">= 1, not blocks={tuple(self.blocks)}, "
                      f"width={self.width}")
    super().__post_init__()

  @nn.compact
  def __call__(self, x, train: bool, return_features: bool = False):
    """Logits [B, num_classes] (float32), plus pooled features if asked;
    `train` uses and updates the batch statistics."""
    conv, norm = _layers(self, train)
    x = conv(self.width, (3, 3), name="stem")(x.astype(self.dtype))
    stages = [(self.width * 2 ** i, n, 1 if i == 0 else 2)
              for i, n in enumerate(self.blocks)]
    return heads.pooled_logits(_stages(x, stages, conv, norm), norm,
                               self.num_classes, self.dtype, return_features)


@register("classifier", "wide_resnet")
class WideResNet(nn.Module):
  """WRN-depth-widen (Zagoruyko & Komodakis 2016), pre-activation blocks,
  no dropout (as the adversarial-training papers)."""
  num_classes: int
  depth: int = 28
  widen: int = 10
  axis_name: str | None = None
  dtype: Any = jnp.float32

  def __post_init__(self):
    if self.depth < 10 or (self.depth - 4) % 6 or self.widen < 1:
      raise UserError(f"WideResNet depth must be 4 + a positive multiple of "
                      f"6 (e.g. 16, 28, 34, 70) and widen >= 1, not "
                      f"depth={self.depth}, widen={self.widen}")
    super().__post_init__()

  @nn.compact
  def __call__(self, x, train: bool, return_features: bool = False):
    """Logits [B, num_classes] (float32), plus pooled features if asked."""
    conv, norm = _layers(self, train)
    x = conv(16, (3, 3), name="stem")(x.astype(self.dtype))
    n = (self.depth - 4) // 6
    stages = [(16 * self.widen, n, 1), (32 * self.widen, n, 2),
              (64 * self.widen, n, 2)]
    return heads.pooled_logits(_stages(x, stages, conv, norm), norm,
                               self.num_classes, self.dtype, return_features)
