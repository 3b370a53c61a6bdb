"""Adversarially augmented classifier training.

The study "Adversarial training with Unrestricted Adversarial Examples" trains
a classifier on batches in which a fraction `prop` of the examples is replaced
by (or, with `replace=False`, joined by) examples of one of these modes:

  none          plain training;
  fgsm          FGSM (Goodfellow et al. 2015) of the real images, against the
                current parameters;
  pgd           L-inf PGD (Madry et al. 2018) of the real images, likewise;
  gan           samples G(z, y) of a frozen AC-GAN for the replaced examples'
                labels y (z ~ N(0, I));
  unrestricted  unrestricted adversarial examples (Song et al. 2018): the
                latent search `attacks.unrestricted_attack` against the
                current classifier, from random z, for those labels.

The loss is the weighted one of Kurakin, Goodfellow & Bengio 2017
("Adversarial Machine Learning at Scale"), which the study uses:

  L = (n_c * CE_clean + w * n_a * CE_aug) / (n_c + w * n_a)

with n_c clean and n_a augmented examples in the batch, CE_clean / CE_aug the
mean cross-entropies over each part and w = `adv_weight`.

Config (`config.augment`, optional; absent means mode 'none'), defaults in
`DEFAULTS`:
  mode, prop (0.5), adv_weight (0.3), replace (True);
  eps (0.1, L-inf radius in [-1, 1] image units: about 13/255 of the [0, 1]
    range, between the 8/255 of Madry et al. and 16/255 of Kurakin et al.);
  pgd_steps (7) and pgd_step_size (0.025 = eps / 4), pgd_random_start (True),
    Madry et al.'s CIFAR-10 recipe of 7 steps;
  gan_workdir (the AC-GAN run to sample from), gan_ema (True: the moving
    average of the generator's weights when the run kept one);
  latent_steps (500), latent_lr (0.1), eps_z (0.1), lambda_z (0.1),
    lambda_aux (0.1), noise_eps (0.0), langevin (True): the arguments of
    `attacks.unrestricted_attack` (untargeted, source = the true label).

Fgsm and pgd attack the true labels. Every crafted example is used, whether
or not it fools the model; for 'unrestricted' the logged
`attack_success_rate` says how many did.

The augmented examples are the first `round(prop * b)` of each device's `b`
examples (batches are shuffled, so this is a random subset). The attacks run
with BatchNorm in inference mode (running statistics, no update) and no
gradient reaches the parameters through them.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax

from advjax import attacks
from advjax.errors import UserError

DEFAULTS = dict(
    mode="none", prop=0.5, adv_weight=0.3, replace=True,
    eps=0.1, pgd_steps=7, pgd_step_size=0.025, pgd_random_start=True,
    gan_workdir="", gan_ema=True,
    latent_steps=500, latent_lr=0.1, eps_z=0.1, lambda_z=0.1,
    lambda_aux=0.1, noise_eps=0.0, langevin=True)


@dataclasses.dataclass(frozen=True)
class Augmenter:
  """The static part of an augmentation (settings and frozen GAN modules).

  The frozen GAN's variables are arrays and travel separately (in
  `TrainState.augment_vars`), so the compiled step takes them as inputs.
  """
  mode: str
  prop: float = 0.5
  adv_weight: float = 0.3
  replace: bool = True
  eps: float = 0.1
  pgd_steps: int = 7
  pgd_step_size: float = 0.025
  pgd_random_start: bool = True
  latent_steps: int = 500
  latent_lr: float = 0.1
  eps_z: float = 0.1
  lambda_z: float = 0.1
  lambda_aux: float = 0.1
  noise_eps: float = 0.0
  langevin: bool = True
  latent_dim: int = 0
  generator: Any = None
  discriminator: Any = None

  def num_augmented(self, batch_size: int) -> int:
    """Augmented examples among a device's `batch_size`: round(prop * b)."""
    if self.mode == "none":
      return 0
    return int(math.floor(self.prop * batch_size + 0.5))


# ---------------------------------------------------------------------------
# The modes: (augmenter, logits_fn, images, labels, rng, augment_vars) ->
# (augmented images, extra outputs).

ModeFn = Callable[..., tuple[jax.Array, dict[str, jax.Array]]]


def _fgsm(aug, logits_fn, images, labels, rng, augment_vars):
  del rng, augment_vars
  return attacks.fgsm(logits_fn, images, labels, aug.eps), {}


def _pgd(aug, logits_fn, images, labels, rng, augment_vars):
  del augment_vars
  return attacks.pgd(logits_fn, images, labels, rng, eps=aug.eps,
                     step_size=aug.pgd_step_size, num_steps=aug.pgd_steps,
                     random_start=aug.pgd_random_start), {}


def _generate_fn(aug, augment_vars):
  gen, variables = aug.generator, augment_vars["generator"]
  return lambda z, y: gen.apply(variables, z, y, train=False)


def _latents(aug, rng, n):
  from advjax import gan_train  # pylint: disable=g-import-not-at-top
  return gan_train.sample_latents(rng, n, aug.latent_dim)


def _gan(aug, logits_fn, images, labels, rng, augment_vars):
  del logits_fn
  z = _latents(aug, rng, images.shape[0])
  out = _generate_fn(aug, augment_vars)(z, labels)
  return out.astype(jnp.float32), {"latents": z}


def _unrestricted(aug, logits_fn, images, labels, rng, augment_vars):
  z_rng, attack_rng = jax.random.split(rng)
  z0 = _latents(aug, z_rng, images.shape[0])
  disc, d_vars = aug.discriminator, augment_vars["discriminator"]
  aux_logits_fn = lambda x: disc.apply(d_vars, x, None, train=False)["logits"]
  out = attacks.unrestricted_attack(
      _generate_fn(aug, augment_vars), aux_logits_fn, logits_fn, z0, labels,
      attack_rng, num_steps=aug.latent_steps, learning_rate=aug.latent_lr,
      eps_z=aug.eps_z, lambda_z=aug.lambda_z, lambda_aux=aug.lambda_aux,
      noise_eps=aug.noise_eps, langevin=aug.langevin)
  return out["images"].astype(jnp.float32), {
      "latents": z0, "success": out["success"]}


# name -> mode function; `register_mode` adds more.
MODES: dict[str, ModeFn | None] = {
    "none": None, "fgsm": _fgsm, "pgd": _pgd, "gan": _gan,
    "unrestricted": _unrestricted,
}
_GAN_MODES = ("gan", "unrestricted")


def register_mode(name: str, fn: ModeFn) -> None:
  """Makes `config.augment.mode == name` call `fn` (signature as `_fgsm`)."""
  if name in MODES:
    raise ValueError(f"augmentation mode '{name}' is already registered")
  MODES[name] = fn


def augment_batch(aug: Augmenter, logits_fn: Callable[[jax.Array], jax.Array],
                  batch: dict[str, jax.Array], rng: jax.Array,
                  augment_vars: Any = None) -> dict[str, Any]:
  """This device's training batch with its augmented examples.

  `logits_fn(x)` is the current classifier in inference mode. The first
  k = round(prop * b) examples are the sources of the augmented ones; with
  `replace` the rest stay clean (n_c = b - k), else all b do (n_c = b).

  Returns a dict: 'image' and 'label' ([n_c + n_a, ...], clean first), the
  static ints 'num_clean' and 'num_aug', 'source_image' (the k real images
  the augmented examples stand for) and the mode's extras ('latents',
  'success').
  """
  images, labels = batch["image"], batch["label"]
  b = images.shape[0]
  k = aug.num_augmented(b)
  clean_images, clean_labels = ((images[k:], labels[k:]) if aug.replace
                                else (images, labels))
  out = {"num_clean": clean_images.shape[0], "num_aug": k,
         "source_image": images[:k]}
  if k == 0:
    out.update(image=clean_images, label=clean_labels)
    return out
  aug_images, extras = MODES[aug.mode](aug, logits_fn, images[:k], labels[:k],
                                       rng, augment_vars)
  aug_images = jax.lax.stop_gradient(aug_images)
  out.update(extras)
  out["image"] = jnp.concatenate([clean_images, aug_images], axis=0)
  out["label"] = jnp.concatenate([clean_labels, labels[:k]], axis=0)
  return out


def weighted_loss(ce_clean: jax.Array, ce_aug: jax.Array, num_clean: int,
                  num_aug: int, adv_weight: float) -> jax.Array:
  """(n_c * CE_clean + w * n_a * CE_aug) / (n_c + w * n_a), Kurakin et al.
  2017; `ce_*` are the mean cross-entropies of each part."""
  w = adv_weight
  return ((num_clean * ce_clean + w * num_aug * ce_aug)
          / (num_clean + w * num_aug))


def split_losses(per_example: jax.Array, logits: jax.Array,
                 labels: jax.Array, num_clean: int, num_aug: int,
                 adv_weight: float) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The weighted loss and the clean/augmented metrics of one device.

  `per_example` is the cross-entropy of each example, clean ones first.
  """
  correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
  ce_clean = per_example[:num_clean].mean()
  ce_aug = per_example[num_clean:].mean()
  loss = weighted_loss(ce_clean, ce_aug, num_clean, num_aug, adv_weight)
  metrics = {"clean_loss": ce_clean, "clean_accuracy": correct[:num_clean].mean(),
             "aug_loss": ce_aug, "aug_accuracy": correct[num_clean:].mean()}
  return loss, metrics


def per_example_ce(logits: jax.Array, labels: jax.Array,
                   label_smoothing: float = 0.0) -> jax.Array:
  """Softmax cross-entropy of each example (float32), optionally smoothed."""
  num_classes = logits.shape[-1]
  targets = jax.nn.one_hot(labels, num_classes)
  if label_smoothing:
    targets = targets * (1 - label_smoothing) + label_smoothing / num_classes
  return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)


# ---------------------------------------------------------------------------
# Building an augmenter from a config.


def settings(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """`config.augment` over `DEFAULTS`; unknown fields are an error."""
  given = config.get("augment") or {}
  if isinstance(given, ml_collections.ConfigDict):
    given = given.to_dict()
  unknown = sorted(set(given) - set(DEFAULTS))
  if unknown:
    raise UserError(f"config.augment has no field(s) {unknown}; its fields "
                    f"are {sorted(DEFAULTS)}")
  return dict(DEFAULTS, **given)


def _check(s: dict[str, Any]) -> None:
  if s["mode"] not in MODES:
    raise UserError(f"config.augment.mode {s['mode']!r} is not one of "
                    f"{sorted(MODES)}")
  if not 0.0 <= float(s["prop"]) <= 1.0:
    raise UserError(f"config.augment.prop must lie in [0, 1], got {s['prop']}")
  for name in ("adv_weight", "eps", "pgd_step_size", "latent_lr", "eps_z",
               "lambda_z", "lambda_aux", "noise_eps"):
    if float(s[name]) < 0:
      raise UserError(f"config.augment.{name} must be >= 0, got {s[name]}")
  for name in ("pgd_steps", "latent_steps"):
    if int(s[name]) != s[name] or s[name] < 0:
      raise UserError(f"config.augment.{name} must be an int >= 0, got "
                      f"{s[name]}")


def from_config(config: ml_collections.ConfigDict, num_classes: int,
                image_shape: tuple[int, ...]
                ) -> tuple[Augmenter | None, dict[str, Any]]:
  """The augmenter of `config.augment` and its frozen variables.

  (None, {}) for mode 'none'. For 'gan' and 'unrestricted' the AC-GAN of
  `gan_workdir` is restored once; it must generate `image_shape` images of
  the classifier's `num_classes` classes.
  """
  s = settings(config)
  _check(s)
  if s["mode"] == "none":
    return None, {}
  fields = {f.name for f in dataclasses.fields(Augmenter)}
  kwargs = {k: v for k, v in s.items() if k in fields}
  kwargs.update(prop=float(s["prop"]), adv_weight=float(s["adv_weight"]),
                pgd_steps=int(s["pgd_steps"]),
                latent_steps=int(s["latent_steps"]))
  augment_vars: dict[str, Any] = {}
  if s["mode"] in _GAN_MODES:
    restored = _restore_gan(s, num_classes, image_shape)
    from advjax import gan_train  # pylint: disable=g-import-not-at-top
    kwargs.update(latent_dim=gan_train.latent_dim(restored.config),
                  generator=restored.generator)
    augment_vars["generator"] = restored.generator_variables(
        ema=bool(s["gan_ema"]))
    if s["mode"] == "unrestricted":
      restored.aux_logits_fn()  # raises unless it is an AC-GAN
      kwargs["discriminator"] = restored.discriminator
      augment_vars["discriminator"] = restored.discriminator_variables()
  return Augmenter(**kwargs), augment_vars


def _restore_gan(s, num_classes, image_shape):
  from advjax import checkpoints, input_pipeline  # pylint: disable=g-import-not-at-top
  workdir = s["gan_workdir"]
  if not workdir:
    raise UserError(f"config.augment.mode '{s['mode']}' needs "
                    f"config.augment.gan_workdir, the work directory of a "
                    f"trained AC-GAN")
  restored = checkpoints.restore(workdir)
  restored._require("gan")  # pylint: disable=protected-access
  info = input_pipeline.get_dataset_info(restored.config.dataset.name)
  if restored.num_classes != num_classes or tuple(info.image_shape) != tuple(
      image_shape):
    raise UserError(
        f"the GAN in {workdir} makes {tuple(info.image_shape)} images of "
        f"{restored.num_classes} classes; the classifier needs "
        f"{tuple(image_shape)} images of {num_classes} classes")
  return restored
