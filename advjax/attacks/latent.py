"""Unrestricted adversarial examples from an AC-GAN (Song et al. 2018).

`unrestricted_attack` searches a conditional GAN's latent space for images the
classifier gets wrong while the GAN's auxiliary classifier still sees the
source class, instead of perturbing a given image.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from advjax import losses
from advjax.attacks import _common
from advjax.attacks._common import LogitsFn, l2_norm_keepdims

# Variance of the decaying Langevin / gradient noise at iteration t:
# _LANGEVIN_ETA / (1 + t) ** _LANGEVIN_GAMMA (Song et al. 2018, following
# Neelakantan et al. 2015).
_LANGEVIN_ETA = 0.01
_LANGEVIN_GAMMA = 0.55

ITERATES = ("last", "first")

# Settings of the two reference implementations, by name. Both run plain
# gradient descent on the batch mean of the objective with the Langevin
# noise above and judge the last iterate.
PRESETS: dict[str, dict[str, Any]] = {
    # The code of the study advjax reimplements ("Adversarial training with
    # Unrestricted Adversarial Examples"): learning rate 0.1, lambda 0.1 /
    # 0.1, eps_z 0.1, 500 iterations.
    "seed": dict(num_steps=500, learning_rate=0.1, eps_z=0.1, lambda_z=0.1,
                 lambda_aux=0.1, langevin=True, iterate="last"),
    # Song et al.'s code (ermongroup/generative_adversary, main.py
    # defaults): --lr 1, --lambda1 100, --lambda2 100, --z_eps 0.1,
    # --n_iters 1000, --batch_size 64 (the report's batch).
    "song": dict(num_steps=1000, learning_rate=1.0, eps_z=0.1,
                 lambda_z=100.0, lambda_aux=100.0, langevin=True,
                 iterate="last"),
}


def _unrestricted_core(generate_fn, aux_logits_fn, logits_fn, optimizer,
                       num_steps, langevin, use_noise, axis_name, iterate,
                       z0, source, target, rng, hparams):
  """The latent search of `unrestricted_attack` (inputs already validated)."""
  lr, eps_z, lambda_z, lambda_aux, noise_eps, steer = hparams
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
      loss0 = losses.cross_entropy(logits, target)
      fooled = pred == target
    # Soft constraint: mean over latent dims of max((z - z0)^2 - eps_z^2, 0).
    dz2 = jnp.square(params["z"] - z0)
    z_penalty = jnp.mean(jnp.maximum(dz2 - jnp.square(eps_z), 0.), axis=-1)
    aux_loss = losses.cross_entropy(aux_logits, source)
    # steer = 0 is the random-search baseline: the networks' terms keep
    # their values (they judge) but pass no gradient (they do not steer).
    # Traced, so the attack and its baseline share one compiled program.
    steered = lambda v: jax.lax.stop_gradient(v) + steer * (
        v - jax.lax.stop_gradient(v))
    loss0, aux_loss = steered(loss0), steered(aux_loss)
    loss = loss0 + lambda_z * z_penalty + lambda_aux * aux_loss
    aux_keeps = jnp.argmax(aux_logits, axis=-1) == source
    success = fooled & aux_keeps
    return loss, images, generated, success, (pred == source) & aux_keeps

  def mean_loss(params):
    loss, _, _, success, _ = forward(params)
    return jnp.sum(loss) / global_batch, success

  params = {"z": z0}
  if use_noise:
    image_shape = jax.eval_shape(generate_fn, z0, source).shape
    params["tau"] = jnp.zeros(image_shape, jnp.float32)
  opt_state = optimizer.init(params) if optimizer is not None else None
  # Attacked: both networks give the source class at z0. The others are
  # never moved (their image stays G(z0, y_s)) and never succeed.
  attacked = forward(params)[4]
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
    success = success & attacked
    first = jnp.where(success & ~done, t, first)
    done = done | success
    if langevin:
      std = jnp.sqrt(_LANGEVIN_ETA / (1. + t) ** _LANGEVIN_GAMMA)
      noise = jax.random.normal(jax.random.fold_in(rng, t), z0.shape)
      grads = dict(grads, z=grads["z"] + std * noise)
    if use_noise:
      # tau descends its per-example unit gradient direction.
      grads = dict(grads, tau=grads["tau"] / jnp.maximum(
          l2_norm_keepdims(grads["tau"]), 1e-12))
    if optimizer is None:
      new_params = jax.tree.map(lambda p, g: p - lr * g, params, grads)
    else:
      updates, opt_state = optimizer.update(grads, opt_state, params)
      new_params = optax.apply_updates(params, updates)
    frozen = ~attacked | (done if iterate == "first" else False)
    return (freeze(frozen, new_params, params), opt_state, done, first), None

  (params, _, done, first), _ = jax.lax.scan(
      step, (params, opt_state, done, first),
      jnp.arange(num_steps, dtype=jnp.int32))
  # The last iterate is checked too, so `success` describes the returned image.
  loss, images, generated, success, _ = forward(params)
  success = success & attacked
  first = jnp.where(success & ~done, num_steps, first)
  return {
      "images": images,
      "generated": generated,
      "z": params["z"],
      "success": (done | success) if iterate == "first" else success,
      "attacked": attacked,
      "first_success": first,
      "loss": loss,
      "source_labels": source,
      "target_labels": target,
  }


def unrestricted_attack(generate_fn: Callable[[jax.Array, jax.Array],
                                              jax.Array],
                        aux_logits_fn: LogitsFn, logits_fn: LogitsFn, z0,
                        source_labels, rng, *, target_labels=None,
                        num_steps: int = PRESETS["seed"]["num_steps"],
                        learning_rate=PRESETS["seed"]["learning_rate"],
                        eps_z=PRESETS["seed"]["eps_z"],
                        lambda_z=PRESETS["seed"]["lambda_z"],
                        lambda_aux=PRESETS["seed"]["lambda_aux"],
                        noise_eps=0.0,
                        langevin: bool = PRESETS["seed"]["langevin"],
                        iterate: str = PRESETS["seed"]["iterate"],
                        baseline: bool = False,
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

  Attacked examples: only those that both f and C put in the source class
  at z0 (argmax f(G(z0, y_s)) == argmax C(G(z0, y_s)) == y_s) are searched;
  the others keep z0 (their image is G(z0, y_s)) and never count as a
  success, so a sample the classifier already got wrong, or that the GAN
  did not make recognisably y_s, is not credited to the attack.

  Success of an attacked x: argmax f(x) != y_s (== y_t if targeted) and
  argmax C(G(z, y_s)) == y_s. iterate='last' (both references) returns the
  last iterate z_num_steps and judges it; iterate='first' freezes each
  example at the first iterate that succeeds and returns that one (a
  weaker requirement: any point of the path counts).

  baseline=True is the random-search baseline with the same budget: the
  classifier and auxiliary terms are evaluated but under stop_gradient, so
  z moves by the Langevin noise and the latent constraint alone. Its
  success, against the attack's with the same key, is what sampling the GAN
  near z0 gives without the classifier's gradient.

  The defaults are the settings of the seed study's code (`PRESETS['seed']`;
  `PRESETS['song']` holds Song et al.'s).

  Args:
    generate_fn: (z [B, D], labels [B]) -> images [B, H, W, C] in [-1, 1].
    aux_logits_fn: images -> the AC-GAN auxiliary classifier's logits [B, K].
    logits_fn: images -> the attacked classifier's logits [B, K].
    z0: starting latents [B, D] (also the centre of the soft constraint).
    source_labels: y_s, int [B], the class the images are generated from.
    rng: PRNG key for the Langevin noise (may be None if langevin=False).
    target_labels: y_t, int [B], for a targeted attack; None: untargeted.
    iterate: 'last' or 'first' (see above).
    baseline: the random-search baseline instead of the attack.
    axis_name: a mapped axis (e.g. shard_map's) whose devices share the
      batch; None: the batch of this call is the whole batch.

  Returns:
    dict with 'images' [B, H, W, C] (what f sees), 'generated' (G(z, y_s),
    what C sees; 'images' without pixel noise), 'z' [B, D], 'attacked'
    bool [B] (both networks right at z0), 'success' bool [B] (attacked and
    the returned image satisfies the criterion), 'first_success' int [B]
    (the iterate index in [1, num_steps] of the first success of an
    attacked example, -1 if none; with iterate='last' the returned iterate
    may no longer succeed), 'loss' (each example's term of L at the returned z, [B]),
    'source_labels', 'target_labels' (None if untargeted).
  """
  _common.refuse_if(
      iterate not in ITERATES,
      f"iterate must be one of {list(ITERATES)}, got {iterate!r}.")
  _check_inputs(generate_fn, aux_logits_fn, logits_fn, z0, source_labels,
                target_labels, rng, num_steps, langevin, optimizer,
                eps_z=eps_z, learning_rate=learning_rate, lambda_z=lambda_z,
                lambda_aux=lambda_aux, noise_eps=noise_eps)
  # A Python noise_eps decides statically whether tau exists; a traced one
  # keeps tau (harmless: noise_eps = 0 adds nothing).
  use_noise = not _common.is_concrete(noise_eps) or float(noise_eps) > 0
  hparams = tuple(jnp.asarray(v, jnp.float32) for v in
                  (learning_rate, eps_z, lambda_z, lambda_aux, noise_eps,
                   0. if baseline else 1.))
  source = jnp.asarray(source_labels, jnp.int32)
  target = (None if target_labels is None
            else jnp.asarray(target_labels, jnp.int32))
  return _common.maybe_jit(_unrestricted_core, tuple(range(9)),
                           generate_fn, aux_logits_fn, logits_fn, optimizer,
                           int(num_steps), bool(langevin), use_noise,
                           axis_name, str(iterate), z0, source, target, rng,
                           hparams)


def _check_inputs(generate_fn, aux_logits_fn, logits_fn, z0, source_labels,
                  target_labels, rng, num_steps, langevin, optimizer,
                  **nonnegative):
  """The checks of `unrestricted_attack`: latents, labels, the three
  networks' shapes, the loop length, the optimiser and the hyperparameters."""
  batch = _common.check_float_batch(z0, "z0", "z0", 2,
                                    "a [B, D] batch of latent vectors",
                                    "vector")[0]
  _common.check_static_int("num_steps", num_steps, 0)
  _common.check_nonnegative(**nonnegative)
  _common.check_labels(source_labels, batch, name="source_labels",
                       batch_of="z0")
  if target_labels is not None:
    _common.check_labels(target_labels, batch, name="target_labels",
                         batch_of="z0")
  if langevin:
    _common.check_rng(rng, "unrestricted_attack with langevin=True",
                      "set langevin=False")
  _common.refuse_if(
      optimizer is not None and not (hasattr(optimizer, "init")
                                     and hasattr(optimizer, "update")),
      f"optimizer must be an optax GradientTransformation (e.g. "
      f"optax.adam(1e-2)) or None, got {type(optimizer).__name__}.")

  image_struct = _common.output_shape(
      generate_fn, "generate_fn", "latents z0",
      "z0 must be [B, D] with the GAN's latent size D (config.model."
      "latent_dim).", jnp.asarray(z0), jnp.asarray(source_labels))
  _common.refuse_if(
      len(image_struct.shape) != 4 or image_struct.shape[0] != batch,
      f"generate_fn must map (z [B, D], labels [B]) to [B, H, W, C] images, "
      f"got output shape {tuple(image_struct.shape)} for B = {batch}.")
  num_aux = _common.count_classes(aux_logits_fn, image_struct,
                                  name="aux_logits_fn")
  num_classes = _common.count_classes(logits_fn, image_struct)
  _common.refuse_if(
      target_labels is None and num_classes < 2,
      f"an untargeted attack needs a classifier with at least 2 classes, got "
      f"{num_classes}.")
  _common.check_labels(source_labels, batch, min(num_aux, num_classes),
                       name="source_labels", batch_of="z0")
  if target_labels is None:
    return
  _common.check_labels(target_labels, batch, num_classes,
                       name="target_labels", batch_of="z0")
  if _common.is_concrete(source_labels, target_labels):
    same = np.flatnonzero(np.asarray(target_labels)
                          == np.asarray(source_labels))
    _common.refuse_if(
        same.size, f"target_labels equal source_labels for examples "
        f"{same[:5].tolist()}; a targeted attack needs target != source.")


