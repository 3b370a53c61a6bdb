"""Defensive distillation (Papernot et al. 2016) on Fashion-MNIST, end to end.

Trains a teacher at softmax temperature T = 20, a student on its soft labels
at the same T, and compares both at T = 1 under FGSM
(`<workdir>/distillation.md`). About 12 minutes on a 2-core CPU.

  python -m advjax.main --config=configs/distillation_fashion_mnist.py \
      --workdir=/tmp/advjax/distillation
"""

import ml_collections

from configs import common, quickstart


def get_config() -> ml_collections.ConfigDict:
  config = quickstart.get_config()
  config.trainer = "distillation"
  config.temperature = 20.0
  config.num_epochs = 3.0
  # FGSM at eps 0.05, 0.1 and 0.2 on 2000 test images; the distillation
  # trainer sets teacher_workdir (advjax.trainers.classifier.DistillSettings).
  config.distill = common.distill()
  return config
