"""Non-overlapping max and mean pooling as reshapes and reductions.

`flax.linen.max_pool` / `avg_pool` lower to XLA's reduce-window, whose
gradients are select-and-scatter (max) and a base-dilated reduce-window
(mean). XLA:CPU expands select-and-scatter into iotas and a scatter and runs
both as slow loops: in the quickstart CNN's train step the max-pool gradient
took more time than all convolutions together. For windows equal to their
strides (k x k pooling with stride k, 'VALID'), pooling is a reshape to
[B, H/k, k, W/k, k, C] and a max or mean over the two window axes, whose
gradients are elementwise and fuse with their neighbours.

Outputs and gradients are identical to flax's: the max's gradient goes to
the first maximum of each window (its own VJP compares each window position
with the maximum; jnp.max's own gradient would split ties and needs a
reduction).
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp


def _windows(x: jax.Array, window: Sequence[int]) -> jax.Array:
  """[B, H, W, C] -> [B, H // kh, kh, W // kw, kw, C], dropping the rows and
  columns a 'VALID' pooling drops."""
  kh, kw = window
  b, h, w, c = x.shape
  x = x[:, :h - h % kh, :w - w % kw]
  return x.reshape(b, h // kh, kh, w // kw, kw, c)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def max_pool(x: jax.Array, window: Sequence[int] = (2, 2)) -> jax.Array:
  """`nn.max_pool(x, window, strides=window)` ('VALID'), NHWC."""
  return jnp.max(_windows(x, window), axis=(2, 4))


def _max_pool_fwd(x, window):
  y = max_pool(x, window)
  return y, (x, y)


def _max_pool_bwd(window, residuals, g):
  """Each window's gradient goes to its first maximum in row-major order
  (what flax's select-and-scatter gradient does), with one comparison per
  window position instead of a scatter."""
  x, y = residuals
  xw = _windows(x, window)
  taken = jnp.zeros(y.shape, bool)
  rows = []
  for i in range(window[0]):
    cols = []
    for j in range(window[1]):
      hit = (xw[:, :, i, :, j] == y) & ~taken
      taken = taken | hit
      cols.append(jnp.where(hit, g, jnp.zeros_like(g)))
    rows.append(jnp.stack(cols, axis=3))
  dx = jnp.stack(rows, axis=2).reshape(xw.shape[0], -1, xw.shape[3] * window[1],
                                       x.shape[-1])
  pad = ((0, 0), (0, x.shape[1] - dx.shape[1]), (0, x.shape[2] - dx.shape[2]),
         (0, 0))
  return (jnp.pad(dx, pad),)


max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


def mean_pool(x: jax.Array, window: Sequence[int] = (2, 2)) -> jax.Array:
  """`nn.avg_pool(x, window, strides=window)` ('VALID'), NHWC."""
  return jnp.mean(_windows(x, window), axis=(2, 4))
