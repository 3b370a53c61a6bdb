"""The blocks every config repeats, in one place.

Config files import this with `from configs import common`. Every block
starts from the defaults of the settings dataclass that reads it
(`advjax.settings.to_block`): the root run settings and the dataset
(`advjax.run_settings`), checkpoints, optimisers, each trainer's block and
its `model` / `sample` / `eval` / `distill` blocks, adversarial training. So
each default is written once, in the library, and a config states only what
it changes.
"""

import ml_collections

from advjax import adversarial_training as adversarial_training_lib
from advjax import adversaries
from advjax import checkpoints
from advjax import optimizers
from advjax import run_settings
from advjax import settings
from advjax.errors import UserError
from advjax.models import gans
from advjax.trainers import classifier as classifier_trainer
from advjax.trainers import cyclegan as cyclegan_trainer
from advjax.trainers import gan as gan_trainer


def experiment(trainer: str, dataset_name: str, *, batch_size: int,
               dataset_fields=None, **fields) -> ml_collections.ConfigDict:
  """The top of every config (`advjax.run_settings.RunSettings`: trainer,
  seed, compute dtype, batch and length (`num_epochs`, `num_train_steps`),
  logging and evaluation intervals; `fields` change them), its dataset
  (`dataset_fields`: `advjax.run_settings.DatasetSettings`) and its
  checkpoint block."""
  config = settings.to_block(
      run_settings.RunSettings, trainer=trainer, batch_size=batch_size,
      dataset=run_settings.DatasetSettings(name=dataset_name,
                                           **(dataset_fields or {})),
      **fields)
  config.checkpoint = checkpoint()
  return config


def domain(name: str, **fields) -> ml_collections.ConfigDict:
  """One domain of two-domain data (`advjax.run_settings.DomainSettings`)."""
  return settings.to_block(run_settings.DomainSettings, name=name, **fields)


def checkpoint(**fields) -> ml_collections.ConfigDict:
  """Checkpoint intervals and retention (`advjax.checkpoints.Settings`)."""
  return settings.to_block(checkpoints.Settings, **fields)


def optimizer(**fields) -> ml_collections.ConfigDict:
  """An optimiser block (`advjax.optimizers.OptimizerSettings`)."""
  return settings.to_block(optimizers.OptimizerSettings, **fields)


def gan(**fields) -> ml_collections.ConfigDict:
  """The GAN trainer's block (`advjax.trainers.gan.Settings`)."""
  return settings.to_block(gan_trainer.Settings, **fields)


def gan_model(**fields) -> ml_collections.ConfigDict:
  """A GAN's `config.model` (`advjax.models.gans.ModelSettings`)."""
  return settings.to_block(gans.ModelSettings, **fields)


def gan_sample(**fields) -> ml_collections.ConfigDict:
  """A GAN's sample grids (`advjax.trainers.gan.SampleSettings`)."""
  return settings.to_block(gan_trainer.SampleSettings, **fields)


def gan_eval(**fields) -> ml_collections.ConfigDict:
  """A GAN's evaluation (`advjax.trainers.gan.EvalSettings`)."""
  return settings.to_block(gan_trainer.EvalSettings, **fields)


def cyclegan(**fields) -> ml_collections.ConfigDict:
  """The CycleGAN trainer's block (`advjax.trainers.cyclegan.Settings`)."""
  return settings.to_block(cyclegan_trainer.Settings, **fields)


def cyclegan_sample(**fields) -> ml_collections.ConfigDict:
  """A CycleGAN's translation grids
  (`advjax.trainers.cyclegan.SampleSettings`)."""
  return settings.to_block(cyclegan_trainer.SampleSettings, **fields)


def cyclegan_eval(**fields) -> ml_collections.ConfigDict:
  """A CycleGAN's evaluation (`advjax.trainers.cyclegan.EvalSettings`)."""
  return settings.to_block(cyclegan_trainer.EvalSettings, **fields)


def classifier_eval(**fields) -> ml_collections.ConfigDict:
  """A classifier's `config.eval`
  (`advjax.trainers.classifier.EvalSettings`)."""
  return settings.to_block(classifier_trainer.EvalSettings, **fields)


def distill(**fields) -> ml_collections.ConfigDict:
  """`config.distill` (`advjax.trainers.classifier.DistillSettings`)."""
  return settings.to_block(classifier_trainer.DistillSettings, **fields)


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


def study_classifier(base: ml_collections.ConfigDict, arg: str, *,
                     gan_workdir: str) -> ml_collections.ConfigDict:
  """A classifier of the study (experiments/study.py): the config `base`
  trained in a mode ('none' or an adversary that trains, with '+<source>'
  generated data in every batch: 'trades+gan', see
  `advjax.adversarial_training.GeneratedSettings`) with a seed, both from
  `arg` (`study_arg`: 'pgd' or 'pgd,seed=1'), with `eval`: accuracy on
  `gan_samples` class-balanced samples of the AC-GAN in `eval.gan_workdir`,
  logged while training (the study sets it)."""
  name, seed = study_arg(arg)
  try:
    mode, source = adversarial_training_lib.split_mode(name)
  except UserError as e:
    raise UserError(f"study {e}; pass it as --config=<this file>:<mode>"
                    ) from None
  config = base
  config.seed = int(config.seed) + seed
  config.adversarial_training = adversarial_training(
      mode, gan_workdir=gan_workdir)
  config.adversarial_training.generated.source = source
  config.eval = classifier_eval()
  return config
