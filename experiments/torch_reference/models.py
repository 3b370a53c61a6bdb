"""PyTorch versions of advjax's networks, for side-by-side checks and timing.

Runs only in the test-only torch venv (.ci/torch-venv); advjax never imports
it. Every module mirrors one flax module of advjax/models (NCHW here, NHWC
there) and keeps its submodule names, so `load_flax` can copy a flax variable
tree into it: conv kernels HWIO -> OIHW, dense kernels (in, out) -> (out, in),
transposed-conv kernels flipped and moved to (in, out, H, W), BatchNorm
scale/bias/mean/var -> weight/bias/running_mean/running_var. Flattening goes
through NHWC order so that dense layers after convolutions see the same
feature order.

flax BatchNorm's `momentum` m is torch's 1 - m; both normalise with the
biased batch variance in training.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

BN_MOMENTUM = 0.1  # flax momentum 0.9
BN_EPS = 1e-5


def _bn(channels: int, affine: bool = True) -> nn.BatchNorm2d:
  return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM,
                        affine=affine)


def flatten_nhwc(x: torch.Tensor) -> torch.Tensor:
  return x.permute(0, 2, 3, 1).flatten(1)


class SmallCNN(nn.Module):
  """advjax.models.cnn.SmallCNN."""

  def __init__(self, num_classes: int, in_channels: int, image_hw: int,
               widths: Sequence[int] = (32, 64), convs_per_stage: int = 2,
               hidden: int = 128, dropout_rate: float = 0.0):
    super().__init__()
    self.convs_per_stage = convs_per_stage
    self.widths = tuple(widths)
    c, hw = in_channels, image_hw
    for i, width in enumerate(widths):
      for j in range(convs_per_stage):
        setattr(self, f"conv{i}_{j}", nn.Conv2d(c, width, 3, padding=1,
                                                bias=False))
        setattr(self, f"bn{i}_{j}", _bn(width))
        c = width
      hw //= 2
    self.hidden = nn.Linear(c * hw * hw, hidden)
    self.dropout = nn.Dropout(dropout_rate)
    self.logits = nn.Linear(hidden, num_classes)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    for i in range(len(self.widths)):
      for j in range(self.convs_per_stage):
        x = getattr(self, f"conv{i}_{j}")(x)
        x = F.relu(getattr(self, f"bn{i}_{j}")(x))
      x = F.max_pool2d(x, 2)
    x = F.relu(self.hidden(flatten_nhwc(x)))
    return self.logits(self.dropout(x))


class DenseNet(nn.Module):
  """advjax.models.densenet.DenseNet (BC variant when `bottleneck`)."""

  def __init__(self, num_classes: int, in_channels: int = 3, depth: int = 100,
               growth_rate: int = 12, compression: float = 0.5,
               bottleneck: bool = True):
    super().__init__()
    step = 6 if bottleneck else 3
    self.n_layers = (depth - 4) // step
    self.bottleneck = bottleneck
    k = growth_rate
    c = 2 * k if bottleneck else 16
    self.stem = nn.Conv2d(in_channels, c, 3, padding=1, bias=False)
    for block in range(3):
      for layer in range(self.n_layers):
        name = f"block{block}_layer{layer}"
        y = c
        if bottleneck:
          setattr(self, f"{name}_bn1", _bn(c))
          setattr(self, f"{name}_conv1", nn.Conv2d(c, 4 * k, 1, bias=False))
          y = 4 * k
        setattr(self, f"{name}_bn2", _bn(y))
        setattr(self, f"{name}_conv2", nn.Conv2d(y, k, 3, padding=1,
                                                 bias=False))
        c += k
      if block < 2:
        out = int(c * compression)
        setattr(self, f"transition{block}_bn", _bn(c))
        setattr(self, f"transition{block}_conv", nn.Conv2d(c, out, 1,
                                                           bias=False))
        c = out
    self.final_bn = _bn(c)
    self.logits = nn.Linear(c, num_classes)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    x = self.stem(x)
    for block in range(3):
      for layer in range(self.n_layers):
        name = f"block{block}_layer{layer}"
        y = x
        if self.bottleneck:
          y = getattr(self, f"{name}_conv1")(
              F.relu(getattr(self, f"{name}_bn1")(y)))
        y = getattr(self, f"{name}_conv2")(
            F.relu(getattr(self, f"{name}_bn2")(y)))
        x = torch.cat([x, y], 1)
      if block < 2:
        x = F.relu(getattr(self, f"transition{block}_bn")(x))
        x = F.avg_pool2d(getattr(self, f"transition{block}_conv")(x), 2)
    x = F.relu(self.final_bn(x)).mean((2, 3))
    return self.logits(x)


def _upsamplings(size: int, max_start: int = 7) -> int:
  n = 0
  while size % 2 == 0 and size // 2 ** n > max_start and (size // 2 ** n) % 2 == 0:
    n += 1
  return n


class DCGANGenerator(nn.Module):
  """advjax.models.gans.DCGANGenerator (BatchNorm, no virtual BN)."""

  def __init__(self, latent_dim: int, image_shape=(32, 32, 3),
               num_classes: int = 0, width: int = 64):
    super().__init__()
    self.num_classes = num_classes
    n_up = _upsamplings(image_shape[0])
    self.start = image_shape[0] // 2 ** n_up
    ch = width * 2 ** (n_up - 1)
    self.ch0 = ch
    self.project = nn.Linear(latent_dim + num_classes,
                             self.start * self.start * ch)
    self.bn_project = _bn(ch)
    for i in range(n_up - 1):
      setattr(self, f"deconv{i}", nn.ConvTranspose2d(ch, ch // 2, 4, 2, 1,
                                                     bias=False))
      setattr(self, f"bn{i}", _bn(ch // 2))
      ch //= 2
    self.n_up = n_up
    self.to_image = nn.ConvTranspose2d(ch, image_shape[2], 4, 2, 1)

  def forward(self, z: torch.Tensor, labels=None) -> torch.Tensor:
    if self.num_classes:
      z = torch.cat([z, F.one_hot(labels, self.num_classes).to(z.dtype)], -1)
    x = self.project(z).view(-1, self.start, self.start, self.ch0)
    x = F.relu(self.bn_project(x.permute(0, 3, 1, 2)))
    for i in range(self.n_up - 1):
      x = F.relu(getattr(self, f"bn{i}")(getattr(self, f"deconv{i}")(x)))
    return torch.tanh(self.to_image(x))


class DCGANDiscriminator(nn.Module):
  """advjax.models.gans.DCGANDiscriminator (no minibatch discrimination);
  returns (score [B], logits [B, K] or None)."""

  def __init__(self, image_shape=(32, 32, 3), num_classes: int = 0,
               width: int = 64, use_batchnorm: bool = True,
               conditional: bool = True, aux_classifier: bool = False):
    super().__init__()
    self.n_down = _upsamplings(image_shape[0])
    self.use_batchnorm = use_batchnorm
    self.num_classes = num_classes
    self.conditional = conditional and num_classes > 0
    c = image_shape[2] + (num_classes if self.conditional else 0)
    ch = width
    for i in range(self.n_down):
      bn = use_batchnorm and i > 0
      setattr(self, f"conv{i}", nn.Conv2d(c, ch, 4, 2, 1, bias=not bn))
      if bn:
        setattr(self, f"bn{i}", _bn(ch))
      c = ch
      ch *= 2
    hw = image_shape[0] // 2 ** self.n_down
    self.score = nn.Linear(c * hw * hw, 1)
    self.logits = (nn.Linear(c * hw * hw, num_classes) if aux_classifier
                   else None)

  def forward(self, x: torch.Tensor, labels=None):
    if self.conditional:
      onehot = F.one_hot(labels, self.num_classes).to(x.dtype)
      planes = onehot[:, :, None, None].expand(-1, -1, *x.shape[2:])
      x = torch.cat([x, planes], 1)
    for i in range(self.n_down):
      x = getattr(self, f"conv{i}")(x)
      if self.use_batchnorm and i > 0:
        x = getattr(self, f"bn{i}")(x)
      x = F.leaky_relu(x, 0.2)
    features = flatten_nhwc(x)
    logits = self.logits(features) if self.logits is not None else None
    return self.score(features).view(-1), logits


class ConditionalBatchNorm(nn.Module):
  """advjax.models.layers.ConditionalBatchNorm."""

  def __init__(self, num_classes: int, channels: int):
    super().__init__()
    self.bn = _bn(channels, affine=False)
    self.gamma = nn.Parameter(torch.ones(num_classes, channels))
    self.beta = nn.Parameter(torch.zeros(num_classes, channels))

  def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    y = self.bn(x)
    return (y * self.gamma[labels][:, :, None, None]
            + self.beta[labels][:, :, None, None])


class _GenBlock(nn.Module):

  def __init__(self, channels: int, features: int, num_classes: int):
    super().__init__()
    self.conditional = num_classes > 0
    norm = ((lambda c: ConditionalBatchNorm(num_classes, c))
            if self.conditional else _bn)
    self.norm1 = norm(channels)
    self.norm2 = norm(features)
    self.shortcut = nn.Conv2d(channels, features, 1)
    self.conv1 = nn.Conv2d(channels, features, 3, padding=1)
    self.conv2 = nn.Conv2d(features, features, 3, padding=1)

  def _norm(self, norm, x, labels):
    return norm(x, labels) if self.conditional else norm(x)

  def forward(self, x, labels):
    shortcut = F.interpolate(self.shortcut(x), scale_factor=2, mode="nearest")
    h = F.relu(self._norm(self.norm1, x, labels))
    h = self.conv1(F.interpolate(h, scale_factor=2, mode="nearest"))
    h = F.relu(self._norm(self.norm2, h, labels))
    return shortcut + self.conv2(h)


class ResNetGenerator(nn.Module):
  """advjax.models.gans.ResNetGenerator."""

  def __init__(self, latent_dim: int, image_shape=(32, 32, 3),
               num_classes: int = 0, width: int = 128):
    super().__init__()
    n_up = _upsamplings(image_shape[0])
    self.start = image_shape[0] // 2 ** n_up
    self.width = width
    self.n_up = n_up
    self.project = nn.Linear(latent_dim, self.start * self.start * width)
    for i in range(n_up):
      setattr(self, f"block{i}", _GenBlock(width, width, num_classes))
    self.norm_out = _bn(width)
    self.to_image = nn.Conv2d(width, image_shape[2], 3, padding=1)

  def forward(self, z, labels=None):
    x = self.project(z).view(-1, self.start, self.start, self.width)
    x = x.permute(0, 3, 1, 2)
    for i in range(self.n_up):
      x = getattr(self, f"block{i}")(x, labels)
    return torch.tanh(self.to_image(F.relu(self.norm_out(x))))


class _CriticBlock(nn.Module):

  def __init__(self, channels: int, features: int, down: bool, first: bool):
    super().__init__()
    self.down, self.first = down, first
    self.has_shortcut = first or down or channels != features
    if self.has_shortcut:
      self.shortcut = nn.Conv2d(channels, features, 1)
    mid = features if first else channels
    self.conv1 = nn.Conv2d(channels, mid, 3, padding=1)
    self.conv2 = nn.Conv2d(mid, features, 3, padding=1)

  def forward(self, x):
    if self.first:
      shortcut = self.shortcut(F.avg_pool2d(x, 2))
      h = F.relu(self.conv1(x))
      return shortcut + F.avg_pool2d(self.conv2(h), 2)
    shortcut = self.shortcut(x) if self.has_shortcut else x
    if self.down:
      shortcut = F.avg_pool2d(shortcut, 2)
    h = self.conv1(F.relu(x))
    h = self.conv2(F.relu(h))
    if self.down:
      h = F.avg_pool2d(h, 2)
    return shortcut + h


class ResNetCritic(nn.Module):
  """advjax.models.gans.ResNetCritic; returns (score [B], logits or None)."""

  def __init__(self, image_shape=(32, 32, 3), num_classes: int = 0,
               width: int = 128, num_plain_blocks: int = 2):
    super().__init__()
    self.block0 = _CriticBlock(image_shape[2], width, True, True)
    self.block1 = _CriticBlock(width, width, True, False)
    self.num_plain_blocks = num_plain_blocks
    for i in range(num_plain_blocks):
      setattr(self, f"block{i + 2}", _CriticBlock(width, width, False, False))
    self.score = nn.Linear(width, 1)
    self.logits = nn.Linear(width, num_classes) if num_classes > 0 else None

  def forward(self, x, labels=None):
    del labels
    h = self.block1(self.block0(x))
    for i in range(self.num_plain_blocks):
      h = getattr(self, f"block{i + 2}")(h)
    features = F.relu(h).mean((2, 3))
    logits = self.logits(features) if self.logits is not None else None
    return self.score(features).view(-1), logits


# ---------------------------------------------------------------------------
# Copying flax variables in.


def _converted(module: nn.Module, name: str, value: np.ndarray) -> np.ndarray:
  """A flax leaf in the layout of `module`'s parameter `name`."""
  if isinstance(module, nn.ConvTranspose2d) and name == "kernel":
    return np.flip(value, (0, 1)).transpose(2, 3, 0, 1)
  if isinstance(module, nn.Conv2d) and name == "kernel":
    return value.transpose(3, 2, 0, 1)
  if isinstance(module, nn.Linear) and name == "kernel":
    return value.T
  return value


_TORCH_NAME = {"kernel": "weight", "scale": "weight", "bias": "bias",
               "mean": "running_mean", "var": "running_var",
               "gamma": "gamma", "beta": "beta"}


def _to_flax(module: nn.Module, name: str, value: np.ndarray) -> np.ndarray:
  """Inverse of `_converted`: a torch tensor in flax's layout."""
  if isinstance(module, nn.ConvTranspose2d) and name == "kernel":
    return np.flip(value.transpose(2, 3, 0, 1), (0, 1))
  if isinstance(module, nn.Conv2d) and name == "kernel":
    return value.transpose(2, 3, 1, 0)
  if isinstance(module, nn.Linear) and name == "kernel":
    return value.T
  return value


def _target(model: nn.Module, key: str):
  """(module, flax leaf name, torch parameter or buffer) of a flax key."""
  _, *path, leaf = key.split("/")
  module = model.get_submodule(".".join(path))
  tensors = {**dict(module.named_parameters(recurse=False)),
             **dict(module.named_buffers(recurse=False))}
  return module, leaf, tensors[_TORCH_NAME[leaf]]


def flax_grads(model: nn.Module, keys) -> dict[str, np.ndarray]:
  """The gradients of `model`'s parameters under flax keys ('params/...'),
  in flax's layouts."""
  out = {}
  for key in keys:
    module, leaf, param = _target(model, key)
    out[key] = np.ascontiguousarray(
        _to_flax(module, leaf, param.grad.detach().numpy()))
  return out


def load_flax(model: nn.Module, variables: dict[str, np.ndarray]) -> None:
  """Copies flat flax variables {'params/a/b/kernel': array, 'batch_stats/
  a/mean': ...} into `model`; every flax leaf must land somewhere and every
  torch parameter must be set."""
  done = set()
  for key, value in variables.items():
    module, leaf, target = _target(model, key)
    value = np.ascontiguousarray(_converted(module, leaf, np.asarray(value)))
    if tuple(target.shape) != value.shape:
      raise ValueError(f"{key}: flax shape {value.shape} vs torch "
                       f"{tuple(target.shape)}")
    with torch.no_grad():
      target.copy_(torch.from_numpy(value))
    done.add(id(target))
  missing = [n for n, p in model.named_parameters() if id(p) not in done]
  if missing:
    raise ValueError(f"torch parameters not set from flax: {missing}")
