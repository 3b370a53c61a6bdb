"""DenseNet-BC-100 (k=12) on CIFAR-100, the recipe of Huang et al. 2017.

SGD with Nesterov momentum 0.9, learning rate 0.1 divided by 10 at 50% and 75%
of 300 epochs, batch 64, weight decay 1e-4, crop+flip augmentation. This is the
classifier of the study "Adversarial training with Unrestricted Adversarial
Examples" (about 0.8M parameters).

  python -m advjax.main --config=configs/densenet_cifar100.py --workdir=/tmp/dn100
"""

import ml_collections

from configs import common


def get_config() -> ml_collections.ConfigDict:
  config = common.experiment("classifier", "cifar100", batch_size=64,
                             num_epochs=300.0,
                             dataset_fields=dict(crop_flip=True))
  config.model = ml_collections.ConfigDict(dict(
      name="densenet", depth=100, growth_rate=12, compression=0.5,
      bottleneck=True, dropout_rate=0.0))
  config.eval_batch_size = 500
  config.label_smoothing = 0.0
  config.optimizer = common.optimizer(
      name="sgd", learning_rate=0.1, momentum=0.9, nesterov=True,
      weight_decay=1e-4, schedule="piecewise", boundaries=(0.5, 0.75),
      decay_factor=0.1)
  config.checkpoint = common.checkpoint(best_metric="eval/accuracy")
  return config
