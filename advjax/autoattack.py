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

Each attack is a pure function of a `logits_fn(x) -> logits` (as in
`advjax.attacks`), jit-compiled with all its loops (iterations, restarts,
target classes, queries) inside the compiled program. Images are float32 NHWC
in [-1, 1]; eps is in those units (8/255 in [0, 1] units is 16/255 here);
every iterate is clipped to [-1, 1]. The cascade in `autoattack` runs on the
host: between attacks it gathers the points still standing and pads them to a
power-of-two bucket, so each compiled program is reused.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from advjax.attacks import _is_concrete
from advjax.attacks import _maybe_jit
from advjax.attacks import _num_classes
from advjax.attacks import check_attack_inputs
from advjax.errors import UserError

LogitsFn = Callable[[jax.Array], jax.Array]

NORMS = ("linf", "l2")
APGD_LOSSES = ("ce", "dlr")
# Momentum of APGD's update (Croce & Hein 2020, Sec. 3.2).
APGD_MOMENTUM = 0.75
# Square Attack halves p at these iterations (of 10000; Andriushchenko et al.
# 2020, Sec. 4 and their code).
SQUARE_P_HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)

VERSIONS = {
    "standard": ("apgd-ce", "apgd-t", "fab-t", "square"),
    "fast": ("apgd-ce", "apgd-t"),
}
WHITE_BOX = ("apgd-ce", "apgd-dlr", "apgd-t", "fab-t")
BLACK_BOX = ("square",)
ATTACK_NAMES = WHITE_BOX + BLACK_BOX


# --- input checks -------------------------------------------------------------


def _check_int(name: str, value, minimum: int) -> int:
  if (isinstance(value, bool) or not isinstance(value, (int, np.integer))
      or value < minimum):
    raise UserError(f"{name} must be an int >= {minimum} (it sets the length "
                    f"of a compiled loop), got {value!r}.")
  return int(value)


def _check_norm(norm: str) -> str:
  if norm not in NORMS:
    raise UserError(f"norm must be one of {NORMS}, got {norm!r}.")
  return norm


def _check_eps(eps) -> None:
  if np.ndim(eps) != 0:
    raise UserError(f"eps must be one number (the radius for every image), got "
                    f"shape {np.shape(eps)}.")
  if _is_concrete(eps) and not float(eps) >= 0:
    raise UserError(f"eps must be >= 0, got {eps}.")


def _check_images_in_range(x) -> None:
  if _is_concrete(x) and np.size(x):
    lo, hi = float(jnp.min(x)), float(jnp.max(x))
    if lo < -1 - 1e-5 or hi > 1 + 1e-5:
      raise UserError(f"images must lie in [-1, 1] (the library's convention), "
                      f"got values in [{lo:.4g}, {hi:.4g}].")


def _validate(logits_fn, x, y, rng, eps, norm, min_classes: int = 2) -> int:
  """Checks an attack's common inputs; returns the number of classes."""
  _check_norm(norm)
  check_attack_inputs(x, y)
  _check_eps(eps)
  _check_images_in_range(x)
  num_classes = _num_classes(logits_fn, x)
  check_attack_inputs(x, y, num_classes=num_classes)
  if num_classes < min_classes:
    raise UserError(f"this attack needs a classifier with at least "
                    f"{min_classes} classes, got {num_classes}.")
  if rng is None:
    raise UserError("the attack needs a PRNG key rng; pass "
                    "jax.random.key(seed).")
  return num_classes


def _num_targets(n_target_classes, num_classes: int) -> int:
  """Target classes actually used: at most K - 1 (all the other classes)."""
  return min(_check_int("n_target_classes", n_target_classes, 1),
             num_classes - 1)


# --- norms, projections, losses -----------------------------------------------


def _flat(v):
  return v.reshape(v.shape[0], -1)


def _norm(v, norm: str):
  """Per-example L-inf or L2 norm, shape [B]."""
  if norm == "linf":
    return jnp.max(jnp.abs(_flat(v)), axis=-1)
  return jnp.sqrt(jnp.sum(jnp.square(_flat(v)), axis=-1))


def _bcast(v, like):
  """A per-example [B] vector shaped to broadcast against `like`."""
  return v.reshape((-1,) + (1,) * (like.ndim - 1))


def _normalize(v, norm: str):
  """v / (||v|| + 1e-12) per example."""
  return v / _bcast(_norm(v, norm) + 1e-12, v)


def _project(x, x_adv, eps, norm: str):
  """x + P_eps(x_adv - x), clipped to [-1, 1]; P is the projection onto the
  L-inf box or L2 ball of radius eps."""
  if norm == "linf":
    return jnp.clip(jnp.clip(x_adv, x - eps, x + eps), -1., 1.)
  delta = x_adv - x
  length = _bcast(_norm(delta, "l2"), delta)
  delta = delta / (length + 1e-12) * jnp.minimum(eps, length)
  return jnp.clip(x + delta, -1., 1.)


def _random_start(rng, x, radius, norm: str):
  """A point on the sphere of the given radius around x, clipped to [-1, 1].

  L-inf: radius * t / ||t||_inf, t ~ U[-1, 1]^d; L2: radius * t / ||t||_2,
  t ~ N(0, I) (APGD's and FAB's starting points).
  """
  if norm == "linf":
    t = jax.random.uniform(rng, x.shape, x.dtype, -1., 1.)
  else:
    t = jax.random.normal(rng, x.shape, x.dtype)
  return jnp.clip(x + _bcast(radius, x) * _normalize(t, norm), -1., 1.)


def _sorted_logits(logits):
  return jnp.sort(logits.astype(jnp.float32), axis=-1)


def _logit(logits, labels):
  """logits[i, labels[i]], [B]."""
  return jnp.take_along_axis(logits, labels[:, None], axis=-1)[:, 0]


def _margin(logits, y):
  """z_y - max_{i != y} z_i per example: <= 0 once misclassified."""
  logits = logits.astype(jnp.float32)
  is_y = jax.nn.one_hot(y, logits.shape[-1], dtype=bool)
  return _logit(logits, y) - jnp.max(jnp.where(is_y, -jnp.inf, logits), -1)


def ce_loss(logits, y):
  """Softmax cross-entropy per example, [B]."""
  return -_logit(jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1), y)


def dlr_loss(logits, y):
  """Difference of Logits Ratio (Croce & Hein 2020, Eq. 4), per example [B].

  DLR(z, y) = -(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3 + 1e-12), with
  z_pi1 >= z_pi2 >= ... the sorted logits. Invariant to shifting and scaling
  the logits; needs at least 3 classes.
  """
  z_sorted = _sorted_logits(logits)
  return -_margin(logits, y) / (z_sorted[:, -1] - z_sorted[:, -3] + 1e-12)


def targeted_dlr_loss(logits, y, target):
  """Targeted DLR (Croce & Hein 2020, Eq. 5), per example [B].

  -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2 + 1e-12), with t the target;
  needs at least 4 classes.
  """
  logits = logits.astype(jnp.float32)
  z_sorted = _sorted_logits(logits)
  scale = z_sorted[:, -1] - 0.5 * (z_sorted[:, -3] + z_sorted[:, -4])
  return -(_logit(logits, y) - _logit(logits, target)) / (scale + 1e-12)


_APGD_LOSS_FNS = {
    "ce": lambda logits, y, target: ce_loss(logits, y),
    "dlr": lambda logits, y, target: dlr_loss(logits, y),
    "dlr-targeted": targeted_dlr_loss,
}


def _ranked_classes(logits):
  """Class indices by decreasing logit, [B, K]; column k - 1 is the k-th most
  likely class (the target of APGD-T and FAB-T for target rank k)."""
  return jnp.argsort(-logits.astype(jnp.float32), axis=-1, stable=True)


def _wrong(logits, y):
  return jnp.argmax(logits, axis=-1) != y


# --- APGD (Croce & Hein 2020, Algorithm 1) ------------------------------------


def apgd_checkpoints(num_steps: int) -> list[int]:
  """APGD's checkpoints w_j: the iterations at which the step size is checked.

  w_j = ceil(p_j * N) for p_0 = 0, p_1 = 0.22 and
  p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06) (Croce & Hein 2020, Sec.
  3.2), in whole iterations as the authors' code does: the first interval is
  max(int(0.22 N), 1) and each next one shrinks by max(int(0.03 N), 1) down to
  max(int(0.06 N), 1). For N = 100: 22, 41, 57, 70, 80, 87, 93, 99.
  """
  num_steps = _check_int("num_steps", num_steps, 0)
  interval = max(int(0.22 * num_steps), 1)
  shortest = max(int(0.06 * num_steps), 1)
  shrink = max(int(0.03 * num_steps), 1)
  points, at = [], interval
  while at <= num_steps:
    points.append(at)
    interval = max(interval - shrink, shortest)
    at += interval
  return points


def _apgd_schedule(num_steps: int):
  """Per-iteration arrays: is iteration i (0-based) a checkpoint, and the
  length of the interval that ends there."""
  is_checkpoint = np.zeros(num_steps, bool)
  interval = np.zeros(num_steps, np.int32)
  previous = 0
  for w in apgd_checkpoints(num_steps):
    is_checkpoint[w - 1] = True
    interval[w - 1] = w - previous
    previous = w
  return is_checkpoint, interval


def apgd_halve_step(increases, interval, rho, reduced_at_last_check,
                    best_at_last_check, best_now):
  """APGD's rule at a checkpoint w_j: where to halve the step and restart from
  the best point (Croce & Hein 2020, Sec. 3.2).

  Condition 1: the loss went up in at most rho * (w_j - w_{j-1}) of the steps
  since the last checkpoint (`increases` counts them).
  Condition 2: the step was not halved at the last checkpoint and the best
  loss has not improved since.
  As in the authors' code, condition 2 does not apply at the first checkpoint
  (pass reduced_at_last_check=True there), and `_apgd_run` counts the first
  step as an increase when its loss is > 0 (the authors compare it with their
  zero-initialised loss history, not with the starting point's loss; for the
  DLR losses, negative until the point is broken, this halves the step at the
  first checkpoint of short runs).
  """
  too_few_increases = increases <= interval * rho
  stalled = (~reduced_at_last_check) & (best_at_last_check >= best_now)
  return too_few_increases | stalled


def _loss_and_grad(logits_fn, loss_fn, x, y, target):
  """Per-example losses [B], logits and the input gradient of their sum."""

  def total(z):
    logits = logits_fn(z).astype(jnp.float32)
    per_example = loss_fn(logits, y, target)
    return jnp.sum(per_example), (per_example, logits)

  (_, (loss, logits)), grad = jax.value_and_grad(total, has_aux=True)(x)
  return loss, logits, grad


def _apgd_run(logits_fn, loss_fn, norm, num_steps, x, y, target, x_start, eps,
              rho):
  """One APGD run from x_start; returns (adversarial iterate, fooled, final
  step size).

  x^(k+1) = P(x^(k) + a (z^(k+1) - x^(k)) + (1 - a)(x^(k) - x^(k-1))), with
  z^(k+1) = P(x^(k) + eta^(k) s(grad)), s = sign (L-inf) or grad / ||grad||_2
  (L2), a = 1 at the first step and 0.75 after, eta^(0) = 2 eps. At each
  checkpoint (`apgd_checkpoints`) the step is halved where `apgd_halve_step`
  says so, and those points continue from their best iterate.
  """
  is_checkpoint, interval = (jnp.asarray(a) for a in _apgd_schedule(num_steps))
  loss, logits, grad = _loss_and_grad(logits_fn, loss_fn, x_start, y, target)
  fooled = _wrong(logits, y)
  batch = x.shape[0]
  state = {
      "x": x_start, "x_prev": x_start, "grad": grad,
      "loss": jnp.zeros_like(loss),  # see apgd_halve_step
      "step": jnp.full((batch,), 2., jnp.float32) * eps,
      "x_best": x_start, "grad_best": grad, "loss_best": loss,
      "x_adv": x_start, "fooled": fooled,
      "increases": jnp.zeros((batch,), jnp.int32),
      "best_at_check": loss, "reduced_at_check": jnp.ones((batch,), bool),
  }

  def body(i, s):
    a = jnp.where(i == 0, 1., APGD_MOMENTUM)
    if norm == "linf":
      direction = jnp.sign(s["grad"])
    else:
      direction = _normalize(s["grad"], "l2")
    z = _project(x, s["x"] + _bcast(s["step"], x) * direction, eps, norm)
    x_new = _project(x, s["x"] + a * (z - s["x"])
                     + (1. - a) * (s["x"] - s["x_prev"]), eps, norm)
    loss, logits, grad = _loss_and_grad(logits_fn, loss_fn, x_new, y, target)
    wrong = _wrong(logits, y)
    better = loss > s["loss_best"]
    n = {
        "x_prev": s["x"], "x": x_new, "grad": grad, "loss": loss,
        "x_adv": jnp.where(_bcast(wrong, x), x_new, s["x_adv"]),
        "fooled": s["fooled"] | wrong,
        "x_best": jnp.where(_bcast(better, x), x_new, s["x_best"]),
        "grad_best": jnp.where(_bcast(better, x), grad, s["grad_best"]),
        "loss_best": jnp.where(better, loss, s["loss_best"]),
        "increases": s["increases"] + (loss > s["loss"]),
    }
    check = is_checkpoint[i]
    halve = check & apgd_halve_step(n["increases"], interval[i], rho,
                                    s["reduced_at_check"], s["best_at_check"],
                                    n["loss_best"])
    n["step"] = jnp.where(halve, s["step"] / 2., s["step"])
    n["x"] = jnp.where(_bcast(halve, x), n["x_best"], n["x"])
    n["grad"] = jnp.where(_bcast(halve, x), n["grad_best"], n["grad"])
    n["reduced_at_check"] = jnp.where(check, halve, s["reduced_at_check"])
    n["best_at_check"] = jnp.where(check, n["loss_best"], s["best_at_check"])
    n["increases"] = jnp.where(check, 0, n["increases"])
    return n

  if num_steps:
    state = jax.lax.fori_loop(0, num_steps, body, state)
  return state["x_adv"], state["fooled"], state["step"]


def _cascade_runs(num_runs: int, x, y, clean_logits, run_fn):
  """Runs run_fn(j) for j < num_runs, keeping each point's first success;
  stops early once every point is broken.

  run_fn returns (candidate images, success, aux [B]). Points misclassified
  at x (clean_logits) count as broken and keep x. Returns (images, success,
  aux of the last run that attacked each point).
  """

  def cond(c):
    j, success, _, _ = c
    return (j < num_runs) & ~jnp.all(success)

  def body(c):
    j, success, images, aux = c
    candidate, ok, aux_j = run_fn(j)
    new = ok & ~success
    images = jnp.where(_bcast(new, x), candidate, images)
    aux = jnp.where(~success, aux_j, aux)
    return j + 1, success | ok, images, aux

  success = _wrong(clean_logits, y)
  aux0 = jnp.zeros(y.shape, jnp.float32)
  _, success, images, aux = jax.lax.while_loop(
      cond, body, (jnp.int32(0), success, x, aux0))
  return images, success, aux


def _apgd_core(logits_fn, loss_name, norm, num_steps, num_restarts,
               num_targets, x, y, rng, eps, rho):
  """APGD with restarts (untargeted: num_targets = 0) or APGD-T (one run per
  target rank k = 2 .. num_targets + 1 and restart)."""
  loss_fn = _APGD_LOSS_FNS[loss_name]
  clean_logits = logits_fn(x)
  ranked = _ranked_classes(clean_logits)
  radius = jnp.full(y.shape, eps, jnp.float32)

  def run(j):
    target = ranked[:, 1 + j // num_restarts] if num_targets else y
    start = _random_start(jax.random.fold_in(rng, j), x, radius, norm)
    return _apgd_run(logits_fn, loss_fn, norm, num_steps, x, y, target, start,
                     eps, rho)

  images, success, step = _cascade_runs(
      max(num_targets, 1) * num_restarts, x, y, clean_logits, run)
  return {"images": images, "success": success, "step_size": step}


def _check_rho(rho):
  if _is_concrete(rho) and not 0. <= float(rho) <= 1.:
    raise UserError(f"rho must lie in [0, 1], got {rho}.")


def apgd(logits_fn: LogitsFn, x, y, rng, *, eps, norm: str = "linf",
         loss: str = "ce", num_steps: int = 100, num_restarts: int = 1,
         rho: float = 0.75) -> dict[str, jax.Array]:
  """Auto-PGD, untargeted (Croce & Hein 2020, Algorithm 1).

  Maximises the cross-entropy ("ce", APGD-CE) or the DLR loss ("dlr") of the
  true label y inside the eps-ball, from a random point on its surface, with
  momentum 0.75 and a step size that starts at 2 eps and is halved at the
  checkpoints of `apgd_checkpoints` (see `apgd_halve_step`), restarting those
  points from their best iterate. Each of num_restarts runs (new random
  start) attacks only the points not yet broken.

  Returns a dict: 'images' (the first misclassified iterate found for broken
  points, x for the others), 'success' bool [B] (misclassified at 'images';
  points misclassified from the start count as broken), 'step_size' [B]
  (the last run's final step size).
  """
  if loss not in APGD_LOSSES:
    raise UserError(f"loss must be one of {APGD_LOSSES}, got {loss!r}.")
  _validate(logits_fn, x, y, rng, eps, norm,
            min_classes=3 if loss == "dlr" else 2)
  _check_rho(rho)
  return _maybe_jit(
      _apgd_core, (0, 1, 2, 3, 4, 5), logits_fn, loss, norm,
      _check_int("num_steps", num_steps, 0),
      _check_int("num_restarts", num_restarts, 1), 0, jnp.asarray(x),
      jnp.asarray(y, jnp.int32), rng, jnp.asarray(eps, jnp.float32),
      jnp.asarray(rho, jnp.float32))


def apgd_targeted(logits_fn: LogitsFn, x, y, rng, *, eps, norm: str = "linf",
                  num_steps: int = 100, num_restarts: int = 1,
                  n_target_classes: int = 9,
                  rho: float = 0.75) -> dict[str, jax.Array]:
  """APGD-T: APGD on the targeted DLR loss (Croce & Hein 2020, Sec. 4).

  For k = 2 .. n_target_classes + 1 (capped at K classes) the target is the
  k-th most likely class of the clean image, and `targeted_dlr_loss` is
  maximised by APGD (same schedule as `apgd`), on the points not yet broken.
  A point counts as broken when it is misclassified (any wrong class). Needs
  at least 4 classes. Returns what `apgd` returns.
  """
  num_classes = _validate(logits_fn, x, y, rng, eps, norm, min_classes=4)
  _check_rho(rho)
  return _maybe_jit(
      _apgd_core, (0, 1, 2, 3, 4, 5), logits_fn, "dlr-targeted", norm,
      _check_int("num_steps", num_steps, 0),
      _check_int("num_restarts", num_restarts, 1),
      _num_targets(n_target_classes, num_classes), jnp.asarray(x),
      jnp.asarray(y, jnp.int32), rng, jnp.asarray(eps, jnp.float32),
      jnp.asarray(rho, jnp.float32))


# --- FAB-T (Croce & Hein 2020, "Minimally distorted adversarial examples") ----


def project_onto_hyperplane_in_box(t, w, b, norm: str):
  """Smallest d (L-inf or L2) with w . (t + d) = b and t + d in [-1, 1]^D.

  t, w: [B, D]; b: [B]. With c = b - w . t, the minimiser is
  d_i = clip(lam v_i, -1 - t_i, 1 - t_i) for v = sign(w) (L-inf) or v = w (L2)
  times sign(c), with the smallest lam >= 0 that reaches w . d = c: the
  left-hand side is piecewise linear and non-decreasing in lam, with a kink
  where each coordinate hits the box, so sorting the kinks finds lam exactly.
  Where the box does not allow reaching the hyperplane, every coordinate
  moves to its bound in the helpful direction (FAB, Sec. 3.1).
  """
  c = b - jnp.sum(w * t, axis=-1)
  w = w * jnp.where(c >= 0, 1., -1.)[:, None]  # now w . d must equal |c|
  c = jnp.abs(c)
  v = jnp.sign(w) if norm == "linf" else w
  bound = jnp.where(w > 0, 1. - t, -1. - t)
  moves = v != 0
  big = jnp.float32(1e30)
  kink = jnp.where(moves, bound / jnp.where(moves, v, 1.), big)
  order = jnp.argsort(kink, axis=-1)
  kink = jnp.take_along_axis(kink, order, axis=-1)
  saturated_gain = jnp.take_along_axis(w * bound, order, axis=-1)
  slope = jnp.take_along_axis(w * v, order, axis=-1)
  # Before kink k: coordinates < k sit at their bound, the others move with lam.
  gain_before = jnp.cumsum(saturated_gain, axis=-1) - saturated_gain
  slope_from = jnp.sum(slope, -1, keepdims=True) - (
      jnp.cumsum(slope, axis=-1) - slope)
  reach = gain_before + kink * slope_from  # w . d at lam = kink k
  feasible = reach >= c[:, None]
  k = jnp.argmax(feasible, axis=-1)[:, None]
  lam = (c - jnp.take_along_axis(gain_before, k, -1)[:, 0]) / jnp.maximum(
      jnp.take_along_axis(slope_from, k, -1)[:, 0], 1e-30)
  lam = jnp.where(jnp.any(feasible, axis=-1), lam, big)
  d = jnp.clip(lam[:, None] * v, -1. - t, 1. - t)
  return jnp.where(moves, d, 0.)


def _fab_run(logits_fn, norm, num_steps, x, y, target, x_start, alpha_max, eta,
             beta):
  """One FAB-T run; returns (smallest adversarial found, its norm (inf if
  none)).

  Each step linearises g(x) = f_t(x) - f_y(x) at the iterate, projects both
  the iterate and the original point onto {g = 0} within the image box
  (d1, d2), and moves to (x1 + eta d1)(1 - alpha) + (x0 + eta d2) alpha,
  alpha = min(|d1| / (|d1| + |d2|), alpha_max) (Croce & Hein 2020, Eq. 7-8).
  On success it records the point if closer than the best so far and steps
  back towards x0: x1 = x0 + beta (x1 - x0).
  """
  batch = x.shape[0]
  x0 = _flat(x)

  def margin_sum(z):
    logits = logits_fn(z).astype(jnp.float32)
    g = _logit(logits, target) - _logit(logits, y)
    return jnp.sum(g), g

  def body(_, s):
    x1, adv, best = s
    grad, g = jax.grad(margin_sum, has_aux=True)(x1)
    w = _flat(grad)
    b = jnp.sum(w * _flat(x1), axis=-1) - g
    d = project_onto_hyperplane_in_box(
        jnp.concatenate([_flat(x1), x0]), jnp.concatenate([w, w]),
        jnp.concatenate([b, b]), norm)
    d1, d2 = d[:batch], d[batch:]
    a1 = jnp.maximum(_norm(d1, norm), 1e-8)
    a2 = jnp.maximum(_norm(d2, norm), 1e-8)
    alpha = jnp.clip(a1 / (a1 + a2), 0., alpha_max)[:, None]
    x1 = jnp.clip((_flat(x1) + eta * d1) * (1. - alpha)
                  + (x0 + eta * d2) * alpha, -1., 1.).reshape(x.shape)
    wrong = _wrong(logits_fn(x1), y)
    dist = _norm(x1 - x, norm)
    closer = wrong & (dist < best)
    adv = jnp.where(_bcast(closer, x), x1, adv)
    best = jnp.where(closer, dist, best)
    x1 = jnp.where(_bcast(wrong, x), x + beta * (x1 - x), x1)
    return x1, adv, best

  best = jnp.full((batch,), jnp.inf, jnp.float32)
  _, adv, best = jax.lax.fori_loop(0, num_steps, body, (x_start, x, best))
  return adv, best


def _fab_core(logits_fn, norm, num_steps, num_restarts, num_targets, x, y, rng,
              eps, alpha_max, eta, beta):
  clean_logits = logits_fn(x)
  ranked = _ranked_classes(clean_logits)
  radius = jnp.full(y.shape, 0.5 * eps, jnp.float32)

  def run(j):
    target = ranked[:, 1 + j // num_restarts]
    # The first run of each target starts at x; restarts at a random point
    # at distance eps / 2, as in the authors' code.
    random_start = _random_start(jax.random.fold_in(rng, j), x, radius, norm)
    start = jnp.where(j % num_restarts == 0, x, random_start)
    adv, best = _fab_run(logits_fn, norm, num_steps, x, y, target, start,
                         alpha_max, eta, beta)
    return adv, best <= eps, best

  images, success, best = _cascade_runs(num_targets * num_restarts, x, y,
                                        clean_logits, run)
  return {"images": images, "success": success, "distance": best}


def fab_targeted(logits_fn: LogitsFn, x, y, rng, *, eps, norm: str = "linf",
                 num_steps: int = 100, num_restarts: int = 1,
                 n_target_classes: int = 9, alpha_max: float = 0.1,
                 eta: float = 1.05, beta: float = 0.9) -> dict[str, jax.Array]:
  """FAB-T, the targeted Fast Adaptive Boundary attack (Croce & Hein 2020).

  For each target rank k = 2 .. n_target_classes + 1 (the k-th most likely
  class of the clean image; capped at K - 1 targets) and restart, runs FAB
  (`_fab_run`) on the points not yet broken. FAB looks for the smallest
  perturbation that crosses the decision boundary; a point counts as broken
  when the smallest misclassified point found lies within eps.

  Returns a dict: 'images' (the first successful run's minimal adversarial
  image, x elsewhere), 'success' bool [B], 'distance' [B] (the norm of the
  last run's smallest adversarial perturbation, inf if it found none).
  """
  num_classes = _validate(logits_fn, x, y, rng, eps, norm)
  for name, value in (("alpha_max", alpha_max), ("eta", eta), ("beta", beta)):
    if _is_concrete(value) and not float(value) >= 0:
      raise UserError(f"{name} must be >= 0, got {value}.")
  return _maybe_jit(
      _fab_core, (0, 1, 2, 3, 4), logits_fn, norm,
      _check_int("num_steps", num_steps, 0),
      _check_int("num_restarts", num_restarts, 1),
      _num_targets(n_target_classes, num_classes), jnp.asarray(x),
      jnp.asarray(y, jnp.int32), rng, jnp.asarray(eps, jnp.float32),
      *(jnp.asarray(v, jnp.float32) for v in (alpha_max, eta, beta)))


# --- Square Attack (Andriushchenko et al. 2020) -------------------------------


def square_p_schedule(num_queries: int, p_init: float = 0.8,
                      rescale_schedule: bool = False) -> np.ndarray:
  """The fraction p of pixels changed at each iteration, [num_queries].

  p starts at p_init and is halved after iterations 10, 50, 200, 500, 1000,
  2000, 4000, 6000 and 8000 (Andriushchenko et al. 2020, Sec. 4). With
  rescale_schedule the iteration is first mapped to i * 10000 / num_queries
  (as torchattacks does by default); AutoAttack itself uses the plain
  schedule.
  """
  it = np.arange(num_queries)
  if rescale_schedule:
    it = (it / num_queries * 10000).astype(np.int64)
  halvings = np.sum(it[:, None] > np.asarray(SQUARE_P_HALVINGS)[None], axis=1)
  return p_init / 2.0 ** halvings


def square_sizes(num_queries: int, height: int, width: int, norm: str,
                 p_init: float = 0.8,
                 rescale_schedule: bool = False) -> np.ndarray:
  """Side of the square window at each iteration, [num_queries] ints.

  s = round(sqrt(p * H * W)), at least 1 (L-inf) or 3 and odd (L2), at most
  min(H, W): the square holds a fraction p of each channel's pixels.
  """
  sizes = []
  for p in square_p_schedule(num_queries, p_init, rescale_schedule):
    s = int(round(float(np.sqrt(p * height * width))))
    if norm == "l2":
      s = max(s, 3)
      s += 1 - s % 2
    sizes.append(min(max(s, 1), height, width))
  return np.asarray(sizes, np.int32)


def square_l2_window(s: int) -> np.ndarray:
  """The L2 Square Attack's update pattern eta for an s x s window.

  Two halves (rows < s // 2 and the rest) with opposite signs, each a sum of
  centred nested rectangles weighted 1 / (r + 1)^2 (r the ring index) and
  normalised to unit L2 norm; the whole pattern is normalised again
  (Andriushchenko et al. 2020, Sec. 3.3 and Fig. 2).
  """

  def rings(rows, cols):
    r0, c0 = rows // 2, cols // 2
    ring = np.maximum(np.abs(np.arange(rows) - r0)[:, None],
                      np.abs(np.arange(cols) - c0)[None, :])
    num_rings = max(r0 + 1, c0 + 1)
    weights = 1. / (np.arange(num_rings) + 1.) ** 2
    tail = np.cumsum(weights[::-1])[::-1]  # sum of weights from ring r out
    pattern = tail[ring]
    return pattern / np.sqrt(np.sum(pattern ** 2))

  pattern = np.concatenate([rings(s // 2, s), -rings(s - s // 2, s)], axis=0)
  return (pattern / np.sqrt(np.sum(pattern ** 2))).astype(np.float32)


def _window_mask(top, left, size, height, width):
  """[B, H, W, 1] bool: the size x size square at (top, left) per example."""
  rows = jnp.arange(height)[None, :] - top[:, None]
  cols = jnp.arange(width)[None, :] - left[:, None]
  inside_r = (rows >= 0) & (rows < size)
  inside_c = (cols >= 0) & (cols < size)
  return (inside_r[:, :, None] & inside_c[:, None, :])[..., None]


def _place(patterns, top, left, height, width):
  """[B, H, W, 1]: each example's [M, M] zero-padded pattern moved to
  (top, left)."""
  m = patterns.shape[-1]

  def one(pattern, r0, c0):
    rows = jnp.arange(height) - r0
    cols = jnp.arange(width) - c0
    valid = (((rows >= 0) & (rows < m))[:, None]
             & ((cols >= 0) & (cols < m))[None, :])
    vals = pattern[jnp.clip(rows, 0, m - 1)[:, None],
                   jnp.clip(cols, 0, m - 1)[None, :]]
    return jnp.where(valid, vals, 0.)

  return jax.vmap(one)(patterns, top, left)[..., None]


def _square_init(rng, x, eps, norm):
  """Starting point: vertical stripes of +-eps (L-inf), or a 5 x 5 grid of
  windows with random signs rescaled to L2 norm eps (L2)."""
  batch, height, width, channels = x.shape
  if norm == "linf":
    signs = jax.random.rademacher(rng, (batch, 1, width, channels), x.dtype)
    return jnp.clip(x + eps * signs, -1., 1.)
  s = height // 5
  start = (height - 5 * s) // 2
  pattern = jnp.asarray(square_l2_window(s))
  delta = jnp.zeros_like(x)
  keys = jax.random.split(rng, (height // s) * (width // s))
  tile = 0
  for r in range(start, start + (height // s) * s, s):
    for c in range(start, start + (width // s) * s, s):
      if r + s > height or c + s > width:
        continue
      flip_key, sign_key = jax.random.split(keys[tile])
      tile += 1
      p = jnp.where(jax.random.bernoulli(flip_key), pattern.T, pattern)
      signs = jax.random.rademacher(sign_key, (batch, 1, 1, channels), x.dtype)
      block = p[None, :, :, None] * signs
      delta = delta.at[:, r:r + s, c:c + s, :].add(block)
  return jnp.clip(x + eps * _normalize(delta, "l2"), -1., 1.)


def _square_proposal(rng, x, x_best, eps, norm, size, pattern):
  """One random-search proposal (Andriushchenko et al. 2020, Algorithms 2-3).

  L-inf: a size x size window (random position per image) of each channel is
  set to x +- eps (one random sign per channel). L2: a window gets the
  pattern `square_l2_window` (random sign per channel, random transpose) plus
  its old content, rescaled so the window carries the budget left in the
  ball plus that of a second random window, which is zeroed; the whole
  perturbation is then rescaled to L2 norm eps.
  """
  batch, height, width, channels = x.shape
  keys = jax.random.split(rng, 6)
  top = jax.random.randint(keys[0], (batch,), 0, height - size + 1)
  left = jax.random.randint(keys[1], (batch,), 0, width - size + 1)
  window = _window_mask(top, left, size, height, width)
  signs = jax.random.rademacher(keys[2], (batch, 1, 1, channels), x.dtype)
  if norm == "linf":
    x_new = jnp.where(window, x_best + 2. * eps * signs, x_best)
    return jnp.clip(jnp.clip(x_new, x - eps, x + eps), -1., 1.)
  delta = x_best - x
  top2 = jax.random.randint(keys[3], (batch,), 0, height - size + 1)
  left2 = jax.random.randint(keys[4], (batch,), 0, width - size + 1)
  window2 = _window_mask(top2, left2, size, height, width)

  def channel_norm(v):  # L2 norm over H, W: [B, 1, 1, C]
    return jnp.sqrt(jnp.sum(jnp.square(v), axis=(1, 2), keepdims=True))

  flip = jax.random.bernoulli(keys[5], shape=(batch,))
  patterns = jnp.where(flip[:, None, None], pattern.T[None], pattern[None])
  new = _place(patterns, top, left, height, width) * signs
  new = new + delta * window / (1e-12 + channel_norm(delta * window))
  budget_left = jnp.maximum(
      eps ** 2 - jnp.sum(jnp.square(delta), axis=(1, 2, 3), keepdims=True), 0.)
  target_norm = jnp.sqrt(budget_left / channels
                         + jnp.square(channel_norm(delta * (window | window2))))
  new = new / (1e-12 + channel_norm(new * window)) * target_norm
  delta = jnp.where(window, new, jnp.where(window2, 0., delta))
  return jnp.clip(x + eps * _normalize(delta, "l2"), -1., 1.)


def _square_run(logits_fn, norm, sizes, patterns, x, y, rng, eps):
  """One Square Attack run: random search on the margin loss; a proposal is
  kept if it lowers the loss or misclassifies. Points stop once broken; the
  loop stops when all are. sizes [Q]: window side per iteration; patterns
  [Q] -> [M, M] (L2 only): the window pattern per iteration. Returns
  (x_best, broken, queries used)."""
  num_queries = sizes.shape[0]
  init_rng, loop_rng = jax.random.split(rng)
  x_best = _square_init(init_rng, x, eps, norm)
  margin = _margin(logits_fn(x_best), y)
  queries = jnp.ones(y.shape, jnp.float32)

  def cond(c):
    i, _, margin, _ = c
    return (i < num_queries) & jnp.any(margin > 0)

  def body(c):
    i, x_best, margin, queries = c
    active = margin > 0
    x_new = _square_proposal(jax.random.fold_in(loop_rng, i), x, x_best, eps,
                             norm, sizes[i], patterns(i))
    m = _margin(logits_fn(x_new), y)
    accept = active & ((m < margin) | (m <= 0))
    x_best = jnp.where(_bcast(accept, x), x_new, x_best)
    return (i + 1, x_best, jnp.where(accept, m, margin),
            queries + active.astype(jnp.float32))

  _, x_best, margin, queries = jax.lax.while_loop(
      cond, body, (jnp.int32(0), x_best, margin, queries))
  return x_best, margin <= 0, queries


def _square_patterns(sizes, norm: str, side: int):
  """i -> the L2 window pattern of iteration i, zero-padded to side x side
  (a table of the few distinct sizes, indexed per iteration); None for
  L-inf."""
  if norm == "linf":
    return lambda i: None
  distinct = sorted(set(int(s) for s in sizes))
  table = jnp.asarray(np.stack([
      np.pad(square_l2_window(s), ((0, side - s), (0, side - s)))
      for s in distinct]))
  which = jnp.asarray(np.searchsorted(distinct, sizes).astype(np.int32))
  return lambda i: table[which[i]]


def _square_core(logits_fn, norm, num_queries, num_restarts, p_init,
                 rescale_schedule, x, y, rng, eps):
  _, height, width, _ = x.shape
  sizes = square_sizes(num_queries, height, width, norm, p_init,
                       rescale_schedule)
  patterns = _square_patterns(sizes, norm, max(height, width))
  sizes = jnp.asarray(sizes)

  def run(j):
    return _square_run(logits_fn, norm, sizes, patterns, x, y,
                       jax.random.fold_in(rng, j), eps)

  images, success, queries = _cascade_runs(num_restarts, x, y, logits_fn(x),
                                           run)
  return {"images": images, "success": success, "queries": queries}


def square(logits_fn: LogitsFn, x, y, rng, *, eps, norm: str = "linf",
           num_queries: int = 5000, p_init: float = 0.8,
           num_restarts: int = 1,
           rescale_schedule: bool = False) -> dict[str, jax.Array]:
  """Square Attack (Andriushchenko et al. 2020), score-based black box.

  Random search on the margin loss z_y - max_{i != y} z_i: each iteration
  changes one random square window (`_square_proposal`) whose side follows
  `square_sizes` (the p schedule of `square_p_schedule`), and keeps the
  change if the loss went down or the point is misclassified. Uses only the
  logits, never gradients (a check for gradient masking). One query per
  iteration per image still standing, up to num_queries (plus one for the
  starting point).

  Returns a dict: 'images' (adversarial for broken points, x elsewhere),
  'success' bool [B], 'queries' [B] (queries used in the last run).
  """
  check_attack_inputs(x, y)
  _, height, width, _ = jnp.shape(x)
  if norm == "l2" and min(height, width) < 5:
    raise UserError(f"the L2 Square Attack needs images of at least 5x5 "
                    f"pixels, got {height}x{width}.")
  _validate(logits_fn, x, y, rng, eps, norm)
  if not isinstance(p_init, (float, int)) or not 0 < p_init <= 1:
    raise UserError(f"p_init must be a number in (0, 1], got {p_init!r}.")
  return _maybe_jit(
      _square_core, (0, 1, 2, 3, 4, 5), logits_fn, norm,
      _check_int("num_queries", num_queries, 1),
      _check_int("num_restarts", num_restarts, 1), float(p_init),
      bool(rescale_schedule), jnp.asarray(x), jnp.asarray(y, jnp.int32), rng,
      jnp.asarray(eps, jnp.float32))


# --- the cascade (Croce & Hein 2020, Sec. 5) ----------------------------------

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
  checks = [ce_loss]
  if jax.eval_shape(logits_fn, x).shape[-1] >= 3:
    checks.append(dlr_loss)
  zero = jnp.zeros(y.shape, bool)
  for loss_fn in checks:
    g = jax.grad(lambda z, f=loss_fn: jnp.sum(f(logits_fn(z), y)))(x)
    zero = zero | jnp.all(_flat(g) == 0, axis=-1)
  return zero


def _batched(fn, logits_fn, arrays, batch_size: int) -> np.ndarray:
  """fn(logits_fn, *chunks) over all N points in padded chunks, jit-compiled
  once per bucket size; returns the concatenated numpy result."""
  n = len(arrays[0])
  out = []
  for real, padded in _padded_chunks(np.arange(n), batch_size):
    res = _maybe_jit(fn, (0,), logits_fn, *(a[padded] for a in arrays))
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
               progress: bool = False) -> AutoAttackResult:
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
    logits_fn: images [B, H, W, C] in [-1, 1] -> logits [B, K]; hashable
      (e.g. a functools.partial of model.apply) so compiled programs are
      reused across chunks.
    x: images [N, H, W, C] in [-1, 1] (numpy or jax).
    y: int labels [N].
    eps: radius in [-1, 1] units (8/255 of [0, 1] units is 16/255 here).
    norm: "linf" or "l2".
    rng: an int seed or a PRNG key.
    options: per-attack keyword overrides, e.g.
      {"apgd-ce": {"num_steps": 10}, "square": {"num_queries": 1000}}.
    progress: show a tqdm bar per attack (only on process 0).

  Returns:
    an `AutoAttackResult` (numpy arrays; see its fields and `summary()`).
  """
  _check_norm(norm)
  attacks = _attacks_of(version, attacks)
  options = _check_attack_options(attacks, options)
  batch_size = _check_int("batch_size", batch_size, 1)
  _check_eps(eps)
  if not _is_concrete(eps):
    raise UserError("autoattack runs on the host: eps must be a number, not a "
                    "traced value.")
  x = np.asarray(x, np.float32) if not isinstance(x, np.ndarray) else x
  y = np.asarray(y)
  check_attack_inputs(x, y)
  n = x.shape[0]
  if n == 0:
    raise UserError("autoattack got no images (N = 0).")
  _check_images_in_range(x)
  num_classes = _num_classes(logits_fn, jnp.asarray(x[:1]))
  check_attack_inputs(x, y, num_classes=num_classes)
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
    kwargs = {**kwargs, **options.get(name, {})}
    todo = np.flatnonzero(robust)
    bar = None
    if show and len(todo):
      from tqdm import tqdm  # pylint: disable=g-import-not-at-top
      bar = tqdm(total=len(todo), desc=f"{name:8s}", unit="pt", leave=False)
    for c, (real, padded) in enumerate(_padded_chunks(todo, batch_size)):
      out = fn(logits_fn, jnp.asarray(x[padded]), jnp.asarray(y[padded]),
               jax.random.fold_in(jax.random.fold_in(key, a), c), eps=eps,
               norm=norm, **kwargs)
      adv = np.asarray(out["images"])[:len(real)]
      adv_pred = np.asarray(_maybe_jit(_predict_core, (0,), logits_fn,
                                       out["images"]))[:len(real)]
      dist = np.asarray(_norm(jnp.asarray(adv - x[real]), norm))
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
