"""WGAN with weight clipping (Arjovsky et al. 2017) on CIFAR-10.

Wasserstein critic loss E[C(G(z))] - E[C(x)], every critic weight clipped to
[-0.01, 0.01] after each update, 5 critic steps per generator step, RMSProp
with learning rate 5e-5 (the paper's recipe), DCGAN networks.

  python -m advjax.main --config=configs/wgan_clip_cifar10.py --workdir=/tmp/wgan
"""

import ml_collections

from configs import dcgan_cifar10


def get_config() -> ml_collections.ConfigDict:
  config = dcgan_cifar10.get_config()
  config.gan.loss = "wasserstein"
  config.gan.weight_clip = 0.01
  config.gan.critic_steps = 5
  config.num_train_steps = 100000
  for opt in (config.g_optimizer, config.d_optimizer):
    opt.name = "rmsprop"
    opt.learning_rate = 5e-5
  return config
