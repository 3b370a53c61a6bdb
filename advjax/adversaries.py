"""The adversaries of the study, by name: one registry for training,
evaluation and the study runner.

An adversary turns a batch (images, labels) into the examples a classifier
is trained or tested on: a perturbation attack (FGSM, PGD, ...), the samples
of a frozen class-conditional GAN for the batch's labels, or unrestricted
adversarial examples searched in that GAN's latent space. Each entry is one
function and one `register` line:

    @dataclasses.dataclass(frozen=True)
    class NoiseSettings:
      eps: float = 0.1

    @register("noise", NoiseSettings)
    def _noise(s, target, images, labels, rng):
      return {"image": images + s.eps * jax.random.rademacher(rng, images.shape)}

and then `config.adversarial_training.mode = "noise"` trains with it (its
settings under `config.adversarial_training.noise`), `python -m
advjax.evaluate --attacks=noise` reports accuracy under it for every eps,
and `experiments/study.py` compares it with the other modes.

A craft function is `craft(settings, target, images, labels, rng)` with
`target` a `Target` (the classifier's `logits_fn`, and the frozen GAN for
entries registered with `uses_gan` or `uses_aux_classifier`); it returns a dict with 'image' (the
crafted images, [B, H, W, C] in [-1, 1]) and optional extras: 'success'
(bool [B], for attacks that know whether they fooled the classifier),
'latent' (the GAN's z), 'signals' ({warning: bool [B]}, points a report
should warn about, e.g. AutoAttack's signs of gradient masking) and
'broken_by' ({stage: bool [B]}, which stage of a cascade such as AutoAttack
broke each point). Craft functions are traced inside the compiled train
step (entries with `trains=False`, like AutoAttack, run only in reports).
Norm-bounded entries (`norm_bounded`, the default) have an `eps` setting and
are evaluated at each eps of a report.

Training modes that change the loss, not only the examples (TRADES, MART),
register a `loss` beside their craft function:

    loss(settings, clean_logits, adv_logits, labels, targets) -> [k]

the per-example training loss of the k crafted examples from the logits
(train mode) of their real images and of the crafted ones; `labels` are the
integer labels, `targets` the training targets (the same labels, or their
smoothed distributions [k, K]). The classifier step then uses it instead of
the cross-entropy on the crafted batch (`advjax.adversarial_training`);
another such mode is one craft function, one loss function and one
`register` line (see `_trades` and `_trades_loss`). In a report the entry is
its inner attack.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp

from advjax import attacks
from advjax import robust_losses
from advjax.attacks import autoattack
from advjax import settings as settings_lib
from advjax.errors import UserError
from advjax.models import gans

Crafted = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class FrozenGAN:
  """A class-conditional GAN an adversary reads (never trains).

  `generate(z, labels)` gives images in [-1, 1]; `aux_logits(images)` the
  AC-GAN discriminator's class logits (None without a class head).
  """
  generate: Callable[[jax.Array, jax.Array], jax.Array]
  aux_logits: Callable[[jax.Array], jax.Array] | None
  latent_dim: int


@dataclasses.dataclass(frozen=True)
class Target:
  """What an adversary attacks: the classifier (eval mode), and the frozen
  GAN for adversaries that use one.

  axis_name: inside a data-parallel train step, the device axis that shares
  the batch (adversaries whose objective is a batch mean, like the latent
  attack, average over the global batch); None in reports, which run outside
  it.
  bounds: (low, high), the valid input range the crafted images stay in
  (the library's (-1, 1); (0, 1) for a model on [0, 1] images); eps is in
  its units.
  """
  logits_fn: Callable[[jax.Array], jax.Array]
  gan: FrozenGAN | None = None
  axis_name: str | None = None
  bounds: tuple[float, float] = (-1., 1.)


@dataclasses.dataclass(frozen=True)
class Adversary:
  """One registry entry (see the module docstring).

  Attributes:
    name: the name configs and flags use.
    craft: `craft(settings, target, images, labels, rng) -> dict`.
    settings: the frozen dataclass of its settings; its defaults are the
      training defaults.
    uses_gan: needs `target.gan` (a class-conditional GAN to sample from).
    uses_aux_classifier: also needs the GAN's AC-GAN class head
      (`target.gan.aux_logits`).
    norm_bounded: has an `eps` setting; evaluated per eps in reports.
    trains: can run inside the compiled train step (adversarial training).
    evaluation: settings a robustness report uses instead of the training
      defaults (e.g. FGSM is evaluated against the true label at a fixed eps).
    label: how reports and tables name it.
    loss: `loss(settings, clean_logits, adv_logits, labels, targets) -> [k]`,
      the training loss of the crafted examples (None: cross-entropy on
      them); see the module docstring.
    check_overfitting: training logs PGD accuracy on held-out images at
      each evaluation and warns when it collapses (fast AT's catastrophic
      overfitting, Wong et al. 2020).
    reported: a robustness report runs it unless `--attacks` says otherwise
      (False for the training recipes whose examples are PGD's or FGSM's
      under another loss: TRADES, MART, FGSM-RS; `--attacks=trades` runs
      them).
  """
  name: str
  craft: Callable[..., Crafted]
  settings: type
  uses_gan: bool = False
  uses_aux_classifier: bool = False
  norm_bounded: bool = True
  trains: bool = True
  evaluation: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  label: str = ""
  loss: Callable[..., jax.Array] | None = None
  check_overfitting: bool = False
  reported: bool = True

  def read(self, block: Any, where: str, **overrides: Any) -> Any:
    """The entry's settings from a config block (checked once)."""
    return settings_lib.from_block(self.settings, block, where, **overrides)

  def evaluation_defaults(self) -> Any:
    """What a report uses unless told otherwise: the defaults with
    `evaluation` applied."""
    return self.settings(**self.evaluation)

  def evaluation_settings(self, block: Any = None, where: str = "",
                          eps: float | None = None) -> Any:
    """A report's settings: `block` (e.g. `--attack.<name>.*` flags) over
    `evaluation_defaults()`, at the row's `eps`."""
    values = dataclasses.asdict(self.evaluation_defaults())
    values.update(settings_lib.plain(block))
    if eps is not None and self.norm_bounded:
      values["eps"] = float(eps)
    return settings_lib.from_block(self.settings, values,
                                   where or f"attack.{self.name}")


# name -> entry; `register` adds one.
ADVERSARIES: dict[str, Adversary] = {}


def register(name: str, settings: type, *, uses_gan: bool = False,
             uses_aux_classifier: bool = False, norm_bounded: bool = True, trains: bool = True,
             evaluation: Mapping[str, Any] | None = None,
             label: str = "", loss: Callable[..., jax.Array] | None = None,
             check_overfitting: bool = False, reported: bool = True
             ) -> Callable[[Callable], Callable]:
  """Decorator: adds `craft` to the registry as `name` (with `loss`, the
  training loss of its crafted examples)."""
  if loss is not None and not trains:
    raise ValueError(f"adversary '{name}' has a training loss but does not "
                     f"train")
  if name in ADVERSARIES or name == "none":
    raise ValueError(f"adversary '{name}' is already registered")
  if norm_bounded and "eps" not in {f.name for f in
                                    dataclasses.fields(settings)}:
    raise ValueError(f"norm-bounded adversary '{name}' needs an 'eps' "
                     f"setting")

  def add(craft: Callable) -> Callable:
    ADVERSARIES[name] = Adversary(
        name=name, craft=craft, settings=settings,
        uses_gan=uses_gan or uses_aux_classifier,
        uses_aux_classifier=uses_aux_classifier, norm_bounded=norm_bounded, trains=trains,
        evaluation=dict(evaluation or {}), label=label or name, loss=loss,
        check_overfitting=check_overfitting,
        reported=reported and norm_bounded)
    return craft
  return add


def get(name: str) -> Adversary:
  """The entry `name`; a UserError lists the registered ones."""
  if name not in ADVERSARIES:
    raise UserError(f"unknown adversary '{name}'; registered: "
                    f"{sorted(ADVERSARIES)}")
  return ADVERSARIES[name]


def training_modes() -> list[str]:
  """'none' and every adversary that can run inside a train step."""
  return ["none"] + [n for n, a in ADVERSARIES.items() if a.trains]


def default_blocks() -> dict[str, dict[str, Any]]:
  """Every entry's settings with their defaults, by name (config blocks)."""
  return {name: dataclasses.asdict(a.settings())
          for name, a in ADVERSARIES.items()}


# ---------------------------------------------------------------------------
# The entries.


FGSM_TARGETS = ("least_likely", "true_label")

# The smallest eps of a random-eps FGSM step (Kurakin et al. 2017 draw a
# fresh eps for each batch).
FGSM_MIN_EPS = 1e-4


@dataclasses.dataclass(frozen=True)
class FGSMSettings:
  """Fast Gradient Sign Method (Goodfellow et al. 2015).

  target: 'least_likely' steps toward the class the model finds least
  likely ("step l.l.", Kurakin et al. 2017, which adversarial training uses
  because true-label examples leak the label); 'true_label' away from the
  true label. random_eps: each batch (each device's share of it) draws its
  eps from U(1e-4, eps) (eps is then the maximum), else eps itself. Reports evaluate the standard
  true-label FGSM at each eps.
  """
  eps: float = 0.1
  target: str = "least_likely"
  random_eps: bool = True

  def __post_init__(self):
    settings_lib.check_nonnegative(self, "eps")
    settings_lib.check_choice(self, "target", FGSM_TARGETS)


@register("fgsm", FGSMSettings,
          evaluation=dict(target="true_label", random_eps=False),
          label="FGSM")
def _fgsm(s: FGSMSettings, target: Target, images, labels, rng) -> Crafted:
  eps = s.eps
  if s.random_eps:
    eps = jax.random.uniform(rng, (), jnp.float32, min(FGSM_MIN_EPS, s.eps),
                             s.eps)
  if s.target == "least_likely":
    return {"image": attacks.fgsm_least_likely(target.logits_fn, images, eps,
                                               bounds=target.bounds)}
  return {"image": attacks.fgsm(target.logits_fn, images, labels, eps,
                                bounds=target.bounds)}


@dataclasses.dataclass(frozen=True)
class PGDSettings:
  """Projected gradient descent (Madry et al. 2018): `num_steps` steps of
  `rel_step_size * eps` from a random start in the eps-ball.

  As a training mode this is Madry et al.'s PGD adversarial training when
  every example is replaced (`adversarial_training.prop = 1`, `replace`:
  the loss is the cross-entropy on the PGD examples alone), the standard
  setting (their CIFAR-10 code: 7 steps of 2/255 for eps 8/255, about eps /
  4 as here). The study's default prop 0.5 with weight 0.3 is Kurakin et
  al. 2017's mixed batch.
  """
  eps: float = 0.1
  num_steps: int = 7
  rel_step_size: float = 0.25
  random_start: bool = True
  norm: str = "linf"

  def __post_init__(self):
    settings_lib.check_nonnegative(self, "eps", "num_steps", "rel_step_size")
    settings_lib.check_choice(self, "norm", ("linf", "l2"))


@register("pgd", PGDSettings, evaluation=dict(num_steps=10), label="PGD")
def _pgd(s: PGDSettings, target: Target, images, labels, rng) -> Crafted:
  return {"image": attacks.pgd(
      target.logits_fn, images, labels, rng, eps=s.eps,
      step_size=s.rel_step_size * s.eps, num_steps=s.num_steps,
      norm=s.norm, random_start=s.random_start, bounds=target.bounds)}


@dataclasses.dataclass(frozen=True)
class GANSamplesSettings:
  """Samples G(z, y) of the frozen AC-GAN for the batch's labels y."""


@register("gan", GANSamplesSettings, uses_gan=True, norm_bounded=False,
          label="AC-GAN samples")
def _gan_samples(s: GANSamplesSettings, target: Target, images, labels,
                 rng) -> Crafted:
  del s
  z = gans.sample_latents(rng, images.shape[0], target.gan.latent_dim)
  out = target.gan.generate(z, labels)
  return {"image": out.astype(jnp.float32), "latent": z}


_SEED = attacks.LATENT_PRESETS["seed"]


@dataclasses.dataclass(frozen=True)
class UnrestrictedSettings:
  """Song et al. 2018's latent search (`attacks.unrestricted_attack`) from
  z0 ~ N(0, I), source class = the true label.

  The defaults are the settings of the seed study's code
  (`attacks.LATENT_PRESETS['seed']`: 500 steps of plain gradient descent
  with learning rate 0.1 on the batch mean of the objective, lambda_z =
  lambda_aux = 0.1, eps_z = 0.1, Langevin noise, the last iterate judged);
  `LATENT_PRESETS['song']` holds Song et al.'s (1000 steps, learning rate 1,
  lambda 100 / 100), and the unrestricted report's `preset` picks either by
  name. Being a mean, the objective moves an example by learning_rate / B
  times its own gradient (B: the global batch of crafted examples; the
  report's batches are 64, as in both references). iterate: 'last' (the
  references) or 'first' (each example frozen at its first success).
  Only examples that the classifier and the GAN's auxiliary classifier both
  put in the source class at z0 are attacked.
  """
  num_steps: int = _SEED["num_steps"]
  learning_rate: float = _SEED["learning_rate"]
  eps_z: float = _SEED["eps_z"]
  lambda_z: float = _SEED["lambda_z"]
  lambda_aux: float = _SEED["lambda_aux"]
  noise_eps: float = 0.0
  langevin: bool = _SEED["langevin"]
  iterate: str = _SEED["iterate"]
  targeted: bool = False

  def __post_init__(self):
    settings_lib.check_nonnegative(self, "num_steps", "learning_rate",
                                   "eps_z", "lambda_z", "lambda_aux",
                                   "noise_eps")
    settings_lib.check_choice(self, "iterate", attacks.latent.ITERATES)


def unrestricted_preset(name: str) -> dict[str, Any]:
  """The 'unrestricted' settings of a reference by name ('seed', 'song'),
  as a block of fields; UserError for another name."""
  if name not in attacks.LATENT_PRESETS:
    raise UserError(f"unknown unrestricted preset '{name}'; presets are "
                    f"{sorted(attacks.LATENT_PRESETS)}")
  return dict(attacks.LATENT_PRESETS[name])


def matching_preset(s: UnrestrictedSettings) -> str:
  """The preset whose values `s` has ('' if none): a report's caption
  names the reference from the stored settings."""
  for name, values in attacks.LATENT_PRESETS.items():
    if all(getattr(s, k) == v for k, v in values.items()) and (
        s.noise_eps == 0):
      return name
  return ""


@register("unrestricted", UnrestrictedSettings, uses_aux_classifier=True,
          norm_bounded=False, label="unrestricted examples")
def _unrestricted(s: UnrestrictedSettings, target: Target, images, labels,
                  rng) -> Crafted:
  z_rng, attack_rng = jax.random.split(rng)
  z0 = gans.sample_latents(z_rng, images.shape[0], target.gan.latent_dim)
  target_labels = None
  if s.targeted:
    num_classes = jax.eval_shape(target.logits_fn, images).shape[-1]
    # From z's key: the attack's key feeds the Langevin noise of every
    # step (fold_in(attack_rng, t)), so fold_in(attack_rng, 1) would repeat
    # step 1's.
    shift = jax.random.randint(jax.random.fold_in(z_rng, 1),
                               labels.shape, 1, num_classes)
    target_labels = (labels + shift) % num_classes
  out = attacks.unrestricted_attack(
      target.gan.generate, target.gan.aux_logits, target.logits_fn, z0,
      labels, attack_rng, target_labels=target_labels,
      num_steps=s.num_steps, learning_rate=s.learning_rate, eps_z=s.eps_z,
      lambda_z=s.lambda_z, lambda_aux=s.lambda_aux, noise_eps=s.noise_eps,
      langevin=s.langevin, iterate=s.iterate, axis_name=target.axis_name)
  return {"image": out["images"].astype(jnp.float32), "latent": z0,
          "success": out["success"]}


@dataclasses.dataclass(frozen=True)
class AutoAttackSettings:
  """AutoAttack (Croce & Hein 2020, `advjax.attacks.autoattack`): the cascade
  of APGD-CE, APGD-T, FAB-T and Square ("standard", the RobustBench number) or
  APGD-CE and APGD-T only ("fast", for CPU-bound studies; not comparable with
  published AutoAttack numbers). Runs on the host between its compiled
  pieces, so it evaluates but never trains."""
  eps: float = 0.1
  version: str = "standard"
  norm: str = "linf"
  batch_size: int = 500

  def __post_init__(self):
    settings_lib.check_nonnegative(self, "eps")
    settings_lib.check_choice(self, "version", tuple(autoattack.VERSIONS))
    settings_lib.check_choice(self, "norm", autoattack.NORMS)
    settings_lib.check_positive(self, "batch_size")


@register("autoattack", AutoAttackSettings, trains=False, label="AutoAttack")
def _autoattack(s: AutoAttackSettings, target: Target, images, labels,
                rng) -> Crafted:
  # A bar per attack of the cascade, on a terminal only (as evaluate's own).
  result = autoattack.autoattack(
      target.logits_fn, images, labels, s.eps, norm=s.norm,
      version=s.version, rng=rng, batch_size=s.batch_size,
      progress=sys.stderr.isatty(), bounds=target.bounds)
  return {"image": jnp.asarray(result.images),
          "success": jnp.asarray(~result.robust & result.clean_correct),
          "signals": {
              "zero input gradient": result.zero_gradient,
              "broken only by Square (black-box)": result.black_box_only},
          "broken_by": {name: result.broken_by == name
                        for name in ("clean", *result.attacks)}}


# ---------------------------------------------------------------------------
# Training modes of the field (`advjax.robust_losses` holds their losses and
# inner attacks). The authors train on every example: use them with
# `adversarial_training.prop = 1`.


@dataclasses.dataclass(frozen=True)
class TRADESSettings:
  """TRADES (Zhang et al. 2019), with the authors' CIFAR-10 defaults
  (github.com/yaodongyu/TRADES, train_trades_cifar10.py: beta 6, 10 steps of
  0.007 for eps 0.031 in [0, 1] units, start x + 0.001 * N(0, I)):

  beta: weight of KL(p(x) || p(x')) (their 1 / lambda; 1.0 in their MNIST
    script); num_steps, rel_step_size: the inner attack's sign steps of
    rel_step_size * eps on the KL (0.007 / 0.031); init_std: the Gaussian
    start's standard deviation in [-1, 1] units (their 0.001 in [0, 1]).
  eps is in [-1, 1] units (their 8/255 is 0.063 here). In a report the
  entry is the KL attack alone, evaluated with the true-label accuracy.
  """
  eps: float = 0.1
  beta: float = 6.0
  num_steps: int = 10
  rel_step_size: float = 0.007 / 0.031
  init_std: float = 0.002

  def __post_init__(self):
    settings_lib.check_nonnegative(self, "eps", "beta", "num_steps",
                                   "rel_step_size", "init_std")


def _trades_loss(s: TRADESSettings, clean_logits, adv_logits, labels,
                 targets) -> jax.Array:
  del labels
  return robust_losses.trades_loss(clean_logits, adv_logits, targets, s.beta)


@register("trades", TRADESSettings, label="TRADES", loss=_trades_loss,
          reported=False)
def _trades(s: TRADESSettings, target: Target, images, labels,
            rng) -> Crafted:
  del labels
  start = robust_losses.gaussian_start(rng, images, s.init_std)
  return {"image": robust_losses.kl_pgd(
      target.logits_fn, images, start, eps=s.eps,
      step_size=s.rel_step_size * s.eps, num_steps=s.num_steps,
      bounds=target.bounds)}


@dataclasses.dataclass(frozen=True)
class MARTSettings(TRADESSettings):
  """MART (Wang et al. 2020), with the authors' defaults
  (github.com/YisenWang/MART: mart_loss and train_wideresnet.py, beta 6;
  their train_resnet.py uses 5 for ResNet-18; 10 cross-entropy sign steps
  of 0.007 for eps 0.031 in [0, 1] units from x + 0.001 * N(0, I)).
  Fields and defaults as `TRADESSettings`; the inner attack ascends the
  cross-entropy.
  """


def _mart_loss(s: MARTSettings, clean_logits, adv_logits, labels,
               targets) -> jax.Array:
  return robust_losses.mart_loss(clean_logits, adv_logits, labels, targets,
                                 s.beta)


@register("mart", MARTSettings, label="MART", loss=_mart_loss,
          reported=False)
def _mart(s: MARTSettings, target: Target, images, labels, rng) -> Crafted:
  start = robust_losses.gaussian_start(rng, images, s.init_std)
  return {"image": robust_losses.ce_pgd(
      target.logits_fn, images, labels, start, eps=s.eps,
      step_size=s.rel_step_size * s.eps, num_steps=s.num_steps,
      bounds=target.bounds)}


@dataclasses.dataclass(frozen=True)
class FGSMRSSettings:
  """Fast adversarial training (Wong, Rice & Kolter 2020, "Fast is better
  than free"): one true-label FGSM step of alpha = rel_step_size * eps from
  delta ~ U(-eps, eps), projected on the eps-ball and the valid range
  (github.com/locuslab/fast_adversarial: CIFAR-10 alpha 10/255 for eps
  8/255, MNIST 0.375 for 0.3, both 1.25 eps). Larger steps lead to
  catastrophic overfitting (PGD accuracy collapsing within an epoch), which
  training watches: see `adversarial_training.Settings`.

  Differences with their code: the attack runs with BatchNorm in inference
  mode (theirs in train mode) and the loss is the library's (no cyclic
  learning rate, mixed precision or early stopping).
  """
  eps: float = 0.1
  rel_step_size: float = 1.25

  def __post_init__(self):
    settings_lib.check_nonnegative(self, "eps", "rel_step_size")


@register("fgsm_rs", FGSMRSSettings, label="FGSM-RS",
          check_overfitting=True, reported=False)
def _fgsm_rs(s: FGSMRSSettings, target: Target, images, labels,
             rng) -> Crafted:
  delta = robust_losses.uniform_start(rng, images, s.eps)
  return {"image": robust_losses.fgsm_rs(
      target.logits_fn, images, labels, delta, eps=s.eps,
      alpha=s.rel_step_size * s.eps, bounds=target.bounds)}
