"""Trained runs in a notebook: `restore(workdir)` and the handle it gives.

    run = advjax.inference.restore("/tmp/advjax/quickstart")
    run.predict(images)                      # a classifier
    gan = advjax.inference.restore("/tmp/advjax/gan")
    gan.sample(3, n=16)                      # a GAN
    cyc = advjax.inference.restore("/tmp/advjax/cyclegan")
    cyc.translate(images, "a2b")             # a CycleGAN

No training code, data or config file is needed: the checkpoint carries its
config, and the handle rebuilds the networks from it (`advjax.models`). The
handle's class is chosen by the name of the trainer that wrote the checkpoint
(`HANDLES`); `restore(workdir, kind="gan")` insists on one kind and says so in
one line otherwise. Trainers use the same handles for the frozen models they
read (a distillation teacher, the GAN of adversarial training, a classifier
that judges samples).
"""

from __future__ import annotations

import copy
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from advjax import (checkpoints, input_pipeline, models, optimizers,
                    run_settings)
from advjax.errors import UserError
from advjax.models import cyclegan as cyclegan_models
from advjax.models import gans

DIRECTIONS = ("a2b", "b2a")


def _batched_images(images: Any, who: str, shape=None) -> jax.Array:
  """float32 NHWC images (a single HWC image gets a batch axis); a wrong
  rank or size is a one-line UserError."""
  images = jnp.asarray(images, jnp.float32)
  if images.ndim == 3:
    images = images[None]
  if images.ndim != 4:
    raise UserError(f"{who} takes images [N, H, W, C] (or one [H, W, C]), "
                    f"got shape {tuple(images.shape)}")
  if shape is not None and tuple(images.shape[1:]) != tuple(shape):
    hint = ("; they look channels-first (NCHW): transpose to NHWC"
            if tuple(images.shape[1:]) == (shape[2], shape[0], shape[1])
            else "")
    raise UserError(f"{who} takes images of shape [N, {', '.join(map(str, shape))}] "
                    f"(NHWC, in [-1, 1]), got {tuple(images.shape)}{hint}")
  return images


class Run:
  """A restored checkpoint: what every handle has.

  Attributes:
    config: the experiment config the run was started with.
    state: the saved train-state pytree as nested dicts of arrays.
    meta: the JSON saved beside it (trainer name, step, metrics, ...).
    step: the training step of the checkpoint.
    workdir: where it came from.
  """

  kind = "run"

  def __init__(self, checkpoint: checkpoints.Checkpoint):
    self.config: ml_collections.ConfigDict = checkpoint.config
    self.state: dict[str, Any] = checkpoint.state
    self.meta: dict[str, Any] = checkpoint.meta
    self.step: int = checkpoint.step
    self.workdir: str = checkpoint.workdir

  @property
  def trainer(self) -> str:
    return self.meta.get("trainer", "classifier")

  @functools.cached_property
  def dataset(self) -> input_pipeline.DatasetInfo:
    return input_pipeline.get_dataset_info(self.config.dataset.name)

  def __repr__(self) -> str:
    return (f"<{type(self).__name__} of {self.workdir} at step {self.step} "
            f"(trainer '{self.trainer}')>")


class Classifier(Run):
  """A trained classifier: `predict`, `logits`, `logits_fn` (for attacks)."""

  kind = "classifier"
  averaged_weights = False  # `averaged()`: the moving average's handle

  @property
  def params(self) -> Any:
    return self.state["params"]

  @property
  def batch_stats(self) -> Any:
    return self.state.get("batch_stats") or {}

  @property
  def variables(self) -> dict[str, Any]:
    v = {"params": self.params}
    if self.batch_stats:
      v["batch_stats"] = self.batch_stats
    return v

  @property
  def num_classes(self) -> int:
    return self.dataset.num_classes

  def averaged(self) -> "Classifier":
    """The same run with the moving average of its weights (`config.ema`)
    as its parameters; a UserError if it kept none."""
    try:
      ema = optimizers.averaged_params(self.state.get("opt_state"))
    except ValueError:
      raise UserError(f"the classifier in {self.workdir} kept no average "
                      f"of its weights (train it with config.ema.decay > 0)"
                      ) from None
    handle = copy.copy(self)
    handle.state = dict(self.state, params=ema)
    handle.averaged_weights = True
    handle.__dict__.pop("_advjax_record", None)
    return handle

  @functools.cached_property
  def model(self):
    """The flax module, built from the saved config (no cross-device BN)."""
    return models.create_model(self.config.model, self.num_classes)

  @functools.cached_property
  def _jit_logits(self) -> Callable[[Any, jax.Array], jax.Array]:
    model = self.model
    return jax.jit(lambda v, x: model.apply(v, x, train=False))

  def logits(self, images: Any) -> jax.Array:
    """Logits for images in [-1, 1], NHWC (eval mode)."""
    images = _batched_images(images, "predict", self.dataset.image_shape)
    return self._jit_logits(self.variables, images)

  def predict(self, images: Any) -> np.ndarray:
    """Predicted class of each image."""
    return np.asarray(jnp.argmax(self.logits(images), axis=-1))

  def logits_fn(self) -> Callable[[jax.Array], jax.Array]:
    """`x -> logits`, differentiable in x: what the attacks take."""
    model, variables = self.model, self.variables
    return lambda x: model.apply(variables, x, train=False)

  def features_fn(self) -> Callable[[Any, jax.Array], jax.Array]:
    """`(variables, x) -> penultimate features` (for feature-space FIDs)."""
    model = self.model
    return lambda v, x: model.apply(v, x, train=False,
                                    return_features=True)[1]


class GAN(Run):
  """A trained GAN: `sample`, `generate`, `generate_fn`, `aux_logits_fn`."""

  kind = "gan"

  @property
  def num_classes(self) -> int:
    """Classes of the conditioning (0 for an unconditional GAN)."""
    if not gans.read_model(self.config.model).conditional:
      return 0
    return self.dataset.num_classes

  @property
  def latent_dim(self) -> int:
    return gans.read_model(self.config.model).latent_dim

  @functools.cached_property
  def _modules(self):
    dtype = jnp.dtype(run_settings.read(self.config).dtype)
    return gans.create_players(self.config.model, self.num_classes,
                               self.dataset.image_shape, dtype=dtype)

  @property
  def generator(self):
    return self._modules[0]

  @property
  def discriminator(self):
    return self._modules[1]

  @property
  def has_aux_classifier(self) -> bool:
    """Whether the discriminator has an AC-GAN class head."""
    return bool(self.num_classes) and self.discriminator.has_class_head

  def generator_variables(self, ema: bool = True) -> dict[str, Any]:
    """The generator's variables; the moving average of its weights when
    the run kept one and `ema` is true."""
    params = self.state["g_params"]
    if ema and jax.tree.leaves(self.state.get("g_ema") or {}):
      params = self.state["g_ema"]
    return {"params": params, **(self.state.get("g_state") or {})}

  def discriminator_variables(self) -> dict[str, Any]:
    return {"params": self.state["d_params"],
            **(self.state.get("d_state") or {})}

  def generate_fn(self, ema: bool = True) -> Callable[..., jax.Array]:
    """`(z, labels) -> images`, differentiable in z (for latent attacks)."""
    gen, variables = self.generator, self.generator_variables(ema)
    return lambda z, labels: gen.apply(variables, z, labels, train=False)

  def aux_logits_fn(self) -> Callable[[jax.Array], jax.Array]:
    """`x -> class logits` of an AC-GAN's discriminator (eval mode)."""
    if not self.has_aux_classifier:
      raise UserError(f"the GAN in {self.workdir} has no auxiliary "
                      f"classifier (an AC-GAN discriminator) to ask")
    disc, variables = self.discriminator, self.discriminator_variables()
    return lambda x: disc.apply(variables, x, None, train=False)["logits"]

  @functools.cached_property
  def _jit_generate(self):
    gen = self.generator
    return jax.jit(lambda v, z, y: gen.apply(v, z, y, train=False))

  def generate(self, z: Any, labels: Any = None, ema: bool = True
               ) -> jax.Array:
    """G(z, labels) in inference mode; images in [-1, 1]."""
    z = jnp.asarray(z, jnp.float32)
    if z.ndim != 2 or z.shape[1] != self.latent_dim:
      raise UserError(f"z must be [N, {self.latent_dim}] latent vectors for "
                      f"this GAN, got shape {tuple(z.shape)}")
    labels = None if labels is None else jnp.asarray(labels, jnp.int32)
    return self._jit_generate(self.generator_variables(ema), z, labels)

  def sample(self, label: Any = None, n: int = 16, seed: int = 0,
             ema: bool = True) -> np.ndarray:
    """`n` samples of class `label` (an int, or one label per sample; None
    for an unconditional GAN), from latent vectors drawn with `seed`."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
      raise UserError(f"n must be a positive number of samples, got {n!r}")
    if self.num_classes and label is None:
      raise UserError(f"this GAN is class-conditional: pass a class in "
                      f"[0, {self.num_classes})")
    if not self.num_classes and label is not None:
      raise UserError("this GAN is unconditional: call sample() without a "
                      "class")
    labels = None
    if label is not None:
      labels = np.broadcast_to(np.asarray(label, np.int32), (n,))
      if labels.min() < 0 or labels.max() >= self.num_classes:
        raise UserError(f"class {label} is outside [0, {self.num_classes})")
    z = gans.sample_latents(jax.random.key(seed), int(n), self.latent_dim)
    return np.asarray(self.generate(z, labels, ema))


class CycleGAN(Run):
  """A trained CycleGAN: `translate(images, 'a2b' | 'b2a')`."""

  kind = "cyclegan"

  @functools.cached_property
  def _translators(self) -> dict[int, Callable]:
    return {}

  def translate(self, images: Any, direction: str = "a2b") -> np.ndarray:
    """Translation of `images` (NHWC or HWC, in [-1, 1]): 'a2b' runs G
    (domain A -> B), 'b2a' runs F (B -> A)."""
    if direction not in DIRECTIONS:
      raise UserError(f"direction '{direction}' is not one of {DIRECTIONS}")
    images = _batched_images(images, "translate")
    channels = int(images.shape[-1])
    if channels not in self._translators:
      dtype = jnp.dtype(run_settings.read(self.config).dtype)
      gen = cyclegan_models.create_generator(self.config.model, channels,
                                             dtype)
      self._translators[channels] = jax.jit(
          lambda p, x: gen.apply({"params": p}, x, train=False))
    return np.asarray(self._translators[channels](
        self.state["g_params"][direction], images))


# trainer name (saved in each checkpoint's meta) -> handle class.
HANDLES: dict[str, type[Run]] = {
    "classifier": Classifier,
    "gan": GAN,
    "cyclegan": CycleGAN,
}


def restore(workdir: str, step: int | None = None, best: bool = False,
            kind: str | None = None) -> Run:
  """The run in `workdir` as the handle of its trainer.

  Args:
    workdir: the run's work directory (the one given to `advjax.main`).
    step: a particular step; default the newest readable checkpoint.
    best: take the checkpoint with the best value of the run's
      `checkpoint.best_metric` instead of the newest.
    kind: 'classifier', 'gan' or 'cyclegan' to insist on one (a one-line
      UserError otherwise).
  """
  checkpoint = checkpoints.load(workdir, step=step, best=best)
  handle = HANDLES.get(checkpoint.trainer)
  if handle is None:
    raise UserError(f"checkpoint in {workdir} was written by the "
                    f"'{checkpoint.trainer}' trainer, which has no handle; "
                    f"known: {sorted(HANDLES)}")
  if kind is not None and handle.kind != kind:
    raise UserError(f"checkpoint in {workdir} was written by the "
                    f"'{checkpoint.trainer}' trainer, not a {kind}")
  return handle(checkpoint)
