"""Adversarial training: the study's batches of clean and crafted examples.

The study "Adversarial training with Unrestricted Adversarial Examples" trains
a classifier on batches in which a fraction `prop` of the examples is replaced
by (or, with `replace=False`, joined by) examples of one adversary of
`advjax.adversaries` (the mode): FGSM or PGD examples of the real images
against the current parameters, samples of a frozen AC-GAN for their labels,
or unrestricted adversarial examples searched in that GAN's latent space
against the current classifier; 'none' is plain training.

The loss is the weighted one of Kurakin, Goodfellow & Bengio 2017
("Adversarial Machine Learning at Scale"), which the study uses:

  L = (n_c * CE_clean + w * n_a * CE_aug) / (n_c + w * n_a)

with n_c clean and n_a crafted examples in the batch, CE_clean / CE_aug the
mean cross-entropies over each part and w = `adv_weight`. Modes registered
with their own `loss` (TRADES, MART: `advjax.adversaries`) replace CE_aug
by the mean of that loss over the crafted examples, computed from the
logits of the crafted examples and of the real images they came from (two
forward passes in train mode, each with its own BatchNorm statistics, the
running averages updated by both in turn, as the authors' PyTorch code).
The field's methods (Madry et al.'s PGD-AT, TRADES, MART, fast AT) train on
crafted examples only: `prop = 1` with `replace`, where the loss is the
mode's loss alone.

Fast AT's catastrophic overfitting (Wong et al. 2020: FGSM training whose
PGD accuracy collapses within an epoch) is watched for modes registered
with `check_overfitting` (fgsm_rs): at each evaluation the trainer logs
`eval/pgd_check_accuracy`, the accuracy under PGD-5 (steps eps / 4, Wong et
al.'s check) of the first `overfit_check_examples` test images at the
mode's eps, and warns when it falls below `overfit_warn_fraction` of its best
so far (Wong et al. stop when it drops by 0.2 from one epoch to the next).

Config: `config.adversarial_training` (absent means mode 'none') holds the
fields of `Settings` and, under each adversary's name, that adversary's
settings (`configs/common.py` writes them all with their defaults):

    config.adversarial_training.mode = "pgd"
    config.adversarial_training.pgd.num_steps = 3

The crafted examples are the first `round(prop * b)` of each device's `b`
examples (batches are shuffled, so this is a random subset). The adversaries
run with BatchNorm in inference mode (running statistics, no update) and no
gradient reaches the parameters through them. Every crafted example is used,
whether or not it fools the model; for adversaries that report success
(unrestricted) the logged `attack_success_rate` says how many did. The
logged `accuracy` (= `clean_accuracy`) is that of the batch's clean part;
with prop 1 and `replace` (no clean part, the loss is CE_aug) it is the
current model's accuracy, in inference mode, on the real images the crafted
ones replaced. The frozen GAN's variables are inputs of the compiled step
(`frozen['gan']`), never part of the train state or its checkpoints.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections

import numpy as np

from advjax import adversaries, config_changes, frozen_models, inference
from advjax import input_pipeline, losses
from advjax import settings as settings_lib
from advjax.errors import UserError
from advjax.models import gans

SECTION = "adversarial_training"
GENERATED_SOURCES = ("gan", "unrestricted", "gaussian")
GENERATED_LABELS = ("uniform", "real")


@dataclasses.dataclass(frozen=True)
class GeneratedSettings:
  """`adversarial_training.generated`: generated images in every batch,
  trained on with the mode's adversarial loss like the real ones (the recipe
  of Gowal et al. 2021, "Improving Robustness using Generated Data", and
  Rebuffi et al. 2021, "Data Augmentation Can Improve Robustness": about 70%
  generated, 30% real images per batch, with TRADES or PGD-AT).

  source: '' (off), 'gan' (samples G(z, y) of the frozen AC-GAN of
  `gan_workdir`, its EMA generator when kept and `gan_ema`), 'unrestricted'
  (Song et al.'s unrestricted adversarial examples of that GAN against the
  current classifier, with the `unrestricted` block's settings), or
  'gaussian' (a class-conditional Gaussian with per-pixel mean and standard
  deviation fitted once to the training images, clipped to [-1, 1]: Gowal et
  al.'s simplest baseline for generated data).
  fraction: of each device's batch, rounded: the last examples of the
  batch are replaced (the mode crafts from the first ones, so with prop < 1
  the crafted part is real images first).
  labels: 'uniform' (classes drawn uniformly) or 'real' (the labels of the
  real examples they replace: the training set's class frequencies).
  label_smoothing: of the generated examples' targets only.
  """
  source: str = ""
  fraction: float = 0.7
  labels: str = "uniform"
  label_smoothing: float = 0.0

  def __post_init__(self):
    if self.source:
      settings_lib.check_choice(self, "source", GENERATED_SOURCES)
    settings_lib.check_choice(self, "labels", GENERATED_LABELS)
    settings_lib.check_in_unit_interval(self, "fraction", "label_smoothing")


@settings_lib.register(SECTION)
@dataclasses.dataclass(frozen=True)
class Settings:
  """The mixing of clean and crafted examples (see the module docstring).

  gan_workdir: the AC-GAN run adversaries with `uses_gan` sample from;
  gan_ema: use the moving average of its generator's weights when kept.
  overfit_check_examples, overfit_warn_fraction: the catastrophic-overfitting
  check of modes registered with `check_overfitting` (0 examples: off).
  """
  mode: str = "none"
  prop: float = 0.5
  adv_weight: float = 0.3
  replace: bool = True
  gan_workdir: str = ""
  gan_ema: bool = True
  overfit_check_examples: int = 256
  overfit_warn_fraction: float = 0.5
  generated: GeneratedSettings = settings_lib.block_field(GeneratedSettings)

  def __post_init__(self):
    settings_lib.check_choice(self, "mode", adversaries.training_modes())
    settings_lib.check_in_unit_interval(self, "prop", "overfit_warn_fraction")
    settings_lib.check_nonnegative(self, "adv_weight",
                                   "overfit_check_examples")


@config_changes.register_unused
def _unused_adversary_block(flat: dict[str, Any], field: str) -> bool:
  """A run reads the settings of its mode's adversary, and the
  unrestricted adversary's when its generated data is unrestricted
  examples; the other adversaries' blocks are inert."""
  parts = field.split(".")
  if len(parts) < 3 or parts[0] != SECTION or (
      parts[1] not in adversaries.ADVERSARIES):
    return False
  used = {flat.get(f"{SECTION}.mode", "none")}
  if flat.get(f"{SECTION}.generated.source", "") == "unrestricted":
    used.add("unrestricted")
  return parts[1] not in used


def split_mode(name: str) -> tuple[str, str]:
  """(mode, generated source) of a mode name that may add generated data:
  'trades' -> ('trades', ''), 'trades+gan' -> ('trades', 'gan') (the
  study's rows and config arguments use this form); else UserError."""
  mode, _, source = str(name).partition("+")
  if mode not in adversaries.training_modes():
    raise UserError(f"mode {mode!r} is not one of "
                    f"{adversaries.training_modes()}")
  if source and (source not in GENERATED_SOURCES or mode == "none"):
    raise UserError(f"mode {name!r}: after '+' comes the generated data of "
                    f"a training mode, one of {list(GENERATED_SOURCES)} "
                    f"(e.g. trades+gan)")
  return mode, source


def uses_gan(name: str) -> bool:
  """Whether training in mode `name` ('pgd', 'trades+gan', ...) reads the
  frozen GAN of `gan_workdir`."""
  mode, source = split_mode(name)
  return (mode != "none" and adversaries.get(mode).uses_gan) or source in (
      "gan", "unrestricted")


def default_block(mode: str = "none", **fields: Any
                  ) -> ml_collections.ConfigDict:
  """`config.adversarial_training` with every default: the mixing settings
  and a block per registered adversary."""
  block = settings_lib.to_block(Settings, mode=mode, **fields)
  for name, values in adversaries.default_blocks().items():
    block[name] = ml_collections.ConfigDict(values)
  return block


@dataclasses.dataclass(frozen=True)
class Plan:
  """The static part of adversarial training, read once from the config:
  hashable, so the compiled step takes it as a constant; the frozen GAN's
  variables travel separately, as step inputs."""
  settings: Settings
  adversary: adversaries.Adversary
  adversary_settings: Any
  generator: Any = None
  discriminator: Any = None
  latent_dim: int = 0
  num_classes: int = 0
  # The `unrestricted` settings when generated data comes from that attack.
  unrestricted_settings: Any = None

  @property
  def loss(self) -> Callable[..., jax.Array] | None:
    """The mode's own training loss of the crafted examples (None:
    cross-entropy), as `loss(clean_logits, adv_logits, labels, targets)`."""
    if self.adversary.loss is None:
      return None
    return functools.partial(self.adversary.loss, self.adversary_settings)

  @property
  def checks_overfitting(self) -> bool:
    """Whether training watches PGD accuracy for catastrophic overfitting."""
    return (self.adversary.check_overfitting
            and self.settings.overfit_check_examples > 0)

  def num_crafted(self, batch_size: int) -> int:
    """Crafted examples among a device's `batch_size`: round(prop * b)."""
    return int(math.floor(self.settings.prop * batch_size + 0.5))

  def num_generated(self, batch_size: int) -> int:
    """Generated examples among a device's `batch_size` (0 when off)."""
    g = self.settings.generated
    if not g.source:
      return 0
    return int(math.floor(g.fraction * batch_size + 0.5))

  def num_clean(self, batch_size: int) -> int:
    """Clean examples left in a device's batch."""
    if self.settings.replace:
      return batch_size - self.num_crafted(batch_size)
    return batch_size

  def target(self, logits_fn: Callable[[jax.Array], jax.Array],
             gan_variables: Any, axis_name: str | None = None
             ) -> adversaries.Target:
    """The adversary's target: the classifier, the frozen GAN, and the
    device axis (`axis_name`) of the data-parallel step it runs in."""
    if self.generator is None:
      return adversaries.Target(logits_fn, axis_name=axis_name)
    gen, g_vars = self.generator, gan_variables["generator"]
    aux = None
    if self.discriminator is not None:
      disc, d_vars = self.discriminator, gan_variables["discriminator"]
      aux = lambda x: disc.apply(d_vars, x, None, train=False)["logits"]
    return adversaries.Target(logits_fn, adversaries.FrozenGAN(
        generate=lambda z, y: gen.apply(g_vars, z, y, train=False),
        aux_logits=aux, latent_dim=self.latent_dim), axis_name=axis_name)


def read(config: ml_collections.ConfigDict, num_classes: int,
         image_shape: tuple[int, ...],
         pins: frozen_models.Pins | None = None, train_source: Any = None
         ) -> tuple[Plan | None, dict[str, Any]]:
  """The plan of `config.adversarial_training` and its frozen inputs: the
  GAN's variables ('generator', 'discriminator') and the fitted Gaussian of
  `generated.source` 'gaussian' ('gaussian', from `train_source`); {} when
  none is needed.

  (None, {}) for mode 'none'. For adversaries that use a GAN, the AC-GAN of
  `gan_workdir` is restored once (through `pins`, as role 'gan': a resumed
  run reads the step it started with); it must generate `image_shape`
  images of the classifier's `num_classes` classes.
  """
  block = settings_lib.plain(config[SECTION] if SECTION in config else None)
  names = set(adversaries.ADVERSARIES)
  per_adversary = {k: block.pop(k) for k in list(block) if k in names}
  s = settings_lib.from_block(Settings, block, SECTION)
  for name, values in per_adversary.items():  # every block is checked
    adversaries.get(name).read(values, f"{SECTION}.{name}")
  g = s.generated
  if s.mode == "none":
    if g.source:
      raise UserError(f"config.{SECTION}.generated.source '{g.source}' "
                      f"needs a training mode (config.{SECTION}.mode: one "
                      f"of {adversaries.training_modes()[1:]}); mode 'gan' "
                      f"is plain training on GAN samples")
    return None, {}
  adversary = adversaries.get(s.mode)
  plan = Plan(s, adversary, adversary.read(per_adversary.get(s.mode),
                                           f"{SECTION}.{s.mode}"),
              num_classes=num_classes)
  if g.source == "unrestricted":
    plan = dataclasses.replace(plan, unrestricted_settings=adversaries.get(
        "unrestricted").read(per_adversary.get("unrestricted"),
                             f"{SECTION}.unrestricted"))
  frozen: dict[str, Any] = {}
  if g.source == "gaussian":
    if train_source is None:
      raise ValueError("generated.source 'gaussian' needs the train source")
    frozen["gaussian"] = fit_gaussian(train_source, num_classes)
  uses_gan = adversary.uses_gan or g.source in ("gan", "unrestricted")
  if not uses_gan:
    return plan, frozen
  gan = _restore_gan(s, num_classes, image_shape,
                     pins or frozen_models.Pins())
  frozen["generator"] = gan.generator_variables(ema=s.gan_ema)
  discriminator = None
  if adversary.uses_aux_classifier or g.source == "unrestricted":
    gan.aux_logits_fn()  # a one-line error unless it is an AC-GAN
    discriminator = gan.discriminator
    frozen["discriminator"] = gan.discriminator_variables()
  plan = dataclasses.replace(plan, generator=gan.generator,
                             discriminator=discriminator,
                             latent_dim=gan.latent_dim)
  return plan, frozen


def fit_gaussian(source: Any, num_classes: int, chunk: int = 5000
                 ) -> dict[str, np.ndarray]:
  """Per-class, per-pixel mean and standard deviation of a training source
  ([-1, 1] floats), one pass in float64: {'mean', 'std'} [K, H, W, C]. A
  class without images keeps mean 0 and std 0."""
  total = sq = counts = None
  for lo in range(0, len(source), chunk):
    raw, labels = input_pipeline.read_examples(
        source, range(lo, min(lo + chunk, len(source))))
    x = input_pipeline.to_float_image(raw).astype(np.float64)
    if total is None:
      total = np.zeros((num_classes, *x.shape[1:]))
      sq = np.zeros_like(total)
      counts = np.zeros(num_classes)
    np.add.at(total, labels, x)
    np.add.at(sq, labels, x * x)
    counts += np.bincount(labels, minlength=num_classes)
  n = np.maximum(counts, 1).reshape(-1, *([1] * (total.ndim - 1)))
  mean = total / n
  var = np.maximum(sq / n - mean * mean, 0.)
  return {"mean": mean.astype(np.float32),
          "std": np.sqrt(var).astype(np.float32)}


def mix_generated(plan: Plan, target: adversaries.Target | None,
                  frozen: dict[str, Any], batch: dict[str, jax.Array],
                  rng: jax.Array) -> dict[str, jax.Array]:
  """This device's batch with its last g = round(fraction * b) examples
  replaced by generated ones (`GeneratedSettings`); adds 'generated', a
  bool [b] mask. `target` (the current classifier and the frozen GAN) is
  needed by source 'unrestricted' only; `frozen` holds the Gaussian's
  'mean' and 'std' for source 'gaussian'."""
  images, labels = batch["image"], batch["label"]
  b = images.shape[0]
  n = plan.num_generated(b)
  g = plan.settings.generated
  mask = jnp.arange(b) >= b - n
  if n == 0:
    return {**batch, "generated": mask}
  label_rng, draw_rng = jax.random.split(rng)
  if g.labels == "uniform":
    new_labels = jax.random.randint(label_rng, (n,), 0, plan.num_classes,
                                    labels.dtype)
  else:
    new_labels = labels[b - n:]
  if g.source == "gan":
    z = gans.sample_latents(draw_rng, n, target.gan.latent_dim)
    new_images = target.gan.generate(z, new_labels)
  elif g.source == "unrestricted":
    new_images = adversaries.get("unrestricted").craft(
        plan.unrestricted_settings, target,
        jnp.zeros((n, *images.shape[1:]), images.dtype), new_labels,
        draw_rng)["image"]
  else:
    mean = frozen["gaussian"]["mean"][new_labels]
    std = frozen["gaussian"]["std"][new_labels]
    new_images = jnp.clip(
        mean + std * jax.random.normal(draw_rng, mean.shape, mean.dtype),
        -1., 1.)
  new_images = jax.lax.stop_gradient(new_images.astype(images.dtype))
  return {**batch,
          "image": jnp.concatenate([images[:b - n], new_images]),
          "label": jnp.concatenate([labels[:b - n], new_labels]),
          "generated": mask}


def generated_targets(plan: Plan, labels: jax.Array, generated: jax.Array,
                      label_smoothing: float) -> jax.Array:
  """Training targets [b, K]: one-hot labels smoothed by
  `label_smoothing` (the run's), and by `generated.label_smoothing` where
  `generated`."""
  ls = jnp.where(generated, plan.settings.generated.label_smoothing,
                 label_smoothing)[:, None]
  onehot = jax.nn.one_hot(labels, plan.num_classes, dtype=jnp.float32)
  return onehot * (1. - ls) + ls / plan.num_classes


def _restore_gan(s: Settings, num_classes: int, image_shape: tuple[int, ...],
                 pins: frozen_models.Pins) -> inference.GAN:
  if not s.gan_workdir:
    raise UserError(f"config.{SECTION}.mode '{s.mode}' needs "
                    f"config.{SECTION}.gan_workdir, the work directory of a "
                    f"trained AC-GAN")
  gan = pins.restore("gan", s.gan_workdir, kind="gan")
  shape = tuple(gan.dataset.image_shape)
  if gan.num_classes != num_classes or shape != tuple(image_shape):
    raise UserError(
        f"the GAN in {s.gan_workdir} makes {shape} images of "
        f"{gan.num_classes} classes; the classifier needs "
        f"{tuple(image_shape)} images of {num_classes} classes")
  return gan


def craft_batch(plan: Plan, target: adversaries.Target,
                batch: dict[str, jax.Array], rng: jax.Array
                ) -> dict[str, Any]:
  """This device's training batch with its crafted examples.

  The first k = round(prop * b) examples are the sources of the crafted
  ones; with `replace` the rest stay clean (n_c = b - k), else all b do
  (n_c = b).

  Returns a dict: 'image' and 'label' ([n_c + n_a, ...], clean first), the
  static ints 'num_clean' and 'num_aug', 'source_image' (the k real images
  the crafted examples stand for), the adversary's extras ('latent',
  'success') and, when the batch has one, the 'generated' mask in the same
  order as 'label'.
  """
  images, labels = batch["image"], batch["label"]
  k = plan.num_crafted(images.shape[0])
  clean_images, clean_labels = ((images[k:], labels[k:])
                                if plan.settings.replace
                                else (images, labels))
  out = {"num_clean": clean_images.shape[0], "num_aug": k,
         "source_image": images[:k]}
  if "generated" in batch:  # which examples are generated, in this order
    mask = batch["generated"]
    clean_mask = mask[k:] if plan.settings.replace else mask
    out["generated"] = jnp.concatenate([clean_mask, mask[:k]])
  if k == 0:
    out.update(image=clean_images, label=clean_labels)
    return out
  crafted = plan.adversary.craft(plan.adversary_settings, target, images[:k],
                                 labels[:k], rng)
  crafted = dict(crafted)
  aug_images = jax.lax.stop_gradient(crafted.pop("image"))
  out.update(crafted)
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
  """The weighted loss and the clean/crafted metrics of one device.

  `per_example` is the cross-entropy of each example, clean ones first.
  Without clean examples (prop 1 with `replace`) the loss is CE_aug and the
  metrics have no clean part.
  """
  correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
  ce_aug = per_example[num_clean:].mean()
  metrics = {"aug_loss": ce_aug, "aug_accuracy": correct[num_clean:].mean()}
  if num_clean == 0:
    return ce_aug, metrics
  ce_clean = per_example[:num_clean].mean()
  loss = weighted_loss(ce_clean, ce_aug, num_clean, num_aug, adv_weight)
  metrics.update(clean_loss=ce_clean,
                 clean_accuracy=correct[:num_clean].mean())
  return loss, metrics


def mode_losses(plan: Plan, real_logits: jax.Array, adv_logits: jax.Array,
                real_labels: jax.Array, real_targets: jax.Array
                ) -> tuple[jax.Array, jax.Array]:
  """Per-example losses and logits of a batch for a mode with its own loss,
  in `split_losses`' layout (clean part first, then the crafted examples).

  `real_logits` are the logits (train mode) of this device's b real images,
  whose first k = `num_crafted(b)` are the crafted examples' sources,
  `adv_logits` those of the k crafted examples; `real_targets` the b
  training targets (labels or distributions). The clean part (its
  cross-entropy) is the other b - k real images with `replace`, all b
  without; the crafted part is `plan.loss` of each crafted example and its
  source.
  """
  k = adv_logits.shape[0]
  clean = slice(k, None) if plan.settings.replace else slice(None)
  per_real = losses.cross_entropy(real_logits[clean], real_targets[clean])
  crafted = plan.loss(real_logits[:k], adv_logits, real_labels[:k],
                      real_targets[:k])
  return (jnp.concatenate([per_real, crafted]),
          jnp.concatenate([real_logits[clean], adv_logits]))
