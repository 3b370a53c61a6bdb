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
placeholder). unrestricted runs 500 latent steps per batch (Song et al.
2018), which makes it by far the slowest mode.
"""

import ml_collections

from advjax import config_utils

common = config_utils.sibling("common")


def get_config(arg: str = "none") -> ml_collections.ConfigDict:
  return common.study_classifier(
      "densenet_cifar100", arg,
      gan_workdir="/tmp/advjax/acgan_cifar100")  # placeholder path
