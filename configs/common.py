"""The blocks every config repeats, in one place.

Config files import this with `common = config_utils.sibling("common")`.
Blocks of settings the library reads into a dataclass (optimisers, the GAN
and CycleGAN trainers, adversarial training) start from that dataclass's
defaults, so each default is written once, in the library; a config states
only what it changes.
"""

import ml_collections

from advjax import adversarial_training as adversarial_training_lib
from advjax import adversaries
from advjax import checkpoints
from advjax import config_utils
from advjax import optimizers
from advjax import settings
from advjax.errors import UserError
from advjax.trainers import cyclegan as cyclegan_trainer
from advjax.trainers import gan as gan_trainer


def experiment(trainer: str, dataset_name: str, *, batch_size: int,
               num_epochs: float = -1.0, num_train_steps: int = -1,
               crop_flip: bool = False) -> ml_collections.ConfigDict:
  """The top of every config: trainer, seed, dataset, compute dtype, batch
  and length, logging, evaluation and checkpoint intervals."""
  config = ml_collections.ConfigDict()
  config.trainer = trainer
  config.seed = 0
  config.dataset = dataset(dataset_name, crop_flip=crop_flip)
  config.dtype = "float32"  # compute dtype; 'bfloat16' on TPU/GPU
  config.batch_size = batch_size  # global, over all devices and hosts
  config.num_epochs = float(num_epochs)
  config.num_train_steps = num_train_steps  # > 0 overrides num_epochs
  config.log_every_steps = 100
  config.eval_every_steps = -1  # -1: once per epoch
  config.progress_bar = True
  config.checkpoint = checkpoint()
  return config


def dataset(name: str, *, crop_flip: bool = False
            ) -> ml_collections.ConfigDict:
  """A tfds dataset; data_dir '' = tfds's default (~/tensorflow_datasets);
  crop_flip: random crop with 4-pixel padding and horizontal flip (CIFAR)."""
  return ml_collections.ConfigDict(dict(name=name, data_dir="",
                                        crop_flip=crop_flip))


def checkpoint(**fields) -> ml_collections.ConfigDict:
  """Checkpoint intervals and retention (`advjax.checkpoints.Settings`)."""
  return settings.to_block(checkpoints.Settings, **fields)


def optimizer(**fields) -> ml_collections.ConfigDict:
  """An optimiser block (`advjax.optimizers.OptimizerSettings`)."""
  return settings.to_block(optimizers.OptimizerSettings, **fields)


def gan(**fields) -> ml_collections.ConfigDict:
  """The GAN trainer's block (`advjax.trainers.gan.Settings`)."""
  return settings.to_block(gan_trainer.Settings, **fields)


def cyclegan(**fields) -> ml_collections.ConfigDict:
  """The CycleGAN trainer's block (`advjax.trainers.cyclegan.Settings`)."""
  return settings.to_block(cyclegan_trainer.Settings, **fields)


def adversarial_training(mode: str = "none",
                         **fields) -> ml_collections.ConfigDict:
  """`config.adversarial_training`: the mixing settings and every
  adversary's settings under its name (`advjax.adversarial_training`)."""
  return adversarial_training_lib.default_block(mode, **fields)


def study_arg(arg: str) -> tuple[str, int]:
  """(mode, seed) of a study config's argument: 'pgd', 'pgd,seed=1' or
  'mode=pgd,seed=1'."""
  values = {"mode": "none", "seed": "0"}
  for i, item in enumerate(filter(None, str(arg).split(","))):
    key, sep, value = item.partition("=")
    if not sep and i == 0:
      key, value = "mode", key
    if key not in values:
      raise UserError(f"study config argument {arg!r}: '{key}' is not one "
                      f"of {sorted(values)} (e.g. pgd,seed=1)")
    values[key] = value.strip()
  try:
    return values["mode"], int(values["seed"])
  except ValueError:
    raise UserError(f"study config argument {arg!r}: seed must be an "
                    f"integer") from None


def study_classifier(base: str, arg: str, *,
                     gan_workdir: str) -> ml_collections.ConfigDict:
  """A classifier of the study (experiments/study.py): config `base` trained
  in a mode ('none' or an adversary that trains) with a seed, both from
  `arg` (`study_arg`: 'pgd' or 'pgd,seed=1'), with `eval`: accuracy on
  `gan_samples` class-balanced samples of the AC-GAN in `eval.gan_workdir`,
  logged while training (the study sets it)."""
  mode, seed = study_arg(arg)
  if mode not in adversaries.training_modes():
    raise UserError(f"study mode {mode!r} is not one of "
                    f"{adversaries.training_modes()}; pass it as "
                    f"--config=<this file>:<mode>")
  config = config_utils.base(base)
  config.seed = int(config.seed) + seed
  config.adversarial_training = adversarial_training(
      mode, gan_workdir=gan_workdir)
  config.eval = ml_collections.ConfigDict(dict(gan_workdir="",
                                               gan_samples=1000))
  return config
