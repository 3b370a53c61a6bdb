"""CycleGAN (Zhu et al. 2017) horse <-> zebra at 256x256: the paper's recipe.

ResNet translators with 9 residual blocks, 70x70 PatchGAN discriminators,
least-squares loss, cycle weight 10, identity weight 5 (0.5 x cycle), an
image pool of 50 past fakes, Adam 2e-4 with betas (0.5, 0.999), batch 1,
200 epochs: constant for 100, then linear decay to 0. For a TPU or GPU; tfds
downloads `cycle_gan/horse2zebra` (trainA/trainB/testA/testB) on first use.
With several devices, raise batch_size to a multiple of their number.

  python -m advjax.main --config=configs/cyclegan_horse2zebra.py --workdir=/tmp/h2z
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.trainer = "cyclegan"
  config.seed = 0

  config.dataset = ml_collections.ConfigDict()
  config.dataset.name = "cycle_gan/horse2zebra"
  config.dataset.data_dir = ""
  config.dataset.image_size = 256  # both domains resized to this (0 = as is)
  config.dataset.augment = False
  config.dataset.paired = False  # True: example i of A and of B are a pair
  # label >= 0 keeps only that class of the split.
  config.dataset.domain_a = ml_collections.ConfigDict(dict(
      name="cycle_gan/horse2zebra", train_split="trainA", eval_split="testA",
      label=-1))
  config.dataset.domain_b = ml_collections.ConfigDict(dict(
      name="cycle_gan/horse2zebra", train_split="trainB", eval_split="testB",
      label=-1))

  config.model = ml_collections.ConfigDict()
  config.model.name = "cyclegan"
  config.model.generator = ml_collections.ConfigDict(dict(
      width=64, num_blocks=9, num_downsample=2))
  config.model.discriminator = ml_collections.ConfigDict(dict(
      width=64, num_layers=3))
  config.dtype = "float32"

  config.cyclegan = ml_collections.ConfigDict()
  config.cyclegan.loss = "least_squares"  # or 'nonsaturating'
  config.cyclegan.cycle_weight = 10.0
  config.cyclegan.identity_weight = -1.0  # < 0: 0.5 x cycle_weight
  config.cyclegan.supervised_weight = 0.0  # L1 to the paired target
  config.cyclegan.pool_size = 50  # 0: no image pool
  config.cyclegan.pool_prob = 0.5

  config.batch_size = 1
  config.num_epochs = 200.0
  config.num_train_steps = -1  # > 0 overrides num_epochs

  config.g_optimizer = ml_collections.ConfigDict(dict(
      name="adam", learning_rate=2e-4, b1=0.5, b2=0.999,
      schedule="constant_then_linear", decay_start=0.5))
  config.d_optimizer = ml_collections.ConfigDict(dict(
      name="adam", learning_rate=2e-4, b1=0.5, b2=0.999,
      schedule="constant_then_linear", decay_start=0.5))

  config.sample = ml_collections.ConfigDict()
  config.sample.num_rows = 4  # test images in each translation grid

  config.eval = ml_collections.ConfigDict()
  config.eval.num_examples = 120  # test images per domain for the metrics
  config.eval.classifier_workdir = ""  # target-class rate of translations

  config.log_every_steps = 100
  config.eval_every_steps = 5000
  config.progress_bar = True

  config.checkpoint = ml_collections.ConfigDict()
  config.checkpoint.every_steps = 5000
  config.checkpoint.keep = 3
  config.checkpoint.best_metric = ""
  config.checkpoint.best_mode = "max"
  config.checkpoint.async_save = True
  return config
