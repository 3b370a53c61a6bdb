"""FAB-T, the targeted Fast Adaptive Boundary attack (Croce & Hein 2020,
"Minimally distorted adversarial examples with a fast adaptive boundary
attack"). Part of AutoAttack (`advjax.attacks.autoattack`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from advjax.attacks import _common
from advjax.attacks._common import (LogitsFn, cascade_runs, count_targets,
                                    flatten_examples, logit_of, misclassified,
                                    on_sphere, per_example, per_example_norm,
                                    ranked_classes)



def project_onto_hyperplane_in_box(t, w, b, norm: str,
                                   bounds=_common.DEFAULT_BOUNDS):
  """Smallest d (L-inf or L2) with w . (t + d) = b and t + d in the box
  [low, high]^D, bounds = (low, high) (default [-1, 1]).

  t, w: [B, D]; b: [B]. With c = b - w . t, the minimiser is
  d_i = clip(lam v_i, low - t_i, high - t_i) for v = sign(w) (L-inf) or v = w (L2)
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
  low, high = bounds
  bound = jnp.where(w > 0, high - t, low - t)
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
  d = jnp.clip(lam[:, None] * v, low - t, high - t)
  return jnp.where(moves, d, 0.)


def _fab_run(logits_fn, norm, num_steps, x, y, target, x_start, alpha_max, eta,
             beta, bounds):
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
  x0 = flatten_examples(x)

  def margin_sum(z):
    logits = logits_fn(z).astype(jnp.float32)
    g = logit_of(logits, target) - logit_of(logits, y)
    return jnp.sum(g), g

  def body(_, s):
    x1, adv, best = s
    grad, g = jax.grad(margin_sum, has_aux=True)(x1)
    w = flatten_examples(grad)
    b = jnp.sum(w * flatten_examples(x1), axis=-1) - g
    d = project_onto_hyperplane_in_box(
        jnp.concatenate([flatten_examples(x1), x0]), jnp.concatenate([w, w]),
        jnp.concatenate([b, b]), norm, bounds)
    d1, d2 = d[:batch], d[batch:]
    a1 = jnp.maximum(per_example_norm(d1, norm), 1e-8)
    a2 = jnp.maximum(per_example_norm(d2, norm), 1e-8)
    alpha = jnp.clip(a1 / (a1 + a2), 0., alpha_max)[:, None]
    x1 = jnp.clip((flatten_examples(x1) + eta * d1) * (1. - alpha)
                  + (x0 + eta * d2) * alpha, *bounds).reshape(x.shape)
    wrong = misclassified(logits_fn(x1), y)
    dist = per_example_norm(x1 - x, norm)
    closer = wrong & (dist < best)
    adv = jnp.where(per_example(closer, x), x1, adv)
    best = jnp.where(closer, dist, best)
    x1 = jnp.where(per_example(wrong, x), x + beta * (x1 - x), x1)
    return x1, adv, best

  best = jnp.full((batch,), jnp.inf, jnp.float32)
  _, adv, best = jax.lax.fori_loop(0, num_steps, body, (x_start, x, best))
  return adv, best


def _fab_core(logits_fn, norm, num_steps, num_restarts, num_targets, bounds, x,
              y, rng, eps, alpha_max, eta, beta):
  clean_logits = logits_fn(x)
  ranked = ranked_classes(clean_logits)
  radius = jnp.full(y.shape, 0.5 * eps, jnp.float32)

  def run(j):
    target = ranked[:, 1 + j // num_restarts]
    # The first run of each target starts at x; restarts at a random point
    # at distance eps / 2, as in the authors' code.
    random_start = on_sphere(jax.random.fold_in(rng, j), x, radius, norm,
                             bounds)
    start = jnp.where(j % num_restarts == 0, x, random_start)
    adv, best = _fab_run(logits_fn, norm, num_steps, x, y, target, start,
                         alpha_max, eta, beta, bounds)
    return adv, best <= eps, best

  images, success, best = cascade_runs(num_targets * num_restarts, x, y,
                                       clean_logits, run)
  return {"images": images, "success": success, "distance": best}


def fab_targeted(logits_fn: LogitsFn, x, y, rng, *, eps, norm: str = "linf",
                 num_steps: int = 100, num_restarts: int = 1,
                 n_target_classes: int = 9, alpha_max: float = 0.1,
                 eta: float = 1.05, beta: float = 0.9,
                 bounds=_common.DEFAULT_BOUNDS) -> dict[str, jax.Array]:
  """FAB-T, the targeted Fast Adaptive Boundary attack (Croce & Hein 2020).

  For each target rank k = 2 .. n_target_classes + 1 (the k-th most likely
  class of the clean image; capped at K - 1 targets) and restart, runs FAB
  (`_fab_run`) on the points not yet broken. FAB looks for the smallest
  perturbation that crosses the decision boundary; a point counts as broken
  when the smallest misclassified point found lies within eps.

  bounds = (low, high) is the valid input range (default the library's
  (-1, 1); bounds=(0, 1) for a model on [0, 1] images): x must lie in it,
  every iterate stays in it, and eps is in its units.

  Returns a dict: 'images' (the first successful run's minimal adversarial
  image, x elsewhere), 'success' bool [B], 'distance' [B] (the norm of the
  last run's smallest adversarial perturbation, inf if it found none).
  """
  num_classes = _common.check_norm_ball_attack(logits_fn, x, y, rng, eps, norm,
                                               bounds=bounds)
  _common.check_nonnegative(alpha_max=alpha_max, eta=eta, beta=beta)
  return _common.in_dtype_of(x, _common.maybe_jit(
      _fab_core, (0, 1, 2, 3, 4, 5), logits_fn, norm,
      _common.check_static_int("num_steps", num_steps, 0),
      _common.check_static_int("num_restarts", num_restarts, 1),
      count_targets(n_target_classes, num_classes),
      _common.check_bounds(bounds), jnp.asarray(x, jnp.float32),
      jnp.asarray(y, jnp.int32), rng, jnp.asarray(eps, jnp.float32),
      *(jnp.asarray(v, jnp.float32) for v in (alpha_max, eta, beta))))
