"""Adversarial attacks on an image classifier, one module per family.

  gradient.py    FGSM (targeted, least-likely) and BIM/PGD under L-inf and L2
  latent.py      `unrestricted_attack`: searches a conditional GAN's latent
                 space instead of perturbing an image (Song et al. 2018)
  patch.py       `train_patch`: one universal adversarial patch (Brown et al.
                 2017), `apply_patch`, `random_positions`, `evaluate_patch`
  transfer.py    `transfer_attack`: crafts on a substitute and measures a
                 black-box target (Papernot et al. 2016/2017)
  autoattack.py  AutoAttack (Croce & Hein 2020): the cascade `autoattack`, its
                 versions and result, and its attacks, defined in apgd.py
                 (APGD, APGD-T), fab.py (FAB-T) and square.py (Square)
  _common.py     what they share: the input checks, compilation, per-example
                 arithmetic

Everything public is reached from here: `attacks.fgsm(...)`,
`attacks.unrestricted_attack(...)`, and AutoAttack's family through its one
home, `attacks.autoattack` (`attacks.autoattack.autoattack(...)`,
`attacks.autoattack.apgd(...)`, `attacks.autoattack.VERSIONS`).

The classifier is passed as `logits_fn(x) -> logits` ([B, H, W, C] -> [B, K]),
a closure over its variables, e.g.
`functools.partial(model.apply, variables, train=False)`, so every attack
differentiates with respect to the input only. Images are float32 NHWC in
[-1, 1] by default; every attack takes the valid input range as
`bounds=(low, high)` (e.g. `bounds=(0, 1)` for a model on [0, 1] images),
keeps its outputs in it, and measures eps in its units. Images outside the
bounds are refused; a batch with no negative pixel under the default bounds
gets a warning to pass `bounds=(0, 1)`. Labels are int32 class indices of
shape [B]. Every cross-entropy is
`losses.cross_entropy`, per example; an attack sums or averages it itself.

All attacks are pure and jit-able. Shape checks run always (shapes are static
even under `jax.jit`); value checks (eps >= 0, labels in range) run only when
the values are concrete, i.e. outside of tracing. A malformed input is a
one-line `UserError` that says how to fix it.
"""

from advjax.attacks import autoattack
from advjax.attacks._common import (DEFAULT_BOUNDS, NORMS, LogitsFn,
                                    check_attack_inputs,
                                    check_images_in_range)
from advjax.attacks.gradient import fgsm, fgsm_least_likely, pgd
from advjax.attacks.latent import PRESETS as LATENT_PRESETS
from advjax.attacks.latent import unrestricted_attack
from advjax.attacks.patch import (apply_patch, evaluate_patch,
                                  random_positions, train_patch)
from advjax.attacks.transfer import transfer_attack

__all__ = [
    "DEFAULT_BOUNDS", "LATENT_PRESETS", "LogitsFn", "NORMS", "apply_patch", "autoattack",
    "check_attack_inputs", "check_images_in_range", "evaluate_patch", "fgsm", "fgsm_least_likely", "pgd", "random_positions",
    "train_patch", "transfer_attack", "unrestricted_attack",
]
