"""CycleGAN (Zhu et al. 2017): unpaired image-to-image translation.

Two translators, G: A -> B and F: B -> A, and two PatchGAN discriminators,
D_A (real A vs F(b)) and D_B (real B vs G(a)). One call of `train_step`
updates both translators, then both discriminators, inside one compiled,
data-parallel program. The translators minimise

  L_adv(G, D_B) + L_adv(F, D_A)
  + cycle_weight * (|F(G(a)) - a|_1 + |G(F(b)) - b|_1)      (cycle consistency)
  + identity_weight * (|G(b) - b|_1 + |F(a) - a|_1)          (identity, Sec. 5.2)
  + supervised_weight * (|G(a) - b|_1 + |F(b) - a|_1)        (paired data only)

with L1 as a per-pixel mean and L_adv least-squares (the paper) or any other
registered adversarial loss. Least squares is the plain mean squared error
of the authors' code (junyanz/pytorch-CycleGAN-and-pix2pix, whose GANLoss
is nn.MSELoss to the targets 1 and 0): L_adv(G, D_B) = E[(D_B(G(a)) - 1)^2],
and D_B minimises 0.5 * (E[(D_B(b) - 1)^2] + E[D_B(G(a))^2]). The
discriminators minimise half their registered loss (that 0.5 factor), and
see fakes through an image pool (Shrivastava et al. 2017, as in CycleGAN):
once the pool holds `pool_size` fakes, each new fake is, with probability
`pool_prob`, swapped for a random stored one, which D then sees instead. The
pools are part of the replicated train state: every device gathers the
global batch of fakes and applies the same draws, so the pools stay
identical across devices, are checkpointed, and resume exactly.

Settings are `config.cyclegan` (`Settings`, read once); the adversarial loss
is any of `losses.ADVERSARIAL_LOSSES`. Domains come from
`config.dataset.domain_a` / `domain_b` (see `advjax.two_domain`).
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

from advjax import (frozen_models, inference, input_pipeline, loop, losses,
                    optimizers, parallel, run_settings, two_domain)
from advjax import settings as settings_lib
from advjax.metric_writers import MetricWriter, image_grid
from advjax.models import count_params
from advjax.models import cyclegan as cyclegan_models
from advjax.parallel import AXIS
from advjax.trainers.gan import Players

SECTIONS = ("dataset", "model", "cyclegan", "g_optimizer", "d_optimizer")
EXAMPLE_CONFIG = "configs/cyclegan_fashion_mnist.py"
TRAINER = "cyclegan"
DIRECTIONS = inference.DIRECTIONS


@settings_lib.register("cyclegan")
@dataclasses.dataclass(frozen=True)
class Settings:
  """`config.cyclegan`, read once.

  loss: a registered adversarial loss; cycle_weight; identity_weight (< 0:
  half the cycle weight, the paper's choice); supervised_weight (L1 to the
  paired target, with `dataset.paired`); pool_size (0: no pool) and
  pool_prob of the image pools.
  """
  loss: str = "least_squares"
  cycle_weight: float = 10.0
  identity_weight: float = -1.0
  supervised_weight: float = 0.0
  pool_size: int = 50
  pool_prob: float = 0.5

  def __post_init__(self):
    settings_lib.check_choice(self, "loss", losses.ADVERSARIAL_LOSSES)
    settings_lib.check_nonnegative(self, "cycle_weight", "supervised_weight",
                                   "pool_size")
    settings_lib.check_in_unit_interval(self, "pool_prob")

  @property
  def adversarial(self) -> losses.AdversarialLoss:
    return losses.ADVERSARIAL_LOSSES[self.loss]

  @property
  def identity(self) -> float:
    """The identity loss's weight: 0.5 x cycle_weight when negative."""
    if self.identity_weight < 0:
      return 0.5 * self.cycle_weight
    return self.identity_weight


def read_settings(config: ml_collections.ConfigDict) -> Settings:
  return settings_lib.read(Settings, config, "cyclegan")


@settings_lib.register("sample")
@dataclasses.dataclass(frozen=True)
class SampleSettings:
  """`config.sample`: `num_rows` test images in each translation grid."""
  num_rows: int = settings_lib.extends_run(8, "sample images only")

  def __post_init__(self):
    settings_lib.check_positive(self, "num_rows")


@settings_lib.register("eval")
@dataclasses.dataclass(frozen=True)
class EvalSettings:
  """`config.eval` of a CycleGAN: the metrics on `num_examples` test images
  per domain; with `classifier_workdir` ('' = off), how often that
  classifier gives each translation its target domain's class."""
  num_examples: int = settings_lib.extends_run(1000, "evaluation only")
  classifier_workdir: str = settings_lib.extends_run("", "evaluation only")

  def __post_init__(self):
    settings_lib.check_positive(self, "num_examples")


# ---------------------------------------------------------------------------
# Image pool (Shrivastava et al. 2017; Zhu et al. 2017, Sec. 4).


def image_pool_query(pool: jax.Array, count: jax.Array, fakes: jax.Array,
                     rng: jax.Array, prob: float = Settings.pool_prob
                     ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Passes `fakes` [n, ...] through the pool, one image after the other.

  While the pool is not full, each fake is stored and returned. Once full,
  with probability `prob` a random stored fake is returned and the new one
  takes its place; otherwise the new fake is returned and not stored.
  Returns (images for the discriminator, new pool, new count).
  """
  size = pool.shape[0]
  if size == 0:
    return fakes, pool, count

  def one(carry, xs):
    pool, count = carry
    fake, key = xs
    k_use, k_slot = jax.random.split(key)
    full = count >= size
    use_old = full & (jax.random.uniform(k_use) < prob)
    slot = jnp.where(full, jax.random.randint(k_slot, (), 0, size),
                     jnp.minimum(count, size - 1))
    old = pool[slot]
    stored = jnp.where(full & ~use_old, old, fake)
    pool = pool.at[slot].set(stored)
    count = jnp.where(full, count, count + 1)
    return (pool, count), jnp.where(use_old, old, fake)

  keys = jax.random.split(rng, fakes.shape[0])
  (pool, count), out = jax.lax.scan(one, (pool, count),
                                    (fakes.astype(pool.dtype), keys))
  return out.astype(fakes.dtype), pool, count


# ---------------------------------------------------------------------------
# State and the train step.


class CycleGANState(flax.struct.PyTreeNode):
  """Both translators and discriminators, their optimisers, and the pools.

  g_params: {'a2b': G, 'b2a': F}; d_params: {'a': D_A, 'b': D_B};
  pools: {'a': {'images', 'count'}, 'b': ...}, past fakes of each domain.
  """
  step: jax.Array
  g_params: Any
  g_opt_state: Any
  d_params: Any
  d_opt_state: Any
  pools: Any
  bad_step: jax.Array
  players: Players = flax.struct.field(pytree_node=False, default=None)


def create_models(config: ml_collections.ConfigDict, channels: int):
  dtype = jnp.dtype(run_settings.read(config).dtype)
  return (cyclegan_models.create_generator(config.model, channels, dtype),
          cyclegan_models.create_discriminator(config.model, dtype))


def create_train_state(config: ml_collections.ConfigDict,
                       image_shape: tuple[int, int, int], rng: jax.Array,
                       num_train_steps: int) -> CycleGANState:
  """Initialises G, F, D_A, D_B, their optimisers and empty pools."""
  s = read_settings(config)
  generator, discriminator = create_models(config, image_shape[-1])
  keys = jax.random.split(rng, 4)
  x = jnp.zeros((1, *image_shape), jnp.float32)
  g_init = jax.jit(generator.init)
  d_init = jax.jit(discriminator.init)
  g_params = {"a2b": g_init(keys[0], x)["params"],
              "b2a": g_init(keys[1], x)["params"]}
  d_params = {"a": d_init(keys[2], x)["params"],
              "b": d_init(keys[3], x)["params"]}
  g_tx = optimizers.create_optimizer(config.g_optimizer, num_train_steps)
  d_tx = optimizers.create_optimizer(config.d_optimizer, num_train_steps)
  size = int(s.pool_size)
  pool = lambda: {"images": jnp.zeros((size, *image_shape), jnp.float32),
                  "count": jnp.asarray(0, jnp.int32)}
  return CycleGANState(
      step=jnp.asarray(0, jnp.int32),
      g_params=g_params, g_opt_state=g_tx.init(g_params),
      d_params=d_params, d_opt_state=d_tx.init(d_params),
      pools={"a": pool(), "b": pool()},
      bad_step=jnp.asarray(-1, jnp.int32),
      players=Players(generator, discriminator, g_tx, d_tx))


def l1(x: jax.Array, y: jax.Array) -> jax.Array:
  """Mean absolute difference per pixel."""
  return jnp.mean(jnp.abs(x - y))


def cycle_loss(real_a: jax.Array, rec_a: jax.Array, real_b: jax.Array,
               rec_b: jax.Array) -> jax.Array:
  """|F(G(a)) - a|_1 + |G(F(b)) - b|_1 (Zhu et al. 2017, Eq. 2), given
  rec_a = F(G(a)) and rec_b = G(F(b)).

  The identity loss (Sec. 5.2) is the same sum with G(b) against b and
  F(a) against a, and the paired L1 with G(a) against b and F(b) against a.
  """
  return l1(rec_a, real_a) + l1(rec_b, real_b)


def translator_objective(s: Settings, state: CycleGANState, g_params,
                         real_a, real_b):
  """The translators' loss L_adv(G, D_B) + L_adv(F, D_A) + cycle, identity
  and paired terms. Returns (loss, (metrics, F(b), G(a)))."""
  translate = lambda p, x: state.players.generator.apply({"params": p}, x,
                                                 train=True)
  score = lambda p, x: state.players.discriminator.apply({"params": p}, x,
                                                 train=True)
  g_loss = s.adversarial.g_loss
  fake_b = translate(g_params["a2b"], real_a)
  fake_a = translate(g_params["b2a"], real_b)
  adv_a2b = g_loss(score(state.d_params["b"], fake_b))
  adv_b2a = g_loss(score(state.d_params["a"], fake_a))
  cyc = cycle_loss(real_a, translate(g_params["b2a"], fake_b),
                   real_b, translate(g_params["a2b"], fake_a))
  loss = adv_a2b + adv_b2a + s.cycle_weight * cyc
  metrics = {"g_adv_a2b": adv_a2b, "g_adv_b2a": adv_b2a, "cycle_loss": cyc}
  if s.identity:
    idt = cycle_loss(real_b, translate(g_params["a2b"], real_b),
                     real_a, translate(g_params["b2a"], real_a))
    loss = loss + s.identity * idt
    metrics["identity_loss"] = idt
  if s.supervised_weight:
    sup = cycle_loss(real_b, fake_b, real_a, fake_a)
    loss = loss + s.supervised_weight * sup
    metrics["supervised_l1"] = sup
  metrics["g_loss"] = loss
  return loss, (metrics, fake_a, fake_b)


def discriminator_objective(s: Settings, state: CycleGANState, d_params,
                            reals, fakes):
  """Half the adversarial D loss of each critic (the paper's 0.5 factor),
  on `reals` / `fakes` ({'a': ..., 'b': ...}). Returns (loss, metrics)."""
  metrics, total = {}, 0.0
  for name in ("a", "b"):
    s_real = state.players.discriminator.apply({"params": d_params[name]},
                                       reals[name], train=True)
    s_fake = state.players.discriminator.apply({"params": d_params[name]},
                                       fakes[name], train=True)
    loss = 0.5 * s.adversarial.discriminator(s_real, s_fake)
    metrics[f"d_{name}_loss"] = loss
    metrics[f"d_{name}_real"] = jnp.mean(s_real)
    metrics[f"d_{name}_fake"] = jnp.mean(s_fake)
    total = total + loss
  metrics["d_loss"] = total
  return total, metrics


def train_step(state: CycleGANState, batch: dict[str, jax.Array],
               rng: jax.Array, frozen: Any = None, *, settings: Settings
               ) -> tuple[CycleGANState, dict[str, jax.Array]]:
  """One update of G and F, then one of D_A and D_B (per-device code)."""
  del frozen  # a CycleGAN reads no frozen model
  s = settings
  real_a, real_b = two_domain.split_domains(batch["image"])
  n = real_a.shape[0]
  grads, (g_metrics, fake_a, fake_b) = jax.grad(
      translator_objective, argnums=2, has_aux=True)(
          s, state, state.g_params, real_a, real_b)
  g_params, g_opt_state = optimizers.update(state.players.g_tx, state.g_params,
                                            state.g_opt_state, grads)

  # The pools see the global batch of fakes with draws shared by all devices,
  # so they stay replicated; each device then takes its own slice back.
  key = jax.random.fold_in(jax.random.fold_in(rng, state.step), 0)
  me = jax.lax.axis_index(AXIS)
  pools, pooled = {}, {}
  for name, fake, k in (("a", fake_a, 0), ("b", fake_b, 1)):
    fakes = jax.lax.all_gather(jax.lax.stop_gradient(fake), AXIS, tiled=True)
    out, images, count = image_pool_query(
        state.pools[name]["images"], state.pools[name]["count"], fakes,
        jax.random.fold_in(key, k), s.pool_prob)
    pools[name] = {"images": images, "count": count}
    pooled[name] = jax.lax.dynamic_slice_in_dim(out, me * n, n)

  grads, d_metrics = jax.grad(discriminator_objective, argnums=2,
                              has_aux=True)(
      s, state, state.d_params, {"a": real_a, "b": real_b}, pooled)
  d_params, d_opt_state = optimizers.update(state.players.d_tx, state.d_params,
                                            state.d_opt_state, grads)

  metrics = jax.lax.pmean({**g_metrics, **d_metrics}, AXIS)
  new_state = state.replace(g_params=g_params, g_opt_state=g_opt_state,
                            d_params=d_params, d_opt_state=d_opt_state,
                            pools=pools)
  total = metrics["d_loss"] + metrics["g_loss"]
  return loop.guard_nonfinite(state, new_state, total), metrics


# ---------------------------------------------------------------------------
# Translation, grids and evaluation.


def make_translate_fn(generator) -> Callable[[Any, jax.Array], jax.Array]:
  """jit(params, images) -> translated images (inference mode)."""
  return jax.jit(lambda p, x: generator.apply({"params": p}, x, train=False))


def translate_batched(translate, params, images: np.ndarray,
                      batch_size: int = 250) -> np.ndarray:
  out = [np.asarray(translate(params, jnp.asarray(images[i:i + batch_size])))
         for i in range(0, len(images), batch_size)]
  return np.concatenate(out) if out else images[:0]


def translation_grid(translate, g_params, images_a: np.ndarray,
                     images_b: np.ndarray) -> np.ndarray:
  """One row per example: a | G(a) | F(G(a)) | b | F(b) | G(F(b))."""
  fake_b = translate(g_params["a2b"], images_a)
  rec_a = translate(g_params["b2a"], fake_b)
  fake_a = translate(g_params["b2a"], images_b)
  rec_b = translate(g_params["a2b"], fake_a)
  cols = [images_a, fake_b, rec_a, images_b, fake_a, rec_b]
  tiles = np.stack([np.asarray(x) for x in cols], axis=1)  # [n, 6, H, W, C]
  return image_grid(tiles.reshape(-1, *tiles.shape[2:]), rows=len(images_a))


def evaluate_translations(translate, g_params, images_a: np.ndarray,
                          images_b: np.ndarray, classifier=None,
                          class_a: int = -1, class_b: int = -1
                          ) -> dict[str, float]:
  """Cycle L1 on held-out images and, with a classifier, how often the
  translations get the target domain's class."""
  fake_b = translate_batched(translate, g_params["a2b"], images_a)
  rec_a = translate_batched(translate, g_params["b2a"], fake_b)
  fake_a = translate_batched(translate, g_params["b2a"], images_b)
  rec_b = translate_batched(translate, g_params["a2b"], fake_a)
  metrics = {"eval/cycle_l1_a": float(np.mean(np.abs(rec_a - images_a))),
             "eval/cycle_l1_b": float(np.mean(np.abs(rec_b - images_b)))}
  if classifier is not None:
    for name, fake, target in (("a2b", fake_b, class_b),
                               ("b2a", fake_a, class_a)):
      if target >= 0:
        pred = np.concatenate([classifier.predict(fake[i:i + 500])
                               for i in range(0, len(fake), 500)])
        metrics[f"eval/{name}_target_class_rate"] = float(
            np.mean(pred == target))
  return metrics


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       options: loop.RunOptions = loop.RunOptions()
                       ) -> dict[str, float]:
  """Trains the CycleGAN of `config`, resuming from `workdir` if possible."""
  t_start = time.time()
  s = read_settings(config)
  dataset = run_settings.read(config).dataset
  mesh = parallel.make_mesh()
  input_pipeline.validate_batch_size(config.batch_size, mesh.size,
                                     jax.process_count())
  domain_a, domain_b = two_domain.make_domains(config, train=True)
  train_source = two_domain.TwoDomainSource(domain_a, domain_b, int(config.seed),
                                 paired=dataset.paired)
  image_shape = train_source.image_shape  # of one domain's images
  steps_per_epoch = max(len(train_source) // config.batch_size, 1)
  total_steps = loop.num_train_steps(config, steps_per_epoch)
  state = create_train_state(config, image_shape,
                             jax.random.key(config.seed), total_steps)
  loop.announce("; ".join([
      f"CycleGAN {domain_a.description} ({len(domain_a)}) <-> "
      f"{domain_b.description} ({len(domain_b)}), {image_shape}",
      "translators of {:,} parameters, discriminators of {:,}".format(
          count_params(state.g_params["a2b"]),
          count_params(state.d_params["a"])),
      f"{s.loss} loss, cycle weight {s.cycle_weight}, identity weight "
      f"{s.identity}, pool {s.pool_size}",
      loop.describe_run(mesh, total_steps, config.batch_size)]))

  translate = make_translate_fn(create_models(config, image_shape[-1])[0])
  e = settings_lib.read(EvalSettings, config, "eval")
  n_eval = e.num_examples
  eval_a, eval_b = two_domain.make_domains(config, train=False,
                                           max_examples=n_eval)
  images_a = input_pipeline.to_float_image(eval_a.read(range(len(eval_a))))
  images_b = input_pipeline.to_float_image(eval_b.read(range(len(eval_b))))
  n_grid = settings_lib.read(SampleSettings, config, "sample").num_rows
  judge = e.classifier_workdir
  pins = frozen_models.Pins(workdir, options.allow_config_change)
  classifier = pins.restore("eval_classifier", judge, kind="classifier",
                            training=False) if judge else None

  def evaluate(state: CycleGANState, step: int,
               writer: MetricWriter) -> dict[str, float]:
    g_params = jax.device_get(state.g_params)
    grid = translation_grid(translate, g_params, images_a[:n_grid],
                            images_b[:n_grid])
    writer.write_images(step, {"translations": grid})
    return evaluate_translations(
        translate, g_params, images_a, images_b, classifier,
        dataset.domain_a.label, dataset.domain_b.label)

  def summary(metrics: dict[str, float]) -> str:
    text = f"translations in {workdir}/images"
    parts = [f"{k.split('/')[-1]} {v:.3f}" for k, v in metrics.items()]
    return text + ("; " + ", ".join(parts) if parts else "")

  task = loop.Task(
      trainer=TRAINER, state=state,
      step_fn=functools.partial(train_step, settings=s),
      batch_size=config.batch_size, train_source=train_source,
      evaluate=evaluate, summary=summary, loss_key="g_loss",
      frozen_pins=pins.records)
  return loop.run(config, workdir, task, mesh, total_steps, steps_per_epoch,
                  t_start=t_start, options=options)
