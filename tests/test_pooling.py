"""advjax.models.pooling: flax's pooling values without reduce-window."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advjax.models import pooling


@pytest.mark.parametrize("shape", [(2, 8, 8, 3), (2, 7, 9, 3)])
@pytest.mark.parametrize("window", [(2, 2), (3, 2)])
def test_pools_equal_flax_values_and_gradients(shape, window):
  x = jnp.asarray(np.random.default_rng(0).normal(size=shape), jnp.float32)
  x = jnp.round(2 * x) / 2  # many ties: the max's gradient picks the first
  pairs = [(pooling.max_pool, nn.max_pool), (pooling.mean_pool, nn.avg_pool)]
  for ours, theirs in pairs:
    flax_pool = lambda x: theirs(x, window, strides=window)
    np.testing.assert_allclose(ours(x, window), flax_pool(x), rtol=1e-6)
    loss = lambda f: lambda x: jnp.sum(jnp.sin(3 * f(x)))
    np.testing.assert_allclose(jax.grad(loss(lambda x: ours(x, window)))(x),
                               jax.grad(loss(flax_pool))(x), rtol=1e-5,
                               atol=1e-6)


def test_max_pool_gradient_has_no_select_and_scatter():
  x = jnp.ones((2, 8, 8, 3))
  hlo = jax.jit(jax.grad(lambda x: jnp.sum(pooling.max_pool(x)))).lower(
      x).as_text()
  assert "select_and_scatter" not in hlo and "reduce_window" not in hlo
