"""DCGAN (Radford et al. 2016) on CIFAR-10; the base of the GAN configs.

Strided convolutions instead of pooling, BatchNorm, LeakyReLU in the
discriminator, the non-saturating loss, Adam 2e-4 with beta1 0.5.

  python -m advjax.main --config=configs/dcgan_cifar10.py --workdir=/tmp/dcgan
"""

import ml_collections

from advjax import config_utils

common = config_utils.sibling("common")


def get_config() -> ml_collections.ConfigDict:
  # batch_size: per critic step, global; num_train_steps counts generator
  # steps.
  config = common.experiment("gan", "cifar10", batch_size=64, num_epochs=25.0)
  config.model = ml_collections.ConfigDict()
  config.model.name = "dcgan"
  config.model.latent_dim = 100
  config.model.conditional = False
  config.model.reference_batch_size = 64  # virtual batch norm's reference
  config.model.generator = ml_collections.ConfigDict(dict(width=64))
  config.model.discriminator = ml_collections.ConfigDict(dict(width=64))

  # Every trick of the GAN trainer, at its default (advjax.trainers.gan).
  config.gan = common.gan(loss="nonsaturating")
  config.g_optimizer = common.optimizer(name="adam", learning_rate=2e-4,
                                        b1=0.5)
  config.d_optimizer = common.optimizer(name="adam", learning_rate=2e-4,
                                        b1=0.5)

  config.sample = ml_collections.ConfigDict()
  config.sample.num_columns = 10  # fixed latent vectors (columns of a grid)
  config.sample.classes = ()  # rows of a conditional grid; () = first 10

  config.eval = ml_collections.ConfigDict()
  config.eval.classifier_workdir = ""  # accuracy of a classifier on samples
  config.eval.samples_per_class = 100

  config.eval_every_steps = 1000  # sample grids (and metrics) every N steps
  config.checkpoint = common.checkpoint(every_steps=1000)
  return config
