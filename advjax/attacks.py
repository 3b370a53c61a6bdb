"""Gradient-based adversarial attacks on an image classifier.

FGSM/PGD perturb a given image; `unrestricted_attack` searches a conditional
GAN's latent space instead (Song et al. 2018); `train_patch` learns one
universal adversarial patch (Brown et al. 2017); `transfer_attack` crafts on a
substitute and measures a black-box target (Papernot et al. 2016/2017).

The classifier is passed as `logits_fn(x) -> logits` ([B, H, W, C] -> [B, K]),
a closure over its variables, e.g.
`functools.partial(model.apply, variables, train=False)`, so every attack
differentiates with respect to the input only. Images are float32 NHWC in
[-1, 1]; labels are int32 class indices of shape [B].

All attacks are pure and jit-able. Shape checks run always (shapes are static
even under `jax.jit`); value checks (eps >= 0, labels in range) run only when
the values are concrete, i.e. outside of tracing.
"""

import functools
import inspect
import re
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from advjax.errors import UserError

LogitsFn = Callable[[jax.Array], jax.Array]

_NORMS = ("linf", "l2")


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
  x_shape = _check_float_batch(x, "attack input x", "x", 4,
                               "a 4-D NHWC image batch [B, H, W, C]", "image",
                               " (float32 in [-1, 1])")
  if eps is not None and _is_concrete(eps):
    _refuse_if(not np.all(np.asarray(eps) >= 0), f"eps must be >= 0, got {eps}.")
  if y is None:
    return
  y_shape = jnp.shape(y)
  _refuse_if(len(y_shape) != 1,
             f"labels y must be integer class indices of shape [B], got shape "
             f"{tuple(y_shape)}; for one-hot labels pass y.argmax(-1).")
  _refuse_if(not jnp.issubdtype(jnp.result_type(y), jnp.integer),
             f"labels y must be integer class indices, got dtype "
             f"{jnp.result_type(y)}; convert with y.astype(jnp.int32).")
  _refuse_if(y_shape[0] != x_shape[0],
             f"batch size mismatch: x has {x_shape[0]} examples but y has "
             f"{y_shape[0]} labels.")
  if num_classes is not None and _is_concrete(y) and y_shape[0] > 0:
    y_np = np.asarray(y)
    lo, hi = int(y_np.min()), int(y_np.max())
    _refuse_if(lo < 0 or hi >= num_classes,
               f"labels must lie in [0, {num_classes}) for a "
               f"{num_classes}-class classifier, got values in [{lo}, {hi}].")


def _check_float_batch(value, label: str, var: str, rank: int, kind: str,
                       item: str, note: str = "") -> tuple[int, ...]:
  """The shape of `value`, a floating batch of rank `rank`; else UserError
  saying how to fix it."""
  shape = jnp.shape(value)
  _refuse_if(len(shape) != rank,
             f"{label} must be {kind}, got shape {tuple(shape)}; add a batch "
             f"axis with {var}[None] for one {item}.")
  _refuse_if(not jnp.issubdtype(jnp.result_type(value), jnp.floating),
             f"{label} must be floating point{note}, got dtype "
             f"{jnp.result_type(value)}; convert with "
             f"{var}.astype(jnp.float32).")
  return shape


def _refuse_if(condition: Any, message: str) -> None:
  """Raises UserError(message) if `condition` holds."""
  if condition:
    raise UserError(message)


def _output_shape(fn: Callable, name: str, what: str, advice: str, *args):
  """`jax.eval_shape(fn, *args)`; a function that cannot take the inputs
  (wrong layout or size) is a UserError naming them, ending in `advice`."""
  try:
    return jax.eval_shape(fn, *args)
  except UserError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    first = (str(e).strip().splitlines() or [""])[0]
    first = re.sub(r"\s*\(https?://[^)]*\)\s*$", "", first)  # Doc links.
    if len(first) > 240:
      first = first[:237] + "..."
    raise UserError(
        f"{name} cannot take {what} of shape {tuple(jnp.shape(args[0]))} "
        f"({type(e).__name__}: {first}); {advice}") from e


def _image_advice(shape) -> str:
  if len(shape) == 4 and shape[1] in (1, 3) and shape[3] not in (1, 3):
    return "images are NHWC: for NCHW pass x.transpose(0, 2, 3, 1)."
  return ("pass NHWC images of the height, width and channels the model was "
          "trained on.")


def _num_classes(logits_fn: LogitsFn, x, name: str = "logits_fn") -> int:
  """Number of classes, from the output shape (no computation is run)."""
  out = _output_shape(logits_fn, name, "images",
                      _image_advice(jnp.shape(x)), x)
  if len(out.shape) != 2 or out.shape[0] != jnp.shape(x)[0]:
    raise UserError(
        f"{name} must map [B, H, W, C] images to [B, K] logits, got output "
        f"shape {tuple(out.shape)} for input shape {tuple(jnp.shape(x))}.")
  return out.shape[-1]


def _validate(logits_fn, x, y, eps, clip_min, clip_max):
  check_attack_inputs(x, y, eps=eps)
  num_classes = _num_classes(logits_fn, x)
  if y is not None:
    check_attack_inputs(x, y, num_classes=num_classes)
  if (_is_concrete(clip_min, clip_max)
      and np.any(np.asarray(clip_min) > np.asarray(clip_max))):
    raise UserError(
        f"clip_min must be <= clip_max, got [{clip_min}, {clip_max}].")


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
  if norm == "linf":
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
  if norm == "linf":
    return jax.random.uniform(rng, x.shape, x.dtype, -eps, eps)
  dir_rng, rad_rng = jax.random.split(rng)
  d = x[0].size
  g = jax.random.normal(dir_rng, x.shape, x.dtype)
  g = g / jnp.maximum(_per_example_l2(g), 1e-12)
  u = jax.random.uniform(rad_rng, (x.shape[0],) + (1,) * (x.ndim - 1), x.dtype)
  return g * eps * u ** (1. / d)


def pgd(logits_fn: LogitsFn, x, y, rng, *, eps, step_size, num_steps: int,
        norm: str = "linf", targeted: bool = False, random_start: bool = True,
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
  if _is_concrete(step_size) and not np.all(np.asarray(step_size) >= 0):
    raise UserError(f"step_size must be >= 0, got {step_size}.")
  if isinstance(num_steps, int) and num_steps < 0:
    raise UserError(f"num_steps must be >= 0, got {num_steps}.")
  if random_start and rng is None:
    raise UserError("pgd with random_start=True needs a PRNG key rng; pass "
                    "jax.random.key(seed) or set random_start=False.")

  direction = -1. if targeted else 1.
  if random_start:
    x0 = x + _random_start(rng, x, eps, norm)
  else:
    x0 = x
  x0 = jnp.clip(x0, clip_min, clip_max)

  def body(_, x_adv):
    g = _input_grad(logits_fn, x_adv, y)
    if norm == "linf":
      step = jnp.sign(g)
    else:
      step = g / jnp.maximum(_per_example_l2(g), 1e-12)
    x_adv = x_adv + direction * step_size * step.astype(x.dtype)
    x_adv = x + _project(x_adv - x, eps, norm)
    return jnp.clip(x_adv, clip_min, clip_max)

  return jax.lax.fori_loop(0, num_steps, body, x0)


# --- shared helpers for the attacks below ------------------------------------


def _per_example_ce(logits, labels):
  """Softmax cross-entropy CE(logits, labels) per example, shape [B]."""
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return -jnp.take_along_axis(logp, labels[:, None], axis=-1)[:, 0]


def _check_label_vector(name, y, batch_size, num_classes=None):
  """Raises `UserError` unless y is an integer [batch_size] label vector.

  The range check [0, num_classes) runs only for concrete values.
  """
  y_shape = jnp.shape(y)
  _refuse_if(len(y_shape) != 1 or y_shape[0] != batch_size,
             f"{name} must be integer class indices of shape [{batch_size}] "
             f"(one per example), got shape {tuple(y_shape)}.")
  _refuse_if(not jnp.issubdtype(jnp.result_type(y), jnp.integer),
             f"{name} must be integer class indices, got dtype "
             f"{jnp.result_type(y)}; convert with .astype(jnp.int32).")
  if num_classes is not None and _is_concrete(y) and batch_size > 0:
    y_np = np.asarray(y)
    lo, hi = int(y_np.min()), int(y_np.max())
    if lo < 0 or hi >= num_classes:
      raise UserError(
          f"{name} must lie in [0, {num_classes}) for {num_classes} classes, "
          f"got values in [{lo}, {hi}].")


def _check_nonnegative(**values):
  for name, v in values.items():
    if _is_concrete(v) and not np.all(np.asarray(v) >= 0):
      raise UserError(f"{name} must be >= 0, got {v}.")


def _check_num_steps(num_steps):
  if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)):
    raise UserError(
        f"num_steps must be a Python int (it sets the length of the compiled "
        f"loop), got {num_steps!r}.")
  if num_steps < 0:
    raise UserError(f"num_steps must be >= 0, got {num_steps}.")


def _maybe_jit(fn, static_argnums, *args):
  """Calls `jax.jit(fn)` with the callables in `static_argnums` static.

  Static callables key the compilation cache by identity, so repeated calls
  with the same closures reuse the compiled program. Unhashable callables fall
  back to calling `fn` directly (its loops are still single compiled scans).
  """
  try:
    hash(tuple(args[i] for i in static_argnums))
  except TypeError:
    return fn(*args)
  return _jitted(fn, static_argnums)(*args)


@functools.lru_cache(maxsize=None)
def _jitted(fn, static_argnums):
  return jax.jit(fn, static_argnums=static_argnums)


# --- unrestricted adversarial examples (Song et al. 2018) --------------------

# Variance of the decaying Langevin / gradient noise at iteration t:
# _LANGEVIN_ETA / (1 + t) ** _LANGEVIN_GAMMA (Song et al. 2018, following
# Neelakantan et al. 2015).
_LANGEVIN_ETA = 0.01
_LANGEVIN_GAMMA = 0.55


def _unrestricted_core(generate_fn, aux_logits_fn, logits_fn, optimizer,
                       num_steps, langevin, use_noise, axis_name, z0, source,
                       target, rng, hparams):
  """The latent search of `unrestricted_attack` (inputs already validated)."""
  lr, eps_z, lambda_z, lambda_aux, noise_eps = hparams
  z0 = z0.astype(jnp.float32)
  batch = z0.shape[0]
  # The objective is a mean over the batch; with `axis_name`, over the global
  # batch of every device, so an example's step does not depend on how many
  # devices share the batch.
  global_batch = batch if axis_name is None else (
      batch * jax.lax.psum(1, axis_name))

  def forward(params):
    """Per-example loss [B], images, G(z, y_s) and success of an iterate."""
    generated = generate_fn(params["z"], source)
    images = generated
    if use_noise:
      images = jnp.clip(generated + noise_eps * jnp.tanh(params["tau"]), -1.,
                        1.)
    logits = logits_fn(images)
    # The auxiliary classifier judges G(z, y_s) before the pixel noise.
    aux_logits = aux_logits_fn(generated)
    pred = jnp.argmax(logits, axis=-1)
    if target is None:
      # min_{k != y_s} CE(f(x), k) = -max_{k != y_s} log softmax(f(x))_k.
      logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
      is_source = jax.nn.one_hot(source, logp.shape[-1], dtype=bool)
      loss0 = -jnp.max(jnp.where(is_source, -jnp.inf, logp), axis=-1)
      fooled = pred != source
    else:
      loss0 = _per_example_ce(logits, target)
      fooled = pred == target
    # Soft constraint: mean over latent dims of max((z - z0)^2 - eps_z^2, 0).
    dz2 = jnp.square(params["z"] - z0)
    z_penalty = jnp.mean(jnp.maximum(dz2 - jnp.square(eps_z), 0.), axis=-1)
    aux_loss = _per_example_ce(aux_logits, source)
    loss = loss0 + lambda_z * z_penalty + lambda_aux * aux_loss
    success = fooled & (jnp.argmax(aux_logits, axis=-1) == source)
    return loss, images, generated, success

  def mean_loss(params):
    loss, _, _, success = forward(params)
    return jnp.sum(loss) / global_batch, success

  params = {"z": z0}
  if use_noise:
    image_shape = jax.eval_shape(generate_fn, z0, source).shape
    params["tau"] = jnp.zeros(image_shape, jnp.float32)
  opt_state = optimizer.init(params) if optimizer is not None else None
  done = jnp.zeros((batch,), bool)
  first = jnp.full((batch,), -1, jnp.int32)

  def freeze(done, new, old):
    """Keeps `old` for finished examples (leading axis = batch)."""
    return jax.tree.map(
        lambda n, o: jnp.where(done.reshape((-1,) + (1,) * (n.ndim - 1)), o, n),
        new, old)

  def step(carry, t):
    params, opt_state, done, first = carry
    grads, success = jax.grad(mean_loss, has_aux=True)(params)
    first = jnp.where(success & ~done, t, first)
    done = done | success
    if langevin:
      std = jnp.sqrt(_LANGEVIN_ETA / (1. + t) ** _LANGEVIN_GAMMA)
      noise = jax.random.normal(jax.random.fold_in(rng, t), z0.shape)
      grads = dict(grads, z=grads["z"] + std * noise)
    if use_noise:
      # tau descends its per-example unit gradient direction.
      grads = dict(grads, tau=grads["tau"] / jnp.maximum(
          _per_example_l2(grads["tau"]), 1e-12))
    if optimizer is None:
      new_params = jax.tree.map(lambda p, g: p - lr * g, params, grads)
    else:
      updates, opt_state = optimizer.update(grads, opt_state, params)
      new_params = optax.apply_updates(params, updates)
    return (freeze(done, new_params, params), opt_state, done, first), None

  (params, _, done, first), _ = jax.lax.scan(
      step, (params, opt_state, done, first),
      jnp.arange(num_steps, dtype=jnp.int32))
  # The last iterate is checked too, so `success` describes the returned image.
  loss, images, generated, success = forward(params)
  first = jnp.where(success & ~done, num_steps, first)
  return {
      "images": images,
      "generated": generated,
      "z": params["z"],
      "success": done | success,
      "first_success": first,
      "loss": loss,
      "source_labels": source,
      "target_labels": target,
  }


def unrestricted_attack(generate_fn: Callable[[jax.Array, jax.Array],
                                              jax.Array],
                        aux_logits_fn: LogitsFn, logits_fn: LogitsFn, z0,
                        source_labels, rng, *, target_labels=None,
                        num_steps: int = 500, learning_rate=4.0, eps_z=0.1,
                        lambda_z=0.1, lambda_aux=0.1, noise_eps=0.0,
                        langevin: bool = True,
                        optimizer: Optional[optax.GradientTransformation] = None,
                        axis_name: Optional[str] = None) -> dict[str, Any]:
  """Unrestricted adversarial examples from an AC-GAN (Song et al. 2018).

  Searches the latent space near z0 for x = G(z, y_s) that the classifier f
  gets wrong while the GAN's auxiliary classifier C still says y_s, by
  minimising the batch objective of Song et al.'s code

    L(z) = mean_b L0_b + lambda_z * mean_{b,d} max((z_bd - z0_bd)^2 - eps_z^2, 0)
           + lambda_aux * mean_b CE(C(G(z_b, y_s)), y_s)

  with L0 = CE(f(x), y_t) (targeted) or min_{k != y_s} CE(f(x), k)
  (untargeted). Being a mean, L moves each example by its own gradient g_b
  divided by the batch size B. With `axis_name` (inside a data-parallel
  step, e.g. shard_map) the means run over the global batch of every device
  on that axis (B = local batch x number of devices), so an example's step
  does not depend on how the batch is split.

  Optimiser: gradient descent z <- z - learning_rate * (grad_z L + n_t) or,
  if given, the optax `optimizer` on (grad_z L + n_t) (learning_rate unused).
  With langevin, n_t ~ N(0, 0.01 / (1 + t)^0.55) is decaying Gaussian noise
  added to the latent gradient at iteration t (as in Song et al.'s code);
  n_t = 0 otherwise. The loop is one `lax.scan` and the whole search is
  jit-compiled (the callables are static: reuse the same closures and
  optimizer to reuse the compiled program).

  Pixel noise (noise_eps > 0, Song et al.'s "noise-augmented" attack): f sees
  x = clip(G(z, y_s) + noise_eps * tanh(tau), -1, 1), tau (init 0) is
  optimised with z along its per-example unit gradient grad_tau L /
  ||grad_tau L||_2 (norm over H, W, C; no Langevin noise), and C still
  judges G(z, y_s) before the noise.

  Success of x: argmax f(x) != y_s (== y_t if targeted) and
  argmax C(G(z, y_s)) == y_s. It is checked at every iterate z_0 ..
  z_num_steps; an example that succeeds is frozen there, so its returned
  image is the one of its first success.

  Args:
    generate_fn: (z [B, D], labels [B]) -> images [B, H, W, C] in [-1, 1].
    aux_logits_fn: images -> the AC-GAN auxiliary classifier's logits [B, K].
    logits_fn: images -> the attacked classifier's logits [B, K].
    z0: starting latents [B, D] (also the centre of the soft constraint).
    source_labels: y_s, int [B], the class the images are generated from.
    rng: PRNG key for the Langevin noise (may be None if langevin=False).
    target_labels: y_t, int [B], for a targeted attack; None: untargeted.
    axis_name: a mapped axis (e.g. shard_map's) whose devices share the
      batch; None: the batch of this call is the whole batch.

  Returns:
    dict with 'images' [B, H, W, C] (what f sees), 'generated' (G(z, y_s),
    what C sees; 'images' without pixel noise), 'z' [B, D], 'success' bool
    [B] (the returned image satisfies the criterion), 'first_success' int
    [B] (the iterate index in [0, num_steps] of the first success, -1 if
    none), 'loss' (each example's term of L at the returned z, [B]),
    'source_labels', 'target_labels' (None if untargeted).
  """
  z_shape = _check_float_batch(z0, "z0", "z0", 2,
                               "a [B, D] batch of latent vectors", "vector")
  batch = z_shape[0]
  _check_num_steps(num_steps)
  _check_nonnegative(eps_z=eps_z, learning_rate=learning_rate,
                     lambda_z=lambda_z, lambda_aux=lambda_aux,
                     noise_eps=noise_eps)
  _check_label_vector("source_labels", source_labels, batch)
  if target_labels is not None:
    _check_label_vector("target_labels", target_labels, batch)
  if langevin and rng is None:
    raise UserError("unrestricted_attack with langevin=True needs a PRNG key "
                    "rng; pass jax.random.key(seed) or set langevin=False.")
  if optimizer is not None and not (hasattr(optimizer, "init")
                                    and hasattr(optimizer, "update")):
    raise UserError(
        f"optimizer must be an optax GradientTransformation (e.g. "
        f"optax.adam(1e-2)) or None, got {type(optimizer).__name__}.")

  image_struct = _output_shape(
      generate_fn, "generate_fn", "latents z0",
      "z0 must be [B, D] with the GAN's latent size D (config.model."
      "latent_dim).", jnp.asarray(z0), jnp.asarray(source_labels))
  if len(image_struct.shape) != 4 or image_struct.shape[0] != batch:
    raise UserError(
        f"generate_fn must map (z [B, D], labels [B]) to [B, H, W, C] images, "
        f"got output shape {tuple(image_struct.shape)} for B = {batch}.")
  num_aux = _num_classes(aux_logits_fn, image_struct, name="aux_logits_fn")
  num_classes = _num_classes(logits_fn, image_struct)
  if target_labels is None and num_classes < 2:
    raise UserError("an untargeted attack needs a classifier with at least 2 "
                    f"classes, got {num_classes}.")
  _check_label_vector("source_labels", source_labels, batch,
                      min(num_aux, num_classes))
  if target_labels is not None:
    _check_label_vector("target_labels", target_labels, batch, num_classes)
    if _is_concrete(source_labels, target_labels):
      same = np.flatnonzero(np.asarray(target_labels)
                            == np.asarray(source_labels))
      if same.size:
        raise UserError(
            f"target_labels equal source_labels for examples "
            f"{same[:5].tolist()}; a targeted attack needs target != source.")

  # A Python noise_eps decides statically whether tau exists; a traced one
  # keeps tau (harmless: noise_eps = 0 adds nothing).
  use_noise = not _is_concrete(noise_eps) or float(noise_eps) > 0
  hparams = tuple(jnp.asarray(v, jnp.float32) for v in
                  (learning_rate, eps_z, lambda_z, lambda_aux, noise_eps))
  source = jnp.asarray(source_labels, jnp.int32)
  target = (None if target_labels is None
            else jnp.asarray(target_labels, jnp.int32))
  return _maybe_jit(_unrestricted_core, (0, 1, 2, 3, 4, 5, 6, 7), generate_fn,
                    aux_logits_fn, logits_fn, optimizer, int(num_steps),
                    bool(langevin), use_noise, axis_name, z0, source, target,
                    rng, hparams)


# --- adversarial patch (Brown et al. 2017) -----------------------------------


def _patch_hw(patch_size, height, width):
  """(ph, pw) from an int or a pair; must fit inside the images."""
  if isinstance(patch_size, (int, np.integer)) and not isinstance(
      patch_size, bool):
    size = (int(patch_size), int(patch_size))
  elif (isinstance(patch_size, (tuple, list)) and len(patch_size) == 2
        and all(isinstance(s, (int, np.integer)) for s in patch_size)):
    size = (int(patch_size[0]), int(patch_size[1]))
  else:
    raise UserError(f"patch_size must be an int or a (height, width) pair of "
                    f"ints, got {patch_size!r}.")
  if min(size) < 1 or size[0] > height or size[1] > width:
    raise UserError(f"patch_size {size} must be >= 1 and fit inside the "
                    f"{height}x{width} images.")
  return size


def _random_positions(rng, batch, image_hw, patch_hw):
  """Uniform top-left corners [B, 2] (row, col) of a patch inside the image."""
  row_rng, col_rng = jax.random.split(rng)
  rows = jax.random.randint(row_rng, (batch,), 0,
                            image_hw[0] - patch_hw[0] + 1)
  cols = jax.random.randint(col_rng, (batch,), 0,
                            image_hw[1] - patch_hw[1] + 1)
  return jnp.stack([rows, cols], axis=-1).astype(jnp.int32)


def apply_patch(images, patch, positions):
  """Pastes `patch` [ph, pw, C] into each image at its own position.

  positions: int [B, 2], the (row, col) of the patch's top-left corner in each
  image, with 0 <= row <= H - ph and 0 <= col <= W - pw. Pixels inside the
  patch region are replaced by the patch; all others are unchanged. The result
  is differentiable with respect to the patch (and the images outside it).
  """
  check_attack_inputs(images)
  _, height, width, channels = jnp.shape(images)
  p_shape = jnp.shape(patch)
  if (len(p_shape) != 3 or p_shape[2] != channels or p_shape[0] > height
      or p_shape[1] > width):
    raise UserError(
        f"patch must have shape [ph, pw, {channels}] with ph <= {height} and "
        f"pw <= {width} for images of shape {tuple(jnp.shape(images))}, got "
        f"{tuple(p_shape)}.")
  pos_shape = jnp.shape(positions)
  if pos_shape != (jnp.shape(images)[0], 2):
    raise UserError(
        f"positions must be an int [B, 2] array of (row, col) corners, one per "
        f"image, got shape {tuple(pos_shape)}.")
  if not jnp.issubdtype(jnp.result_type(positions), jnp.integer):
    raise UserError(f"positions must be integers, got dtype "
                    f"{jnp.result_type(positions)}.")
  if _is_concrete(positions) and pos_shape[0] > 0:
    pos = np.asarray(positions)
    max_row, max_col = height - p_shape[0], width - p_shape[1]
    if (pos.min() < 0 or pos[:, 0].max() > max_row
        or pos[:, 1].max() > max_col):
      raise UserError(
          f"patch positions must lie in [0, {max_row}] x [0, {max_col}] so the "
          f"{p_shape[0]}x{p_shape[1]} patch fits, got rows in "
          f"[{pos[:, 0].min()}, {pos[:, 0].max()}] and columns in "
          f"[{pos[:, 1].min()}, {pos[:, 1].max()}].")
  patch = jnp.asarray(patch, jnp.result_type(images))
  positions = jnp.asarray(positions, jnp.int32)

  def paste(image, pos):
    return jax.lax.dynamic_update_slice(image, patch,
                                        (pos[0], pos[1], jnp.int32(0)))

  return jax.vmap(paste)(images, positions)


def _collect_images(images_iter_or_array):
  """An image array from an array, an {'image': ...} batch or an iterable.

  An iterable of batches (arrays, {'image', ...} dicts or (image, label)
  tuples) is concatenated into one array, so it must fit in memory.
  """
  data = images_iter_or_array
  if isinstance(data, dict):
    data = data.get("image")
  if data is not None and hasattr(data, "shape"):
    return jnp.asarray(data)
  try:
    batches = []
    for item in data:
      if isinstance(item, dict):
        item = item["image"]
      elif isinstance(item, (tuple, list)):
        item = item[0]
      batches.append(np.asarray(item))
  except (TypeError, KeyError) as e:
    raise UserError(
        f"train_patch needs images as an array [N, H, W, C] or an iterable of "
        f'image batches (arrays or {{"image": ...}} dicts), got '
        f"{type(images_iter_or_array).__name__} ({e}).") from None
  if not batches:
    raise UserError("train_patch got no images: the iterable was empty.")
  return jnp.asarray(np.concatenate(batches, axis=0))


def _check_target_label(target_label, num_classes):
  if jnp.shape(target_label) != () or not jnp.issubdtype(
      jnp.result_type(target_label), jnp.integer):
    raise UserError(f"target_label must be one integer class index, got "
                    f"{target_label!r}.")
  if _is_concrete(target_label) and not 0 <= int(target_label) < num_classes:
    raise UserError(f"target_label must lie in [0, {num_classes}) for a "
                    f"{num_classes}-class classifier, got {int(target_label)}.")


def _train_patch_core(logits_fn, patch_hw, num_steps, batch_size, images,
                      target_label, rng, learning_rate):
  """The compiled training loop of `train_patch` (inputs validated)."""
  num_images, height, width, channels = images.shape
  init_rng, loop_rng = jax.random.split(rng)
  # patch = tanh(w) keeps the patch in [-1, 1] without clipping.
  w = jax.random.uniform(init_rng, patch_hw + (channels,), jnp.float32, -1., 1.)
  opt = optax.adam(learning_rate)
  targets = jnp.full((batch_size,), target_label, jnp.int32)

  def loss_fn(w, x, positions):
    x_patched = apply_patch(x, jnp.tanh(w), positions)
    return jnp.mean(_per_example_ce(logits_fn(x_patched), targets))

  def step(carry, t):
    w, opt_state = carry
    idx_rng, pos_rng = jax.random.split(jax.random.fold_in(loop_rng, t))
    idx = jax.random.randint(idx_rng, (batch_size,), 0, num_images)
    positions = _random_positions(pos_rng, batch_size, (height, width),
                                  patch_hw)
    loss, g = jax.value_and_grad(loss_fn)(w, images[idx], positions)
    updates, opt_state = opt.update(g, opt_state, w)
    return (optax.apply_updates(w, updates), opt_state), loss

  (w, _), losses = jax.lax.scan(step, (w, opt.init(w)),
                                jnp.arange(num_steps, dtype=jnp.int32))
  return {"patch": jnp.tanh(w), "loss": losses}


def train_patch(logits_fn: LogitsFn, images_iter_or_array, target_label, rng,
                *, patch_size, num_steps: int = 1000, learning_rate=0.05,
                batch_size: int = 32) -> dict[str, jax.Array]:
  """Trains one universal adversarial patch (Brown et al. 2017).

  patch = tanh(w) (so it stays in [-1, 1]) minimises the expected
  CE(f(apply_patch(x, patch, p)), target) over training images x and
  uniformly random positions p, with Adam(learning_rate) on w. Each of the
  num_steps steps samples batch_size images (with replacement) and positions
  inside one compiled `lax.scan`. (Brown et al. also randomise rotation and
  scale; here only the position is random.)

  Args:
    logits_fn: images -> logits [B, K].
    images_iter_or_array: training images [N, H, W, C] in [-1, 1], or an
      iterable of batches (collected into one array first).
    target_label: the class the patch should make f predict.
    rng: PRNG key (patch init, image and position sampling).
    patch_size: int or (height, width) of the patch.

  Returns:
    {'patch': [ph, pw, C] in [-1, 1], 'loss': [num_steps] training losses}.
  """
  images = _collect_images(images_iter_or_array)
  check_attack_inputs(images)
  num_images, height, width, _ = images.shape
  if num_images == 0:
    raise UserError("train_patch got no images (N = 0).")
  patch_hw = _patch_hw(patch_size, height, width)
  _check_num_steps(num_steps)
  if (isinstance(batch_size, bool) or not isinstance(batch_size,
                                                     (int, np.integer))
      or batch_size < 1):
    raise UserError(f"batch_size must be a positive int, got {batch_size!r}.")
  _check_nonnegative(learning_rate=learning_rate)
  if rng is None:
    raise UserError("train_patch needs a PRNG key rng; pass "
                    "jax.random.key(seed).")
  _check_target_label(target_label, _num_classes(logits_fn, images[:1]))
  return _maybe_jit(_train_patch_core, (0, 1, 2, 3), logits_fn, patch_hw,
                    int(num_steps), int(batch_size), images,
                    jnp.asarray(target_label, jnp.int32), rng,
                    jnp.asarray(learning_rate, jnp.float32))


def evaluate_patch(logits_fn: LogitsFn, images, patch, target_label, rng, *,
                   labels=None) -> jax.Array:
  """Fraction of images classified as target_label with the patch applied.

  The patch goes to a uniformly random position in each image. With labels,
  images whose true label already is the target are left out (they say
  nothing about the patch); NaN if no image is left.
  """
  check_attack_inputs(images)
  num_classes = _num_classes(logits_fn, images)
  _check_target_label(target_label, num_classes)
  if labels is not None:
    check_attack_inputs(images, labels, num_classes=num_classes)
  if rng is None:
    raise UserError("evaluate_patch needs a PRNG key rng for the random patch "
                    "positions; pass jax.random.key(seed).")
  batch, height, width, _ = jnp.shape(images)
  p_shape = jnp.shape(patch)
  if len(p_shape) != 3:
    raise UserError(f"patch must have shape [ph, pw, C], got {tuple(p_shape)}.")
  positions = _random_positions(rng, batch, (height, width), p_shape[:2])
  patched = apply_patch(images, patch, positions)
  hit = jnp.argmax(logits_fn(patched), axis=-1) == target_label
  if labels is None:
    return jnp.mean(hit.astype(jnp.float32))
  keep = jnp.asarray(labels) != target_label
  return jnp.sum(hit & keep) / jnp.sum(keep).astype(jnp.float32)


# --- black-box transfer (Papernot et al. 2016/2017) --------------------------


def _takes_labels(attack_fn) -> bool:
  """Whether attack_fn(logits_fn, x, y, ...) takes labels (fgsm_least_likely
  does not)."""
  try:
    params = inspect.signature(attack_fn).parameters
  except (TypeError, ValueError):
    return True
  if "y" in params:
    return True
  positional = [name for name, p in params.items()
                if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
  return len(positional) >= 3 and positional[2] != "eps"


def _black_box_predict(target_predict_fn, x):
  """Target labels [B] for x, computed on the host from numpy inputs.

  The target sees only numpy arrays and its output never carries gradients:
  eagerly it is called directly; under tracing (jit) through
  `jax.pure_callback`, which is not differentiable.
  """
  batch = jnp.shape(x)[0]

  def host_predict(x_np):
    out = np.asarray(target_predict_fn(np.asarray(x_np)))
    if out.ndim == 2:
      out = out.argmax(axis=-1)
    if out.shape != (batch,):
      raise UserError(
          f"target_predict_fn must return labels [B] or scores [B, K] for B = "
          f"{batch}, got shape {out.shape}.")
    return out.astype(np.int32)

  if _is_concrete(x):
    return jnp.asarray(host_predict(np.asarray(x)))
  return jax.pure_callback(host_predict,
                           jax.ShapeDtypeStruct((batch,), jnp.int32),
                           jax.lax.stop_gradient(x))


def transfer_attack(attack_fn: Callable[..., jax.Array],
                    substitute_logits_fn: LogitsFn,
                    target_predict_fn: Callable[[np.ndarray], Any], x, y,
                    **attack_kwargs) -> dict[str, jax.Array]:
  """Black-box transfer attack (Papernot et al. 2016, 2017).

  Crafts x_adv = attack_fn(substitute_logits_fn, x, y, **attack_kwargs) (any
  attack of this module, e.g. fgsm or pgd; attacks without labels, like
  fgsm_least_likely, are called without y) by differentiating the substitute
  only, then measures the target on clean and adversarial inputs.

  The target is a black box used only for predictions: `target_predict_fn`
  receives numpy arrays [B, H, W, C] and returns labels [B] or scores [B, K];
  it is never traced or differentiated (under jit it runs through
  `jax.pure_callback`).

  Errors are fractions of examples whose prediction != y. For a targeted
  attack (targeted=True, y = target labels) 1 - error is the targeted success
  rate.

  Returns:
    dict with 'images' (x_adv), 'target_error_clean', 'target_error_adv',
    'substitute_error_adv'.
  """
  check_attack_inputs(x, y)
  if _takes_labels(attack_fn):
    x_adv = attack_fn(substitute_logits_fn, x, y, **attack_kwargs)
  else:
    x_adv = attack_fn(substitute_logits_fn, x, **attack_kwargs)
  y = jnp.asarray(y)

  def error(pred):
    return jnp.mean((pred != y).astype(jnp.float32))

  sub_pred = jnp.argmax(substitute_logits_fn(x_adv), axis=-1)
  return {
      "images": x_adv,
      "target_error_clean": error(_black_box_predict(target_predict_fn, x)),
      "target_error_adv": error(_black_box_predict(target_predict_fn, x_adv)),
      "substitute_error_adv": error(sub_pred),
  }
