"""The MLP GAN of the course notes on CIFAR-10, with the original minimax loss.

100-d noise to a flattened 32x32x3 image through fully connected layers (tanh
output); the discriminator maps the flattened image to one probability. The
generator minimises the saturating loss log(1 - D(G(z))) of Goodfellow et al.
2014; the logged d_real and d_fake (mean D output) approach 0.5 when the game
is balanced.

  python -m advjax.main --config=configs/gan_mlp_cifar10.py --workdir=/tmp/mlp
"""

import ml_collections

from configs import dcgan_cifar10


def get_config() -> ml_collections.ConfigDict:
  config = dcgan_cifar10.get_config()
  config.model.name = "mlp"
  config.model.latent_dim = 100
  config.model.generator = ml_collections.ConfigDict(
      dict(hidden=(256, 512, 1024)))
  config.model.discriminator = ml_collections.ConfigDict(
      dict(hidden=(1024, 512, 256)))
  config.gan.loss = "minimax"
  return config
