"""The root of a config, read once: `RunSettings`.

Every config's own top-level fields (trainer, seed, compute dtype, batch size,
length, logging and evaluation intervals, the classifier's loss settings) and
its `dataset` and `distributed` blocks have one reader, `read(config)`, and
one owner for their defaults, the fields below. The other top-level entries
are blocks with their own dataclasses (`BLOCKS`: `model`, `optimizer`,
`checkpoint`, `gan`, `sample`, `eval`, ...), read by the trainer that uses
them. `configs/common.py:experiment` builds the root with
`settings.to_block(RunSettings, ...)`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import ml_collections

from advjax import settings as settings_lib
from advjax.errors import UserError

COMPUTE_DTYPES = ("float32", "bfloat16")
_extends = settings_lib.extends_run

# Top-level entries that are blocks of their own (read elsewhere).
BLOCKS = ("model", "optimizer", "g_optimizer", "d_optimizer", "checkpoint",
          "gan", "cyclegan", "adversarial_training", "sample", "eval",
          "distill", "ema")


@dataclasses.dataclass(frozen=True)
class DomainSettings:
  """One domain of a two-domain (CycleGAN) dataset: a tfds dataset, its
  train and eval splits, and `label` >= 0 to keep only that class."""
  name: str = ""
  train_split: str = "train"
  eval_split: str = "test"
  label: int = -1


@dataclasses.dataclass(frozen=True)
class DatasetSettings:
  """`config.dataset`: a tfds dataset.

  data_dir: '' = tfds's default (~/tensorflow_datasets); crop_flip: random
  crop with 4-pixel padding and horizontal flip (CIFAR). Two-domain data
  (CycleGAN): domain_a / domain_b, image_size (both resized to it; 0 = as
  is) and paired (example i of A and of B are a pair).
  """
  name: str = ""
  data_dir: str = _extends("", "where the same dataset is read from")
  crop_flip: bool = False
  image_size: int = 0
  paired: bool = False
  domain_a: DomainSettings | None = settings_lib.block_field(
      DomainSettings, default_none=True)
  domain_b: DomainSettings | None = settings_lib.block_field(
      DomainSettings, default_none=True)

  def __post_init__(self):
    if not self.name:
      raise UserError("name is required (a tfds dataset such as "
                      "'fashion_mnist')")
    settings_lib.check_nonnegative(self, "image_size")


@dataclasses.dataclass(frozen=True)
class DistributedSettings:
  """`config.distributed` (multi-host runs; command-line flags win):
  coordinator_address host:port of process 0 ('' = unset), num_processes
  and process_id (-1 = unset), auto: let jax.distributed discover them."""
  coordinator_address: str = ""
  num_processes: int = -1
  process_id: int = -1
  auto: bool = False


@settings_lib.register("")
@dataclasses.dataclass(frozen=True)
class RunSettings:
  """The root of a config.

  trainer: `advjax.trainers.TRAINERS`; seed: fixes the data order,
  initialisation and every random draw; dtype: compute dtype ('bfloat16' on
  TPU/GPU; parameters and losses stay float32); batch_size: global, over
  all devices and hosts; num_train_steps: > 0 overrides num_epochs;
  eval_every_steps: <= 0 = once per epoch; eval_batch_size: 0 = batch_size;
  label_smoothing and temperature: the classifier's cross-entropy (softmax
  temperature T; defensive distillation trains at T > 1).
  """
  trainer: str = "classifier"
  seed: int = 0
  dtype: str = "float32"
  batch_size: int = 0
  num_epochs: float = _extends(-1.0, "length of the run")
  num_train_steps: int = _extends(-1, "length of the run")
  log_every_steps: int = _extends(100, "logging interval")
  eval_every_steps: int = _extends(-1, "evaluation interval")
  eval_batch_size: int = _extends(0, "evaluation only")
  progress_bar: bool = _extends(True, "display only")
  label_smoothing: float = 0.0
  temperature: float = 1.0
  dataset: DatasetSettings | None = settings_lib.block_field(
      DatasetSettings, default_none=True)
  distributed: DistributedSettings | None = settings_lib.block_field(
      DistributedSettings, default_none=True)

  def __post_init__(self):
    settings_lib.check_choice(self, "dtype", COMPUTE_DTYPES)
    settings_lib.check_positive(self, "batch_size", "log_every_steps")
    settings_lib.check_nonnegative(self, "eval_batch_size")
    settings_lib.check_in_unit_interval(self, "label_smoothing")
    settings_lib.check_positive(self, "temperature")
    if self.num_train_steps <= 0 and not self.num_epochs > 0:
      raise UserError("num_train_steps or num_epochs must be > 0, got "
                      f"{self.num_train_steps} and {self.num_epochs}")

  def total_steps(self, steps_per_epoch: int) -> int:
    """`num_train_steps` if positive, else `num_epochs` epochs."""
    if self.num_train_steps > 0:
      return self.num_train_steps
    return max(int(math.ceil(self.num_epochs * steps_per_epoch)), 1)

  @property
  def data_dir(self) -> str | None:
    """The dataset's data_dir, None for tfds's default."""
    return (self.dataset.data_dir if self.dataset else "") or None


def read(config: ml_collections.ConfigDict | dict[str, Any]) -> RunSettings:
  """The `RunSettings` of the root `config` (its blocks are left to their
  readers)."""
  root = {k: v for k, v in settings_lib.plain(config).items()
          if k not in BLOCKS}
  return settings_lib.from_block(RunSettings, root, "")
