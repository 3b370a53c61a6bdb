"""Robust training on CIFAR-10 as the adversarial-training papers run it, for
accelerators: `get_config("<mode>[+<source>][,model=<model>][,seed=<s>]")`.

  python -m advjax.main --config=configs/robust_cifar10.py:trades --workdir=/tmp/trades
  python -m advjax.main --config=configs/robust_cifar10.py:trades+gan,model=wrn28_10 \\
      --config.adversarial_training.gan_workdir=<a CIFAR-10 AC-GAN run> --workdir=/tmp/trades_gan

Model: `preact18` (PreActResNet-18, Rice et al. 2020 and Wong et al. 2020;
the default) or `wrn28_10` (WRN-28-10, Gowal et al. 2021, Rebuffi et al.
2021). Recipe of Rice et al. 2020 ("Overfitting in adversarially robust
deep learning"): SGD momentum 0.9, learning rate 0.1 divided by 10 at 50% and
75% of 200 epochs, batch 128, weight decay 5e-4, crop and flip; eps 8/255 in
[0, 1] units (16/255 in the pipeline's [-1, 1]), training PGD of 10 steps of
2/255 (eps / 4). Every example is adversarial (`prop = 1`), as in those
papers. A mode with '+<source>' mixes generated data into every batch
(`adversarial_training.generated`, fraction 0.7 as Gowal et al.); sources
'gan' and 'unrestricted' need `adversarial_training.gan_workdir`, an AC-GAN
trained on CIFAR-10 (e.g. configs/acgan_cifar100.py with
`--config.dataset.name=cifar10`). `python experiments/benchmark.py
--configs=robust_cifar10,robust_cifar10:trades,model=wrn28_10` prints each
one's step time and FLOPs, and a time per epoch from them.
"""

import ml_collections

from advjax import adversarial_training as adversarial_training_lib
from advjax.errors import UserError
from configs import common

EPS = 16 / 255  # 8/255 of the [0, 1] range, in the pipeline's [-1, 1] units

MODELS = {
    "preact18": dict(name="preact_resnet", blocks=(2, 2, 2, 2), width=64),
    "wrn28_10": dict(name="wide_resnet", depth=28, widen=10),
}


def _parse(arg: str) -> tuple[str, str, int]:
  items = [a for a in str(arg).split(",") if a]
  values = {"model": "preact18", "seed": "0"}
  mode = items[0] if items and "=" not in items[0] else "trades"
  for item in items[1 if items and "=" not in items[0] else 0:]:
    key, sep, value = item.partition("=")
    if not sep or key not in values:
      raise UserError(f"robust_cifar10 argument {arg!r}: '{item}' is not "
                      f"model=... or seed=... (e.g. trades+gan,model="
                      f"wrn28_10)")
    values[key] = value
  if values["model"] not in MODELS:
    raise UserError(f"robust_cifar10: model must be one of {sorted(MODELS)}, "
                    f"not {values['model']!r}")
  try:
    return mode, values["model"], int(values["seed"])
  except ValueError:
    raise UserError(f"robust_cifar10 argument {arg!r}: seed must be an "
                    f"integer") from None


def get_config(arg: str = "trades") -> ml_collections.ConfigDict:
  name, model, seed = _parse(arg)
  mode, source = adversarial_training_lib.split_mode(name)
  config = common.experiment("classifier", "cifar10", batch_size=128,
                             num_epochs=200.0,
                             dataset_fields=dict(crop_flip=True))
  config.seed = seed
  config.model = ml_collections.ConfigDict(MODELS[model])
  config.eval_batch_size = 500
  config.optimizer = common.optimizer(
      name="sgd", learning_rate=0.1, momentum=0.9, nesterov=False,
      weight_decay=5e-4, schedule="piecewise", boundaries=(0.5, 0.75),
      decay_factor=0.1)
  config.checkpoint = common.checkpoint(best_metric="eval/accuracy")
  config.adversarial_training = common.adversarial_training(
      mode, gan_workdir="")
  adv = config.adversarial_training
  adv.prop = 1.0
  for block in (adv.pgd, adv.trades, adv.mart, adv.fgsm, adv.fgsm_rs):
    block.eps = EPS
  adv.pgd.num_steps = 10
  adv.pgd.rel_step_size = 0.25
  adv.generated.source = source
  return config
