"""Quickstart: a small CNN on Fashion-MNIST, about 10 minutes on a 2-core CPU.

Works offline: without a prepared dataset it builds tfds's fashion_mnist from
Debian's `dataset-fashion-mnist` files. Expect about 91-92% test accuracy.

  python -m advjax.main --config=configs/quickstart.py --workdir=/tmp/quickstart
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.trainer = "classifier"
  config.seed = 0

  config.dataset = ml_collections.ConfigDict()
  config.dataset.name = "fashion_mnist"
  config.dataset.data_dir = ""
  config.dataset.augment = False

  config.model = ml_collections.ConfigDict()
  config.model.name = "cnn"
  config.model.widths = (32, 64)
  config.model.convs_per_stage = 1
  config.model.hidden = 128
  config.model.dropout_rate = 0.3
  config.dtype = "float32"

  config.batch_size = 128
  config.eval_batch_size = 1000
  config.num_epochs = 5.0
  config.num_train_steps = -1
  config.label_smoothing = 0.0

  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.name = "adam"
  config.optimizer.learning_rate = 2e-3
  config.optimizer.weight_decay = 0.0
  config.optimizer.schedule = "cosine"
  config.optimizer.warmup_steps = 100

  config.log_every_steps = 50
  config.eval_every_steps = -1
  config.progress_bar = True

  config.checkpoint = ml_collections.ConfigDict()
  config.checkpoint.every_steps = -1
  config.checkpoint.keep = 2
  config.checkpoint.best_metric = "eval/accuracy"
  config.checkpoint.best_mode = "max"
  config.checkpoint.async_save = True
  return config
