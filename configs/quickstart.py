"""Quickstart: a small CNN on Fashion-MNIST, about 3 minutes on a 2-core CPU.

Works offline: without a prepared dataset it builds tfds's fashion_mnist from
Debian's `dataset-fashion-mnist` files. Expect about 91-92% test accuracy.

  python -m advjax.main --config=configs/quickstart.py --workdir=/tmp/quickstart
"""

import ml_collections

from configs import common


def get_config() -> ml_collections.ConfigDict:
  config = common.experiment("classifier", "fashion_mnist", batch_size=128,
                             num_epochs=5.0)
  config.model = ml_collections.ConfigDict(dict(
      name="cnn", widths=(32, 64), convs_per_stage=1, hidden=128,
      dropout_rate=0.3))
  config.eval_batch_size = 1000
  config.label_smoothing = 0.0
  config.optimizer = common.optimizer(name="adam", learning_rate=2e-3,
                                      schedule="cosine", warmup_steps=100)
  config.log_every_steps = 50
  config.checkpoint = common.checkpoint(keep=2, best_metric="eval/accuracy")
  return config
