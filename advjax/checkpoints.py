"""Checkpoints: saving during training, resuming, and restoring in a notebook.

A checkpoint (orbax `CheckpointManager`, one folder per step under
`<workdir>/checkpoints`) holds two items:
  'state': the whole train state pytree (params, batch stats, optimiser
           state, step, ...), so a resumed run continues bit for bit;
  'meta':  JSON with the experiment config, the trainer's name, the input
           pipeline position and, where evaluation ran at that step, its
           metrics.

Retention keeps the last `keep` checkpoints plus the best one by a chosen
evaluation metric. A checkpoint that cannot be read (corrupt, or cut short by a
crash) is skipped with a warning in favour of the one before it.

For notebooks, `restore(workdir)` needs no training code:

    r = advjax.checkpoints.restore("/tmp/quickstart")
    r.config.model, r.params, r.predict(images)
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import time
import warnings
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from advjax import fileio
from advjax.errors import UserError

STATE = "state"
META = "meta"
CHECKPOINT_DIR = "checkpoints"


def checkpoint_dir(workdir: str) -> str:
  """`<workdir>/checkpoints`; `workdir` local or `gs://...` (orbax writes
  arrays there with tensorstore and commits with a marker file, no rename)."""
  return fileio.join(fileio.resolve(workdir), CHECKPOINT_DIR)


def _options(keep: int, best_metric: str | None, best_mode: str,
             async_save: bool, read_only: bool = False):
  cm = ocp.checkpoint_managers
  policies = [cm.LatestN(n=max(int(keep), 1))]
  if best_metric:
    policies.append(cm.BestN(get_metric_fn=lambda m: m[best_metric],
                             reverse=(best_mode == "min"), n=1,
                             keep_checkpoints_without_metrics=False))
  return ocp.CheckpointManagerOptions(
      preservation_policy=cm.AnyPreservationPolicy(policies),
      enable_async_checkpointing=async_save,
      cleanup_tmp_directories=not read_only,
      create=not read_only,
      read_only=read_only)


class Checkpointer:
  """Saves and resumes one run's train state (thin wrapper over orbax)."""

  def __init__(self, workdir: str, *, keep: int = 3,
               best_metric: str | None = None, best_mode: str = "max",
               async_save: bool = True):
    if best_mode not in ("max", "min"):
      raise UserError(f"checkpoint best_mode must be 'max' or 'min', "
                      f"not '{best_mode}'")
    self.directory = checkpoint_dir(workdir)
    self.best_metric = best_metric
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=_options(keep, best_metric, best_mode, async_save),
        item_names=(STATE, META))

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def save(self, step: int, state: Any, meta: dict[str, Any],
           metrics: dict[str, float] | None = None) -> None:
    """Saves `state` and the JSON `meta` at `step` (non-blocking if async).

    `metrics` (evaluation results at this step) rank the checkpoint for the
    keep-the-best rule; only checkpoints that carry the chosen metric compete.
    """
    if metrics is not None and self.best_metric and (
        self.best_metric not in metrics):
      raise UserError(f"checkpoint.best_metric '{self.best_metric}' is not "
                      f"among the evaluation metrics {sorted(metrics)}")
    meta = dict(meta, step=int(step))
    if metrics is not None:
      meta["metrics"] = {k: float(v) for k, v in metrics.items()}
    self._manager.save(
        int(step),
        args=ocp.args.Composite(**{STATE: ocp.args.StandardSave(state),
                                   META: ocp.args.JsonSave(meta)}),
        metrics=meta.get("metrics") if self.best_metric else None,
        force=True)

  def restore_latest(self, target: Any) -> tuple[Any, dict] | None:
    """Restores the newest readable checkpoint into the structure of `target`.

    Returns (state, meta), or None when there is no checkpoint. Unreadable
    checkpoints are skipped, newest first, with a warning.
    """
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    for step in reversed(self.all_steps()):
      try:
        restored = self._manager.restore(
            step, args=ocp.args.Composite(
                **{STATE: ocp.args.StandardRestore(abstract),
                   META: ocp.args.JsonRestore()}))
      except Exception as e:  # pylint: disable=broad-except
        _warn_unreadable(self.directory, step, e)
        continue
      return restored[STATE], dict(restored[META])
    return None

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def _warn_unreadable(directory: str, step: int, error: Exception) -> None:
  msg = (f"advjax: checkpoint {directory}/{step} cannot be read "
         f"({type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ''}); "
         f"falling back to an earlier one")
  warnings.warn(msg, RuntimeWarning, stacklevel=3)
  logging.warning(msg)


# ---------------------------------------------------------------------------
# Restoring for notebooks and evaluation.


@dataclasses.dataclass
class Restored:
  """A checkpoint read back without any training code.

  Attributes:
    config: the experiment config the run was started with.
    state: the saved train-state pytree as nested dicts of arrays on the
      default device (`state['params']`, `state['batch_stats']`, ...).
    meta: the JSON saved beside it (trainer name, step, metrics, ...).
    step: the training step of the checkpoint.
    workdir: where it came from.
  """
  config: ml_collections.ConfigDict
  state: dict[str, Any]
  meta: dict[str, Any]
  step: int
  workdir: str

  @property
  def trainer(self) -> str:
    return self.meta.get("trainer", "classifier")

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

  @functools.cached_property
  def model(self):
    """The flax module, built from the saved config (no cross-device BN)."""
    from advjax import input_pipeline, models  # pylint: disable=g-import-not-at-top
    self._require("classifier")
    info = input_pipeline.get_dataset_info(self.config.dataset.name)
    return models.create_model(self.config.model, info.num_classes)

  @functools.cached_property
  def _logits_fn(self) -> Callable[[Any, jax.Array], jax.Array]:
    model = self.model
    return jax.jit(lambda v, x: model.apply(v, x, train=False))

  def logits(self, images: Any) -> jax.Array:
    """Classifier logits for images in [-1, 1], NHWC (eval mode)."""
    self._require("classifier")
    images = jnp.asarray(images, jnp.float32)
    if images.ndim == 3:
      images = images[None]
    return self._logits_fn(self.variables, images)

  def predict(self, images: Any) -> np.ndarray:
    """Predicted class of each image."""
    return np.asarray(jnp.argmax(self.logits(images), axis=-1))

  def logits_fn(self) -> Callable[[jax.Array], jax.Array]:
    """`x -> logits`, differentiable in x: what the attacks take."""
    self._require("classifier")
    model, variables = self.model, self.variables
    return lambda x: model.apply(variables, x, train=False)

  # -- GAN checkpoints -------------------------------------------------------

  @functools.cached_property
  def num_classes(self) -> int:
    """Classes of the dataset (classifier) or of the conditioning (GAN; 0 for
    an unconditional GAN)."""
    from advjax import input_pipeline  # pylint: disable=g-import-not-at-top
    info = input_pipeline.get_dataset_info(self.config.dataset.name)
    if self.trainer == "gan" and not self.config.model.get("conditional",
                                                            False):
      return 0
    return info.num_classes

  @functools.cached_property
  def _gan_modules(self):
    from advjax import gan_train, input_pipeline  # pylint: disable=g-import-not-at-top
    self._require("gan")
    info = input_pipeline.get_dataset_info(self.config.dataset.name)
    return gan_train.create_models(self.config, self.num_classes,
                                   info.image_shape, axis_name=None)

  @property
  def generator(self):
    return self._gan_modules[0]

  @property
  def discriminator(self):
    return self._gan_modules[1]

  @functools.cached_property
  def _generate(self):
    from advjax import gan_train  # pylint: disable=g-import-not-at-top
    return gan_train.make_generate_fn(self.generator)

  def generator_variables(self, ema: bool = True) -> dict[str, Any]:
    """The generator's variables; the moving average of its weights when
    the run kept one and `ema` is true."""
    from advjax import gan_train  # pylint: disable=g-import-not-at-top
    self._require("gan")
    params = (gan_train.sampling_params(self.state) if ema
              else self.state["g_params"])
    return {"params": params, **(self.state.get("g_state") or {})}

  def discriminator_variables(self) -> dict[str, Any]:
    self._require("gan")
    return {"params": self.state["d_params"],
            **(self.state.get("d_state") or {})}

  def aux_logits_fn(self) -> Callable[[jax.Array], jax.Array]:
    """`x -> class logits` of an AC-GAN's discriminator (eval mode)."""
    disc, variables = self.discriminator, self.discriminator_variables()
    if not (getattr(disc, "aux_classifier", False)
            or type(disc).__name__ == "ResNetCritic") or not self.num_classes:
      raise UserError(f"the GAN in {self.workdir} has no auxiliary "
                      f"classifier (an AC-GAN discriminator) to ask")
    return lambda x: disc.apply(variables, x, None, train=False)["logits"]

  def generate_fn(self, ema: bool = True) -> Callable[..., jax.Array]:
    """`(z, labels) -> images`, differentiable in z (for latent attacks)."""
    gen, variables = self.generator, self.generator_variables(ema)
    return lambda z, labels: gen.apply(variables, z, labels, train=False)

  def generate(self, z: Any, labels: Any = None, ema: bool = True
               ) -> jax.Array:
    """G(z, labels) in inference mode; images in [-1, 1]."""
    v = self.generator_variables(ema)
    g_state = {k: x for k, x in v.items() if k != "params"}
    labels = None if labels is None else jnp.asarray(labels, jnp.int32)
    return self._generate(v["params"], g_state, jnp.asarray(z, jnp.float32),
                          labels)

  def sample(self, label: Any = None, n: int = 16, seed: int = 0,
             ema: bool = True) -> np.ndarray:
    """`n` samples of class `label` (an int, or one label per sample; None
    for an unconditional GAN), from latent vectors drawn with `seed`."""
    self._require("gan")
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
    z = jax.random.normal(jax.random.key(seed),
                          (n, int(self.config.model.latent_dim)))
    return np.asarray(self.generate(z, labels, ema))

  def _require(self, trainer: str) -> None:
    if self.trainer != trainer:
      raise UserError(f"checkpoint in {self.workdir} was written by the "
                      f"'{self.trainer}' trainer, not a {trainer}")

  # -- CycleGAN checkpoints --------------------------------------------------

  def translate(self, images: Any, direction: str = "a2b") -> np.ndarray:
    """A CycleGAN's translation of `images` (NHWC or HWC, in [-1, 1]):
    'a2b' runs G (domain A -> B), 'b2a' runs F (B -> A)."""
    from advjax import cyclegan_train  # pylint: disable=g-import-not-at-top
    self._require("cyclegan")
    if direction not in cyclegan_train.DIRECTIONS:
      raise UserError(f"direction '{direction}' is not one of "
                      f"{cyclegan_train.DIRECTIONS}")
    images = jnp.asarray(images, jnp.float32)
    if images.ndim == 3:
      images = images[None]
    channels = int(images.shape[-1])
    fns = self.__dict__.setdefault("_translate_fns", {})
    if channels not in fns:
      generator = cyclegan_train.create_models(self.config, channels)[0]
      fns[channels] = cyclegan_train.make_translate_fn(generator)
    return np.asarray(fns[channels](self.state["g_params"][direction],
                                    images))


def _read_only_manager(directory: str,
                       attempts: int = 5) -> ocp.CheckpointManager:
  """A manager that only reads. A run that is still training may delete an
  old step while orbax lists the folder (FileNotFoundError): list again."""
  for attempt in range(attempts):
    try:
      return ocp.CheckpointManager(
          directory, options=_options(1, None, "max", False, read_only=True),
          item_handlers={STATE: ocp.StandardCheckpointHandler(),
                         META: ocp.JsonCheckpointHandler()})
    except FileNotFoundError:
      if attempt == attempts - 1:
        raise
      time.sleep(0.2 * (attempt + 1))
  raise AssertionError("unreachable")


def available_steps(workdir: str) -> list[int]:
  directory = checkpoint_dir(workdir)
  if not fileio.isdir(directory):
    return []
  mngr = _read_only_manager(directory)
  steps = sorted(mngr.all_steps())
  mngr.close()
  return steps


def restore(workdir: str, step: int | None = None,
            best: bool = False) -> Restored:
  """Reads a checkpoint of `workdir` for use in a notebook or evaluation.

  Args:
    workdir: the run's work directory (the one given to `advjax.main`).
    step: a particular step; default the newest readable checkpoint.
    best: take the checkpoint with the best value of the run's
      `checkpoint.best_metric` instead of the newest.
  """
  directory = checkpoint_dir(workdir)
  if not fileio.isdir(directory):
    raise UserError(f"no checkpoints in '{workdir}' (looked for {directory})")
  mngr = _read_only_manager(directory)
  try:
    steps = sorted(mngr.all_steps())
    if not steps:
      raise UserError(f"no checkpoints in '{workdir}' (looked for {directory})")
    if step is not None:
      if step not in steps:
        raise UserError(f"no checkpoint at step {step} in '{workdir}'; "
                        f"available: {steps}")
      candidates = [step]
    else:
      candidates = list(reversed(steps))
    if best:
      candidates = _rank_by_best(mngr, candidates)
    for s in candidates:
      try:
        meta = dict(mngr.restore(s, args=ocp.args.Composite(
            **{META: ocp.args.JsonRestore()}))[META])
        state = _restore_state_on_default_device(mngr, s)
      except UserError:
        raise
      except Exception as e:  # pylint: disable=broad-except
        _warn_unreadable(directory, s, e)
        continue
      config = ml_collections.ConfigDict(meta.get("config", {}))
      return Restored(config=config, state=state, meta=meta, step=s,
                      workdir=workdir)
    raise UserError(f"no readable checkpoint in '{workdir}'")
  finally:
    mngr.close()


def _rank_by_best(mngr, steps: list[int]) -> list[int]:
  scored = []
  for s in steps:
    try:
      meta = mngr.restore(s, args=ocp.args.Composite(
          **{META: ocp.args.JsonRestore()}))[META]
    except Exception:  # pylint: disable=broad-except
      continue
    config = meta.get("config", {})
    ck = config.get("checkpoint", {}) if isinstance(config, dict) else {}
    name = ck.get("best_metric")
    value = (meta.get("metrics") or {}).get(name) if name else None
    if value is not None:
      sign = -1.0 if ck.get("best_mode", "max") == "min" else 1.0
      scored.append((sign * value, s))
  if not scored:
    raise UserError("best=True, but no checkpoint carries the run's "
                    "checkpoint.best_metric")
  return [s for _, s in sorted(scored, reverse=True)]


def _restore_state_on_default_device(mngr, step: int) -> Any:
  """Restores the state whatever devices it was saved from."""
  metadata = mngr.item_metadata(step)[STATE]
  tree = metadata.tree if hasattr(metadata, "tree") else metadata
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

  def abstract(m):
    return jax.ShapeDtypeStruct(tuple(m.shape), m.dtype, sharding=device)

  target = jax.tree.map(abstract, tree,
                        is_leaf=lambda m: hasattr(m, "shape")
                        and hasattr(m, "dtype"))
  restored = mngr.restore(step, args=ocp.args.Composite(
      **{STATE: ocp.args.StandardRestore(target,
                                         fallback_sharding=device)}))
  return restored[STATE]


def config_to_json(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The config as plain JSON types (tuples become lists)."""
  return json.loads(config.to_json_best_effort())
