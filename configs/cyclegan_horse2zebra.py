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

from configs import common


def get_config() -> ml_collections.ConfigDict:
  config = common.experiment("cyclegan", "cycle_gan/horse2zebra",
                             batch_size=1, num_epochs=200.0)
  config.dataset.image_size = 256  # both domains resized to this (0 = as is)
  # Unpaired; a domain's label >= 0 would keep only that class of its split
  # (advjax.run_settings.DatasetSettings / DomainSettings).
  config.dataset.domain_a = common.domain(
      "cycle_gan/horse2zebra", train_split="trainA", eval_split="testA")
  config.dataset.domain_b = common.domain(
      "cycle_gan/horse2zebra", train_split="trainB", eval_split="testB")

  config.model = ml_collections.ConfigDict()
  config.model.name = "cyclegan"
  config.model.generator = ml_collections.ConfigDict(dict(
      width=64, num_blocks=9, num_downsample=2))
  config.model.discriminator = ml_collections.ConfigDict(dict(
      width=64, num_layers=3))

  # least_squares (or any registered loss), cycle weight 10, identity weight
  # 0.5 x cycle (identity_weight < 0), pool of 50: advjax.trainers.cyclegan.
  config.cyclegan = common.cyclegan()

  config.g_optimizer = common.optimizer(
      name="adam", learning_rate=2e-4, b1=0.5, b2=0.999,
      schedule="constant_then_linear", decay_start=0.5)
  config.d_optimizer = common.optimizer(
      name="adam", learning_rate=2e-4, b1=0.5, b2=0.999,
      schedule="constant_then_linear", decay_start=0.5)

  # 4 test images in each translation grid; the metrics on 120 test images
  # per domain; eval.classifier_workdir: the target-class rate of
  # translations (advjax.trainers.cyclegan.SampleSettings / EvalSettings).
  config.sample = common.cyclegan_sample(num_rows=4)
  config.eval = common.cyclegan_eval(num_examples=120)

  config.eval_every_steps = 5000
  config.checkpoint = common.checkpoint(every_steps=5000)
  return config
