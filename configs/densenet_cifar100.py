"""DenseNet-BC-100 (k=12) on CIFAR-100, the recipe of Huang et al. 2017.

SGD with Nesterov momentum 0.9, learning rate 0.1 divided by 10 at 50% and 75%
of 300 epochs, batch 64, weight decay 1e-4, crop+flip augmentation. This is the
classifier of the study "Adversarial training with Unrestricted Adversarial
Examples" (about 0.8M parameters).

  python -m advjax.main --config=configs/densenet_cifar100.py --workdir=/tmp/dn100
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.trainer = "classifier"
  config.seed = 0

  config.dataset = ml_collections.ConfigDict()
  config.dataset.name = "cifar100"
  config.dataset.data_dir = ""  # '' = tfds default (~/tensorflow_datasets)
  config.dataset.augment = True

  config.model = ml_collections.ConfigDict()
  config.model.name = "densenet"
  config.model.depth = 100
  config.model.growth_rate = 12
  config.model.compression = 0.5
  config.model.bottleneck = True
  config.model.dropout_rate = 0.0
  config.dtype = "float32"  # compute dtype; 'bfloat16' on TPU/GPU

  config.batch_size = 64  # global, over all devices and hosts
  config.eval_batch_size = 500
  config.num_epochs = 300.0
  config.num_train_steps = -1  # > 0 overrides num_epochs
  config.label_smoothing = 0.0

  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.name = "sgd"
  config.optimizer.learning_rate = 0.1
  config.optimizer.momentum = 0.9
  config.optimizer.nesterov = True
  config.optimizer.weight_decay = 1e-4
  config.optimizer.schedule = "piecewise"
  config.optimizer.boundaries = (0.5, 0.75)
  config.optimizer.decay_factor = 0.1
  config.optimizer.warmup_steps = 0

  config.log_every_steps = 100
  config.eval_every_steps = -1  # -1: once per epoch
  config.progress_bar = True

  config.checkpoint = ml_collections.ConfigDict()
  config.checkpoint.every_steps = -1  # -1: once per epoch
  config.checkpoint.keep = 3
  config.checkpoint.best_metric = "eval/accuracy"
  config.checkpoint.best_mode = "max"
  config.checkpoint.async_save = True
  return config
