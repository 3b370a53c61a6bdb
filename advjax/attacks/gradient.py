"""Gradient attacks on a given image: FGSM, least-likely FGSM, BIM/PGD.

Each takes a `logits_fn(x) -> logits` (see `advjax.attacks`) and
differentiates the summed cross-entropy `losses.cross_entropy` with respect to
the input: a sum, not a mean, so each example's input gradient does not
depend on the batch size (every step uses only its sign or its direction).
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp

from advjax import losses
from advjax.attacks import _common
from advjax.attacks._common import LogitsFn, l2_norm_keepdims


def _check(logits_fn, x, y, eps, bounds):
  """The checks of FGSM / PGD; returns bounds as (low, high) floats."""
  _common.check_classifier_attack(logits_fn, x, y, eps)
  return _common.check_images_in_range(x, bounds, stacklevel=4)


def input_gradient(logits_fn: LogitsFn, x, y):
  """grad_x of sum_b CE(f(x)_b, y_b)."""
  return jax.grad(lambda z: jnp.sum(losses.cross_entropy(logits_fn(z), y)))(x)


def fgsm(logits_fn: LogitsFn, x, y, eps, *, targeted: bool = False,
         bounds=_common.DEFAULT_BOUNDS):
  """Fast Gradient Sign Method (Goodfellow, Shlens & Szegedy 2015).

  Untargeted (y = true label):   x' = clip(x + eps * sign(grad_x CE(f(x), y))).
  Targeted   (y = target label): x' = clip(x - eps * sign(grad_x CE(f(x), y))).
  clip(.) clips to bounds = (low, high), the valid input range (default the
  library's (-1, 1); bounds=(0, 1) for a model on [0, 1] images). x must lie
  in bounds, and eps is in its units (8/255 of [0, 1] is 16/255 of [-1, 1]).
  """
  bounds = _check(logits_fn, x, y, eps, bounds)
  g = input_gradient(logits_fn, x, y)
  direction = -1. if targeted else 1.
  x_adv = x + direction * eps * jnp.sign(g).astype(x.dtype)
  return jnp.clip(x_adv, *bounds)


def fgsm_least_likely(logits_fn: LogitsFn, x, eps, *,
                      bounds=_common.DEFAULT_BOUNDS):
  """Least-likely-class FGSM (Kurakin, Goodfellow & Bengio 2016).

  y_LL = argmin_k f(x)_k;  x' = clip(x - eps * sign(grad_x CE(f(x), y_LL))),
  i.e. a targeted FGSM step toward the class the model finds least likely;
  bounds and eps as in `fgsm`.
  """
  bounds = _check(logits_fn, x, None, eps, bounds)
  y_ll = jnp.argmin(logits_fn(x), axis=-1).astype(jnp.int32)
  with warnings.catch_warnings():  # _check has warned already.
    warnings.simplefilter("ignore")
    return fgsm(logits_fn, x, y_ll, eps, targeted=True, bounds=bounds)


def project_perturbation(delta, eps, norm: str):
  """Projects each example's perturbation onto its eps-ball around 0."""
  if norm == "linf":
    return jnp.clip(delta, -eps, eps)
  # L2: delta * min(1, eps / ||delta||_2), per example.
  n = l2_norm_keepdims(delta)
  scale = jnp.minimum(1., eps / jnp.maximum(n, 1e-12))
  return delta * scale


def uniform_in_ball(rng, x, eps, norm: str):
  """Uniform sample from the eps-ball around 0, one per example.

  L-inf: delta ~ U[-eps, eps]^d. L2: uniform in the ball, i.e. a uniformly
  random direction (normalised Gaussian) with radius eps * u^(1/d), u ~ U[0,1].
  """
  if norm == "linf":
    return jax.random.uniform(rng, x.shape, x.dtype, -eps, eps)
  dir_rng, rad_rng = jax.random.split(rng)
  d = x[0].size
  g = jax.random.normal(dir_rng, x.shape, x.dtype)
  g = g / jnp.maximum(l2_norm_keepdims(g), 1e-12)
  u = jax.random.uniform(rad_rng, (x.shape[0],) + (1,) * (x.ndim - 1), x.dtype)
  return g * eps * u ** (1. / d)


def pgd(logits_fn: LogitsFn, x, y, rng, *, eps, step_size, num_steps: int,
        norm: str = "linf", targeted: bool = False, random_start: bool = True,
        bounds=_common.DEFAULT_BOUNDS):
  """Projected Gradient Descent (Madry et al. 2018); BIM if random_start=False.

  Starting from x_0 = clip(x + delta_0) (delta_0 uniform in the eps-ball when
  random_start, else 0; BIM of Kurakin et al. 2016), for t < num_steps:
    L-inf: x_{t+1} = clip(x + P_eps(x_t + s * a * sign(g_t) - x))
    L2:    x_{t+1} = clip(x + P_eps(x_t + s * a * g_t / ||g_t||_2 - x))
  with g_t = grad_x CE(f(x_t), y), a = +1 (untargeted, ascend the loss of the
  true label) or -1 (targeted, descend the loss of the target label), s =
  step_size, P_eps the per-example projection onto the L-inf box / L2 ball and
  clip to bounds = (low, high), the valid input range (default the library's
  (-1, 1); bounds=(0, 1) for a model on [0, 1] images). x must lie in bounds;
  eps and step_size are in its units. The loop is a `lax.fori_loop`;
  `num_steps` is a Python int (keep it static under jit).
  """
  _common.check_choice("norm", norm, _common.NORMS)
  bounds = _check(logits_fn, x, y, eps, bounds)
  _common.check_nonnegative(step_size=step_size)
  _common.check_static_int("num_steps", num_steps, 0)
  if random_start:
    _common.check_rng(rng, "pgd with random_start=True",
                      "set random_start=False")

  direction = -1. if targeted else 1.
  if random_start:
    x0 = x + uniform_in_ball(rng, x, eps, norm)
  else:
    x0 = x
  x0 = jnp.clip(x0, *bounds)

  def body(_, x_adv):
    g = input_gradient(logits_fn, x_adv, y)
    if norm == "linf":
      step = jnp.sign(g)
    else:
      step = g / jnp.maximum(l2_norm_keepdims(g), 1e-12)
    x_adv = x_adv + direction * step_size * step.astype(x.dtype)
    x_adv = x + project_perturbation(x_adv - x, eps, norm)
    return jnp.clip(x_adv, *bounds)

  return jax.lax.fori_loop(0, num_steps, body, x0)
