"""Defensive distillation (Papernot et al. 2016) on Fashion-MNIST, end to end.

Trains a teacher at softmax temperature T = 20, a student on its soft labels
at the same T, and compares both at T = 1 under FGSM
(`<workdir>/distillation.md`). About 12 minutes on a 2-core CPU.

  python -m advjax.main --config=configs/distillation_fashion_mnist.py \
      --workdir=/tmp/advjax/distillation
"""

import ml_collections

from advjax import config_utils


def get_config() -> ml_collections.ConfigDict:
  config = config_utils.base("quickstart")
  config.trainer = "distillation"
  config.temperature = 20.0
  config.num_epochs = 3.0
  config.distill = ml_collections.ConfigDict()
  config.distill.teacher_workdir = ""  # set by the distillation trainer
  config.distill.eval_eps = (0.05, 0.1, 0.2)
  config.distill.eval_examples = 2000
  return config
