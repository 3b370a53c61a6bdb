"""AutoAttack (Croce & Hein 2020), compiled: APGD, APGD-T, FAB-T and Square.

"Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks" (ICML 2020) runs four attacks in a cascade, each only
on the points the previous ones did not break, and reports the per-point worst
case:

  apgd-ce   APGD on the cross-entropy loss (untargeted).
  apgd-t    APGD on the targeted DLR loss, once per target class: the 2nd
            .. 10th most likely classes of the clean image.
  fab-t     FAB, targeted, the same 9 targets (Croce & Hein 2020, "Minimally
            distorted adversarial examples with a fast adaptive boundary
            attack").
  square    Square Attack, 5000 queries (Andriushchenko et al. 2020), a
            score-based black-box attack: it needs no gradients.

Versions of `autoattack`:

  "standard"  apgd-ce, apgd-t, fab-t, square with the authors' settings
              (fra31/auto-attack): 100 iterations and 1 restart for APGD and
              FAB, 9 target classes (at most K - 1), Square with 5000
              queries, p_init 0.8 and the unscaled p schedule. The
              leaderboard number.
  "fast"      apgd-ce and apgd-t only, same settings: the two attacks that break
              nearly every point AutoAttack breaks on models without gradient
              masking, at about a quarter of the cost of "standard" on robust
              models; for CPU-bound studies. Not comparable with published
              AutoAttack numbers.

This module is AutoAttack's public home: the cascade `autoattack`, its
result, its versions and the four attacks with their building blocks, which
live in `apgd.py`, `fab.py` and `square.py` of this package.

Each attack is a pure function of a `logits_fn(x) -> logits` (as in
`advjax.attacks`), jit-compiled with all its loops (iterations, restarts,
target classes, queries) inside the compiled program. Images are float32 NHWC
in [-1, 1] unless `bounds=(low, high)` says otherwise (bounds=(0, 1) for a
model on [0, 1] images); eps is in the units of bounds (8/255 in [0, 1] units
is 16/255 in [-1, 1]); every iterate is clipped to bounds. The cascade in `autoattack` runs on the
host: between attacks it gathers the points still standing and pads them to a
power-of-two bucket, so each compiled program is reused.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from advjax import losses
from advjax.attacks import _common
from advjax.attacks._common import (LogitsFn, NORMS, flatten_examples,
                                    per_example_norm)
from advjax.attacks.apgd import (APGD_LOSSES, APGD_MOMENTUM, apgd,
                                 apgd_checkpoints, apgd_halve_step,
                                 apgd_targeted, dlr_loss, targeted_dlr_loss)
from advjax.attacks.fab import fab_targeted, project_onto_hyperplane_in_box
from advjax.attacks.square import (SQUARE_P_HALVINGS, square,
                                   square_l2_window, square_p_schedule,
                                   square_sizes)
from advjax.errors import UserError

__all__ = [
    "APGD_LOSSES", "APGD_MOMENTUM", "ATTACK_NAMES", "AutoAttackResult",
    "BLACK_BOX", "NORMS", "SQUARE_P_HALVINGS", "VERSIONS", "WHITE_BOX",
    "apgd", "apgd_checkpoints", "apgd_halve_step", "apgd_targeted",
    "autoattack", "dlr_loss", "fab_targeted",
    "project_onto_hyperplane_in_box", "square", "square_l2_window",
    "square_p_schedule", "square_sizes", "targeted_dlr_loss",
]

VERSIONS = {
    "standard": ("apgd-ce", "apgd-t", "fab-t", "square"),
    "fast": ("apgd-ce", "apgd-t"),
}
WHITE_BOX = ("apgd-ce", "apgd-dlr", "apgd-t", "fab-t")
BLACK_BOX = ("square",)
ATTACK_NAMES = WHITE_BOX + BLACK_BOX


_ATTACK_FNS = {
    "apgd-ce": (apgd, {"loss": "ce"}),
    "apgd-dlr": (apgd, {"loss": "dlr"}),
    "apgd-t": (apgd_targeted, {}),
    "fab-t": (fab_targeted, {}),
    "square": (square, {}),
}


@dataclasses.dataclass(frozen=True)
class AutoAttackResult:
  """What `autoattack` found, as numpy arrays over the N input points.

  images: [N, H, W, C] the adversarial image of each broken point (from the
    first attack that broke it), the clean image elsewhere.
  robust: bool [N], correctly classified and not broken by any attack.
  clean_correct: bool [N], correctly classified without attack.
  broken_by: str [N], the attack that broke the point first, "clean" if it
    was misclassified to begin with, "" if robust.
  attacks: the attacks run, in order.
  accuracy_after: robust accuracy after each attack (cumulative), with
    "clean" first.
  zero_gradient: bool [N], points whose input gradient of the cross-entropy
    or of the DLR loss at the clean image is exactly zero (a sign of gradient
    masking, flagged by the AutoAttack authors).
  """
  images: np.ndarray
  robust: np.ndarray
  clean_correct: np.ndarray
  broken_by: np.ndarray
  attacks: tuple[str, ...]
  accuracy_after: dict[str, float]
  zero_gradient: np.ndarray
  eps: float
  norm: str
  version: str

  @property
  def robust_accuracy(self) -> float:
    return float(np.mean(self.robust)) if self.robust.size else float("nan")

  @property
  def clean_accuracy(self) -> float:
    return (float(np.mean(self.clean_correct)) if self.clean_correct.size
            else float("nan"))

  @property
  def black_box_only(self) -> np.ndarray:
    """bool [N]: broken by Square but by none of the white-box attacks run
    before it. Many such points suggest gradient masking: the gradient-based
    attacks should break whatever a black-box attack breaks."""
    whitebox_ran = any(a in WHITE_BOX for a in self.attacks)
    return np.isin(self.broken_by, BLACK_BOX) & whitebox_ran

  def gradient_masking_flags(self) -> list[str]:
    """The AutoAttack authors' warnings that apply, one line each (empty if
    none): zero input gradients, and Square breaking points that the
    white-box attacks before it could not."""
    flags = []
    n_zero = int(np.sum(self.zero_gradient))
    if n_zero:
      flags.append(f"{n_zero} points have an exactly zero input gradient: "
                   f"gradient-based attacks may be unreliable on them")
    n_black = int(np.sum(self.black_box_only))
    if n_black:
      flags.append(f"Square (black-box) broke {n_black} points "
                   f"({n_black / self.robust.size:.2%}) that the white-box "
                   f"attacks did not: a sign of gradient masking")
    return flags

  def summary(self) -> str:
    """A short report: accuracy after each attack and the flags."""
    lines = [f"AutoAttack ({self.version}: {', '.join(self.attacks)}), "
             f"{self.norm} eps={self.eps:.5g} on {self.robust.size} points"]
    for name, acc in self.accuracy_after.items():
      lines.append(f"  accuracy after {name:8s} {acc:.2%}")
    lines += [f"  warning: {flag}" for flag in self.gradient_masking_flags()]
    return "\n".join(lines)


def _bucket(n: int, batch_size: int) -> int:
  """Padded size for a chunk of n points: the next power of two (at least
  8), at most batch_size; so only a few program shapes are compiled."""
  return min(batch_size, max(8, 1 << max(n - 1, 0).bit_length()))


def _padded_chunks(indices: np.ndarray, batch_size: int):
  """(real indices, padded indices) per chunk of at most batch_size points;
  padding repeats the chunk's last point (its results are dropped)."""
  for start in range(0, len(indices), batch_size):
    real = indices[start:start + batch_size]
    size = _bucket(len(real), batch_size)
    yield real, np.concatenate([real, np.full(size - len(real), real[-1])])


def _predict_core(logits_fn, x):
  return jnp.argmax(logits_fn(x), axis=-1)


def _zero_gradient_core(logits_fn, x, y):
  """bool [B]: the input gradient of CE or of DLR (>= 3 classes) is all
  zeros."""
  checks = [losses.cross_entropy]
  if jax.eval_shape(logits_fn, x).shape[-1] >= 3:
    checks.append(dlr_loss)
  zero = jnp.zeros(y.shape, bool)
  for loss_fn in checks:
    g = jax.grad(lambda z, f=loss_fn: jnp.sum(f(logits_fn(z), y)))(x)
    zero = zero | jnp.all(flatten_examples(g) == 0, axis=-1)
  return zero


def _batched(fn, logits_fn, arrays, batch_size: int) -> np.ndarray:
  """fn(logits_fn, *chunks) over all N points in padded chunks, jit-compiled
  once per bucket size; returns the concatenated numpy result."""
  n = len(arrays[0])
  out = []
  for real, padded in _padded_chunks(np.arange(n), batch_size):
    res = _common.maybe_jit(fn, (0,), logits_fn, *(a[padded] for a in arrays))
    out.append(np.asarray(res)[:len(real)])
  return np.concatenate(out) if out else np.zeros((0,), bool)


def _check_attack_options(attacks: Sequence[str],
                          options: Mapping[str, Mapping[str, Any]] | None):
  options = dict(options or {})
  unknown = sorted(set(options) - set(attacks))
  if unknown:
    raise UserError(f"options given for {unknown}, which this run does not "
                    f"use; it runs {list(attacks)}.")
  for name, kwargs in options.items():
    if not isinstance(kwargs, Mapping):
      raise UserError(f"options[{name!r}] must be a dict of keyword arguments "
                      f"of the attack, got {type(kwargs).__name__}.")
  return options


def _attacks_of(version: str, attacks: Sequence[str] | None):
  if attacks is not None:
    attacks = tuple(attacks)
    bad = [a for a in attacks if a not in ATTACK_NAMES]
    if bad or not attacks or len(set(attacks)) != len(attacks):
      raise UserError(f"attacks must be distinct names from {ATTACK_NAMES}, "
                      f"got {list(attacks)}.")
    return attacks
  if version not in VERSIONS:
    raise UserError(f"version must be one of {tuple(VERSIONS)} (or pass "
                    f"attacks=[...]), got {version!r}.")
  return VERSIONS[version]


def autoattack(logits_fn: LogitsFn, x, y, eps, *, norm: str = "linf",
               version: str = "standard", rng=0, batch_size: int = 500,
               attacks: Sequence[str] | None = None,
               options: Mapping[str, Mapping[str, Any]] | None = None,
               progress: bool = False,
               bounds=_common.DEFAULT_BOUNDS) -> AutoAttackResult:
  """AutoAttack (Croce & Hein 2020): a cascade of attacks, per-point worst
  case.

  Runs each attack of `version` (see the module docstring; or the explicit
  list `attacks`, names from ATTACK_NAMES) in order on the points that are
  still correctly classified, in chunks of at most batch_size points padded
  to power-of-two buckets, and keeps, for each point, the first adversarial
  image found. A point is broken if the model misclassifies the returned
  image and it lies in the eps-ball; robust accuracy is the fraction never
  broken.

  Args:
    logits_fn: images [B, H, W, C] in bounds -> logits [B, K]; hashable
      (e.g. a functools.partial of model.apply) so compiled programs are
      reused across chunks.
    x: images [N, H, W, C] in bounds (numpy or jax).
    y: int labels [N].
    eps: radius in the units of bounds (8/255 of [0, 1] is 16/255 of
      [-1, 1]).
    norm: "linf" or "l2".
    rng: an int seed or a PRNG key.
    options: per-attack keyword overrides, e.g.
      {"apgd-ce": {"num_steps": 10}, "square": {"num_queries": 1000}}.
    progress: show a tqdm bar per attack (only on process 0).
    bounds: (low, high), the valid input range: x must lie in it and every
      adversarial image stays in it. Default the library's (-1, 1); pass
      bounds=(0, 1) for a model on [0, 1] images (as torchattacks and
      RobustBench use), with eps in those units (e.g. 8/255).

  Returns:
    an `AutoAttackResult` (numpy arrays; see its fields and `summary()`).
  """
  _common.check_choice("norm", norm, _common.NORMS)
  attacks = _attacks_of(version, attacks)
  options = _check_attack_options(attacks, options)
  batch_size = _common.check_static_int("batch_size", batch_size, 1)
  _common.check_scalar("eps", eps, "the radius for every image")
  _common.check_nonnegative(eps=eps)
  if not _common.is_concrete(eps):
    raise UserError("autoattack runs on the host: eps must be a number, not a "
                    "traced value.")
  x = np.asarray(x, np.float32) if not isinstance(x, np.ndarray) else x
  y = np.asarray(y)
  _common.check_attack_inputs(x, y)
  n = x.shape[0]
  if n == 0:
    raise UserError("autoattack got no images (N = 0).")
  bounds = _common.check_images_in_range(x, bounds)
  num_classes = _common.count_classes(logits_fn, jnp.asarray(x[:1]))
  _common.check_attack_inputs(x, y, num_classes=num_classes)
  x = x.astype(np.float32)
  y = y.astype(np.int32)
  key = jax.random.key(rng) if isinstance(rng, (int, np.integer)) else rng

  pred = _batched(_predict_core, logits_fn, (x,), batch_size)
  clean_correct = pred == y
  zero_gradient = _batched(_zero_gradient_core, logits_fn, (x, y), batch_size)
  robust = clean_correct.copy()
  images = x.copy()
  broken_by = np.where(clean_correct, "", "clean").astype("<U8")
  accuracy_after = {"clean": float(np.mean(clean_correct))}
  show = progress and jax.process_index() == 0
  for a, name in enumerate(attacks):
    fn, kwargs = _ATTACK_FNS[name]
    kwargs = {**kwargs, "bounds": bounds, **options.get(name, {})}
    todo = np.flatnonzero(robust)
    bar = None
    if show and len(todo):
      from tqdm import tqdm  # pylint: disable=g-import-not-at-top
      bar = tqdm(total=len(todo), desc=f"{name:8s}", unit="pt", leave=False)
    for c, (real, padded) in enumerate(_padded_chunks(todo, batch_size)):
      with warnings.catch_warnings():  # The [0, 1] hint was given above.
        warnings.simplefilter("ignore")
        out = fn(logits_fn, jnp.asarray(x[padded]), jnp.asarray(y[padded]),
                 jax.random.fold_in(jax.random.fold_in(key, a), c), eps=eps,
                 norm=norm, **kwargs)
      adv = np.asarray(out["images"])[:len(real)]
      adv_pred = np.asarray(_common.maybe_jit(
          _predict_core, (0,), logits_fn, out["images"]))[:len(real)]
      dist = np.asarray(per_example_norm(jnp.asarray(adv - x[real]), norm))
      broken = (adv_pred != y[real]) & (dist <= eps * (1 + 1e-5) + 1e-6)
      hit = real[broken]
      images[hit] = adv[broken]
      robust[hit] = False
      broken_by[hit] = name
      if bar is not None:
        bar.update(len(real))
        bar.set_postfix(robust=f"{np.mean(robust):.2%}")
    if bar is not None:
      bar.close()
    accuracy_after[name] = float(np.mean(robust))
  return AutoAttackResult(
      images=images, robust=robust, clean_correct=clean_correct,
      broken_by=broken_by, attacks=attacks, accuracy_after=accuracy_after,
      zero_gradient=zero_gradient, eps=float(eps), norm=norm,
      version=version if attacks == VERSIONS.get(version) else "custom")
