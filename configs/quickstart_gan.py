"""Quickstart GAN: an AC-GAN on Fashion-MNIST, about 2 minutes on a 2-core CPU.

DCGAN networks at 28x28; the generator gets the class (one-hot, with z), the
discriminator has a real/fake head and a 10-way class head (Odena et al. 2017:
both players are rewarded for the right class on real and fake images).
Non-saturating loss, Adam 2e-4 (beta1 0.5), samples from an exponential
moving average of the generator. Sample grids (a row per class, a column per
fixed latent vector) land in <workdir>/images.

  python -m advjax.main --config=configs/quickstart_gan.py --workdir=/tmp/advjax/gan
"""

import ml_collections

from configs import dcgan_cifar10


def get_config() -> ml_collections.ConfigDict:
  config = dcgan_cifar10.get_config()
  config.dataset.name = "fashion_mnist"
  config.model.name = "dcgan"
  config.model.latent_dim = 64
  config.model.conditional = True
  config.model.generator = ml_collections.ConfigDict(dict(width=32))
  config.model.discriminator = ml_collections.ConfigDict(dict(
      width=32, conditional=False, aux_classifier=True))
  config.gan.loss = "nonsaturating"
  config.gan.critic_steps = 1
  config.gan.aux_weight_real = 1.0
  config.gan.aux_weight_fake = 1.0
  config.gan.aux_weight_g = 1.0
  config.gan.ema_decay = 0.999
  config.batch_size = 64
  config.num_epochs = 2.5
  config.num_train_steps = -1
  # config.eval.classifier_workdir: e.g. /tmp/advjax/quickstart
  config.log_every_steps = 100
  config.eval_every_steps = 500
  config.checkpoint.every_steps = 500
  return config
