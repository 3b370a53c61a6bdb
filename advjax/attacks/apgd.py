"""Auto-PGD (Croce & Hein 2020, Algorithm 1): APGD-CE, APGD-DLR and APGD-T.

APGD is PGD with momentum and a step size that adapts at checkpoints; it
needs no step-size tuning. Its losses: the cross-entropy
(`losses.cross_entropy`, APGD-CE), the Difference of Logits Ratio `dlr_loss`
and its targeted form `targeted_dlr_loss` (APGD-T). Part of AutoAttack
(`advjax.attacks.autoattack`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from advjax import losses
from advjax.attacks import _common
from advjax.attacks._common import (LogitsFn, cascade_runs, count_targets,
                                    logit_margin, logit_of, misclassified,
                                    normalize, on_sphere, per_example,
                                    per_example_norm, ranked_classes)

APGD_LOSSES = ("ce", "dlr")
# Momentum of APGD's update (Croce & Hein 2020, Sec. 3.2).
APGD_MOMENTUM = 0.75


def project_into_ball(x, x_adv, eps, norm: str,
                      bounds=_common.DEFAULT_BOUNDS):
  """x + P_eps(x_adv - x), clipped to bounds (low, high); P is the
  projection onto the L-inf box or L2 ball of radius eps."""
  if norm == "linf":
    return jnp.clip(jnp.clip(x_adv, x - eps, x + eps), *bounds)
  delta = x_adv - x
  length = per_example(per_example_norm(delta, "l2"), delta)
  delta = delta / (length + 1e-12) * jnp.minimum(eps, length)
  return jnp.clip(x + delta, *bounds)


def _sorted_logits(logits):
  return jnp.sort(logits.astype(jnp.float32), axis=-1)


def dlr_loss(logits, y):
  """Difference of Logits Ratio (Croce & Hein 2020, Eq. 4), per example [B].

  DLR(z, y) = -(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3 + 1e-12), with
  z_pi1 >= z_pi2 >= ... the sorted logits. Invariant to shifting and scaling
  the logits; needs at least 3 classes.
  """
  z_sorted = _sorted_logits(logits)
  return -logit_margin(logits, y) / (z_sorted[:, -1] - z_sorted[:, -3] + 1e-12)


def targeted_dlr_loss(logits, y, target):
  """Targeted DLR (Croce & Hein 2020, Eq. 5), per example [B].

  -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2 + 1e-12), with t the target;
  needs at least 4 classes.
  """
  logits = logits.astype(jnp.float32)
  z_sorted = _sorted_logits(logits)
  scale = z_sorted[:, -1] - 0.5 * (z_sorted[:, -3] + z_sorted[:, -4])
  return -(logit_of(logits, y) - logit_of(logits, target)) / (scale + 1e-12)


_APGD_LOSS_FNS = {
    "ce": lambda logits, y, target: losses.cross_entropy(logits, y),
    "dlr": lambda logits, y, target: dlr_loss(logits, y),
    "dlr-targeted": targeted_dlr_loss,
}




def apgd_checkpoints(num_steps: int) -> list[int]:
  """APGD's checkpoints w_j: the iterations at which the step size is checked.

  w_j = ceil(p_j * N) for p_0 = 0, p_1 = 0.22 and
  p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06) (Croce & Hein 2020, Sec.
  3.2), in whole iterations as the authors' code does: the first interval is
  max(int(0.22 N), 1) and each next one shrinks by max(int(0.03 N), 1) down to
  max(int(0.06 N), 1). For N = 100: 22, 41, 57, 70, 80, 87, 93, 99.
  """
  num_steps = _common.check_static_int("num_steps", num_steps, 0)
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
    loss = loss_fn(logits, y, target)
    return jnp.sum(loss), (loss, logits)

  (_, (loss, logits)), grad = jax.value_and_grad(total, has_aux=True)(x)
  return loss, logits, grad


def _apgd_run(logits_fn, loss_fn, norm, num_steps, x, y, target, x_start, eps,
              rho, bounds):
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
  fooled = misclassified(logits, y)
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
      direction = normalize(s["grad"], "l2")
    z = project_into_ball(x, s["x"] + per_example(s["step"], x) * direction,
                          eps, norm, bounds)
    x_new = project_into_ball(x, s["x"] + a * (z - s["x"])
                              + (1. - a) * (s["x"] - s["x_prev"]), eps, norm,
                              bounds)
    loss, logits, grad = _loss_and_grad(logits_fn, loss_fn, x_new, y, target)
    wrong = misclassified(logits, y)
    better = loss > s["loss_best"]
    n = {
        "x_prev": s["x"], "x": x_new, "grad": grad, "loss": loss,
        "x_adv": jnp.where(per_example(wrong, x), x_new, s["x_adv"]),
        "fooled": s["fooled"] | wrong,
        "x_best": jnp.where(per_example(better, x), x_new, s["x_best"]),
        "grad_best": jnp.where(per_example(better, x), grad, s["grad_best"]),
        "loss_best": jnp.where(better, loss, s["loss_best"]),
        "increases": s["increases"] + (loss > s["loss"]),
    }
    check = is_checkpoint[i]
    halve = check & apgd_halve_step(n["increases"], interval[i], rho,
                                    s["reduced_at_check"], s["best_at_check"],
                                    n["loss_best"])
    n["step"] = jnp.where(halve, s["step"] / 2., s["step"])
    n["x"] = jnp.where(per_example(halve, x), n["x_best"], n["x"])
    n["grad"] = jnp.where(per_example(halve, x), n["grad_best"], n["grad"])
    n["reduced_at_check"] = jnp.where(check, halve, s["reduced_at_check"])
    n["best_at_check"] = jnp.where(check, n["loss_best"], s["best_at_check"])
    n["increases"] = jnp.where(check, 0, n["increases"])
    return n

  if num_steps:
    state = jax.lax.fori_loop(0, num_steps, body, state)
  return state["x_adv"], state["fooled"], state["step"]


def _apgd_core(logits_fn, loss_name, norm, num_steps, num_restarts,
               num_targets, bounds, x, y, rng, eps, rho):
  """APGD with restarts (untargeted: num_targets = 0) or APGD-T (one run per
  target rank k = 2 .. num_targets + 1 and restart)."""
  loss_fn = _APGD_LOSS_FNS[loss_name]
  clean_logits = logits_fn(x)
  ranked = ranked_classes(clean_logits)
  radius = jnp.full(y.shape, eps, jnp.float32)

  def run(j):
    target = ranked[:, 1 + j // num_restarts] if num_targets else y
    start = on_sphere(jax.random.fold_in(rng, j), x, radius, norm, bounds)
    return _apgd_run(logits_fn, loss_fn, norm, num_steps, x, y, target, start,
                     eps, rho, bounds)

  images, success, step = cascade_runs(
      max(num_targets, 1) * num_restarts, x, y, clean_logits, run)
  return {"images": images, "success": success, "step_size": step}


def apgd(logits_fn: LogitsFn, x, y, rng, *, eps, norm: str = "linf",
         loss: str = "ce", num_steps: int = 100, num_restarts: int = 1,
         rho: float = 0.75,
         bounds=_common.DEFAULT_BOUNDS) -> dict[str, jax.Array]:
  """Auto-PGD, untargeted (Croce & Hein 2020, Algorithm 1).

  Maximises the cross-entropy ("ce", APGD-CE) or the DLR loss ("dlr") of the
  true label y inside the eps-ball, from a random point on its surface, with
  momentum 0.75 and a step size that starts at 2 eps and is halved at the
  checkpoints of `apgd_checkpoints` (see `apgd_halve_step`), restarting those
  points from their best iterate. Each of num_restarts runs (new random
  start) attacks only the points not yet broken.

  bounds = (low, high) is the valid input range (default the library's
  (-1, 1); bounds=(0, 1) for a model on [0, 1] images): x must lie in it,
  every iterate is clipped to it, and eps is in its units.

  Returns a dict: 'images' (the first misclassified iterate found for broken
  points, x for the others), 'success' bool [B] (misclassified at 'images';
  points misclassified from the start count as broken), 'step_size' [B]
  (the last run's final step size).
  """
  _common.check_choice("loss", loss, APGD_LOSSES)
  _common.check_norm_ball_attack(logits_fn, x, y, rng, eps, norm,
                                 min_classes=3 if loss == "dlr" else 2,
                                 bounds=bounds)
  _common.check_in_unit_interval(rho=rho)
  return _common.in_dtype_of(x, _common.maybe_jit(
      _apgd_core, (0, 1, 2, 3, 4, 5, 6), logits_fn, loss, norm,
      _common.check_static_int("num_steps", num_steps, 0),
      _common.check_static_int("num_restarts", num_restarts, 1), 0,
      _common.check_bounds(bounds), jnp.asarray(x, jnp.float32),
      jnp.asarray(y, jnp.int32), rng, jnp.asarray(eps, jnp.float32),
      jnp.asarray(rho, jnp.float32)))


def apgd_targeted(logits_fn: LogitsFn, x, y, rng, *, eps, norm: str = "linf",
                  num_steps: int = 100, num_restarts: int = 1,
                  n_target_classes: int = 9, rho: float = 0.75,
                  bounds=_common.DEFAULT_BOUNDS) -> dict[str, jax.Array]:
  """APGD-T: APGD on the targeted DLR loss (Croce & Hein 2020, Sec. 4).

  For k = 2 .. n_target_classes + 1 (capped at K classes) the target is the
  k-th most likely class of the clean image, and `targeted_dlr_loss` is
  maximised by APGD (same schedule as `apgd`), on the points not yet broken.
  A point counts as broken when it is misclassified (any wrong class). Needs
  at least 4 classes. bounds and eps as in `apgd`. Returns what `apgd`
  returns.
  """
  num_classes = _common.check_norm_ball_attack(logits_fn, x, y, rng, eps, norm,
                                               min_classes=4, bounds=bounds)
  _common.check_in_unit_interval(rho=rho)
  return _common.in_dtype_of(x, _common.maybe_jit(
      _apgd_core, (0, 1, 2, 3, 4, 5, 6), logits_fn, "dlr-targeted", norm,
      _common.check_static_int("num_steps", num_steps, 0),
      _common.check_static_int("num_restarts", num_restarts, 1),
      count_targets(n_target_classes, num_classes),
      _common.check_bounds(bounds), jnp.asarray(x, jnp.float32),
      jnp.asarray(y, jnp.int32), rng, jnp.asarray(eps, jnp.float32),
      jnp.asarray(rho, jnp.float32)))
