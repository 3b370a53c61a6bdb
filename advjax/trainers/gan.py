"""GAN training: every GAN family of the library in one compiled step.

One call of `train_step(state, batch, rng, frozen)` does `gan.critic_steps`
(k) discriminator/critic updates, each on its own slice of real images, then
one generator update, all inside one jit-compiled, data-parallel program
(`lax.scan` over the k critic updates; gradients averaged with `lax.pmean`).
The step is assembled from named pure pieces the tests call directly:
`critic_objective`, `generator_objective` and `optimizers.update`.

What the config switches (`config.gan`, read once into `Settings`):
  loss: a registered adversarial loss (`losses.ADVERSARIAL_LOSSES`):
    'minimax' (saturating G loss log(1 - D(G(z)))), 'nonsaturating',
    'least_squares', 'hinge', 'wasserstein'
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

import dataclasses
import functools
import time
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from advjax import (checkpoints, evaluators, example_rng, frozen_models,
                    inference, input_pipeline, loop, losses, optimizers,
                    parallel, run_settings)
from advjax import settings as settings_lib
from advjax.errors import UserError
from advjax.metric_writers import MetricWriter, image_grid
from advjax.models import count_params, gans
from advjax.parallel import AXIS

SECTIONS = ("dataset", "model", "gan", "g_optimizer", "d_optimizer")
EXAMPLE_CONFIG = "configs/quickstart_gan.py"
TRAINER = "gan"


@settings_lib.register("gan")
@dataclasses.dataclass(frozen=True)
class Settings:
  """`config.gan` (see the module docstring): every default of the GAN
  trainer, read once and checked."""
  loss: str = "nonsaturating"
  critic_steps: int = 1
  gradient_penalty: float = 0.0
  weight_clip: float = 0.0
  aux_weight_real: float = 0.0
  aux_weight_fake: float = 0.0
  aux_weight_g: float = 0.0
  real_label: float = 1.0
  feature_matching: float = 0.0
  g_adversarial_weight: float = 1.0
  historical_averaging: float = 0.0
  instance_noise: float = 0.0
  instance_noise_anneal_steps: int = 10000
  ema_decay: float = 0.999

  def __post_init__(self):
    settings_lib.check_choice(self, "loss", losses.ADVERSARIAL_LOSSES)
    if self.critic_steps < 1:
      raise UserError(f"critic_steps must be >= 1, not {self.critic_steps}")
    settings_lib.check_nonnegative(
        self, "gradient_penalty", "weight_clip", "aux_weight_real",
        "aux_weight_fake", "aux_weight_g", "feature_matching",
        "g_adversarial_weight", "historical_averaging", "instance_noise")
    settings_lib.check_positive(self, "instance_noise_anneal_steps")
    settings_lib.check_in_unit_interval(self, "real_label", "ema_decay")
    if self.gradient_penalty and self.weight_clip:
      raise UserError("gradient_penalty and weight_clip: choose one, not "
                      "both")
    if self.real_label != 1.0 and not self.adversarial.label_smoothing:
      raise UserError(f"real_label {self.real_label}: the '{self.loss}' "
                      f"loss has no real-label target to smooth")

  @property
  def adversarial(self) -> losses.AdversarialLoss:
    return losses.ADVERSARIAL_LOSSES[self.loss]

  @property
  def uses_aux(self) -> bool:
    return bool(self.aux_weight_real or self.aux_weight_fake
                or self.aux_weight_g)


def read_settings(config: ml_collections.ConfigDict) -> Settings:
  return settings_lib.read(Settings, config, "gan")


@settings_lib.register("sample")
@dataclasses.dataclass(frozen=True)
class SampleSettings:
  """`config.sample`: the sample grids written at evaluation, a column per
  fixed latent vector (`num_columns`) and, for a conditional GAN, a row per
  class of `classes` (() = the first 10)."""
  num_columns: int = settings_lib.extends_run(10, "sample images only")
  classes: tuple[int, ...] = settings_lib.extends_run((),
                                                      "sample images only")

  def __post_init__(self):
    settings_lib.check_positive(self, "num_columns")


@settings_lib.register("eval")
@dataclasses.dataclass(frozen=True)
class EvalSettings:
  """`config.eval` of a GAN: with `classifier_workdir` ('' = off), how often
  that trained classifier gives the conditioning class to
  `samples_per_class` samples of each class."""
  classifier_workdir: str = settings_lib.extends_run("", "evaluation only")
  samples_per_class: int = settings_lib.extends_run(100, "evaluation only")
  # {name: {field: value}} of more evaluators (`advjax.evaluators`) run at
  # every evaluation, logged as eval/<name>/<key>.
  evaluators: dict = dataclasses.field(
      default_factory=dict, metadata={settings_lib.EXTENDS_RUN:
                                      "evaluation only"})

  def __post_init__(self):
    settings_lib.check_positive(self, "samples_per_class")


@dataclasses.dataclass(frozen=True)
class Players:
  """The static part of a two-player train state: both modules and their
  optimisers (shared by the GAN and CycleGAN trainers)."""
  generator: Any
  discriminator: Any
  g_tx: Any
  d_tx: Any


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
  players: Players = flax.struct.field(pytree_node=False, default=None)

  def sampling_params(self) -> Any:
    """The EMA generator weights if kept, else the current ones."""
    return self.g_ema if jax.tree.leaves(self.g_ema) else self.g_params


def num_classes_of(config: ml_collections.ConfigDict) -> int:
  """Classes of the conditioning: the dataset's, or 0 (unconditional)."""
  if not gans.read_model(config.model).conditional:
    return 0
  return input_pipeline.get_dataset_info(config.dataset.name).num_classes


def create_models(config: ml_collections.ConfigDict, num_classes: int,
                  image_shape: tuple[int, int, int],
                  axis_name: str | None = AXIS):
  dtype = jnp.dtype(run_settings.read(config).dtype)
  return gans.create_players(config.model, num_classes, image_shape,
                             axis_name=axis_name, dtype=dtype)


def _split_variables(variables: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
  variables = dict(variables)
  params = variables.pop("params")
  return params, variables


def create_train_state(config: ml_collections.ConfigDict, num_classes: int,
                       image_shape: tuple[int, int, int], rng: jax.Array,
                       num_train_steps: int) -> GANState:
  """Initialises both players (and the reference batch of virtual BN)."""
  s = read_settings(config)
  generator, discriminator = create_models(config, num_classes, image_shape)
  g_rng, d_rng, ref_rng = jax.random.split(rng, 3)
  m = gans.read_model(config.model)
  n_ref = m.reference_batch_size
  z = gans.sample_latents(ref_rng, n_ref, m.latent_dim)
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
  if s.gradient_penalty and d_state.get("batch_stats"):
    raise UserError("the gradient penalty needs a discriminator without "
                    "BatchNorm (set model.discriminator.use_batchnorm=False)")
  if s.gradient_penalty and getattr(discriminator, "minibatch_discrimination",
                                    False):
    raise UserError("the gradient penalty needs a discriminator that scores "
                    "each sample on its own; minibatch discrimination couples "
                    "them (set model.discriminator.minibatch_discrimination="
                    "False)")
  g_tx = optimizers.create_optimizer(config.g_optimizer, num_train_steps)
  d_tx = optimizers.create_optimizer(config.d_optimizer,
                                     s.critic_steps * num_train_steps)
  copy = lambda t: jax.tree.map(jnp.array, t)
  hist = bool(s.historical_averaging)
  return GANState(
      step=jnp.asarray(0, jnp.int32),
      g_params=g_params, g_state=g_state, g_opt_state=g_tx.init(g_params),
      d_params=d_params, d_state=d_state, d_opt_state=d_tx.init(d_params),
      g_ema=copy(g_params) if s.ema_decay else {},
      g_hist=copy(g_params) if hist else {},
      d_hist=copy(d_params) if hist else {},
      bad_step=jnp.asarray(-1, jnp.int32),
      players=Players(generator, discriminator, g_tx, d_tx))


# ---------------------------------------------------------------------------
# The pieces of the step.


def noise_std(s: Settings, step: jax.Array) -> jax.Array:
  """Instance-noise std at `step`: linear annealing to 0."""
  return s.instance_noise * jnp.maximum(
      0.0, 1.0 - step.astype(jnp.float32) / s.instance_noise_anneal_steps)


def example_keys(key: jax.Array, n: int) -> jax.Array:
  """One key per example of this device's n, from its global row: the draws
  of an example do not depend on how many devices share the batch."""
  return example_rng.example_keys(key, n, AXIS)


def sample_latents(key: jax.Array, n: int, dim: int) -> jax.Array:
  """z ~ N(0, I) [n, dim], each example's from its own key."""
  return example_rng.per_example(jax.random.normal, example_keys(key, n),
                                 (dim,))


def add_instance_noise(s: Settings, std: jax.Array, key: jax.Array,
                       x: jax.Array) -> jax.Array:
  """x + std * N(0, I) (Sonderby et al. 2017), each example's noise from its
  own key; x itself when switched off."""
  if not s.instance_noise:  # static: no noise, no draws
    return x
  noise = example_rng.per_example(jax.random.normal,
                                  example_keys(key, x.shape[0]), x.shape[1:])
  return x + std * noise.astype(x.dtype)


def ema_decay_at(decay: float, step: jax.Array) -> jax.Array:
  """min(decay, (1 + t) / (10 + t)): early on, the average forgets the
  random initialisation quickly; later it averages over ~1 / (1 - decay)
  steps (the warm-up of TensorFlow's ExponentialMovingAverage)."""
  t = step.astype(jnp.float32)
  return jnp.minimum(decay, (1.0 + t) / (10.0 + t))


def run_generator(state: GANState, g_params, g_state, z, labels,
                  train: bool):
  """Images and updated non-trainable generator collections."""
  variables = {"params": g_params, **g_state}
  if train:
    images, updates = state.players.generator.apply(
        variables, z, labels, train=True, mutable=["batch_stats"])
    return images, {**g_state, **updates}
  return state.players.generator.apply(variables, z, labels, train=False), g_state


def run_discriminator(state: GANState, d_params, d_state, x, labels):
  """D's outputs in train mode and its updated collections."""
  variables = {"params": d_params, **d_state}
  out, updates = state.players.discriminator.apply(variables, x, labels, train=True,
                                           mutable=["batch_stats"])
  return out, {**d_state, **updates}


def critic_objective(s: Settings, state: GANState, d_params, d_state, d_hist,
                     real, fake, labels, keys, std):
  """The discriminator's loss on one slice of real and fake images.

  L_D = adversarial d_loss(D(x), D(G(z))) [+ GP weight * gradient penalty]
  [+ aux_real * CE(C(x), y) + aux_fake * CE(C(G(z)), y)]
  [+ historical averaging]. `keys` = (gradient-penalty mix, noise on real,
  noise on fake). Returns (loss, (metrics, new d_state)).
  """
  k_gp, k_noise_real, k_noise_fake = keys
  adversarial = s.adversarial
  out_real, new_d_state = run_discriminator(
      state, d_params, d_state,
      add_instance_noise(s, std, k_noise_real, real), labels)
  out_fake, new_d_state = run_discriminator(
      state, d_params, new_d_state,
      add_instance_noise(s, std, k_noise_fake, fake), labels)
  loss = adversarial.discriminator(out_real["score"], out_fake["score"],
                                   s.real_label)
  metrics = {"d_adv_loss": loss,
             "d_real": adversarial.mean_output(out_real["score"]),
             "d_fake": adversarial.mean_output(out_fake["score"])}
  if s.gradient_penalty:
    critic = lambda x: state.players.discriminator.apply(
        {"params": d_params, **d_state}, x, labels, train=True)["score"]
    gp, grad_norm = losses.gradient_penalty(
        critic, real, fake, example_keys(k_gp, real.shape[0]),
        return_norm=True)
    loss = loss + s.gradient_penalty * gp
    metrics.update(gradient_penalty=gp, critic_grad_norm=grad_norm)
  if "logits" in out_real and (s.aux_weight_real or s.aux_weight_fake):
    loss = loss + s.aux_weight_real * losses.auxiliary_classifier_loss(
        out_real["logits"], labels)
    if s.aux_weight_fake:
      loss = loss + s.aux_weight_fake * losses.auxiliary_classifier_loss(
          out_fake["logits"], labels)
    metrics["aux_accuracy_real"] = jnp.mean(
        jnp.argmax(out_real["logits"], -1) == labels)
  if s.historical_averaging:
    loss = loss + s.historical_averaging * (
        losses.historical_averaging_penalty(d_params, d_hist))
  metrics["d_loss"] = loss
  return loss, (metrics, new_d_state)


def generator_objective(s: Settings, state: GANState, g_params, d_params,
                        d_state, z, labels, real, real_labels, noise_key, std):
  """The generator's loss against the (updated) critic.

  L_G = g_adversarial_weight * adversarial g_loss(D(G(z)))
  [+ aux_g * CE(C(G(z)), y)] [+ feature matching against `real`]
  [+ historical averaging]. Returns (loss, (metrics, new g_state)).
  """
  fake, new_g_state = run_generator(state, g_params, state.g_state, z,
                                    labels, train=True)
  out_fake, _ = run_discriminator(
      state, d_params, d_state,
      add_instance_noise(s, std, noise_key, fake), labels)
  adv = s.adversarial.g_loss(out_fake["score"])
  loss = s.g_adversarial_weight * adv
  metrics = {"g_adv_loss": adv}
  if "logits" in out_fake and s.aux_weight_g:
    loss = loss + s.aux_weight_g * losses.auxiliary_classifier_loss(
        out_fake["logits"], labels)
    metrics["aux_accuracy_fake"] = jnp.mean(
        jnp.argmax(out_fake["logits"], -1) == labels)
  if s.feature_matching:
    out_real, _ = run_discriminator(state, d_params, d_state, real,
                                    real_labels)
    fm = losses.feature_matching_loss(
        jax.lax.stop_gradient(out_real["features"]), out_fake["features"],
        axis_name=AXIS)
    loss = loss + s.feature_matching * fm
    metrics["feature_matching"] = fm
  if s.historical_averaging:
    loss = loss + s.historical_averaging * (
        losses.historical_averaging_penalty(g_params, state.g_hist))
  metrics["g_loss"] = loss
  return loss, (metrics, new_g_state)


def train_step(state: GANState, batch: dict[str, jax.Array], rng: jax.Array,
               frozen: Any = None, *, settings: Settings, num_classes: int,
               latent_dim: int) -> tuple[GANState, dict[str, jax.Array]]:
  """k critic updates then one generator update (per-device code)."""
  del frozen  # a GAN reads no frozen model
  s = settings
  k = s.critic_steps
  conditional = num_classes > 0
  # The same key on every device; per-example draws fold in the example's
  # global row (`example_keys`).
  rng = example_rng.step_key(rng, state.step)
  std = noise_std(s, state.step)
  images = batch["image"].reshape(k, -1, *batch["image"].shape[1:])
  labels = batch["label"].reshape(k, -1)
  n = images.shape[1]

  def critic_update(carry, xs):
    d_params, d_state, d_opt_state, d_hist, g_state, i = carry
    real, y, key = xs
    kz, kgp, kn1, kn2 = jax.random.split(key, 4)
    y = y if conditional else None
    z = sample_latents(kz, n, latent_dim)
    fake, g_state = run_generator(state, state.g_params, g_state, z, y,
                                  train=True)
    fake = jax.lax.stop_gradient(fake)
    grads, (metrics, new_d_state) = jax.grad(
        critic_objective, argnums=2, has_aux=True)(
            s, state, d_params, d_state, d_hist, real, fake, y,
            (kgp, kn1, kn2), std)
    d_params, d_opt_state = optimizers.update(state.players.d_tx, d_params,
                                              d_opt_state, grads)
    if s.weight_clip:
      d_params = losses.clip_weights(d_params, s.weight_clip)
    if s.historical_averaging:
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
  z = sample_latents(kz, n, latent_dim)
  y_fake = (example_rng.per_example(jax.random.randint, example_keys(ky, n),
                                    (), 0, num_classes)
            if conditional else None)
  grads, (g_metrics, g_state) = jax.grad(
      generator_objective, argnums=2, has_aux=True)(
          s, state, state.g_params, d_params, d_state, z, y_fake, images[-1],
          labels[-1] if conditional else None, kn, std)
  g_params, g_opt_state = optimizers.update(state.players.g_tx, state.g_params,
                                            state.g_opt_state, grads)
  g_ema = state.g_ema
  if s.ema_decay:
    decay = ema_decay_at(s.ema_decay, state.step)
    g_ema = jax.tree.map(lambda e, p: decay * e + (1 - decay) * p, g_ema,
                         g_params)
  g_hist = (losses.update_historical_average(state.g_hist, g_params,
                                             state.step + 1)
            if s.historical_averaging else state.g_hist)

  metrics = jax.lax.pmean({**d_metrics, **g_metrics}, AXIS)
  metrics["instance_noise"] = std
  new_state = state.replace(
      g_params=g_params, g_state=g_state, g_opt_state=g_opt_state,
      d_params=d_params, d_state=d_state, d_opt_state=d_opt_state,
      g_ema=g_ema, g_hist=g_hist, d_hist=d_hist)
  total = metrics["d_loss"] + metrics["g_loss"]
  return loop.guard_nonfinite(state, new_state, total), metrics


def make_train_step(config: ml_collections.ConfigDict, num_classes: int
                    ) -> Callable[..., Any]:
  """`train_step` with the config's settings bound (what the loop runs)."""
  return functools.partial(train_step, settings=read_settings(config),
                           num_classes=num_classes,
                           latent_dim=gans.read_model(config.model).latent_dim)


# ---------------------------------------------------------------------------
# Sampling and evaluation.


def make_generate_fn(generator) -> Callable[..., jax.Array]:
  """jit(params, g_state, z, labels) -> images, in inference mode."""
  @jax.jit
  def generate(g_params, g_state, z, labels):
    return generator.apply({"params": g_params, **g_state}, z, labels,
                           train=False)
  return generate


def grid_latents(config: ml_collections.ConfigDict, num_columns: int):
  """The fixed latent vectors of the sample grids (one per column)."""
  return gans.sample_latents(jax.random.key(int(config.seed) + 7),
                             num_columns, gans.read_model(config.model).latent_dim)


def sample_grid(generate, g_params, g_state, config, num_classes: int
                ) -> np.ndarray:
  """A row per class, a column per fixed latent vector (unconditional: a
  square of samples)."""
  sample = settings_lib.read(SampleSettings, config, "sample")
  cols = sample.num_columns
  if num_classes:
    classes = list(sample.classes) or list(range(min(num_classes, 10)))
    z = jnp.tile(grid_latents(config, cols), (len(classes), 1))
    y = jnp.repeat(jnp.asarray(classes, jnp.int32), cols)
    images = generate(g_params, g_state, z, y)
    return image_grid(np.asarray(images), rows=len(classes))
  z = grid_latents(config, cols * cols)
  return image_grid(np.asarray(generate(g_params, g_state, z, None)),
                    rows=cols)


def classifier_accuracy_on_samples(generate, g_params, g_state,
                                   classifier: inference.Classifier,
                                   num_classes: int, per_class: int,
                                   seed: int, dim: int,
                                   batch_size: int = 500) -> float:
  """How often a trained classifier gives the conditioning class of a
  sample: `per_class` samples of each class, labelled as every GAN
  evaluation labels them (`evaluators.common.balanced_labels`)."""
  labels = evaluators.common.balanced_labels(num_classes * per_class,
                                             num_classes)
  correct = 0
  key = jax.random.key(seed)
  for start in range(0, len(labels), batch_size):
    y = jnp.asarray(labels[start:start + batch_size])
    z = gans.sample_latents(jax.random.fold_in(key, start), len(y), dim)
    images = generate(g_params, g_state, z, y)
    correct += int(np.sum(classifier.predict(images) == np.asarray(y)))
  return correct / len(labels)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       options: loop.RunOptions = loop.RunOptions()
                       ) -> dict[str, float]:
  """Trains the GAN of `config`, resuming from `workdir` if possible."""
  t_start = time.time()
  s = read_settings(config)
  info = input_pipeline.get_dataset_info(config.dataset.name)
  num_classes = num_classes_of(config)
  mesh = parallel.make_mesh()
  k = s.critic_steps
  step_batch = k * config.batch_size
  input_pipeline.validate_batch_size(config.batch_size, mesh.size,
                                     jax.process_count())
  data_dir = run_settings.read(config).data_dir
  train_source = input_pipeline.get_source(info.name, info.train_split,
                                           data_dir)
  steps_per_epoch = max(len(train_source) // step_batch, 1)
  total_steps = loop.num_train_steps(config, steps_per_epoch)
  state = create_train_state(config, num_classes, info.image_shape,
                             jax.random.key(config.seed), total_steps)
  loop.announce(
      f"{config.model.name} GAN on {info.name}: generator "
      f"{count_params(state.g_params):,} parameters, discriminator "
      f"{count_params(state.d_params):,}; {s.loss} loss, {k} critic "
      f"step(s) per generator step; "
      + loop.describe_run(mesh, total_steps, config.batch_size))

  generate = make_generate_fn(
      create_models(config, num_classes, info.image_shape, axis_name=None)[0])
  e = settings_lib.read(EvalSettings, config, "eval")
  judge = e.classifier_workdir
  pins = frozen_models.Pins(workdir, options.allow_config_change)
  classifier = pins.restore("eval_classifier", judge, kind="classifier",
                            training=False) if judge else None
  # More evaluators, by name (`config.eval.evaluators`), of the GAN as it
  # is at each evaluation: logged as eval/<name>/<key>.
  chosen = evaluators.common.from_block(e.evaluators)

  def evaluate(state: GANState, step: int,
               writer: MetricWriter) -> dict[str, float]:
    host = jax.device_get({"g_params": state.sampling_params(),
                           "g_state": state.g_state})
    grid = sample_grid(generate, host["g_params"], host["g_state"], config,
                       num_classes)
    writer.write_images(step, {"samples": grid})
    metrics = {}
    if classifier is not None and num_classes:
      metrics["eval/classifier_accuracy_on_samples"] = (
          classifier_accuracy_on_samples(
              generate, host["g_params"], host["g_state"], classifier,
              num_classes, e.samples_per_class,
              int(config.seed), gans.read_model(config.model).latent_dim))
    if chosen:
      gan = inference.GAN(checkpoints.Checkpoint(
          config=config, state=jax.device_get(
              {"g_params": state.g_params, "g_state": state.g_state,
               "g_ema": state.g_ema, "d_params": state.d_params,
               "d_state": state.d_state}),
          meta={"trainer": TRAINER}, step=int(step), workdir=workdir))
      metrics.update(evaluators.common.numbers(
          chosen, evaluators.Inputs(gan=gan, classifier=classifier)))
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
      step_fn=make_train_step(config, num_classes),
      batch_size=step_batch, train_source=train_source, evaluate=evaluate,
      summary=summary, loss_key="d_loss",
      frozen_pins=pins.records)
  return loop.run(config, workdir, task, mesh, total_steps, steps_per_epoch,
                  t_start=t_start, options=options)
