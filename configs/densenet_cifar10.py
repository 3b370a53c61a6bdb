"""DenseNet-BC-100 (k=12) on CIFAR-10, same recipe as densenet_cifar100.py.

  python -m advjax.main --config=configs/densenet_cifar10.py --workdir=/tmp/dn10
"""

import importlib.util
import os

import ml_collections


def _load_sibling(name: str):
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), name + ".py")
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def get_config() -> ml_collections.ConfigDict:
  config = _load_sibling("densenet_cifar100").get_config()
  config.dataset.name = "cifar10"
  return config
