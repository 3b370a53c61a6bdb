"""GAN generators and discriminators (critics), built by name from a config.

Families (`model.name`):
- 'mlp': the fully connected GAN of the course notes (Goodfellow et al.
  2014), `MLPGenerator` / `MLPDiscriminator`.
- 'dcgan': Radford et al. 2016, `DCGANGenerator` / `DCGANDiscriminator`.
- 'resnet': the AC-WGAN-GP ResNets of Gulrajani et al. 2017 as used by Song
  et al. 2018 (unrestricted adversarial examples), `ResNetGenerator` /
  `ResNetCritic`.

Calls:
  images = gen.apply(variables, z, labels, train=bool)   # [B, H, W, C]
  out = disc.apply(variables, x, labels, train=bool)
    out['score']: [B] logit (probabilistic losses) or critic score
    out['features']: [B, F] intermediate features (feature matching)
    out['logits']: [B, num_classes], only for discriminators with a class
      head (AC-GAN, Odena et al. 2017)
Images are NHWC float32 in [-1, 1] (generators end in tanh). A model is
class-conditional when `num_classes > 0`; unconditional models take
labels=None. Train mode uses batch statistics: apply with
mutable=['batch_stats'].

A DCGAN generator with `virtual_batchnorm=True` propagates a fixed reference
batch (z, labels) with every call (Salimans et al. 2016); that batch lives in
the 'vbn_ref' variable collection, set at init to the init inputs and
replaceable with `init_reference`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from advjax import settings as settings_lib
from advjax.errors import UserError
from advjax.models import registry
from advjax.models.conv import Conv, ConvTranspose
from advjax.models.pooling import mean_pool
from advjax.models.layers import (ConditionalBatchNorm,
                                  MinibatchDiscrimination, VirtualBatchNorm)

_he = nn.initializers.variance_scaling(2.0, "fan_in", "uniform")
_dcgan_init = nn.initializers.normal(0.02)  # Radford et al. 2016


def _check_image_shape(image_shape, who: str):
  if len(tuple(image_shape)) != 3 or min(image_shape) < 1:
    raise UserError(f"{who} needs image_shape (H, W, C), not {image_shape}")


def _upsamplings(image_shape, who: str, max_start: int = 7) -> int:
  """Number of 2x up/down-samplings n so that H / 2^n is a start size of at
  most `max_start` (32 -> 4 after 3, 28 -> 7 after 2)."""
  _check_image_shape(image_shape, who)
  h, w = image_shape[0], image_shape[1]
  if h != w:
    raise UserError(f"{who} needs square images, not {h}x{w}")
  n = 0
  while h % 2 == 0 and h // 2 ** n > max_start and (h // 2 ** n) % 2 == 0:
    n += 1
  if n == 0 or h // 2 ** n > max_start:
    raise UserError(f"{who} cannot build {h}x{w} images from a start of at "
                    f"most {max_start}x{max_start} by doubling; use a size "
                    f"like 28 or 32")
  return n


def _labels_or_none(labels, num_classes: int, batch: int, who: str):
  """The labels of a conditional model (checked), or None."""
  if num_classes <= 0:
    return None
  if labels is None:
    raise UserError(f"{who} is class-conditional (num_classes="
                    f"{num_classes}); pass labels")
  labels = jnp.asarray(labels)
  if labels.shape != (batch,):
    raise UserError(f"{who} wants labels of shape ({batch},), got "
                    f"{labels.shape}")
  return labels.astype(jnp.int32)


def _one_hot(labels, num_classes: int, dtype):
  return jax.nn.one_hot(labels, num_classes, dtype=dtype)


def _disc_output(score, features, logits=None) -> dict[str, jax.Array]:
  out = {"score": score.reshape(-1).astype(jnp.float32),
         "features": features.reshape(features.shape[0], -1).astype(
             jnp.float32)}
  if logits is not None:
    out["logits"] = logits.astype(jnp.float32)
  return out


# ---------------------------------------------------------------------------
# MLP GAN.


@registry.register("generator", "mlp")
class MLPGenerator(nn.Module):
  """z -> Dense-ReLU hidden layers -> Dense to H*W*C -> tanh -> image.

  Conditional (Mirza & Osindero 2014) when num_classes > 0: the one-hot label
  is concatenated to z. Optional BatchNorm after each hidden layer.
  """
  image_shape: tuple[int, int, int] = (32, 32, 3)
  num_classes: int = 0
  hidden: Sequence[int] = (256, 512, 1024)
  use_batchnorm: bool = False
  axis_name: str | None = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, z, labels=None, train: bool = False):
    _check_image_shape(self.image_shape, "MLPGenerator")
    labels = _labels_or_none(labels, self.num_classes, z.shape[0],
                             "MLPGenerator")
    x = z.astype(self.dtype)
    if labels is not None:
      x = jnp.concatenate([x, _one_hot(labels, self.num_classes, x.dtype)],
                          -1)
    for i, width in enumerate(self.hidden):
      x = nn.Dense(width, dtype=self.dtype, name=f"hidden{i}")(x)
      if self.use_batchnorm:
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9,
                         epsilon=1e-5, axis_name=self.axis_name,
                         dtype=self.dtype, name=f"bn{i}")(x)
      x = nn.relu(x)
    size = self.image_shape[0] * self.image_shape[1] * self.image_shape[2]
    x = nn.Dense(size, dtype=self.dtype, name="out")(x)
    x = jnp.tanh(x.astype(jnp.float32))
    return x.reshape((z.shape[0], *self.image_shape))


class _Discriminator(nn.Module):
  """Options and output heads shared by the MLP and DCGAN discriminators.

  `conditional` (when num_classes > 0): the label is an input (Mirza &
  Osindero 2014); `aux_classifier`: a class head 'logits' besides the
  real/fake score (AC-GAN, Odena et al. 2017); `minibatch_discrimination`
  on the features before the heads (Salimans et al. 2016).
  """
  image_shape: tuple[int, int, int] = (32, 32, 3)
  num_classes: int = 0
  conditional: bool = True
  aux_classifier: bool = False
  minibatch_discrimination: bool = False
  mbd_kernels: int = 50
  mbd_kernel_dim: int = 5
  axis_name: str | None = None
  dtype: Any = jnp.float32

  @property
  def has_class_head(self) -> bool:
    """Whether outputs carry AC-GAN class 'logits'."""
    return self.aux_classifier and self.num_classes > 0

  def _input_labels(self, labels, batch: int):
    """The labels a conditional discriminator reads (checked), or None."""
    if self.aux_classifier and self.num_classes <= 0:
      raise UserError(f"{type(self).__name__} aux_classifier needs "
                      f"num_classes > 0")
    if not self.conditional:
      return None
    return _labels_or_none(labels, self.num_classes, batch,
                           type(self).__name__)

  def _heads(self, features, score_init=nn.initializers.lecun_normal()):
    """Minibatch discrimination (if on), then the score and class heads."""
    h = features
    if self.minibatch_discrimination:
      h = MinibatchDiscrimination(self.mbd_kernels, self.mbd_kernel_dim,
                                  dtype=self.dtype, name="mbd")(h)
    score = nn.Dense(1, dtype=self.dtype, kernel_init=score_init,
                     name="score")(h)
    logits = (nn.Dense(self.num_classes, dtype=self.dtype, name="logits")(h)
              if self.aux_classifier else None)
    return _disc_output(score, features, logits)


@registry.register("discriminator", "mlp")
class MLPDiscriminator(_Discriminator):
  """Flattened image -> Dense-LeakyReLU(0.2) hidden layers -> one logit.

  `features` are the last hidden activations; a conditional one gets the
  one-hot label concatenated to its input (see `_Discriminator` for the
  shared options).
  """
  hidden: Sequence[int] = (1024, 512, 256)

  @nn.compact
  def __call__(self, x, labels=None, train: bool = False):
    del train  # no BatchNorm or dropout
    _check_image_shape(self.image_shape, "MLPDiscriminator")
    b = x.shape[0]
    labels = self._input_labels(labels, b)
    h = x.reshape(b, -1).astype(self.dtype)
    if labels is not None:
      h = jnp.concatenate([h, _one_hot(labels, self.num_classes, h.dtype)],
                          -1)
    for i, width in enumerate(self.hidden):
      h = nn.leaky_relu(nn.Dense(width, dtype=self.dtype,
                                 name=f"hidden{i}")(h), 0.2)
    return self._heads(h)


# ---------------------------------------------------------------------------
# DCGAN.


@registry.register("generator", "dcgan")
class DCGANGenerator(nn.Module):
  """Radford et al. 2016: Dense -> s x s x C0 -> stride-2 transposed convs
  with BatchNorm + ReLU -> tanh.

  The start size s is 4 for 32x32 (3 upsamplings, channels 4w, 2w, w) and 7
  for 28x28 (2 upsamplings, channels 2w, w), with w = `width`. Conditional
  when num_classes > 0 (one-hot label concatenated to z).
  `virtual_batchnorm` replaces BatchNorm by VirtualBatchNorm (Salimans et
  al. 2016): the reference batch ('vbn_ref' collection: z and labels) is
  propagated with every call and its rows dropped from the output.
  """
  image_shape: tuple[int, int, int] = (32, 32, 3)
  num_classes: int = 0
  width: int = 64
  virtual_batchnorm: bool = False
  axis_name: str | None = None
  dtype: Any = jnp.float32

  def _norm(self, x, train: bool, num_ref: int, name: str):
    if self.virtual_batchnorm:
      return VirtualBatchNorm(dtype=self.dtype, name=name)(x, num_ref)
    return nn.BatchNorm(use_running_average=not train, momentum=0.9,
                        epsilon=1e-5, axis_name=self.axis_name,
                        dtype=self.dtype, name=name)(x)

  @nn.compact
  def __call__(self, z, labels=None, train: bool = False):
    n_up = _upsamplings(self.image_shape, "DCGANGenerator")
    if self.width < 1:
      raise UserError(f"DCGANGenerator width must be >= 1, not {self.width}")
    batch = z.shape[0]
    labels = _labels_or_none(labels, self.num_classes, batch,
                             "DCGANGenerator")
    num_ref = 0
    if self.virtual_batchnorm:
      if not (self.is_initializing() or self.has_variable("vbn_ref", "z")):
        raise UserError("a generator with virtual_batchnorm needs its "
                        "reference batch: pass the 'vbn_ref' collection "
                        "from init (or from gans.init_reference)")
      ref_z = self.variable("vbn_ref", "z", lambda: jnp.asarray(z))
      if ref_z.value.shape[1:] != z.shape[1:]:
        raise UserError(f"the VBN reference latents have shape "
                        f"{ref_z.value.shape}, but z has {z.shape}")
      num_ref = ref_z.value.shape[0]
      z = jnp.concatenate([ref_z.value.astype(z.dtype), z], 0)
      if labels is not None:
        ref_y = self.variable("vbn_ref", "labels", lambda: labels)
        labels = jnp.concatenate([ref_y.value.astype(jnp.int32), labels], 0)
    x = z.astype(self.dtype)
    if labels is not None:
      x = jnp.concatenate([x, _one_hot(labels, self.num_classes, x.dtype)],
                          -1)
    start = self.image_shape[0] // 2 ** n_up
    ch = self.width * 2 ** (n_up - 1)
    x = nn.Dense(start * start * ch, dtype=self.dtype,
                 kernel_init=_dcgan_init, name="project")(x)
    x = x.reshape(x.shape[0], start, start, ch)
    x = nn.relu(self._norm(x, train, num_ref, "bn_project"))
    for i in range(n_up - 1):
      ch //= 2
      x = ConvTranspose(ch, (4, 4), strides=(2, 2), padding="SAME",
                        use_bias=False, dtype=self.dtype,
                        kernel_init=_dcgan_init, name=f"deconv{i}")(x)
      x = nn.relu(self._norm(x, train, num_ref, f"bn{i}"))
    x = ConvTranspose(self.image_shape[2], (4, 4), strides=(2, 2),
                      padding="SAME", dtype=self.dtype,
                      kernel_init=_dcgan_init, name="to_image")(x)
    return jnp.tanh(x.astype(jnp.float32))[num_ref:]


@registry.register("discriminator", "dcgan")
class DCGANDiscriminator(_Discriminator):
  """Radford et al. 2016: stride-2 4x4 convs (no pooling), LeakyReLU(0.2),
  BatchNorm on all but the first conv, then one logit.

  Channels w, 2w, 4w for 32x32 (2w at most for 28x28); `features` are the
  flattened last conv activations. `use_batchnorm=False` for WGAN-GP (the
  gradient penalty is per example). A conditional one gets the one-hot
  label as constant extra input channels (see `_Discriminator` for the
  shared options).
  """
  width: int = 64
  use_batchnorm: bool = True

  @nn.compact
  def __call__(self, x, labels=None, train: bool = False):
    n_down = _upsamplings(self.image_shape, "DCGANDiscriminator")
    b = x.shape[0]
    labels = self._input_labels(labels, b)
    h = x.astype(self.dtype)
    if labels is not None:
      onehot = _one_hot(labels, self.num_classes, h.dtype)
      planes = jnp.broadcast_to(onehot[:, None, None, :],
                                (*h.shape[:3], self.num_classes))
      h = jnp.concatenate([h, planes], -1)
    ch = self.width
    for i in range(n_down):
      h = Conv(ch, (4, 4), strides=(2, 2), padding="SAME",
               use_bias=not (self.use_batchnorm and i > 0),
               dtype=self.dtype, kernel_init=_dcgan_init,
               name=f"conv{i}")(h)
      if self.use_batchnorm and i > 0:
        h = nn.BatchNorm(use_running_average=not train, momentum=0.9,
                         epsilon=1e-5, axis_name=self.axis_name,
                         dtype=self.dtype, name=f"bn{i}")(h)
      h = nn.leaky_relu(h, 0.2)
      ch *= 2
    return self._heads(h.reshape(b, -1), score_init=_dcgan_init)


# ---------------------------------------------------------------------------
# ResNet AC-WGAN-GP (Gulrajani et al. 2017, as in Song et al. 2018).


def _upsample2(x):
  """Nearest-neighbour 2x upsampling."""
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


def _meanpool2(x):
  return mean_pool(x, (2, 2))


class _GenBlock(nn.Module):
  """Norm-ReLU-up2-conv3-Norm-ReLU-conv3 + (up2-conv1) shortcut."""
  features: int
  num_classes: int
  axis_name: str | None
  dtype: Any

  def _norm(self, x, labels, train, name):
    if self.num_classes > 0:
      return ConditionalBatchNorm(self.num_classes, axis_name=self.axis_name,
                                  dtype=self.dtype, name=name)(x, labels,
                                                               train)
    return nn.BatchNorm(use_running_average=not train, momentum=0.9,
                        epsilon=1e-5, axis_name=self.axis_name,
                        dtype=self.dtype, name=name)(x)

  @nn.compact
  def __call__(self, x, labels, train: bool):
    conv = lambda f, k, name: Conv(f, (k, k), padding="SAME",
                                   dtype=self.dtype, kernel_init=_he,
                                   name=name)
    # A 1x1 conv commutes with nearest upsampling: convolve first (cheaper).
    shortcut = _upsample2(conv(self.features, 1, "shortcut")(x))
    h = nn.relu(self._norm(x, labels, train, "norm1"))
    h = conv(self.features, 3, "conv1")(_upsample2(h))
    h = nn.relu(self._norm(h, labels, train, "norm2"))
    h = conv(self.features, 3, "conv2")(h)
    return shortcut + h


class _CriticBlock(nn.Module):
  """ReLU-conv3-ReLU-conv3(-meanpool) + shortcut, no normalisation.

  `first`: the optimised first block (conv3-ReLU-conv3-meanpool, shortcut
  meanpool-conv1) that sees the raw image. Otherwise the shortcut is
  conv1-meanpool when downsampling or the channels change, else identity.
  """
  features: int
  down: bool
  first: bool
  dtype: Any

  @nn.compact
  def __call__(self, x):
    conv = lambda f, k, name: Conv(f, (k, k), padding="SAME",
                                   dtype=self.dtype, kernel_init=_he,
                                   name=name)
    if self.first:
      shortcut = conv(self.features, 1, "shortcut")(_meanpool2(x))
      h = nn.relu(conv(self.features, 3, "conv1")(x))
      h = _meanpool2(conv(self.features, 3, "conv2")(h))
      return shortcut + h
    if self.down or x.shape[-1] != self.features:
      shortcut = conv(self.features, 1, "shortcut")(x)
      if self.down:
        shortcut = _meanpool2(shortcut)
    else:
      shortcut = x
    h = conv(x.shape[-1], 3, "conv1")(nn.relu(x))
    h = conv(self.features, 3, "conv2")(nn.relu(h))
    if self.down:
      h = _meanpool2(h)
    return shortcut + h


@registry.register("generator", "resnet")
class ResNetGenerator(nn.Module):
  """The AC-WGAN-GP ResNet generator (Gulrajani et al. 2017, CIFAR model).

  z -> Dense to s x s x width (s=4 for 32x32, 7 for 28x28) -> residual up
  blocks (3 resp. 2; conditional BatchNorm when num_classes > 0, else plain
  BatchNorm) -> BN-ReLU-conv3x3 to C channels -> tanh. Song et al. 2018 used
  width 256 and a 128-d z.
  """
  image_shape: tuple[int, int, int] = (32, 32, 3)
  num_classes: int = 0
  width: int = 128
  axis_name: str | None = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, z, labels=None, train: bool = False):
    n_up = _upsamplings(self.image_shape, "ResNetGenerator")
    if self.width < 1:
      raise UserError(f"ResNetGenerator width must be >= 1, not {self.width}")
    labels = _labels_or_none(labels, self.num_classes, z.shape[0],
                             "ResNetGenerator")
    start = self.image_shape[0] // 2 ** n_up
    x = nn.Dense(start * start * self.width, dtype=self.dtype,
                 name="project")(z.astype(self.dtype))
    x = x.reshape(z.shape[0], start, start, self.width)
    for i in range(n_up):
      x = _GenBlock(self.width, self.num_classes, self.axis_name, self.dtype,
                    name=f"block{i}")(x, labels, train)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9,
                     epsilon=1e-5, axis_name=self.axis_name,
                     dtype=self.dtype, name="norm_out")(x)
    x = Conv(self.image_shape[2], (3, 3), padding="SAME", dtype=self.dtype,
             name="to_image")(nn.relu(x))
    return jnp.tanh(x.astype(jnp.float32))


@registry.register("discriminator", "resnet")
class ResNetCritic(nn.Module):
  """The AC-WGAN-GP ResNet critic (Gulrajani et al. 2017, CIFAR model).

  Optimised first block (down), one down block, `num_plain_blocks` blocks at
  constant resolution, all without normalisation (the gradient penalty is
  per example); ReLU and global mean pool give `features` [B, width]; heads
  Dense(1) score and, when num_classes > 0, Dense(num_classes) logits (the
  AC-GAN classifier; the critic does not take labels as input).
  """
  image_shape: tuple[int, int, int] = (32, 32, 3)
  num_classes: int = 0
  width: int = 128
  num_plain_blocks: int = 2
  axis_name: str | None = None  # unused: no normalisation
  dtype: Any = jnp.float32

  @property
  def has_class_head(self) -> bool:
    """Whether outputs carry AC-GAN class 'logits' (with classes, always)."""
    return self.num_classes > 0

  @nn.compact
  def __call__(self, x, labels=None, train: bool = False):
    del labels, train  # AC-GAN critic: classes are predicted, not input
    _check_image_shape(self.image_shape, "ResNetCritic")
    if self.width < 1:
      raise UserError(f"ResNetCritic width must be >= 1, not {self.width}")
    h = _CriticBlock(self.width, down=True, first=True, dtype=self.dtype,
                     name="block0")(x.astype(self.dtype))
    h = _CriticBlock(self.width, down=True, first=False, dtype=self.dtype,
                     name="block1")(h)
    for i in range(self.num_plain_blocks):
      h = _CriticBlock(self.width, down=False, first=False, dtype=self.dtype,
                       name=f"block{i + 2}")(h)
    features = jnp.mean(nn.relu(h), axis=(1, 2))
    score = nn.Dense(1, dtype=self.dtype, name="score")(features)
    logits = (nn.Dense(self.num_classes, dtype=self.dtype,
                       name="logits")(features)
              if self.num_classes > 0 else None)
    return _disc_output(score, features, logits)


# ---------------------------------------------------------------------------
# Building from a config.

@dataclasses.dataclass(frozen=True)
class ModelSettings:
  """`config.model` of a GAN: what the model registry cannot check.

  name: the family (`registry.names('generator')`); latent_dim: of z;
  conditional: on the dataset's classes; reference_batch_size: of virtual
  BatchNorm's fixed reference batch (read by the trainer); generator /
  discriminator: keyword arguments of each player's module (checked by the
  registry against the module's fields).
  """
  name: str = "dcgan"
  latent_dim: int = 100
  conditional: bool = False
  reference_batch_size: int = 64
  generator: dict = dataclasses.field(default_factory=dict)
  discriminator: dict = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    if self.latent_dim < 1:
      raise UserError(f"latent_dim must be >= 1, not {self.latent_dim}")
    settings_lib.check_positive(self, "reference_batch_size")


# Keys of `config.model` shared by both players (not module fields).
SHARED_KEYS = tuple(f.name for f in dataclasses.fields(ModelSettings))


def read_model(model_config: Any) -> ModelSettings:
  """The `ModelSettings` of a GAN's `config.model`."""
  cfg = registry.as_dict(model_config)
  extra = sorted(set(cfg) - set(SHARED_KEYS))
  if extra:
    raise UserError(f"unknown model option(s) {extra}; GAN models take "
                    f"{list(SHARED_KEYS)}, with per-player options under "
                    f"model.generator / model.discriminator")
  return settings_lib.from_block(ModelSettings, cfg, "model")


def _build(role: str, model_config, num_classes: int, image_shape,
           axis_name, dtype):
  m = read_model(model_config)
  if m.conditional and num_classes <= 0:
    raise UserError("model.conditional=True needs a dataset with classes "
                    "(num_classes > 0)")
  _check_image_shape(image_shape, f"GAN model '{m.name}'")
  return registry.create(
      role, m.name, getattr(m, role),
      image_shape=tuple(int(s) for s in image_shape),
      num_classes=int(num_classes) if m.conditional else 0,
      axis_name=axis_name, dtype=dtype)


def create_generator(model_config, num_classes: int,
                     image_shape: tuple[int, int, int],
                     axis_name: str | None = None, dtype: Any = jnp.float32):
  """The generator of `model_config`.

  `model_config.name` names the family (`registry.names('generator')`:
  'mlp', 'dcgan', 'resnet'); `model_config.generator` holds keyword arguments
  of the module (e.g. width); `latent_dim`, `conditional` and
  `reference_batch_size` are shared and read by the trainer
  (`ModelSettings`). The model is conditional on `num_classes` classes when
  `model_config.conditional`.
  """
  return _build("generator", model_config, num_classes, image_shape,
                axis_name, dtype)


def create_discriminator(model_config, num_classes: int,
                         image_shape: tuple[int, int, int],
                         axis_name: str | None = None,
                         dtype: Any = jnp.float32):
  """The discriminator (critic) of `model_config`; options from
  `model_config.discriminator`, as for `create_generator`."""
  return _build("discriminator", model_config, num_classes, image_shape,
                axis_name, dtype)


def create_players(model_config, num_classes: int,
                   image_shape: tuple[int, int, int],
                   axis_name: str | None = None, dtype: Any = jnp.float32):
  """(generator, discriminator) of `model_config`: how the GAN trainer and
  `inference.GAN` both build the networks of a config."""
  return (create_generator(model_config, num_classes, image_shape,
                           axis_name=axis_name, dtype=dtype),
          create_discriminator(model_config, num_classes, image_shape,
                               axis_name=axis_name, dtype=dtype))


def sample_latents(rng: jax.Array, n: int, dim: int) -> jax.Array:
  """z ~ N(0, I), [n, dim] float32."""
  return jax.random.normal(rng, (n, dim), jnp.float32)


def init_reference(generator, variables: dict[str, Any], z: jax.Array,
                   labels: jax.Array | None = None) -> dict[str, Any]:
  """`variables` with the virtual-BN reference batch set to (z, labels).

  A no-op for generators without virtual BatchNorm. The reference batch is
  kept whole on every device (it is part of the replicated state).
  """
  if not getattr(generator, "virtual_batchnorm", False):
    return variables
  ref = {"z": jnp.asarray(z, jnp.float32)}
  if generator.num_classes > 0:
    if labels is None or jnp.shape(labels) != (z.shape[0],):
      raise UserError("a conditional generator's VBN reference batch needs "
                      "one label per latent vector")
    ref["labels"] = jnp.asarray(labels, jnp.int32)
  return {**variables, "vbn_ref": ref}
