"""GAN training: every GAN family of the library in one compiled step.

One call of `train_step(state, batch, rng)` does `gan.critic_steps` (k)
discriminator/critic updates, each on its own slice of real images, then one
generator update, all inside one jit-compiled, data-parallel program
(`lax.scan` over the k critic updates; gradients averaged with `lax.pmean`).

What the config switches (`config.gan`):
  loss: 'minimax' (saturating G loss log(1 - D(G(z)))), 'nonsaturating',
    'least_squares', 'hinge' or 'wasserstein' (see advjax/losses.py)
  gradient_penalty: WGAN-GP weight (Gulrajani et al. 2017); 0 = off
  weight_clip: WGAN weight clipping c (Arjovsky et al. 2017); 0 = off
  critic_steps: k discriminator updates per generator update
  aux_weight_real / aux_weight_fake / aux_weight_g: AC-GAN classification
    terms (Odena et al. 2017) for the critic on real and on fake images and
    for the generator; they need a discriminator with a class head
  real_label: one-sided label smoothing, e.g. 0.9 (Salimans et al. 2016)
  feature_matching: weight of ||E f(x) - E f(G(z))||^2 in the G loss
    (Salimans et al. 2016); g_adversarial_weight: weight of the usual G loss
  historical_averaging: weight of ||theta - mean of past theta||^2 for both
    players (Salimans et al. 2016)
  instance_noise: std of Gaussian noise added to every D input, annealed
    linearly to 0 over instance_noise_anneal_steps (Sonderby et al. 2017)
  ema_decay: exponential moving average of the generator's weights, used for
    samples and evaluation (with a warm-up, see `ema_decay_at`); 0 = off
Minibatch discrimination and virtual batch norm are model options
(config.model.discriminator / generator, see advjax/models/gans.py).

Conditioning: for conditional models the fakes of a critic update carry the
labels of the real images they are compared with, and the generator update
draws labels uniformly.
"""

from __future__ import annotations

import functools
import time
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from advjax import input_pipeline, loop, losses, optimizers, parallel
from advjax.errors import UserError
from advjax.metric_writers import image_grid
from advjax.models import count_params, gans
from advjax.parallel import AXIS

TRAINER = "gan"
LOSSES = ("minimax", "nonsaturating", "least_squares", "hinge", "wasserstein")
PROBABILISTIC = ("minimax", "nonsaturating")


class GANState(flax.struct.PyTreeNode):
  """Both players' variables and optimiser states.

  `g_ema` is the moving average of the generator's params ({} when off);
  `g_hist`/`d_hist` the running means for historical averaging ({} when off);
  `bad_step` as in advjax.loop.guard_nonfinite.
  """
  step: jax.Array
  g_params: Any
  g_state: Any      # non-trainable generator collections (batch_stats, ...)
  g_opt_state: Any
  d_params: Any
  d_state: Any
  d_opt_state: Any
  g_ema: Any
  g_hist: Any
  d_hist: Any
  bad_step: jax.Array
  generator: Any = flax.struct.field(pytree_node=False, default=None)
  discriminator: Any = flax.struct.field(pytree_node=False, default=None)
  g_tx: Any = flax.struct.field(pytree_node=False, default=None)
  d_tx: Any = flax.struct.field(pytree_node=False, default=None)


def _gan_settings(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  g = config.gan
  if g.loss not in LOSSES:
    raise UserError(f"gan.loss '{g.loss}' is not one of {LOSSES}")
  if g.critic_steps < 1:
    raise UserError(f"gan.critic_steps must be >= 1, not {g.critic_steps}")
  if g.get("gradient_penalty", 0.0) and g.get("weight_clip", 0.0):
    raise UserError("choose gan.gradient_penalty or gan.weight_clip, not both")
  return g


def latent_dim(config: ml_collections.ConfigDict) -> int:
  return int(config.model.latent_dim)


def sample_latents(rng: jax.Array, n: int, dim: int) -> jax.Array:
  """z ~ N(0, I)."""
  return jax.random.normal(rng, (n, dim), jnp.float32)


def create_models(config: ml_collections.ConfigDict, num_classes: int,
                  image_shape: tuple[int, int, int],
                  axis_name: str | None = AXIS):
  dtype = jnp.dtype(config.get("dtype", "float32"))
  generator = gans.create_generator(config.model, num_classes, image_shape,
                                    axis_name=axis_name, dtype=dtype)
  discriminator = gans.create_discriminator(config.model, num_classes,
                                            image_shape, axis_name=axis_name,
                                            dtype=dtype)
  return generator, discriminator


def _split_variables(variables: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
  variables = dict(variables)
  params = variables.pop("params")
  return params, variables


def create_train_state(config: ml_collections.ConfigDict, num_classes: int,
                       image_shape: tuple[int, int, int], rng: jax.Array,
                       num_train_steps: int) -> GANState:
  """Initialises both players (and the reference batch of virtual BN)."""
  g_cfg = _gan_settings(config)
  generator, discriminator = create_models(config, num_classes, image_shape)
  g_rng, d_rng, ref_rng = jax.random.split(rng, 3)
  n_ref = int(config.model.get("reference_batch_size", 64))
  z = sample_latents(ref_rng, n_ref, latent_dim(config))
  labels = (jax.random.randint(jax.random.fold_in(ref_rng, 1), (n_ref,), 0,
                               num_classes) if num_classes else None)
  g_vars = jax.jit(functools.partial(generator.init, train=False))(
      {"params": g_rng}, z, labels)
  g_vars = gans.init_reference(generator, g_vars, z, labels)
  images = jnp.zeros((2, *image_shape), jnp.float32)
  d_vars = jax.jit(functools.partial(discriminator.init, train=False))(
      {"params": d_rng}, images, None if labels is None else labels[:2])
  g_params, g_state = _split_variables(g_vars)
  d_params, d_state = _split_variables(d_vars)
  if g_cfg.get("gradient_penalty", 0.0) and d_state.get("batch_stats"):
    raise UserError("the gradient penalty needs a discriminator without "
                    "BatchNorm (set model.discriminator.use_batchnorm=False)")
  k = int(g_cfg.critic_steps)
  g_tx = optimizers.create_optimizer(config.g_optimizer, num_train_steps)
  d_tx = optimizers.create_optimizer(config.d_optimizer, k * num_train_steps)
  copy = lambda t: jax.tree.map(jnp.array, t)
  hist = bool(g_cfg.get("historical_averaging", 0.0))
  return GANState(
      step=jnp.asarray(0, jnp.int32),
      g_params=g_params, g_state=g_state, g_opt_state=g_tx.init(g_params),
      d_params=d_params, d_state=d_state, d_opt_state=d_tx.init(d_params),
      g_ema=copy(g_params) if g_cfg.get("ema_decay", 0.0) else {},
      g_hist=copy(g_params) if hist else {},
      d_hist=copy(d_params) if hist else {},
      bad_step=jnp.asarray(-1, jnp.int32),
      generator=generator, discriminator=discriminator, g_tx=g_tx, d_tx=d_tx)


def _adversarial_losses(kind: str, real_label: float):
  """(d_loss(d_real, d_fake), g_loss(d_fake)) for `kind`."""
  if kind == "minimax":
    return (functools.partial(losses.minimax_d_loss, real_label=real_label),
            losses.minimax_g_loss)
  if kind == "nonsaturating":
    return (functools.partial(losses.minimax_d_loss, real_label=real_label),
            losses.nonsaturating_g_loss)
  if kind == "least_squares":
    return losses.least_squares_d_loss, losses.least_squares_g_loss
  if kind == "hinge":
    return losses.hinge_d_loss, losses.hinge_g_loss
  return losses.wasserstein_d_loss, losses.wasserstein_g_loss


def _d_output_mean(kind: str, score: jax.Array) -> jax.Array:
  """Mean D(x): a probability for the minimax losses, else the raw score."""
  if kind in PROBABILISTIC:
    return jnp.mean(jax.nn.sigmoid(score))
  return jnp.mean(score)


def _noise_std(g_cfg, step: jax.Array) -> jax.Array:
  std = float(g_cfg.get("instance_noise", 0.0))
  anneal = max(int(g_cfg.get("instance_noise_anneal_steps", 1)), 1)
  return std * jnp.maximum(0.0, 1.0 - step.astype(jnp.float32) / anneal)


def ema_decay_at(decay: float, step: jax.Array) -> jax.Array:
  """min(decay, (1 + t) / (10 + t)): early on, the average forgets the
  random initialisation quickly; later it averages over ~1 / (1 - decay)
  steps (the warm-up of TensorFlow's ExponentialMovingAverage)."""
  t = step.astype(jnp.float32)
  return jnp.minimum(decay, (1.0 + t) / (10.0 + t))


def _run_generator(state: GANState, g_params, z, labels, train: bool):
  """Images and updated non-trainable generator collections."""
  variables = {"params": g_params, **state.g_state}
  if train:
    images, updates = state.generator.apply(
        variables, z, labels, train=True, mutable=["batch_stats"])
    return images, {**state.g_state, **updates}
  return state.generator.apply(variables, z, labels, train=False), state.g_state


def _run_discriminator(state: GANState, d_params, d_state, x, labels):
  variables = {"params": d_params, **d_state}
  out, updates = state.discriminator.apply(variables, x, labels, train=True,
                                           mutable=["batch_stats"])
  return out, {**d_state, **updates}


def train_step(state: GANState, batch: dict[str, jax.Array], rng: jax.Array,
               *, config: ml_collections.ConfigDict, num_classes: int
               ) -> tuple[GANState, dict[str, jax.Array]]:
  """k critic updates then one generator update (per-device code)."""
  g_cfg = config.gan
  k = int(g_cfg.critic_steps)
  d_loss_fn, g_loss_fn = _adversarial_losses(
      g_cfg.loss, float(g_cfg.get("real_label", 1.0)))
  conditional = num_classes > 0
  dim = latent_dim(config)
  rng = parallel.device_rng(rng, state.step)
  noise_std = _noise_std(g_cfg, state.step)
  gp_weight = float(g_cfg.get("gradient_penalty", 0.0))
  clip = float(g_cfg.get("weight_clip", 0.0))
  hist_weight = float(g_cfg.get("historical_averaging", 0.0))
  aux_real = float(g_cfg.get("aux_weight_real", 0.0))
  aux_fake = float(g_cfg.get("aux_weight_fake", 0.0))
  aux_g = float(g_cfg.get("aux_weight_g", 0.0))

  images = batch["image"].reshape(k, -1, *batch["image"].shape[1:])
  labels = batch["label"].reshape(k, -1)
  n = images.shape[1]

  def add_noise(key, x):
    if not g_cfg.get("instance_noise", 0.0):  # static: no noise, no draws
      return x
    return x + noise_std * jax.random.normal(key, x.shape, x.dtype)

  def critic_update(carry, xs):
    d_params, d_state, d_opt_state, d_hist, g_state, i = carry
    real, y, key = xs
    kz, kgp, kn1, kn2 = jax.random.split(key, 4)
    y = y if conditional else None
    z = sample_latents(kz, n, dim)
    fake, g_state = _run_generator(state.replace(g_state=g_state),
                                   state.g_params, z, y, train=True)
    fake = jax.lax.stop_gradient(fake)

    def loss_fn(params):
      out_real, new_d_state = _run_discriminator(
          state, params, d_state, add_noise(kn1, real), y)
      out_fake, new_d_state = _run_discriminator(
          state, params, new_d_state, add_noise(kn2, fake), y)
      loss = d_loss_fn(out_real["score"], out_fake["score"])
      metrics = {"d_adv_loss": loss,
                 "d_real": _d_output_mean(g_cfg.loss, out_real["score"]),
                 "d_fake": _d_output_mean(g_cfg.loss, out_fake["score"])}
      if gp_weight:
        critic = lambda x: state.discriminator.apply(
            {"params": params, **d_state}, x, y, train=True)["score"]
        gp, grad_norm = losses.gradient_penalty(critic, real, fake, kgp,
                                                return_norm=True)
        loss = loss + gp_weight * gp
        metrics.update(gradient_penalty=gp, critic_grad_norm=grad_norm)
      if "logits" in out_real and (aux_real or aux_fake):
        loss = loss + aux_real * losses.auxiliary_classifier_loss(
            out_real["logits"], y)
        if aux_fake:
          loss = loss + aux_fake * losses.auxiliary_classifier_loss(
              out_fake["logits"], y)
        metrics["aux_accuracy_real"] = jnp.mean(
            jnp.argmax(out_real["logits"], -1) == y)
      if hist_weight:
        loss = loss + hist_weight * losses.historical_averaging_penalty(
            params, d_hist)
      metrics["d_loss"] = loss
      return loss, (metrics, new_d_state)

    grads, (metrics, new_d_state) = jax.grad(loss_fn, has_aux=True)(d_params)
    grads = jax.lax.pmean(grads, AXIS)
    updates, d_opt_state = state.d_tx.update(grads, d_opt_state, d_params)
    d_params = optax.apply_updates(d_params, updates)
    if clip:
      d_params = losses.clip_weights(d_params, clip)
    if hist_weight:
      d_hist = losses.update_historical_average(
          d_hist, d_params, state.step * k + i + 1)
    carry = (d_params, new_d_state, d_opt_state, d_hist, g_state, i + 1)
    return carry, metrics

  keys = jax.random.split(jax.random.fold_in(rng, 0), k)
  (d_params, d_state, d_opt_state, d_hist, _, _), d_metrics = jax.lax.scan(
      critic_update,
      (state.d_params, state.d_state, state.d_opt_state, state.d_hist,
       state.g_state, jnp.asarray(0, jnp.int32)),
      (images, labels, keys))
  d_metrics = jax.tree.map(jnp.mean, d_metrics)

  # Generator update against the updated critic.
  kz, ky, kn = jax.random.split(jax.random.fold_in(rng, 1), 3)
  z = sample_latents(kz, n, dim)
  y_fake = (jax.random.randint(ky, (n,), 0, num_classes)
            if conditional else None)
  fm_weight = float(g_cfg.get("feature_matching", 0.0))
  adv_weight = float(g_cfg.get("g_adversarial_weight", 1.0))
  real_last, y_last = images[-1], (labels[-1] if conditional else None)

  def generator_objective(g_params):
    fake, new_g_state = _run_generator(state, g_params, z, y_fake, train=True)
    out_fake, _ = _run_discriminator(state, d_params, d_state,
                                     add_noise(kn, fake), y_fake)
    adv = g_loss_fn(out_fake["score"])
    loss = adv_weight * adv
    metrics = {"g_adv_loss": adv}
    if "logits" in out_fake and aux_g:
      loss = loss + aux_g * losses.auxiliary_classifier_loss(
          out_fake["logits"], y_fake)
      metrics["aux_accuracy_fake"] = jnp.mean(
          jnp.argmax(out_fake["logits"], -1) == y_fake)
    if fm_weight:
      out_real, _ = _run_discriminator(state, d_params, d_state, real_last,
                                       y_last)
      f_real = jax.lax.pmean(
          jnp.mean(jax.lax.stop_gradient(out_real["features"]), 0), AXIS)
      f_fake = jax.lax.pmean(jnp.mean(out_fake["features"], 0), AXIS)
      fm = jnp.sum(jnp.square(f_real - f_fake))
      loss = loss + fm_weight * fm
      metrics["feature_matching"] = fm
    if hist_weight:
      loss = loss + hist_weight * losses.historical_averaging_penalty(
          g_params, state.g_hist)
    metrics["g_loss"] = loss
    return loss, (metrics, new_g_state)

  grads, (g_metrics, g_state) = jax.grad(generator_objective, has_aux=True)(
      state.g_params)
  grads = jax.lax.pmean(grads, AXIS)
  updates, g_opt_state = state.g_tx.update(grads, state.g_opt_state,
                                           state.g_params)
  g_params = optax.apply_updates(state.g_params, updates)
  g_ema = state.g_ema
  if g_cfg.get("ema_decay", 0.0):
    decay = ema_decay_at(float(g_cfg.ema_decay), state.step)
    g_ema = jax.tree.map(lambda e, p: decay * e + (1 - decay) * p, g_ema,
                         g_params)
  g_hist = (losses.update_historical_average(state.g_hist, g_params,
                                             state.step + 1)
            if hist_weight else state.g_hist)

  metrics = jax.lax.pmean({**d_metrics, **g_metrics}, AXIS)
  metrics["instance_noise"] = noise_std
  new_state = state.replace(
      g_params=g_params, g_state=g_state, g_opt_state=g_opt_state,
      d_params=d_params, d_state=d_state, d_opt_state=d_opt_state,
      g_ema=g_ema, g_hist=g_hist, d_hist=d_hist)
  total = metrics["d_loss"] + metrics["g_loss"]
  return loop.guard_nonfinite(state, new_state, total), metrics


# ---------------------------------------------------------------------------
# Sampling and evaluation.


def sampling_params(state: Any) -> Any:
  """The EMA generator weights if kept, else the current ones."""
  g_ema = state["g_ema"] if isinstance(state, dict) else state.g_ema
  g_params = state["g_params"] if isinstance(state, dict) else state.g_params
  return g_ema if jax.tree.leaves(g_ema) else g_params


def make_generate_fn(generator) -> Callable[..., jax.Array]:
  """jit(params, g_state, z, labels) -> images, in inference mode."""
  @jax.jit
  def generate(g_params, g_state, z, labels):
    return generator.apply({"params": g_params, **g_state}, z, labels,
                           train=False)
  return generate


def grid_latents(config: ml_collections.ConfigDict, num_columns: int):
  """The fixed latent vectors of the sample grids (one per column)."""
  return sample_latents(jax.random.key(int(config.seed) + 7), num_columns,
                        latent_dim(config))


def sample_grid(generate, g_params, g_state, config, num_classes: int
                ) -> np.ndarray:
  """A row per class, a column per fixed latent vector (unconditional: a
  square of samples)."""
  cols = int(config.sample.get("num_columns", 10))
  if num_classes:
    classes = list(config.sample.get("classes", ())) or list(
        range(min(num_classes, 10)))
    z = jnp.tile(grid_latents(config, cols), (len(classes), 1))
    y = jnp.repeat(jnp.asarray(classes, jnp.int32), cols)
    images = generate(g_params, g_state, z, y)
    return image_grid(np.asarray(images), rows=len(classes))
  z = grid_latents(config, cols * cols)
  return image_grid(np.asarray(generate(g_params, g_state, z, None)),
                    rows=cols)


def classifier_accuracy_on_samples(generate, g_params, g_state, classifier,
                                   num_classes: int, per_class: int,
                                   seed: int, dim: int,
                                   batch_size: int = 500) -> float:
  """How often a trained classifier gives the conditioning class of a sample.

  `classifier` is an `advjax.checkpoints.Restored` classifier.
  """
  labels = np.repeat(np.arange(num_classes), per_class).astype(np.int32)
  correct = 0
  key = jax.random.key(seed)
  for start in range(0, len(labels), batch_size):
    y = jnp.asarray(labels[start:start + batch_size])
    z = sample_latents(jax.random.fold_in(key, start), len(y), dim)
    images = generate(g_params, g_state, z, y)
    correct += int(np.sum(classifier.predict(images) == np.asarray(y)))
  return correct / len(labels)


def train_and_evaluate(config: ml_collections.ConfigDict,
                       workdir: str) -> dict[str, float]:
  """Trains the GAN of `config`, resuming from `workdir` if possible."""
  t_start = time.time()
  g_cfg = _gan_settings(config)
  info = input_pipeline.get_dataset_info(config.dataset.name)
  num_classes = info.num_classes if config.model.get("conditional",
                                                     False) else 0
  mesh = parallel.make_mesh()
  k = int(g_cfg.critic_steps)
  step_batch = k * config.batch_size
  input_pipeline.validate_batch_size(config.batch_size, mesh.size,
                                     jax.process_count())
  data_dir = config.dataset.get("data_dir") or None
  train_source = input_pipeline.get_source(info.name, info.train_split,
                                           data_dir)
  steps_per_epoch = max(len(train_source) // step_batch, 1)
  total_steps = loop.num_train_steps(config, steps_per_epoch)
  state = create_train_state(config, num_classes, info.image_shape,
                             jax.random.key(config.seed), total_steps)
  if jax.process_index() == 0:
    print(f"advjax: {config.model.name} GAN on {info.name}: generator "
          f"{count_params(state.g_params):,} parameters, discriminator "
          f"{count_params(state.d_params):,}; {g_cfg.loss} loss, "
          f"{k} critic step(s) per generator step; {mesh.size} device(s); "
          f"{total_steps} generator steps of batch {config.batch_size}",
          flush=True)

  generate = make_generate_fn(
      create_models(config, num_classes, info.image_shape, axis_name=None)[0])
  classifier = None
  if config.eval.get("classifier_workdir"):
    from advjax import checkpoints  # pylint: disable=g-import-not-at-top
    classifier = checkpoints.restore(config.eval.classifier_workdir)
    classifier._require("classifier")  # pylint: disable=protected-access

  from advjax.metric_writers import MetricWriter  # pylint: disable=g-import-not-at-top
  images_writer = MetricWriter(workdir, enabled=jax.process_index() == 0,
                               tensorboard=False)

  def evaluate(state: GANState, step: int) -> dict[str, float]:
    host = jax.device_get({"g_params": sampling_params(state),
                           "g_state": state.g_state})
    grid = sample_grid(generate, host["g_params"], host["g_state"], config,
                       num_classes)
    images_writer.write_images(step, {"samples": grid})
    metrics = {}
    if classifier is not None and num_classes:
      metrics["eval/classifier_accuracy_on_samples"] = (
          classifier_accuracy_on_samples(
              generate, host["g_params"], host["g_state"], classifier,
              num_classes, int(config.eval.get("samples_per_class", 100)),
              int(config.seed), latent_dim(config)))
    return metrics

  def summary(metrics: dict[str, float]) -> str:
    text = f"samples in {workdir}/images"
    acc = metrics.get("eval/classifier_accuracy_on_samples")
    if acc is not None:
      text += (f"; the classifier gives the conditioning class to "
               f"{100 * acc:.1f}% of samples")
    return text

  task = loop.Task(
      trainer=TRAINER, state=state,
      step_fn=functools.partial(train_step, config=config,
                                num_classes=num_classes),
      batch_size=step_batch, train_source=train_source, evaluate=evaluate,
      summary=summary, loss_key="d_loss")
  try:
    return loop.run(config, workdir, task, mesh, total_steps, steps_per_epoch,
                    t_start=t_start)
  finally:
    images_writer.close()
