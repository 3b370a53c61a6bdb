"""The study "Adversarial training with Unrestricted Adversarial Examples" on
CIFAR-100: DenseNet-BC-100 (k=12, configs/densenet_cifar100.py) trained with
one kind of adversarial training, chosen after the colon (with a seed:
`:fgsm,seed=1`):

  python -m advjax.main --config=configs/study_cifar100.py:fgsm \
      --workdir=/tmp/advjax/study_cifar100_fgsm

Modes: none and every adversary of `advjax.adversaries` that trains (fgsm,
pgd, gan, unrestricted, ...; see `advjax.adversarial_training`). Half of
each batch (prop 0.5) is replaced by the mode's examples, weighted 0.3 in the
loss (Kurakin et al. 2017). fgsm/pgd: L-inf eps 0.1 in [-1, 1] units; pgd 7
steps of 0.025 (Madry et al. 2018's CIFAR recipe). gan and unrestricted
sample the AC-WGAN-GP of configs/acgan_cifar100.py: train it first and point
`--config.adversarial_training.gan_workdir` at its workdir (the path below is a
placeholder). unrestricted crafts with the seed study's latent search
(`attacks.LATENT_PRESETS['seed']`: 500 steps of learning rate 0.1 per
batch, the last iterate), which makes it by far the slowest mode. The field's modes (trades,
mart, fgsm_rs) train on crafted examples only (prop 1) with their authors'
defaults at eps 0.1 (8/255 of the [0, 1] range is 0.063 here).
"""

import ml_collections

from configs import common, densenet_cifar100


def get_config(arg: str = "none") -> ml_collections.ConfigDict:
  mode = common.study_arg(arg)[0].partition("+")[0]
  config = common.study_classifier(
      densenet_cifar100.get_config(), arg,
      gan_workdir="/tmp/advjax/acgan_cifar100")  # placeholder path
  if mode in ("trades", "mart", "fgsm_rs"):
    config.adversarial_training.prop = 1.0
  return config
