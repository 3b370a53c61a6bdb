"""Square Attack (Andriushchenko et al. 2020), a score-based black-box attack:
random search on the margin loss, no gradients. Part of AutoAttack
(`advjax.attacks.autoattack`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from advjax.attacks import _common
from advjax.attacks._common import (LogitsFn, cascade_runs, logit_margin,
                                    normalize, per_example)
from advjax.errors import UserError

# Square Attack halves p at these iterations (of 10000; Andriushchenko et al.
# 2020, Sec. 4 and their code).
SQUARE_P_HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)



def square_p_schedule(num_queries: int, p_init: float = 0.8,
                      rescale_schedule: bool = False) -> np.ndarray:
  """The fraction p of pixels changed at each iteration, [num_queries].

  p starts at p_init and is halved after iterations 10, 50, 200, 500, 1000,
  2000, 4000, 6000 and 8000 (Andriushchenko et al. 2020, Sec. 4). With
  rescale_schedule the iteration is first mapped to i * 10000 / num_queries
  (as torchattacks does by default); AutoAttack itself uses the plain
  schedule.
  """
  it = np.arange(num_queries)
  if rescale_schedule:
    it = (it / num_queries * 10000).astype(np.int64)
  halvings = np.sum(it[:, None] > np.asarray(SQUARE_P_HALVINGS)[None], axis=1)
  return p_init / 2.0 ** halvings


def square_sizes(num_queries: int, height: int, width: int, norm: str,
                 p_init: float = 0.8,
                 rescale_schedule: bool = False) -> np.ndarray:
  """Side of the square window at each iteration, [num_queries] ints.

  s = round(sqrt(p * H * W)), at least 1 (L-inf) or 3 and odd (L2), at most
  min(H, W): the square holds a fraction p of each channel's pixels.
  """
  sizes = []
  for p in square_p_schedule(num_queries, p_init, rescale_schedule):
    s = int(round(float(np.sqrt(p * height * width))))
    if norm == "l2":
      s = max(s, 3)
      s += 1 - s % 2
    sizes.append(min(max(s, 1), height, width))
  return np.asarray(sizes, np.int32)


def square_l2_window(s: int) -> np.ndarray:
  """The L2 Square Attack's update pattern eta for an s x s window.

  Two halves (rows < s // 2 and the rest) with opposite signs, each a sum of
  centred nested rectangles weighted 1 / (r + 1)^2 (r the ring index) and
  normalised to unit L2 norm; the whole pattern is normalised again
  (Andriushchenko et al. 2020, Sec. 3.3 and Fig. 2).
  """

  def rings(rows, cols):
    r0, c0 = rows // 2, cols // 2
    ring = np.maximum(np.abs(np.arange(rows) - r0)[:, None],
                      np.abs(np.arange(cols) - c0)[None, :])
    num_rings = max(r0 + 1, c0 + 1)
    weights = 1. / (np.arange(num_rings) + 1.) ** 2
    tail = np.cumsum(weights[::-1])[::-1]  # sum of weights from ring r out
    pattern = tail[ring]
    return pattern / np.sqrt(np.sum(pattern ** 2))

  pattern = np.concatenate([rings(s // 2, s), -rings(s - s // 2, s)], axis=0)
  return (pattern / np.sqrt(np.sum(pattern ** 2))).astype(np.float32)


def _window_mask(top, left, size, height, width):
  """[B, H, W, 1] bool: the size x size square at (top, left) per example."""
  rows = jnp.arange(height)[None, :] - top[:, None]
  cols = jnp.arange(width)[None, :] - left[:, None]
  inside_r = (rows >= 0) & (rows < size)
  inside_c = (cols >= 0) & (cols < size)
  return (inside_r[:, :, None] & inside_c[:, None, :])[..., None]


def _place(patterns, top, left, height, width):
  """[B, H, W, 1]: each example's [M, M] zero-padded pattern moved to
  (top, left)."""
  m = patterns.shape[-1]

  def one(pattern, r0, c0):
    rows = jnp.arange(height) - r0
    cols = jnp.arange(width) - c0
    valid = (((rows >= 0) & (rows < m))[:, None]
             & ((cols >= 0) & (cols < m))[None, :])
    vals = pattern[jnp.clip(rows, 0, m - 1)[:, None],
                   jnp.clip(cols, 0, m - 1)[None, :]]
    return jnp.where(valid, vals, 0.)

  return jax.vmap(one)(patterns, top, left)[..., None]


def _square_init(rng, x, eps, norm, bounds):
  """Starting point: vertical stripes of +-eps (L-inf), or a 5 x 5 grid of
  windows with random signs rescaled to L2 norm eps (L2)."""
  batch, height, width, channels = x.shape
  if norm == "linf":
    signs = jax.random.rademacher(rng, (batch, 1, width, channels), x.dtype)
    return jnp.clip(x + eps * signs, *bounds)
  s = height // 5
  start = (height - 5 * s) // 2
  pattern = jnp.asarray(square_l2_window(s))
  delta = jnp.zeros_like(x)
  keys = jax.random.split(rng, (height // s) * (width // s))
  tile = 0
  for r in range(start, start + (height // s) * s, s):
    for c in range(start, start + (width // s) * s, s):
      if r + s > height or c + s > width:
        continue
      flip_key, sign_key = jax.random.split(keys[tile])
      tile += 1
      p = jnp.where(jax.random.bernoulli(flip_key), pattern.T, pattern)
      signs = jax.random.rademacher(sign_key, (batch, 1, 1, channels), x.dtype)
      block = p[None, :, :, None] * signs
      delta = delta.at[:, r:r + s, c:c + s, :].add(block)
  return jnp.clip(x + eps * normalize(delta, "l2"), *bounds)


def _square_proposal(rng, x, x_best, eps, norm, size, pattern, bounds):
  """One random-search proposal (Andriushchenko et al. 2020, Algorithms 2-3).

  L-inf: a size x size window (random position per image) of each channel is
  set to x +- eps (one random sign per channel). L2: a window gets the
  pattern `square_l2_window` (random sign per channel, random transpose) plus
  its old content, rescaled so the window carries the budget left in the
  ball plus that of a second random window, which is zeroed; the whole
  perturbation is then rescaled to L2 norm eps.
  """
  batch, height, width, channels = x.shape
  keys = jax.random.split(rng, 6)
  top = jax.random.randint(keys[0], (batch,), 0, height - size + 1)
  left = jax.random.randint(keys[1], (batch,), 0, width - size + 1)
  window = _window_mask(top, left, size, height, width)
  signs = jax.random.rademacher(keys[2], (batch, 1, 1, channels), x.dtype)
  if norm == "linf":
    x_new = jnp.where(window, x_best + 2. * eps * signs, x_best)
    return jnp.clip(jnp.clip(x_new, x - eps, x + eps), *bounds)
  delta = x_best - x
  top2 = jax.random.randint(keys[3], (batch,), 0, height - size + 1)
  left2 = jax.random.randint(keys[4], (batch,), 0, width - size + 1)
  window2 = _window_mask(top2, left2, size, height, width)

  def channel_norm(v):  # L2 norm over H, W: [B, 1, 1, C]
    return jnp.sqrt(jnp.sum(jnp.square(v), axis=(1, 2), keepdims=True))

  flip = jax.random.bernoulli(keys[5], shape=(batch,))
  patterns = jnp.where(flip[:, None, None], pattern.T[None], pattern[None])
  new = _place(patterns, top, left, height, width) * signs
  new = new + delta * window / (1e-12 + channel_norm(delta * window))
  budget_left = jnp.maximum(
      eps ** 2 - jnp.sum(jnp.square(delta), axis=(1, 2, 3), keepdims=True), 0.)
  target_norm = jnp.sqrt(budget_left / channels
                         + jnp.square(channel_norm(delta * (window | window2))))
  new = new / (1e-12 + channel_norm(new * window)) * target_norm
  delta = jnp.where(window, new, jnp.where(window2, 0., delta))
  return jnp.clip(x + eps * normalize(delta, "l2"), *bounds)


def _square_run(logits_fn, norm, sizes, patterns, x, y, rng, eps, bounds):
  """One Square Attack run: random search on the margin loss; a proposal is
  kept if it lowers the loss or misclassifies. Points stop once broken; the
  loop stops when all are. sizes [Q]: window side per iteration; patterns
  [Q] -> [M, M] (L2 only): the window pattern per iteration. Returns
  (x_best, broken, queries used)."""
  num_queries = sizes.shape[0]
  init_rng, loop_rng = jax.random.split(rng)
  x_best = _square_init(init_rng, x, eps, norm, bounds)
  margin = logit_margin(logits_fn(x_best), y)
  queries = jnp.ones(y.shape, jnp.float32)

  def cond(c):
    i, _, margin, _ = c
    return (i < num_queries) & jnp.any(margin > 0)

  def body(c):
    i, x_best, margin, queries = c
    active = margin > 0
    x_new = _square_proposal(jax.random.fold_in(loop_rng, i), x, x_best, eps,
                             norm, sizes[i], patterns(i), bounds)
    m = logit_margin(logits_fn(x_new), y)
    accept = active & ((m < margin) | (m <= 0))
    x_best = jnp.where(per_example(accept, x), x_new, x_best)
    return (i + 1, x_best, jnp.where(accept, m, margin),
            queries + active.astype(jnp.float32))

  _, x_best, margin, queries = jax.lax.while_loop(
      cond, body, (jnp.int32(0), x_best, margin, queries))
  return x_best, margin <= 0, queries


def _square_patterns(sizes, norm: str, side: int):
  """i -> the L2 window pattern of iteration i, zero-padded to side x side
  (a table of the few distinct sizes, indexed per iteration); None for
  L-inf."""
  if norm == "linf":
    return lambda i: None
  distinct = sorted(set(int(s) for s in sizes))
  table = jnp.asarray(np.stack([
      np.pad(square_l2_window(s), ((0, side - s), (0, side - s)))
      for s in distinct]))
  which = jnp.asarray(np.searchsorted(distinct, sizes).astype(np.int32))
  return lambda i: table[which[i]]


def _square_core(logits_fn, norm, num_queries, num_restarts, p_init,
                 rescale_schedule, bounds, x, y, rng, eps):
  _, height, width, _ = x.shape
  sizes = square_sizes(num_queries, height, width, norm, p_init,
                       rescale_schedule)
  patterns = _square_patterns(sizes, norm, max(height, width))
  sizes = jnp.asarray(sizes)

  def run(j):
    return _square_run(logits_fn, norm, sizes, patterns, x, y,
                       jax.random.fold_in(rng, j), eps, bounds)

  images, success, queries = cascade_runs(num_restarts, x, y, logits_fn(x),
                                          run)
  return {"images": images, "success": success, "queries": queries}


def square(logits_fn: LogitsFn, x, y, rng, *, eps, norm: str = "linf",
           num_queries: int = 5000, p_init: float = 0.8,
           num_restarts: int = 1, rescale_schedule: bool = False,
           bounds=_common.DEFAULT_BOUNDS) -> dict[str, jax.Array]:
  """Square Attack (Andriushchenko et al. 2020), score-based black box.

  Random search on the margin loss z_y - max_{i != y} z_i: each iteration
  changes one random square window (`_square_proposal`) whose side follows
  `square_sizes` (the p schedule of `square_p_schedule`), and keeps the
  change if the loss went down or the point is misclassified. Uses only the
  logits, never gradients (a check for gradient masking). One query per
  iteration per image still standing, up to num_queries (plus one for the
  starting point).

  bounds = (low, high) is the valid input range (default the library's
  (-1, 1); bounds=(0, 1) for a model on [0, 1] images): x must lie in it,
  every proposal is clipped to it, and eps is in its units.

  Returns a dict: 'images' (adversarial for broken points, x elsewhere),
  'success' bool [B], 'queries' [B] (queries used in the last run).
  """
  _common.check_attack_inputs(x, y)
  _, height, width, _ = jnp.shape(x)
  if norm == "l2" and min(height, width) < 5:
    raise UserError(f"the L2 Square Attack needs images of at least 5x5 "
                    f"pixels, got {height}x{width}.")
  _common.check_norm_ball_attack(logits_fn, x, y, rng, eps, norm,
                                 bounds=bounds)
  if not isinstance(p_init, (float, int)) or not 0 < p_init <= 1:
    raise UserError(f"p_init must be a number in (0, 1], got {p_init!r}.")
  return _common.in_dtype_of(x, _common.maybe_jit(
      _square_core, (0, 1, 2, 3, 4, 5, 6), logits_fn, norm,
      _common.check_static_int("num_queries", num_queries, 1),
      _common.check_static_int("num_restarts", num_restarts, 1), float(p_init),
      bool(rescale_schedule), _common.check_bounds(bounds), jnp.asarray(x, jnp.float32),
      jnp.asarray(y, jnp.int32), rng, jnp.asarray(eps, jnp.float32)))
