"""DCGAN (Radford et al. 2016) on CIFAR-10; the base of the GAN configs.

Strided convolutions instead of pooling, BatchNorm, LeakyReLU in the
discriminator, the non-saturating loss, Adam 2e-4 with beta1 0.5.

  python -m advjax.main --config=configs/dcgan_cifar10.py --workdir=/tmp/dcgan
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.trainer = "gan"
  config.seed = 0

  config.dataset = ml_collections.ConfigDict()
  config.dataset.name = "cifar10"
  config.dataset.data_dir = ""
  config.dataset.augment = False

  config.model = ml_collections.ConfigDict()
  config.model.name = "dcgan"
  config.model.latent_dim = 100
  config.model.conditional = False
  config.model.reference_batch_size = 64  # virtual batch norm's reference
  config.model.generator = ml_collections.ConfigDict(dict(width=64))
  config.model.discriminator = ml_collections.ConfigDict(dict(width=64))
  config.dtype = "float32"

  config.gan = ml_collections.ConfigDict()
  config.gan.loss = "nonsaturating"
  config.gan.critic_steps = 1
  config.gan.gradient_penalty = 0.0
  config.gan.weight_clip = 0.0
  config.gan.aux_weight_real = 0.0
  config.gan.aux_weight_fake = 0.0
  config.gan.aux_weight_g = 0.0
  config.gan.real_label = 1.0  # 0.9: one-sided label smoothing
  config.gan.feature_matching = 0.0
  config.gan.g_adversarial_weight = 1.0
  config.gan.historical_averaging = 0.0
  config.gan.instance_noise = 0.0
  config.gan.instance_noise_anneal_steps = 10000
  config.gan.ema_decay = 0.999

  config.batch_size = 64  # per critic step, global
  config.num_epochs = 25.0
  config.num_train_steps = -1  # generator steps; > 0 overrides num_epochs

  config.g_optimizer = ml_collections.ConfigDict(dict(
      name="adam", learning_rate=2e-4, b1=0.5, b2=0.999, schedule="constant",
      warmup_steps=0))
  config.d_optimizer = ml_collections.ConfigDict(dict(
      name="adam", learning_rate=2e-4, b1=0.5, b2=0.999, schedule="constant",
      warmup_steps=0))

  config.sample = ml_collections.ConfigDict()
  config.sample.num_columns = 10  # fixed latent vectors (columns of a grid)
  config.sample.classes = ()  # rows of a conditional grid; () = first 10

  config.eval = ml_collections.ConfigDict()
  config.eval.classifier_workdir = ""  # accuracy of a classifier on samples
  config.eval.samples_per_class = 100

  config.log_every_steps = 100
  config.eval_every_steps = 1000  # sample grids (and metrics) every N steps
  config.progress_bar = True

  config.checkpoint = ml_collections.ConfigDict()
  config.checkpoint.every_steps = 1000
  config.checkpoint.keep = 3
  config.checkpoint.best_metric = ""
  config.checkpoint.best_mode = "max"
  config.checkpoint.async_save = True
  return config
