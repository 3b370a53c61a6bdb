"""Non-overlapping max and mean pooling as reshapes and reductions.

`flax.linen.max_pool` / `avg_pool` lower to XLA's reduce-window, whose
gradients are select-and-scatter (max) and a base-dilated reduce-window
(mean). XLA:CPU expands select-and-scatter into iotas and a scatter and runs
both as slow loops: in the quickstart CNN's train step the max-pool gradient
took more time than all convolutions together. For windows equal to their
strides (k x k pooling with stride k, 'VALID'), pooling is a reshape to
[B, H/k, k, W/k, k, C] and a max or mean over the two window axes, whose
gradients are elementwise and fuse with their neighbours.

Outputs are identical to flax's. Gradients are identical for the mean; for
the max, flax sends a window's gradient to the first of several equal maxima
and this version splits it evenly among them (the usual subgradient of max;
the two differ only on exact ties).
"""

from __future__ import annotations

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


def max_pool(x: jax.Array, window: Sequence[int] = (2, 2)) -> jax.Array:
  """`nn.max_pool(x, window, strides=window)` ('VALID'), NHWC."""
  return jnp.max(_windows(x, window), axis=(2, 4))


def mean_pool(x: jax.Array, window: Sequence[int] = (2, 2)) -> jax.Array:
  """`nn.avg_pool(x, window, strides=window)` ('VALID'), NHWC."""
  return jnp.mean(_windows(x, window), axis=(2, 4))
