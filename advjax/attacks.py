"""Gradient-based adversarial attacks on an image classifier.

The classifier is passed as `logits_fn(x) -> logits` ([B, H, W, C] -> [B, K]),
a closure over its variables, e.g.
`functools.partial(model.apply, variables, train=False)`, so every attack
differentiates with respect to the input only. Images are float32 NHWC in
[-1, 1]; labels are int32 class indices of shape [B].

All attacks are pure and jit-able. Shape checks run always (shapes are static
even under `jax.jit`); value checks (eps >= 0, labels in range) run only when
the values are concrete, i.e. outside of tracing.
"""

from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from advjax.errors import UserError

LogitsFn = Callable[[jax.Array], jax.Array]

_NORMS = ('linf', 'l2')


def _is_concrete(*values) -> bool:
  """True when no value is a JAX tracer (so its contents can be inspected)."""
  return not any(isinstance(v, jax.core.Tracer) for v in values)


def check_attack_inputs(x, y=None, num_classes: Optional[int] = None,
                        eps=None) -> None:
  """Raises `UserError` (one line) if the attack inputs are malformed.

  Checks that `x` is a 4-D NHWC floating batch, that `y` is a [B] vector of
  integer class indices with the same batch size, that labels lie in
  [0, num_classes) and that eps >= 0. Shape checks always run; the label range
  and eps checks run only for concrete (non-traced) values.
  """
  x_shape = jnp.shape(x)
  if len(x_shape) != 4:
    raise UserError(
        f'attack input x must be a 4-D NHWC image batch [B, H, W, C], got '
        f'shape {tuple(x_shape)}; add a batch axis with x[None] for one image.')
  if not jnp.issubdtype(jnp.result_type(x), jnp.floating):
    raise UserError(
        f'attack input x must be floating point (float32 in [-1, 1]), got '
        f'dtype {jnp.result_type(x)}; convert with x.astype(jnp.float32).')
  if eps is not None and _is_concrete(eps):
    if np.any(np.asarray(eps) < 0):
      raise UserError(f'eps must be >= 0, got {eps}.')
  if y is None:
    return
  y_shape = jnp.shape(y)
  if len(y_shape) != 1:
    raise UserError(
        f'labels y must be integer class indices of shape [B], got shape '
        f'{tuple(y_shape)}; for one-hot labels pass y.argmax(-1).')
  if not jnp.issubdtype(jnp.result_type(y), jnp.integer):
    raise UserError(
        f'labels y must be integer class indices, got dtype '
        f'{jnp.result_type(y)}; convert with y.astype(jnp.int32).')
  if y_shape[0] != x_shape[0]:
    raise UserError(
        f'batch size mismatch: x has {x_shape[0]} examples but y has '
        f'{y_shape[0]} labels.')
  if num_classes is not None and _is_concrete(y) and y_shape[0] > 0:
    y_np = np.asarray(y)
    lo, hi = int(y_np.min()), int(y_np.max())
    if lo < 0 or hi >= num_classes:
      raise UserError(
          f'labels must lie in [0, {num_classes}) for a {num_classes}-class '
          f'classifier, got values in [{lo}, {hi}].')


def _num_classes(logits_fn: LogitsFn, x) -> int:
  """Number of classes, from the output shape (no computation is run)."""
  out = jax.eval_shape(logits_fn, x)
  if len(out.shape) != 2 or out.shape[0] != jnp.shape(x)[0]:
    raise UserError(
        f'logits_fn must map [B, H, W, C] images to [B, K] logits, got output '
        f'shape {tuple(out.shape)} for input shape {tuple(jnp.shape(x))}.')
  return out.shape[-1]


def _validate(logits_fn, x, y, eps, clip_min, clip_max):
  check_attack_inputs(x, y, eps=eps)
  num_classes = _num_classes(logits_fn, x)
  if y is not None:
    check_attack_inputs(x, y, num_classes=num_classes)
  if (_is_concrete(clip_min, clip_max)
      and np.any(np.asarray(clip_min) > np.asarray(clip_max))):
    raise UserError(
        f'clip_min must be <= clip_max, got [{clip_min}, {clip_max}].')


def _ce_sum(logits_fn: LogitsFn, x, y):
  """Sum over the batch of softmax cross-entropy CE(f(x), y).

  A sum (not a mean) keeps each example's input gradient independent of the
  batch size; every attack step only uses its sign or its direction anyway.
  """
  logits = logits_fn(x)
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return -jnp.sum(jnp.take_along_axis(logp, y[:, None], axis=-1))


def _input_grad(logits_fn: LogitsFn, x, y):
  return jax.grad(_ce_sum, argnums=1)(logits_fn, x, y)


def fgsm(logits_fn: LogitsFn, x, y, eps, *, targeted: bool = False,
         clip_min: float = -1., clip_max: float = 1.):
  """Fast Gradient Sign Method (Goodfellow, Shlens & Szegedy 2015).

  Untargeted (y = true label):   x' = clip(x + eps * sign(grad_x CE(f(x), y))).
  Targeted   (y = target label): x' = clip(x - eps * sign(grad_x CE(f(x), y))).
  clip(.) clips to [clip_min, clip_max].
  """
  _validate(logits_fn, x, y, eps, clip_min, clip_max)
  g = _input_grad(logits_fn, x, y)
  direction = -1. if targeted else 1.
  x_adv = x + direction * eps * jnp.sign(g).astype(x.dtype)
  return jnp.clip(x_adv, clip_min, clip_max)


def fgsm_least_likely(logits_fn: LogitsFn, x, eps, *,
                      clip_min: float = -1., clip_max: float = 1.):
  """Least-likely-class FGSM (Kurakin, Goodfellow & Bengio 2016).

  y_LL = argmin_k f(x)_k;  x' = clip(x - eps * sign(grad_x CE(f(x), y_LL))),
  i.e. a targeted FGSM step toward the class the model finds least likely.
  """
  _validate(logits_fn, x, None, eps, clip_min, clip_max)
  y_ll = jnp.argmin(logits_fn(x), axis=-1).astype(jnp.int32)
  return fgsm(logits_fn, x, y_ll, eps, targeted=True, clip_min=clip_min,
              clip_max=clip_max)


def _per_example_l2(v):
  """L2 norm of each example over all non-batch axes, shaped [B, 1, 1, 1]."""
  axes = tuple(range(1, v.ndim))
  return jnp.sqrt(jnp.sum(jnp.square(v), axis=axes, keepdims=True))


def _project(delta, eps, norm):
  """Projects each example's perturbation onto its eps-ball."""
  if norm == 'linf':
    return jnp.clip(delta, -eps, eps)
  # L2: delta * min(1, eps / ||delta||_2), per example.
  n = _per_example_l2(delta)
  scale = jnp.minimum(1., eps / jnp.maximum(n, 1e-12))
  return delta * scale


def _random_start(rng, x, eps, norm):
  """Uniform sample from the eps-ball around 0, one per example.

  L-inf: delta ~ U[-eps, eps]^d. L2: uniform in the ball, i.e. a uniformly
  random direction (normalised Gaussian) with radius eps * u^(1/d), u ~ U[0,1].
  """
  if norm == 'linf':
    return jax.random.uniform(rng, x.shape, x.dtype, -eps, eps)
  dir_rng, rad_rng = jax.random.split(rng)
  d = x[0].size
  g = jax.random.normal(dir_rng, x.shape, x.dtype)
  g = g / jnp.maximum(_per_example_l2(g), 1e-12)
  u = jax.random.uniform(rad_rng, (x.shape[0],) + (1,) * (x.ndim - 1), x.dtype)
  return g * eps * u ** (1. / d)


def pgd(logits_fn: LogitsFn, x, y, rng, *, eps, step_size, num_steps: int,
        norm: str = 'linf', targeted: bool = False, random_start: bool = True,
        clip_min: float = -1., clip_max: float = 1.):
  """Projected Gradient Descent (Madry et al. 2018); BIM if random_start=False.

  Starting from x_0 = clip(x + delta_0) (delta_0 uniform in the eps-ball when
  random_start, else 0; BIM of Kurakin et al. 2016), for t < num_steps:
    L-inf: x_{t+1} = clip(x + P_eps(x_t + s * a * sign(g_t) - x))
    L2:    x_{t+1} = clip(x + P_eps(x_t + s * a * g_t / ||g_t||_2 - x))
  with g_t = grad_x CE(f(x_t), y), a = +1 (untargeted, ascend the loss of the
  true label) or -1 (targeted, descend the loss of the target label), s =
  step_size, P_eps the per-example projection onto the L-inf box / L2 ball and
  clip to [clip_min, clip_max]. The loop is a `lax.fori_loop`; `num_steps` is
  a Python int (keep it static under jit).
  """
  if norm not in _NORMS:
    raise UserError(f"norm must be one of {_NORMS}, got {norm!r}.")
  _validate(logits_fn, x, y, eps, clip_min, clip_max)
  if _is_concrete(step_size) and np.any(np.asarray(step_size) < 0):
    raise UserError(f'step_size must be >= 0, got {step_size}.')
  if isinstance(num_steps, int) and num_steps < 0:
    raise UserError(f'num_steps must be >= 0, got {num_steps}.')
  if random_start and rng is None:
    raise UserError('pgd with random_start=True needs a PRNG key rng; pass '
                    'jax.random.key(seed) or set random_start=False.')

  direction = -1. if targeted else 1.
  if random_start:
    x0 = x + _random_start(rng, x, eps, norm)
  else:
    x0 = x
  x0 = jnp.clip(x0, clip_min, clip_max)

  def body(_, x_adv):
    g = _input_grad(logits_fn, x_adv, y)
    if norm == 'linf':
      step = jnp.sign(g)
    else:
      step = g / jnp.maximum(_per_example_l2(g), 1e-12)
    x_adv = x_adv + direction * step_size * step.astype(x.dtype)
    x_adv = x + _project(x_adv - x, eps, norm)
    return jnp.clip(x_adv, clip_min, clip_max)

  return jax.lax.fori_loop(0, num_steps, body, x0)
