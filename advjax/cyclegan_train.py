"""CycleGAN (Zhu et al. 2017): unpaired image-to-image translation.

Two translators, G: A -> B and F: B -> A, and two PatchGAN discriminators,
D_A (real A vs F(b)) and D_B (real B vs G(a)). One call of `train_step`
updates both translators, then both discriminators, inside one compiled,
data-parallel program. The translators minimise

  L_adv(G, D_B) + L_adv(F, D_A)
  + cycle_weight * (|F(G(a)) - a|_1 + |G(F(b)) - b|_1)      (cycle consistency)
  + identity_weight * (|G(b) - b|_1 + |F(a) - a|_1)          (identity, Sec. 5.2)
  + supervised_weight * (|G(a) - b|_1 + |F(b) - a|_1)        (paired data only)

with L1 as a per-pixel mean and L_adv least-squares (the paper) or
non-saturating. The discriminators minimise half their usual loss (the paper's
0.5 factor), and see fakes through an image pool (Shrivastava et al. 2017, as
in CycleGAN): once the pool holds `pool_size` fakes, each new fake is, with
probability `pool_prob`, swapped for a random stored one, which D then sees
instead. The pools are part of the replicated train state: every device
gathers the global batch of fakes and applies the same draws, so the pools
stay identical across devices, are checkpointed, and resume exactly.

Domains come from `config.dataset.domain_a` / `domain_b`: a tfds dataset and
split each (e.g. `cycle_gan/horse2zebra`, trainA / trainB), optionally only
the images of one class (`label` >= 0, e.g. Fashion-MNIST 7 and 9).
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
from advjax.models import count_params
from advjax.models import cyclegan as cyclegan_models
from advjax.parallel import AXIS

TRAINER = "cyclegan"
LOSSES = ("least_squares", "nonsaturating")
DIRECTIONS = ("a2b", "b2a")


# ---------------------------------------------------------------------------
# Data: two domains as one random-access source for the shared train loop.


def _resize(images: np.ndarray, size: int) -> np.ndarray:
  """uint8 [n, h, w, c] -> [n, size, size, c] (bilinear, with pillow)."""
  if not size or images.shape[1:3] == (size, size):
    return images
  from PIL import Image  # pylint: disable=g-import-not-at-top
  out = []
  for im in images:
    squeeze = im.shape[-1] == 1
    pil = Image.fromarray(im[..., 0] if squeeze else im)
    arr = np.asarray(pil.resize((size, size), Image.BILINEAR))
    out.append(arr[..., None] if squeeze else arr)
  return np.stack(out)


def _read_examples(source, indices, size: int = 0
                   ) -> tuple[np.ndarray, np.ndarray]:
  """uint8 images [n, H, W, C] (resized to `size` if set) and labels [n];
  unlike input_pipeline._read, the images may differ in size."""
  indices = [int(i) for i in indices]
  if (hasattr(source, "__getitems__")
      and not input_pipeline._is_tfds_mock(source)):  # pylint: disable=protected-access
    examples = source.__getitems__(indices)
  else:
    examples = [source[i] for i in indices]
  images = []
  for ex in examples:
    im = np.asarray(ex["image"], np.uint8)
    im = im[..., None] if im.ndim == 2 else im
    images.append(_resize(im[None], size)[0])
  labels = np.asarray([ex.get("label", -1) for ex in examples], np.int64)
  return np.stack(images), labels


def _tfds_source(name: str, split: str, data_dir: str | None):
  """A tfds data source; the library's datasets go through get_source."""
  if name in input_pipeline.DATASETS:
    return input_pipeline.get_source(name, split, data_dir)
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  try:
    builder = tfds.builder(name, data_dir=data_dir, file_format="array_record")
  except Exception as e:  # pylint: disable=broad-except
    raise UserError(f"tfds does not know the dataset '{name}' "
                    f"({type(e).__name__})") from e
  try:
    return builder.as_data_source(split=split)
  except Exception:  # pylint: disable=broad-except
    pass  # Not prepared yet (or unknown split): prepare, then try again.
  try:
    builder.download_and_prepare(file_format="array_record")
    return builder.as_data_source(split=split)
  except Exception as e:  # pylint: disable=broad-except
    raise UserError(f"could not read {name} split '{split}' "
                    f"({type(e).__name__}: {str(e).splitlines()[0][:150] if str(e) else ''}); "
                    "prepare it once with internet access") from e


class DomainSource:
  """The images of one domain: a split of a dataset, or one class of it.

  A class subset is read once and kept in memory (fine for small datasets
  such as Fashion-MNIST); a whole split is read on demand.
  """

  def __init__(self, domain: ml_collections.ConfigDict, split: str,
               data_dir: str | None, image_size: int = 0,
               max_examples: int = 0):
    self.description = f"{domain.name} {split}"
    self.image_size = int(image_size)
    source = _tfds_source(domain.name, split, data_dir)
    label = int(domain.get("label", -1))
    self._source, self._cache = source, None
    if label >= 0:
      self.description += f" class {label}"
      kept, n = [], len(source)
      for start in range(0, n, 2000):
        images, labels = _read_examples(
            source, range(start, min(start + 2000, n)), self.image_size)
        kept.append(images[labels == label])
        if max_examples and sum(len(k) for k in kept) >= max_examples:
          break
      self._cache = np.concatenate(kept)
      self._length = len(self._cache)
    else:
      self._length = len(source)
    if max_examples:
      self._length = min(self._length, int(max_examples))
    if self._length == 0:
      raise UserError(f"domain {self.description} has no images")

  def __len__(self) -> int:
    return self._length

  def read(self, indices) -> np.ndarray:
    """uint8 [n, H, W, C] images."""
    indices = np.asarray(indices, np.int64)
    if self._cache is not None:
      return self._cache[indices]
    return _read_examples(self._source, indices, self.image_size)[0]


class TwoDomainSource:
  """Both domains as one source for `input_pipeline.TrainIterator`.

  Example i holds A image i % |A| and B image p(i) % |B|, with p a fixed
  random permutation (the domains are unpaired; `paired=True` takes B image
  i instead), stacked along the channel axis: 'image' is [H, W, 2C].
  """

  def __init__(self, a: DomainSource, b: DomainSource, seed: int,
               paired: bool = False):
    self.a, self.b = a, b
    self._length = max(len(a), len(b))
    if paired:
      if len(a) != len(b):
        raise UserError(f"paired domains need as many images in A "
                        f"({len(a)}) as in B ({len(b)})")
      self._perm = np.arange(self._length)
    else:
      self._perm = np.random.default_rng([seed, 17]).permutation(self._length)
    shape_a, shape_b = a.read([0]).shape[1:], b.read([0]).shape[1:]
    if shape_a != shape_b:
      raise UserError(f"domain images differ in shape ({shape_a} in "
                      f"{a.description}, {shape_b} in {b.description}); set "
                      "dataset.image_size to resize both")
    self.image_shape = tuple(int(s) for s in shape_a)

  def __len__(self) -> int:
    return self._length

  def __getitems__(self, indices) -> list[dict[str, np.ndarray]]:
    idx = np.asarray(indices, np.int64)
    a = self.a.read(idx % len(self.a))
    b = self.b.read(self._perm[idx] % len(self.b))
    images = np.concatenate([a, b], axis=-1)
    return [{"image": im, "label": 0} for im in images]

  def __getitem__(self, i: int) -> dict[str, np.ndarray]:
    return self.__getitems__([i])[0]


def split_domains(images):
  """[..., 2C] stacked batch -> (domain A [..., C], domain B [..., C])."""
  c = images.shape[-1] // 2
  return images[..., :c], images[..., c:]


def _data_dir(config) -> str | None:
  return config.dataset.get("data_dir") or None


def make_domains(config: ml_collections.ConfigDict, train: bool,
                 max_examples: int = 0) -> tuple[DomainSource, DomainSource]:
  """(A, B) domain sources of the train or the eval splits."""
  ds = config.dataset
  out = []
  for domain in (ds.domain_a, ds.domain_b):
    split = domain.train_split if train else domain.eval_split
    out.append(DomainSource(domain, split, _data_dir(config),
                            int(ds.get("image_size", 0)), max_examples))
  return out[0], out[1]


# ---------------------------------------------------------------------------
# Image pool (Shrivastava et al. 2017; Zhu et al. 2017, Sec. 4).


def image_pool_query(pool: jax.Array, count: jax.Array, fakes: jax.Array,
                     rng: jax.Array, prob: float = 0.5
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
  generator: Any = flax.struct.field(pytree_node=False, default=None)
  discriminator: Any = flax.struct.field(pytree_node=False, default=None)
  g_tx: Any = flax.struct.field(pytree_node=False, default=None)
  d_tx: Any = flax.struct.field(pytree_node=False, default=None)


def _settings(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  c = config.cyclegan
  if c.loss not in LOSSES:
    raise UserError(f"cyclegan.loss '{c.loss}' is not one of {LOSSES}")
  if not 0.0 <= float(c.pool_prob) <= 1.0:
    raise UserError(f"cyclegan.pool_prob must be in [0, 1], not {c.pool_prob}")
  if int(c.pool_size) < 0:
    raise UserError(f"cyclegan.pool_size must be >= 0, not {c.pool_size}")
  return c


def identity_weight(c: ml_collections.ConfigDict) -> float:
  """`identity_weight`, or 0.5 x cycle_weight when negative (the paper)."""
  w = float(c.get("identity_weight", -1.0))
  return 0.5 * float(c.cycle_weight) if w < 0 else w


def create_models(config: ml_collections.ConfigDict, channels: int):
  dtype = jnp.dtype(config.get("dtype", "float32"))
  return (cyclegan_models.create_generator(config.model, channels, dtype),
          cyclegan_models.create_discriminator(config.model, dtype))


def create_optimizer(opt: ml_collections.ConfigDict,
                     num_train_steps: int) -> optax.GradientTransformation:
  """As optimizers.create_optimizer, plus schedule 'constant_then_linear':
  constant, then linear decay to 0 from `decay_start` (a fraction of
  training), the CycleGAN recipe (100 epochs + 100 decaying)."""
  if opt.get("schedule") != "constant_then_linear":
    return optimizers.create_optimizer(opt, num_train_steps)
  if opt.get("name", "adam") != "adam":
    raise UserError("schedule 'constant_then_linear' is only for adam")
  lr = float(opt.learning_rate)
  start = int(round(float(opt.get("decay_start", 0.5)) * num_train_steps))
  schedule = optax.join_schedules(
      [optax.constant_schedule(lr),
       optax.linear_schedule(lr, 0.0, max(num_train_steps - start, 1))],
      [start])
  return optax.adam(schedule, b1=opt.get("b1", 0.5), b2=opt.get("b2", 0.999))


def create_train_state(config: ml_collections.ConfigDict,
                       image_shape: tuple[int, int, int], rng: jax.Array,
                       num_train_steps: int) -> CycleGANState:
  """Initialises G, F, D_A, D_B, their optimisers and empty pools."""
  c = _settings(config)
  generator, discriminator = create_models(config, image_shape[-1])
  keys = jax.random.split(rng, 4)
  x = jnp.zeros((1, *image_shape), jnp.float32)
  g_init = jax.jit(generator.init)
  d_init = jax.jit(discriminator.init)
  g_params = {"a2b": g_init(keys[0], x)["params"],
              "b2a": g_init(keys[1], x)["params"]}
  d_params = {"a": d_init(keys[2], x)["params"],
              "b": d_init(keys[3], x)["params"]}
  g_tx = create_optimizer(config.g_optimizer, num_train_steps)
  d_tx = create_optimizer(config.d_optimizer, num_train_steps)
  size = int(c.pool_size)
  pool = lambda: {"images": jnp.zeros((size, *image_shape), jnp.float32),
                  "count": jnp.asarray(0, jnp.int32)}
  return CycleGANState(
      step=jnp.asarray(0, jnp.int32),
      g_params=g_params, g_opt_state=g_tx.init(g_params),
      d_params=d_params, d_opt_state=d_tx.init(d_params),
      pools={"a": pool(), "b": pool()},
      bad_step=jnp.asarray(-1, jnp.int32),
      generator=generator, discriminator=discriminator, g_tx=g_tx, d_tx=d_tx)


def _adversarial_losses(kind: str):
  """(d_loss(d_real, d_fake), g_loss(d_fake)) on raw score maps."""
  if kind == "least_squares":
    return losses.least_squares_d_loss, losses.least_squares_g_loss
  return losses.minimax_d_loss, losses.nonsaturating_g_loss


def l1(x: jax.Array, y: jax.Array) -> jax.Array:
  """Mean absolute difference per pixel."""
  return jnp.mean(jnp.abs(x - y))


def cycle_loss(translate_a2b: Callable, translate_b2a: Callable,
               real_a: jax.Array, real_b: jax.Array) -> jax.Array:
  """|F(G(a)) - a|_1 + |G(F(b)) - b|_1 (Zhu et al. 2017, Eq. 2)."""
  return (l1(translate_b2a(translate_a2b(real_a)), real_a)
          + l1(translate_a2b(translate_b2a(real_b)), real_b))


def train_step(state: CycleGANState, batch: dict[str, jax.Array],
               rng: jax.Array, *, config: ml_collections.ConfigDict
               ) -> tuple[CycleGANState, dict[str, jax.Array]]:
  """One update of G and F, then one of D_A and D_B (per-device code)."""
  c = config.cyclegan
  d_loss_fn, g_loss_fn = _adversarial_losses(c.loss)
  w_cycle = float(c.cycle_weight)
  w_id = identity_weight(c)
  w_sup = float(c.get("supervised_weight", 0.0))
  real_a, real_b = split_domains(batch["image"])
  n = real_a.shape[0]
  gen, disc = state.generator, state.discriminator

  def translate(params, x):
    return gen.apply({"params": params}, x, train=True)

  def score(params, x):
    return disc.apply({"params": params}, x, train=True)

  def g_objective(g_params):
    fake_b = translate(g_params["a2b"], real_a)
    fake_a = translate(g_params["b2a"], real_b)
    adv_a2b = g_loss_fn(score(state.d_params["b"], fake_b))
    adv_b2a = g_loss_fn(score(state.d_params["a"], fake_a))
    cyc = (l1(translate(g_params["b2a"], fake_b), real_a)
           + l1(translate(g_params["a2b"], fake_a), real_b))
    loss = adv_a2b + adv_b2a + w_cycle * cyc
    metrics = {"g_adv_a2b": adv_a2b, "g_adv_b2a": adv_b2a, "cycle_loss": cyc}
    if w_id:
      idt = (l1(translate(g_params["a2b"], real_b), real_b)
             + l1(translate(g_params["b2a"], real_a), real_a))
      loss = loss + w_id * idt
      metrics["identity_loss"] = idt
    if w_sup:
      sup = l1(fake_b, real_b) + l1(fake_a, real_a)
      loss = loss + w_sup * sup
      metrics["supervised_l1"] = sup
    metrics["g_loss"] = loss
    return loss, (metrics, fake_a, fake_b)

  grads, (g_metrics, fake_a, fake_b) = jax.grad(g_objective, has_aux=True)(
      state.g_params)
  grads = jax.lax.pmean(grads, AXIS)
  updates, g_opt_state = state.g_tx.update(grads, state.g_opt_state,
                                           state.g_params)
  g_params = optax.apply_updates(state.g_params, updates)

  # The pools see the global batch of fakes with draws shared by all devices,
  # so they stay replicated; each device then takes its own slice back.
  key = jax.random.fold_in(jax.random.fold_in(rng, state.step), 0)
  me = jax.lax.axis_index(AXIS)
  pools, pooled = {}, {}
  for name, fake, k in (("a", fake_a, 0), ("b", fake_b, 1)):
    fakes = jax.lax.all_gather(jax.lax.stop_gradient(fake), AXIS, tiled=True)
    out, images, count = image_pool_query(
        state.pools[name]["images"], state.pools[name]["count"], fakes,
        jax.random.fold_in(key, k), float(c.pool_prob))
    pools[name] = {"images": images, "count": count}
    pooled[name] = jax.lax.dynamic_slice_in_dim(out, me * n, n)

  def d_objective(d_params):
    metrics, total = {}, 0.0
    for name, real in (("a", real_a), ("b", real_b)):
      s_real = score(d_params[name], real)
      s_fake = score(d_params[name], pooled[name])
      loss = 0.5 * d_loss_fn(s_real, s_fake)
      metrics[f"d_{name}_loss"] = loss
      metrics[f"d_{name}_real"] = jnp.mean(s_real)
      metrics[f"d_{name}_fake"] = jnp.mean(s_fake)
      total = total + loss
    metrics["d_loss"] = total
    return total, metrics

  grads, d_metrics = jax.grad(d_objective, has_aux=True)(state.d_params)
  grads = jax.lax.pmean(grads, AXIS)
  updates, d_opt_state = state.d_tx.update(grads, state.d_opt_state,
                                           state.d_params)
  d_params = optax.apply_updates(state.d_params, updates)

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
  @jax.jit
  def translate(params, images):
    return generator.apply({"params": params}, images, train=False)
  return translate


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


def train_and_evaluate(config: ml_collections.ConfigDict,
                       workdir: str) -> dict[str, float]:
  """Trains the CycleGAN of `config`, resuming from `workdir` if possible."""
  t_start = time.time()
  c = _settings(config)
  mesh = parallel.make_mesh()
  input_pipeline.validate_batch_size(config.batch_size, mesh.size,
                                     jax.process_count())
  domain_a, domain_b = make_domains(config, train=True)
  train_source = TwoDomainSource(domain_a, domain_b, int(config.seed),
                                 paired=bool(config.dataset.get("paired",
                                                                False)))
  image_shape = train_source.image_shape  # of one domain's images
  steps_per_epoch = max(len(train_source) // config.batch_size, 1)
  total_steps = loop.num_train_steps(config, steps_per_epoch)
  state = create_train_state(config, image_shape,
                             jax.random.key(config.seed), total_steps)
  if jax.process_index() == 0:
    print(f"advjax: CycleGAN {domain_a.description} ({len(domain_a)}) <-> "
          f"{domain_b.description} ({len(domain_b)}), {image_shape}: two "
          f"translators of {count_params(state.g_params['a2b']):,} "
          f"parameters, two discriminators of "
          f"{count_params(state.d_params['a']):,}; {c.loss} loss, cycle "
          f"weight {c.cycle_weight}, identity weight {identity_weight(c)}, "
          f"pool {c.pool_size}; {mesh.size} device(s); {total_steps} steps "
          f"of batch {config.batch_size}", flush=True)

  translate = make_translate_fn(create_models(config, image_shape[-1])[0])
  n_eval = int(config.eval.get("num_examples", 1000))
  eval_a, eval_b = make_domains(config, train=False, max_examples=n_eval)
  images_a = input_pipeline.to_float_image(eval_a.read(range(len(eval_a))))
  images_b = input_pipeline.to_float_image(eval_b.read(range(len(eval_b))))
  n_grid = int(config.sample.get("num_rows", 8))
  classifier = None
  if config.eval.get("classifier_workdir"):
    from advjax import checkpoints  # pylint: disable=g-import-not-at-top
    classifier = checkpoints.restore(config.eval.classifier_workdir)
    classifier._require("classifier")  # pylint: disable=protected-access

  from advjax.metric_writers import MetricWriter  # pylint: disable=g-import-not-at-top
  images_writer = MetricWriter(workdir, enabled=jax.process_index() == 0,
                               tensorboard=False)

  def evaluate(state: CycleGANState, step: int) -> dict[str, float]:
    g_params = jax.device_get(state.g_params)
    grid = translation_grid(translate, g_params, images_a[:n_grid],
                            images_b[:n_grid])
    images_writer.write_images(step, {"translations": grid})
    return evaluate_translations(
        translate, g_params, images_a, images_b, classifier,
        int(config.dataset.domain_a.get("label", -1)),
        int(config.dataset.domain_b.get("label", -1)))

  def summary(metrics: dict[str, float]) -> str:
    text = f"translations in {workdir}/images"
    parts = [f"{k.split('/')[-1]} {v:.3f}" for k, v in metrics.items()]
    return text + ("; " + ", ".join(parts) if parts else "")

  task = loop.Task(
      trainer=TRAINER, state=state,
      step_fn=functools.partial(train_step, config=config),
      batch_size=config.batch_size, train_source=train_source,
      evaluate=evaluate, summary=summary, loss_key="g_loss")
  try:
    return loop.run(config, workdir, task, mesh, total_steps, steps_per_epoch,
                    t_start=t_start)
  finally:
    images_writer.close()
