"""The augmentation study (configs/study_cifar100.py) shrunk to Fashion-MNIST
and a 2-core CPU: the quickstart CNN for one epoch, one mode per run:

  python -m advjax.main --config=configs/study_fashion_mnist.py:pgd \
      --workdir=/tmp/advjax/study_fm_pgd

Modes: none, fgsm, pgd, gan, unrestricted (see `advjax.augment`); half of
each batch replaced, weight 0.3, as in the study. fgsm/pgd: L-inf eps 0.2 in
[-1, 1] units (0.1 of the [0, 1] range, the usual Fashion-MNIST budget).
gan and unrestricted sample the AC-GAN of configs/quickstart_gan.py: train it
first with --workdir=/tmp/advjax/gan (or set --config.augment.gan_workdir).

Timed (train steps only) on a 2-core CPU shared with other jobs: none, fgsm
and gan about 4 minutes, pgd and unrestricted about 7; an idle machine runs
the quickstart CNN about twice as fast, so expect roughly 2 and 3.5 minutes.

CPU compromises: one epoch instead of the study's schedule; pgd takes 3
steps of 0.1 (eps / 2) rather than 7 of eps / 4; unrestricted runs 20 latent
steps per batch instead of 500, on a quarter of each batch instead of half,
and for 100 steps (a fifth of an epoch): each of its steps costs about 8
plain ones (--config.num_train_steps=-1 trains the full epoch, in about half
an hour).
"""

import ml_collections

from advjax import augment, config_utils
from advjax.errors import UserError

MODES = ("none", "fgsm", "pgd", "gan", "unrestricted")


def get_config(mode: str = "none") -> ml_collections.ConfigDict:
  if mode not in MODES:
    raise UserError(f"study mode {mode!r} is not one of {MODES}; pass it as "
                    f"--config=<this file>:<mode>")
  config = config_utils.base("quickstart")
  config.num_epochs = 1.0
  config.log_every_steps = 25
  config.augment = ml_collections.ConfigDict(dict(augment.DEFAULTS))
  config.augment.mode = mode
  config.augment.eps = 0.2
  config.augment.pgd_steps = 3
  config.augment.pgd_step_size = 0.1
  config.augment.gan_workdir = "/tmp/advjax/gan"
  if mode == "unrestricted":
    config.augment.latent_steps = 20
    config.augment.prop = 0.25
    config.num_train_steps = 100
  return config
