"""Universal adversarial patch (Brown et al. 2017).

`train_patch` learns one patch that makes the classifier predict a target
class wherever it is pasted; `apply_patch` pastes a patch at given positions,
`random_positions` draws them and `evaluate_patch` measures the success rate.
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax

from advjax import losses
from advjax.attacks import _common
from advjax.attacks._common import LogitsFn
from advjax.errors import UserError


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


def random_positions(rng, batch: int, image_hw, patch_hw):
  """Uniform top-left corners [B, 2] (row, col) of a patch of size patch_hw
  (ph, pw) inside images of size image_hw (H, W)."""
  row_rng, col_rng = jax.random.split(rng)
  rows = jax.random.randint(row_rng, (batch,), 0,
                            image_hw[0] - patch_hw[0] + 1)
  cols = jax.random.randint(col_rng, (batch,), 0,
                            image_hw[1] - patch_hw[1] + 1)
  return jnp.stack([rows, cols], axis=-1).astype(jnp.int32)


def apply_patch(images, patch, positions, *, bounds=_common.DEFAULT_BOUNDS):
  """Pastes `patch` [ph, pw, C] into each image at its own position.

  positions: int [B, 2], the (row, col) of the patch's top-left corner in each
  image, with 0 <= row <= H - ph and 0 <= col <= W - pw. Pixels inside the
  patch region are replaced by the patch; all others are unchanged. The result
  is differentiable with respect to the patch (and the images outside it).
  Concrete images and patch must lie in bounds = (low, high), the valid input
  range (default the library's (-1, 1)), so the patched images do too.
  """
  _common.check_attack_inputs(images)
  _check_in_bounds(images, patch, bounds)
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
  if _common.is_concrete(positions) and pos_shape[0] > 0:
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


def _check_in_bounds(images, patch, bounds, stacklevel=4):
  """Images and (when given) a patch must lie in bounds; see
  `_common.check_images_in_range`."""
  bounds = _common.check_images_in_range(images, bounds, stacklevel)
  if patch is not None and _common.is_concrete(patch) and np.size(patch):
    lo, hi = float(jnp.min(patch)), float(jnp.max(patch))
    tol = 1e-5 * (bounds[1] - bounds[0]) / 2
    if lo < bounds[0] - tol or hi > bounds[1] + tol:
      raise UserError(
          f"patch must lie in the images' range [{bounds[0]:g}, "
          f"{bounds[1]:g}] (bounds), got values in [{lo:.4g}, {hi:.4g}]; "
          f"clip it with jnp.clip(patch, {bounds[0]:g}, {bounds[1]:g}) or "
          f"pass the bounds it was trained for.")
  return bounds


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


def _train_patch_core(logits_fn, patch_hw, num_steps, batch_size, bounds,
                      images, target_label, rng, learning_rate):
  """The compiled training loop of `train_patch` (inputs validated)."""
  num_images, height, width, channels = images.shape
  init_rng, loop_rng = jax.random.split(rng)
  # patch = mid + half * tanh(w) keeps the patch in bounds without clipping
  # (tanh(w) itself for the default [-1, 1]: mid 0, half 1).
  mid, half = (bounds[0] + bounds[1]) / 2, (bounds[1] - bounds[0]) / 2
  to_patch = (jnp.tanh if bounds == _common.DEFAULT_BOUNDS
              else lambda w: mid + half * jnp.tanh(w))
  w = jax.random.uniform(init_rng, patch_hw + (channels,), jnp.float32, -1., 1.)
  opt = optax.adam(learning_rate)
  targets = jnp.full((batch_size,), target_label, jnp.int32)

  def loss_fn(w, x, positions):
    x_patched = apply_patch(x, to_patch(w), positions, bounds=bounds)
    return jnp.mean(losses.cross_entropy(logits_fn(x_patched), targets))

  def step(carry, t):
    w, opt_state = carry
    idx_rng, pos_rng = jax.random.split(jax.random.fold_in(loop_rng, t))
    idx = jax.random.randint(idx_rng, (batch_size,), 0, num_images)
    positions = random_positions(pos_rng, batch_size, (height, width),
                                 patch_hw)
    loss, g = jax.value_and_grad(loss_fn)(w, images[idx], positions)
    updates, opt_state = opt.update(g, opt_state, w)
    return (optax.apply_updates(w, updates), opt_state), loss

  (w, _), loss_history = jax.lax.scan(step, (w, opt.init(w)),
                                      jnp.arange(num_steps, dtype=jnp.int32))
  return {"patch": to_patch(w), "loss": loss_history}


def train_patch(logits_fn: LogitsFn, images_iter_or_array, target_label, rng,
                *, patch_size, num_steps: int = 1000, learning_rate=0.05,
                batch_size: int = 32,
                bounds=_common.DEFAULT_BOUNDS) -> dict[str, jax.Array]:
  """Trains one universal adversarial patch (Brown et al. 2017).

  patch = mid + half * tanh(w) (so it stays in bounds = (low, high), mid and
  half the centre and half-width of the range; tanh(w) for the default
  [-1, 1]) minimises the expected
  CE(f(apply_patch(x, patch, p)), target) over training images x and
  uniformly random positions p, with Adam(learning_rate) on w. Each of the
  num_steps steps samples batch_size images (with replacement) and positions
  inside one compiled `lax.scan`. (Brown et al. also randomise rotation and
  scale; here only the position is random.)

  Args:
    logits_fn: images -> logits [B, K].
    images_iter_or_array: training images [N, H, W, C] in bounds, or an
      iterable of batches (collected into one array first).
    target_label: the class the patch should make f predict.
    rng: PRNG key (patch init, image and position sampling).
    patch_size: int or (height, width) of the patch.
    bounds: (low, high), the valid input range of the model (default the
      library's (-1, 1); bounds=(0, 1) for a model on [0, 1] images).

  Returns:
    {'patch': [ph, pw, C] in bounds, 'loss': [num_steps] training losses}.
  """
  images = _collect_images(images_iter_or_array)
  _common.check_attack_inputs(images)
  bounds = _check_in_bounds(images, None, bounds)
  num_images, height, width, _ = images.shape
  if num_images == 0:
    raise UserError("train_patch got no images (N = 0).")
  patch_hw = _patch_hw(patch_size, height, width)
  _common.check_static_int("num_steps", num_steps, 0)
  _common.check_static_int("batch_size", batch_size, 1)
  _common.check_nonnegative(learning_rate=learning_rate)
  _common.check_rng(rng, "train_patch")
  _common.check_class_index("target_label", target_label,
                            _common.count_classes(logits_fn, images[:1]))
  return _common.maybe_jit(_train_patch_core, (0, 1, 2, 3, 4), logits_fn,
                           patch_hw, int(num_steps), int(batch_size), bounds,
                           images,
                           jnp.asarray(target_label, jnp.int32), rng,
                           jnp.asarray(learning_rate, jnp.float32))


def evaluate_patch(logits_fn: LogitsFn, images, patch, target_label, rng, *,
                   labels=None, bounds=_common.DEFAULT_BOUNDS) -> jax.Array:
  """Fraction of images classified as target_label with the patch applied.

  The patch goes to a uniformly random position in each image. With labels,
  images whose true label already is the target are left out (they say
  nothing about the patch); NaN if no image is left. Images and patch must
  lie in bounds = (low, high), the valid input range (default (-1, 1)).
  """
  _common.check_attack_inputs(images)
  bounds = _check_in_bounds(images, patch, bounds)
  num_classes = _common.count_classes(logits_fn, images)
  _common.check_class_index("target_label", target_label, num_classes)
  if labels is not None:
    _common.check_attack_inputs(images, labels, num_classes=num_classes)
  _common.check_rng(rng, "evaluate_patch (random patch positions)")
  batch, height, width, _ = jnp.shape(images)
  p_shape = jnp.shape(patch)
  if len(p_shape) != 3:
    raise UserError(f"patch must have shape [ph, pw, C], got {tuple(p_shape)}.")
  positions = random_positions(rng, batch, (height, width), p_shape[:2])
  with warnings.catch_warnings():  # Checked above.
    warnings.simplefilter("ignore")
    patched = apply_patch(images, patch, positions, bounds=bounds)
  hit = jnp.argmax(logits_fn(patched), axis=-1) == target_label
  if labels is None:
    return jnp.mean(hit.astype(jnp.float32))
  keep = jnp.asarray(labels) != target_label
  return jnp.sum(hit & keep) / jnp.sum(keep).astype(jnp.float32)
