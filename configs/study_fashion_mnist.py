"""The adversarial-training study (configs/study_cifar100.py) shrunk to
Fashion-MNIST and a 2-core CPU: the quickstart CNN for one epoch, one mode
per run:

  python -m advjax.main --config=configs/study_fashion_mnist.py:pgd \
      --workdir=/tmp/advjax/study_fm_pgd

The argument is the mode, optionally with a seed (`:pgd,seed=1`, added to
the config's seed): experiments/study.py trains this family, one run per
mode and seed. Modes: none and every adversary of `advjax.adversaries` that
trains (see `advjax.adversarial_training`); half of each batch replaced,
weight 0.3, as in the study. fgsm/pgd: L-inf eps 0.2 in [-1, 1] units (0.1 of the [0, 1]
range, the usual Fashion-MNIST budget). gan and unrestricted sample the
AC-GAN of configs/quickstart_gan.py: train it first with
--workdir=/tmp/advjax/gan (or set
--config.adversarial_training.gan_workdir).

CPU compromises: one epoch (468 steps) instead of the study's schedule; pgd
takes 3 steps of 0.1 (eps / 2) rather than 7 of eps / 4; unrestricted crafts
its training examples with 8 latent steps of learning rate 16 per batch
instead of the seed study's 500 of 0.1 (`attacks.LATENT_PRESETS['seed']`;
the other settings are the seed's, the last iterate kept). The latent
objective is a mean over the 64 crafted examples of a batch, so an example
moves by 16 / 64 of its gradient per step; of the rates tried (0.5 to 32),
16 came closest to the success of the former per-example steps of 0.5, and
larger rates amplify the Langevin noise and lose the auxiliary classifier.
The evaluation of every mode runs the seed's settings (experiments/study.py).
Times measured here: see experiments/results/.

The field's training modes (`trades`, `mart`, `fgsm_rs`, see
`advjax.adversaries`) train on crafted examples only (prop 1, the authors'
setting) at the same eps 0.2; TRADES and MART take 3 steps of eps / 2 (the
authors: 10 of about eps / 4), fast AT its step of 1.25 eps and logs
`eval/pgd_check_accuracy` at each evaluation.
"""

import ml_collections

from configs import common, quickstart


def get_config(arg: str = "none") -> ml_collections.ConfigDict:
  mode = common.study_arg(arg)[0].partition("+")[0]
  config = common.study_classifier(quickstart.get_config(), arg,
                                   gan_workdir="/tmp/advjax/gan")
  config.num_epochs = 1.0
  config.log_every_steps = 25
  # Test accuracy and accuracy on AC-GAN samples every 50 steps: the curves
  # of the study.
  config.eval_every_steps = 50
  adv = config.adversarial_training
  adv.fgsm.eps = adv.pgd.eps = 0.2
  adv.pgd.num_steps = 3
  adv.pgd.rel_step_size = 0.5
  adv.trades.eps = adv.mart.eps = adv.fgsm_rs.eps = 0.2
  adv.trades.num_steps = adv.mart.num_steps = 3
  adv.trades.rel_step_size = adv.mart.rel_step_size = 0.5
  if mode in ("trades", "mart", "fgsm_rs"):
    adv.prop = 1.0
  if mode == "unrestricted":
    adv.unrestricted.num_steps = 8
    adv.unrestricted.learning_rate = 16.0
  return config
