"""DCGAN (Radford et al. 2016) on CIFAR-10; the base of the GAN configs.

Strided convolutions instead of pooling, BatchNorm, LeakyReLU in the
discriminator, the non-saturating loss, Adam 2e-4 with beta1 0.5.

  python -m advjax.main --config=configs/dcgan_cifar10.py --workdir=/tmp/dcgan
"""

import ml_collections

from configs import common


def get_config() -> ml_collections.ConfigDict:
  # batch_size: per critic step, global; num_train_steps counts generator
  # steps.
  config = common.experiment("gan", "cifar10", batch_size=64, num_epochs=25.0)
  # latent_dim 100, unconditional, a reference batch of 64 for virtual
  # batch norm: advjax.models.gans.ModelSettings.
  config.model = common.gan_model(name="dcgan", generator=dict(width=64),
                                  discriminator=dict(width=64))

  # Every trick of the GAN trainer, at its default (advjax.trainers.gan).
  config.gan = common.gan(loss="nonsaturating")
  config.g_optimizer = common.optimizer(name="adam", learning_rate=2e-4,
                                        b1=0.5)
  config.d_optimizer = common.optimizer(name="adam", learning_rate=2e-4,
                                        b1=0.5)

  # Grids of 10 fixed latent vectors (columns) by the first 10 classes
  # (rows); eval.classifier_workdir: accuracy of a classifier on 100 samples
  # per class (advjax.trainers.gan.SampleSettings / EvalSettings).
  config.sample = common.gan_sample()
  config.eval = common.gan_eval()

  config.eval_every_steps = 1000  # sample grids (and metrics) every N steps
  config.checkpoint = common.checkpoint(every_steps=1000)
  return config
