"""The losses and inner attacks of the field's adversarial-training methods.

Small pure functions on logits and images (images in [-1, 1], the pipeline's
units; the authors' code works in [0, 1], so their eps, step sizes and noise
scales are doubled here), used by the `trades`, `mart` and `fgsm_rs` entries
of `advjax.adversaries`:

- TRADES (Zhang et al. 2019, "Theoretically Principled Trade-off between
  Robustness and Accuracy"; code github.com/yaodongyu/TRADES, trades.py):
    L_i = CE(f(x_i), y_i) + beta * KL(p(x_i) || p(x'_i)),
  x' from `kl_pgd`: sign steps ascending KL(p(x) || p(x')) from
  x + 0.001 * N(0, I) ([0, 1] units), projected on the L-inf ball and [0, 1].
- MART (Wang et al. 2020, "Improving Adversarial Robustness Requires
  Revisiting Misclassified Examples"; code github.com/YisenWang/MART,
  mart.py):
    L_i = BCE(p(x'_i), y_i) + beta * KL(p(x_i) || p(x'_i)) * (1 - p_y(x_i)),
    BCE(p, y) = -log p_y - log(1 - max_{k != y} p_k),
  x' from `ce_pgd`: the same steps on the cross-entropy, from the same
  Gaussian start.
- Fast adversarial training (Wong, Rice & Kolter 2020, "Fast is better than
  free"; code github.com/locuslab/fast_adversarial): `fgsm_rs`, one FGSM
  step of alpha = 1.25 eps from a uniform start in the eps-ball.

As in the authors' code, gradients of the losses flow through both p(x) and
p(x') (nothing is detached), and through MART's weight 1 - p_y(x).
`p = softmax(logits)`; every function here returns one value per example.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from advjax import attacks
from advjax import losses

LogitsFn = Callable[[jax.Array], jax.Array]


def kl_divergence(p_logits: jax.Array, q_logits: jax.Array) -> jax.Array:
  """KL(softmax(p_logits) || softmax(q_logits)) per example, [B], from
  log-softmaxes (no clamping constants)."""
  log_p = jax.nn.log_softmax(p_logits.astype(jnp.float32), axis=-1)
  log_q = jax.nn.log_softmax(q_logits.astype(jnp.float32), axis=-1)
  return jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1)


def trades_loss(clean_logits: jax.Array, adv_logits: jax.Array,
                targets: jax.Array, beta: float) -> jax.Array:
  """TRADES per example: CE(f(x), t) + beta * KL(p(x) || p(x')).

  `targets` are integer labels [B] or distributions [B, K] (e.g. smoothed
  labels); the authors' code averages this over the batch (their
  `KLDivLoss(size_average=False) / batch_size`).
  """
  return (losses.cross_entropy(clean_logits, targets)
          + beta * kl_divergence(clean_logits, adv_logits))


def _log_one_minus_softmax(logits: jax.Array, index: jax.Array) -> jax.Array:
  """log(1 - softmax(logits)_j) per example, exactly: logsumexp over the
  other classes minus logsumexp over all."""
  logits = logits.astype(jnp.float32)
  others = jnp.where(jax.nn.one_hot(index, logits.shape[-1], dtype=bool),
                     -jnp.inf, logits)
  return (jax.nn.logsumexp(others, axis=-1)
          - jax.nn.logsumexp(logits, axis=-1))


def mart_loss(clean_logits: jax.Array, adv_logits: jax.Array,
              labels: jax.Array, targets: jax.Array,
              beta: float) -> jax.Array:
  """MART per example (Wang et al. 2020, eq. 10):

    BCE(p(x'), y) + beta * KL(p(x) || p(x')) * (1 - p_y(x)),
    BCE(p, y) = CE(p, t) - log(1 - max_{k != y} p_k)

  with `targets` t the labels or their smoothed distributions (CE on t is
  -log p_y for hard labels) and `labels` the integer y of the margin term and
  the weight. Differences with the authors' code, all numerical: it takes
  log(1.0001 - p + 1e-12), log(p(x') + 1e-12) and 1.0000001 - p_y(x) where
  this computes log(1 - p) and the KL from log-softmaxes exactly.
  """
  adv_logits = adv_logits.astype(jnp.float32)
  num_classes = adv_logits.shape[-1]
  is_label = jax.nn.one_hot(labels, num_classes, dtype=bool)
  runner_up = jnp.argmax(jnp.where(is_label, -jnp.inf, adv_logits), axis=-1)
  bce = (losses.cross_entropy(adv_logits, targets)
         - _log_one_minus_softmax(adv_logits, runner_up))
  p_true = jnp.take_along_axis(
      jax.nn.softmax(clean_logits.astype(jnp.float32), axis=-1),
      labels[:, None], axis=-1)[:, 0]
  return bce + beta * kl_divergence(clean_logits, adv_logits) * (1. - p_true)


def sign_ascent(objective: Callable[[jax.Array], jax.Array], x: jax.Array,
                x_start: jax.Array, *, eps: float, step_size: float,
                num_steps: int,
                bounds: tuple[float, float] = (-1., 1.)) -> jax.Array:
  """L-inf steps of the authors' TRADES / MART attack loops: from `x_start`
  (not clipped first, as theirs),

    x_{t+1} = clip(P_eps(x_t + step_size * sign(grad objective(x_t)))),

  P_eps the projection on the eps-ball around x and clip to bounds = (low,
  high), the valid input range; `objective(x')` is a sum over the batch (so each example's
  gradient is its own). `num_steps` is a Python int.
  """
  grad = jax.grad(objective)

  def body(_, x_adv):
    x_adv = x_adv + step_size * jnp.sign(grad(x_adv)).astype(x.dtype)
    x_adv = jnp.clip(x_adv, x - eps, x + eps)
    return jnp.clip(x_adv, *bounds)

  x_adv = jax.lax.fori_loop(0, num_steps, body, x_start)
  return jnp.clip(x_adv, *bounds)


def gaussian_start(rng: jax.Array, x: jax.Array, std: float) -> jax.Array:
  """x + std * N(0, I): TRADES' and MART's start (std 0.001 in [0, 1] units,
  0.002 here)."""
  return x + std * jax.random.normal(rng, x.shape, x.dtype)


def kl_pgd(logits_fn: LogitsFn, x: jax.Array, x_start: jax.Array, *,
           eps: float, step_size: float, num_steps: int,
           bounds: tuple[float, float] = (-1., 1.)) -> jax.Array:
  """TRADES' inner attack: `sign_ascent` on sum_i KL(p(x_i) || p(x'_i)),
  p(x) fixed (computed once; the authors recompute the same value each
  step)."""
  clean = jax.lax.stop_gradient(logits_fn(x))
  return sign_ascent(lambda xa: jnp.sum(kl_divergence(clean, logits_fn(xa))),
                     x, x_start, eps=eps, step_size=step_size,
                     num_steps=num_steps, bounds=bounds)


def ce_pgd(logits_fn: LogitsFn, x: jax.Array, labels: jax.Array,
           x_start: jax.Array, *, eps: float, step_size: float,
           num_steps: int, bounds: tuple[float, float] = (-1., 1.)
           ) -> jax.Array:
  """MART's inner attack: `sign_ascent` on the summed cross-entropy (the
  authors' mean differs by the batch size, which a sign step ignores)."""
  return sign_ascent(
      lambda xa: jnp.sum(losses.cross_entropy(logits_fn(xa), labels)), x,
      x_start, eps=eps, step_size=step_size, num_steps=num_steps,
      bounds=bounds)


def fgsm_rs(logits_fn: LogitsFn, x: jax.Array, labels: jax.Array,
            delta_start: jax.Array, *, eps: float, alpha: float,
            bounds: tuple[float, float] = (-1., 1.)) -> jax.Array:
  """Wong et al. 2020's FGSM with random start (their CIFAR-10 code,
  train_fgsm.py): with delta_start ~ U(-eps, eps) (see `uniform_start`),

    x_0 = clip(x + delta_start)                      (valid range)
    x'  = clip(x + P_eps(x_0 + alpha * sign(grad_x CE(f(x_0), y)) - x)),

  i.e. their delta = clamp(delta + alpha sign(g), -eps, eps) then clamped to
  the valid range (`attacks.fgsm` takes the step; clipping to the range and
  to the ball commute, both contain x).
  """
  x0 = jnp.clip(x + delta_start, *bounds)
  x1 = attacks.fgsm(logits_fn, x0, labels, alpha, bounds=bounds)
  return jnp.clip(x + jnp.clip(x1 - x, -eps, eps), *bounds)


def uniform_start(rng: jax.Array, x: jax.Array, eps: float) -> jax.Array:
  """delta ~ U(-eps, eps), one draw per pixel (fast AT's random start)."""
  return jax.random.uniform(rng, x.shape, x.dtype, -eps, eps)
