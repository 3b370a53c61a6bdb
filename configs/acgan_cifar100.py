"""The study's AC-WGAN-GP on CIFAR-100 (ResNet generator and critic).

Wasserstein loss with gradient penalty 10 (Gulrajani et al. 2017), 5 critic
steps per generator step, Adam 2e-4 with betas (0, 0.9) decayed linearly to 0
over 100k generator steps, batch 64; AC-GAN auxiliary classifier (Odena et
al. 2017) weighted 1.0 for the critic on real images and 0.1 for the
generator; 100 classes; width 256 (about 5M generator / 4M critic params).

  python -m advjax.main --config=configs/acgan_cifar100.py --workdir=/tmp/acgan
"""

import ml_collections

from configs import dcgan_cifar10


def get_config() -> ml_collections.ConfigDict:
  config = dcgan_cifar10.get_config()
  config.dataset.name = "cifar100"
  config.model.name = "resnet"
  config.model.latent_dim = 128
  config.model.conditional = True
  config.model.generator = ml_collections.ConfigDict(dict(width=256))
  config.model.discriminator = ml_collections.ConfigDict(dict(width=256))
  config.gan.loss = "wasserstein"
  config.gan.gradient_penalty = 10.0
  config.gan.critic_steps = 5
  config.gan.aux_weight_real = 1.0
  config.gan.aux_weight_fake = 0.0
  config.gan.aux_weight_g = 0.1
  config.gan.ema_decay = 0.0
  config.num_train_steps = 100000
  for opt in (config.g_optimizer, config.d_optimizer):
    opt.name = "adam"
    opt.learning_rate = 2e-4
    opt.b1 = 0.0
    opt.b2 = 0.9
    opt.schedule = "linear"
  config.sample.classes = tuple(range(0, 100, 10))
  config.eval_every_steps = 2000
  config.checkpoint.every_steps = 2000
  return config
