"""Conditional GAN (Mirza & Osindero 2014) on Fashion-MNIST.

The one-hot label is concatenated to z and given to the discriminator as
extra input channels; DCGAN networks for 28x28x1 images.

  python -m advjax.main --config=configs/cgan_fashion_mnist.py --workdir=/tmp/cgan
"""

import ml_collections

from configs import dcgan_cifar10


def get_config() -> ml_collections.ConfigDict:
  config = dcgan_cifar10.get_config()
  config.dataset.name = "fashion_mnist"
  config.model.conditional = True
  config.model.latent_dim = 64
  config.num_epochs = 10.0
  return config
