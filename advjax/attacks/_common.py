"""What every attack of the package shares: its input checks, compilation and
per-example arithmetic.

Input checks are one vocabulary with one set of messages: each `check_*`
raises a one-line `UserError` that says how to fix the input. Shape and dtype
checks always run (shapes are static even under `jax.jit`); value checks
(eps >= 0, labels in range, ...) run only when the values are concrete, i.e.
outside of tracing (`is_concrete`).

The names here are public within the package (the attack modules import them)
but not exported by `advjax.attacks`; the module is private to the package.
"""

from __future__ import annotations

import functools
import re
import warnings
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from advjax.errors import UserError

# A classifier as the attacks see it: images [B, H, W, C] -> logits [B, K], a
# closure over its variables (e.g. functools.partial(model.apply, variables,
# train=False)), so an attack differentiates with respect to the input only.
LogitsFn = Callable[[jax.Array], jax.Array]

NORMS = ("linf", "l2")

# --- input checks -------------------------------------------------------------


def is_concrete(*values) -> bool:
  """True when no value is a JAX tracer (so its contents can be inspected)."""
  return not any(isinstance(v, jax.core.Tracer) for v in values)


def refuse_if(condition: Any, message: str) -> None:
  """Raises UserError(message) if `condition` holds."""
  if condition:
    raise UserError(message)


def check_float_batch(value, label: str, var: str, rank: int, kind: str,
                      item: str, note: str = "") -> tuple[int, ...]:
  """The shape of `value`, a floating batch of rank `rank`; else UserError
  saying how to fix it (`var` is the name the user knows it by)."""
  shape = jnp.shape(value)
  refuse_if(len(shape) != rank,
            f"{label} must be {kind}, got shape {tuple(shape)}; add a batch "
            f"axis with {var}[None] for one {item}.")
  refuse_if(not jnp.issubdtype(jnp.result_type(value), jnp.floating),
            f"{label} must be floating point{note}, got dtype "
            f"{jnp.result_type(value)}; convert with "
            f"{var}.astype(jnp.float32).")
  return shape


def check_images(x) -> tuple[int, ...]:
  """The shape of `x`, a 4-D NHWC floating image batch; else UserError."""
  return check_float_batch(x, "attack input x", "x", 4,
                           "a 4-D NHWC image batch [B, H, W, C]", "image",
                           " (float32 in the attack's bounds, by default "
                           "[-1, 1])")


# The library's input range: images are float32 in [-1, 1] unless an attack is
# told otherwise with bounds=(low, high).
DEFAULT_BOUNDS = (-1., 1.)


def _fmt(v) -> str:
  return f"{float(v):g}"


def in_dtype_of(x, out: dict[str, Any]) -> dict[str, Any]:
  """An AutoAttack-family attack's output with 'images' in x's dtype: those
  attacks compute in float32 (their loops keep float32 carries), so a
  bfloat16 or float16 batch is attacked in float32 and given back in its
  own dtype."""
  dtype = jnp.asarray(x).dtype
  if dtype != jnp.float32 and jnp.issubdtype(dtype, jnp.floating):
    out = dict(out, images=out["images"].astype(dtype))
  return out


def check_bounds(bounds) -> tuple[float, float]:
  """`bounds` as a (low, high) pair of Python floats with low < high: the
  valid input range an attack keeps its images in; else UserError. Bounds
  are fixed when an attack is compiled (they cannot be traced)."""
  try:
    low, high = bounds
    low, high = float(low), float(high)
  except (TypeError, ValueError):
    raise UserError(
        f"bounds must be a (low, high) pair of numbers, the valid input range "
        f"(e.g. bounds=(0, 1) for images in [0, 1]), got {bounds!r}.") from None
  refuse_if(not low < high,
            f"bounds must be (low, high) with low < high, got "
            f"({_fmt(low)}, {_fmt(high)}).")
  return low, high


def check_images_in_range(x, bounds=DEFAULT_BOUNDS, stacklevel: int = 3):
  """Concrete images must lie in `bounds` (default the library's [-1, 1]);
  under the default bounds, a batch with no negative pixel (images in [0, 1],
  most likely) gets a one-line warning that says to pass bounds=(0, 1).
  Traced images are not inspected. Returns the bounds as floats."""
  low, high = check_bounds(bounds)
  if is_concrete(x) and np.size(x):
    lo, hi = float(jnp.min(x)), float(jnp.max(x))
    tol = 1e-5 * (high - low) / 2
    refuse_if(not (lo >= low - tol and hi <= high + tol),
              f"images must lie in [{_fmt(low)}, {_fmt(high)}] (bounds="
              f"({_fmt(low)}, {_fmt(high)})), got values in [{lo:.4g}, "
              f"{hi:.4g}]; pass bounds=(low, high) with the range your model "
              f"takes, e.g. bounds=(0, 1).")
    if (low, high) == DEFAULT_BOUNDS and lo >= 0:
      warnings.warn(
          f"images look like [0, 1] (no negative pixel, values in "
          f"[{lo:.4g}, {hi:.4g}]) but the attack assumes [-1, 1]; if the "
          f"model takes [0, 1], pass bounds=(0, 1) (eps is in the units of "
          f"bounds).", UserWarning, stacklevel=stacklevel)
  return low, high


def check_labels(y, batch_size: int, num_classes: Optional[int] = None, *,
                 name: str = "labels y", batch_of: str = "x") -> None:
  """`y` must be integer class indices [batch_size] (one per example of
  `batch_of`), in [0, num_classes) when that is given and y is concrete."""
  y_shape = jnp.shape(y)
  refuse_if(len(y_shape) != 1,
            f"{name} must be integer class indices of shape [B], got shape "
            f"{tuple(y_shape)}; for one-hot labels pass .argmax(-1).")
  refuse_if(not jnp.issubdtype(jnp.result_type(y), jnp.integer),
            f"{name} must be integer class indices, got dtype "
            f"{jnp.result_type(y)}; convert with .astype(jnp.int32).")
  refuse_if(y_shape[0] != batch_size,
            f"{name} must be integer class indices, one per example (batch "
            f"size mismatch: {batch_of} has {batch_size} examples but {name} "
            f"has {y_shape[0]} labels).")
  if num_classes is not None and is_concrete(y) and batch_size > 0:
    y_np = np.asarray(y)
    lo, hi = int(y_np.min()), int(y_np.max())
    refuse_if(lo < 0 or hi >= num_classes,
              f"{name} must lie in [0, {num_classes}) for a {num_classes}-"
              f"class classifier, got values in [{lo}, {hi}].")


def check_class_index(name: str, value, num_classes: int) -> None:
  """`value` must be one integer class index in [0, num_classes)."""
  refuse_if(jnp.shape(value) != ()
            or not jnp.issubdtype(jnp.result_type(value), jnp.integer),
            f"{name} must be one integer class index, got {value!r}.")
  if is_concrete(value):
    refuse_if(not 0 <= int(value) < num_classes,
              f"{name} must lie in [0, {num_classes}) for a {num_classes}-"
              f"class classifier, got {int(value)}.")


def check_attack_inputs(x, y=None, num_classes: Optional[int] = None,
                        eps=None) -> None:
  """Raises `UserError` (one line) if the attack inputs are malformed.

  Checks that `x` is a 4-D NHWC floating batch, that `y` is a [B] vector of
  integer class indices with the same batch size, that labels lie in
  [0, num_classes) and that eps >= 0. Shape checks always run; the label range
  and eps checks run only for concrete (non-traced) values.
  """
  x_shape = check_images(x)
  if eps is not None:
    check_nonnegative(eps=eps)
  if y is not None:
    check_labels(y, x_shape[0], num_classes)


def check_nonnegative(**values) -> None:
  """Each concrete value (a number or an array) must be >= 0 (NaN is not)."""
  for name, v in values.items():
    if is_concrete(v):
      refuse_if(not np.all(np.asarray(v) >= 0),
                f"{name} must be >= 0, got {v}.")


def check_in_unit_interval(**values) -> None:
  """Each concrete value must lie in [0, 1]."""
  for name, v in values.items():
    if is_concrete(v):
      refuse_if(not np.all((np.asarray(v) >= 0) & (np.asarray(v) <= 1)),
                f"{name} must lie in [0, 1], got {v}.")


def check_scalar(name: str, value, meaning: str) -> None:
  """`value` must be one number (not a vector): `meaning` says why."""
  refuse_if(np.ndim(value) != 0,
            f"{name} must be one number ({meaning}), got shape "
            f"{np.shape(value)}.")


def check_static_int(name: str, value, minimum: int = 0) -> int:
  """`value` as a Python int >= minimum; it sets a loop length or a shape of
  the compiled program, so it cannot be traced."""
  refuse_if(isinstance(value, bool)
            or not isinstance(value, (int, np.integer)),
            f"{name} must be a Python int (it is fixed when the attack is "
            f"compiled), got {value!r}.")
  refuse_if(value < minimum, f"{name} must be >= {minimum}, got {value}.")
  return int(value)


def check_choice(name: str, value, choices: Sequence[str]) -> str:
  refuse_if(value not in choices,
            f"{name} must be one of {tuple(choices)}, got {value!r}.")
  return value


def check_rng(rng, needed_by: str, alternative: str = "") -> None:
  """An attack that draws random numbers needs a PRNG key."""
  refuse_if(rng is None,
            f"{needed_by} needs a PRNG key rng; pass jax.random.key(seed)"
            f"{' or ' + alternative if alternative else ''}.")


def output_shape(fn: Callable, name: str, what: str, advice: str, *args):
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


def count_classes(logits_fn: LogitsFn, x, name: str = "logits_fn") -> int:
  """Number of classes, from the output shape (no computation is run)."""
  out = output_shape(logits_fn, name, "images", _image_advice(jnp.shape(x)), x)
  refuse_if(len(out.shape) != 2 or out.shape[0] != jnp.shape(x)[0],
            f"{name} must map [B, H, W, C] images to [B, K] logits, got "
            f"output shape {tuple(out.shape)} for input shape "
            f"{tuple(jnp.shape(x))}.")
  return out.shape[-1]


def check_classifier_attack(logits_fn: LogitsFn, x, y, eps,
                            min_classes: int = 1) -> int:
  """The checks every attack on a classifier starts with: images x, labels y
  (or None) in [0, K) for the K classes logits_fn gives, eps >= 0, and at
  least `min_classes` classes. Returns K."""
  check_attack_inputs(x, y, eps=eps)
  num_classes = count_classes(logits_fn, x)
  if y is not None:
    check_labels(y, jnp.shape(x)[0], num_classes)
  refuse_if(num_classes < min_classes,
            f"this attack needs a classifier with at least {min_classes} "
            f"classes, got {num_classes}.")
  return num_classes


# --- compilation --------------------------------------------------------------


def maybe_jit(fn, static_argnums, *args):
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


# --- per-example arithmetic ---------------------------------------------------
# Two L2 norms on purpose: `l2_norm_keepdims` (a reduction over H, W, C) is the
# one FGSM/PGD and the latent attack always used, `per_example_norm` (over the
# flattened example) AutoAttack's; XLA does not round them identically, and
# each attack keeps its own so its results stay the same to the last bit.


def l2_norm_keepdims(v):
  """L2 norm of each example over all non-batch axes, shaped [B, 1, 1, 1]."""
  axes = tuple(range(1, v.ndim))
  return jnp.sqrt(jnp.sum(jnp.square(v), axis=axes, keepdims=True))


def flatten_examples(v):
  """[B, ...] -> [B, D]."""
  return v.reshape(v.shape[0], -1)


def per_example_norm(v, norm: str):
  """Per-example L-inf or L2 norm of the flattened example, shape [B]."""
  if norm == "linf":
    return jnp.max(jnp.abs(flatten_examples(v)), axis=-1)
  return jnp.sqrt(jnp.sum(jnp.square(flatten_examples(v)), axis=-1))


def per_example(v, like):
  """A per-example [B] vector shaped to broadcast against `like`."""
  return v.reshape((-1,) + (1,) * (like.ndim - 1))


def normalize(v, norm: str):
  """v / (||v|| + 1e-12) per example."""
  return v / per_example(per_example_norm(v, norm) + 1e-12, v)


def logit_of(logits, labels):
  """logits[i, labels[i]], [B]."""
  return jnp.take_along_axis(logits, labels[:, None], axis=-1)[:, 0]


def logit_margin(logits, y):
  """z_y - max_{i != y} z_i per example: <= 0 once misclassified."""
  logits = logits.astype(jnp.float32)
  is_y = jax.nn.one_hot(y, logits.shape[-1], dtype=bool)
  return logit_of(logits, y) - jnp.max(jnp.where(is_y, -jnp.inf, logits), -1)


def misclassified(logits, y):
  return jnp.argmax(logits, axis=-1) != y


def on_sphere(rng, x, radius, norm: str, bounds=DEFAULT_BOUNDS):
  """A point on the sphere of the given per-example radius [B] around x,
  clipped to bounds (low, high): the random start of APGD and FAB.

  L-inf: radius * t / ||t||_inf, t ~ U[-1, 1]^d; L2: radius * t / ||t||_2,
  t ~ N(0, I).
  """
  if norm == "linf":
    t = jax.random.uniform(rng, x.shape, x.dtype, -1., 1.)
  else:
    t = jax.random.normal(rng, x.shape, x.dtype)
  return jnp.clip(x + per_example(radius, x) * normalize(t, norm), *bounds)


# --- targets and restarts (AutoAttack's attacks) ------------------------------


def ranked_classes(logits):
  """Class indices by decreasing logit, [B, K]; column k - 1 is the k-th most
  likely class (the target of APGD-T and FAB-T for target rank k)."""
  return jnp.argsort(-logits.astype(jnp.float32), axis=-1, stable=True)


def count_targets(n_target_classes, num_classes: int) -> int:
  """Target classes actually used: at most K - 1 (all the other classes)."""
  return min(check_static_int("n_target_classes", n_target_classes, 1),
             num_classes - 1)


def cascade_runs(num_runs: int, x, y, clean_logits, run_fn):
  """Runs run_fn(j) for j < num_runs, keeping each point's first success;
  stops early once every point is broken.

  run_fn returns (candidate images, success, aux [B]). Points misclassified
  at x (clean_logits) count as broken and keep x. Returns (images, success,
  aux of the last run that attacked each point).
  """

  def cond(c):
    j, success, _, _ = c
    return (j < num_runs) & ~jnp.all(success)

  def body(c):
    j, success, images, aux = c
    candidate, ok, aux_j = run_fn(j)
    new = ok & ~success
    images = jnp.where(per_example(new, x), candidate, images)
    aux = jnp.where(~success, aux_j, aux)
    return j + 1, success | ok, images, aux

  success = misclassified(clean_logits, y)
  aux0 = jnp.zeros(y.shape, jnp.float32)
  _, success, images, aux = jax.lax.while_loop(
      cond, body, (jnp.int32(0), success, x, aux0))
  return images, success, aux


def check_norm_ball_attack(logits_fn: LogitsFn, x, y, rng, eps, norm: str,
                           min_classes: int = 2,
                           bounds=DEFAULT_BOUNDS) -> int:
  """The checks of AutoAttack's attacks: those of `check_classifier_attack`,
  a norm from NORMS, one eps for every image, images in `bounds` and a PRNG
  key. Returns the number of classes."""
  check_choice("norm", norm, NORMS)
  check_scalar("eps", eps, "the radius for every image")
  num_classes = check_classifier_attack(logits_fn, x, y, eps, min_classes)
  check_images_in_range(x, bounds, stacklevel=4)
  check_rng(rng, "the attack")
  return num_classes
