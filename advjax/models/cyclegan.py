"""CycleGAN networks (Zhu et al. 2017): a ResNet translator and a PatchGAN.

The translator follows Johnson et al. (2016) as used by CycleGAN:
c7s1-w, `num_downsample` stride-2 convolutions (doubling the width each
time), `num_blocks` residual blocks, as many stride-2 transposed convolutions
back, and c7s1-C with tanh; instance normalisation (Ulyanov et al. 2016) and
reflection padding throughout. With two downsamplings a 28x28 image goes
28 -> 14 -> 7 and back; 256x256 images go to 64x64.

The discriminator is the PatchGAN of Isola et al. (2017): 4x4 convolutions
(stride 2 for the first `num_layers`, then one of stride 1), LeakyReLU 0.2,
instance norm except on the first layer, and a 1-channel score map: each
output judges one overlapping patch (70x70 for num_layers=3).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from advjax.models import registry

from advjax.models.conv import Conv, ConvTranspose


def _reflect_pad(x: jax.Array, p: int) -> jax.Array:
  if p == 0:
    return x
  # Reflection needs p < size; tiny images fall back to edge padding.
  mode = "reflect" if min(x.shape[1], x.shape[2]) > p else "edge"
  return jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)), mode=mode)


def _norm(dtype) -> nn.Module:
  return nn.InstanceNorm(epsilon=1e-5, dtype=dtype)


class ResidualBlock(nn.Module):
  """x + [pad, conv3x3, IN, ReLU, pad, conv3x3, IN](x)."""
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = x.shape[-1]
    y = Conv(c, (3, 3), padding="VALID", dtype=self.dtype)(
        _reflect_pad(x, 1))
    y = nn.relu(_norm(self.dtype)(y))
    y = Conv(c, (3, 3), padding="VALID", dtype=self.dtype)(
        _reflect_pad(y, 1))
    return x + _norm(self.dtype)(y)


@registry.register("generator", "cyclegan")
class ResNetTranslator(nn.Module):
  """Image-to-image translator; outputs in [-1, 1] with the input's size."""
  width: int = 64
  num_blocks: int = 9
  num_downsample: int = 2
  out_channels: int = 3
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    del train  # Instance norm behaves the same in training and inference.
    h, w = x.shape[1:3]
    x = Conv(self.width, (7, 7), padding="VALID", dtype=self.dtype)(
        _reflect_pad(x, 3))
    x = nn.relu(_norm(self.dtype)(x))
    for i in range(self.num_downsample):
      x = Conv(self.width * 2 ** (i + 1), (3, 3), strides=(2, 2),
               padding=((1, 1), (1, 1)), dtype=self.dtype)(x)
      x = nn.relu(_norm(self.dtype)(x))
    for _ in range(self.num_blocks):
      x = ResidualBlock(dtype=self.dtype)(x)
    for i in reversed(range(self.num_downsample)):
      x = ConvTranspose(self.width * 2 ** i, (3, 3), strides=(2, 2),
                        padding="SAME", dtype=self.dtype)(x)
      x = nn.relu(_norm(self.dtype)(x))
    x = x[:, :h, :w]  # odd sizes: 2 * ceil(n / 2) may exceed n
    x = Conv(self.out_channels, (7, 7), padding="VALID",
             dtype=self.dtype)(_reflect_pad(x, 3))
    return jnp.tanh(x.astype(jnp.float32))


@registry.register("discriminator", "cyclegan")
class PatchDiscriminator(nn.Module):
  """PatchGAN (Isola et al. 2017): a map of real/fake scores, one per patch."""
  width: int = 64
  num_layers: int = 3
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    del train
    x = Conv(self.width, (4, 4), strides=(2, 2), padding=((1, 1), (1, 1)),
             dtype=self.dtype)(x)
    x = nn.leaky_relu(x, 0.2)
    for i in range(1, self.num_layers + 1):
      stride = 2 if i < self.num_layers else 1
      x = Conv(self.width * 2 ** min(i, 3), (4, 4),
               strides=(stride, stride), padding=((1, 1), (1, 1)),
               dtype=self.dtype)(x)
      x = nn.leaky_relu(_norm(self.dtype)(x), 0.2)
    x = Conv(1, (4, 4), padding=((1, 1), (1, 1)), dtype=self.dtype)(x)
    return x.astype(jnp.float32)


def create_generator(model, channels: int,
                     dtype: Any = jnp.float32) -> ResNetTranslator:
  """The translator of `model.generator` for images of `channels` channels."""
  return registry.create("generator", model.name, model.generator,
                         out_channels=int(channels), dtype=dtype)


def create_discriminator(model, dtype: Any = jnp.float32
                         ) -> PatchDiscriminator:
  """The PatchGAN of `model.discriminator`."""
  return registry.create("discriminator", model.name, model.discriminator,
                         dtype=dtype)
