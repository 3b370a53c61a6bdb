"""DenseNet-BC-100 (k=12) on CIFAR-10, same recipe as densenet_cifar100.py.

  python -m advjax.main --config=configs/densenet_cifar10.py --workdir=/tmp/dn10
"""

import ml_collections

from configs import densenet_cifar100


def get_config() -> ml_collections.ConfigDict:
  config = densenet_cifar100.get_config()
  config.dataset.name = "cifar10"
  return config
