"""Random draws tied to the example, not to the device that holds it.

`parallel.device_rng` folds the device index into each step's key, so with
dropout (or any per-example noise) a run on 1 device and the same run on 4
draw different masks: the runs differ although the global batch, the
BatchNorm statistics and the averaged gradients are the same. Here the key of
example i of the global batch is

    key_i = fold_in(step_key, i),  step_key = fold_in(run_key, step),

with i = device index * local batch + local index (a 1-D data mesh splits the
global batch into contiguous blocks, device d holding rows [d b, (d + 1) b)).
Every draw made from key_i is the same whichever device holds example i and
however many devices there are.

`ExampleDropout` is dropout drawing each example's mask from its own key; a
drop-in for `flax.linen.Dropout` in models applied under shard_map. The step
must then pass a key without the device folded in (`step_key`) as the
'dropout' rng.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp


def step_key(rng: jax.Array, step: jax.Array) -> jax.Array:
  """The key of a training step, the same on every device."""
  return jax.random.fold_in(rng, step)


def global_index(local_batch: int, axis_name: str | None) -> jax.Array:
  """[local_batch] int32: each local example's row in the global batch.

  Call under shard_map over `axis_name`; None means one device (row = local
  row).
  """
  rows = jnp.arange(local_batch, dtype=jnp.int32)
  if axis_name is None:
    return rows
  return jax.lax.axis_index(axis_name).astype(jnp.int32) * local_batch + rows


def example_keys(key: jax.Array, local_batch: int,
                 axis_name: str | None) -> jax.Array:
  """[local_batch] keys: fold_in(key, global row) for each local example."""
  return jax.vmap(jax.random.fold_in, (None, 0))(
      key, global_index(local_batch, axis_name))


def per_example(sample: Callable[..., jax.Array], keys: jax.Array,
                *args: Any) -> jax.Array:
  """`sample(key_i, *args)` for each example, stacked: e.g.
  `per_example(jax.random.normal, keys, (latent_dim,))` is [b, latent_dim]."""
  return jax.vmap(lambda k: sample(k, *args))(keys)


class ExampleDropout(nn.Module):
  """Inverted dropout (Srivastava et al. 2014): keep each unit with
  probability 1 - rate and scale it by 1 / (1 - rate); the mask of example i
  is drawn from fold_in(make_rng('dropout'), global row of i).

  Attributes:
    rate: the probability of dropping a unit.
    deterministic: if true, the identity (also settable per call).
    axis_name: the data-parallel mesh axis the model runs under (None: one
      device, or outside shard_map).
  """
  rate: float
  deterministic: bool | None = None
  axis_name: str | None = None
  rng_collection: str = "dropout"

  @nn.compact
  def __call__(self, x: jax.Array,
               deterministic: bool | None = None) -> jax.Array:
    deterministic = nn.merge_param("deterministic", self.deterministic,
                                   deterministic)
    if deterministic or self.rate == 0.0:
      return x
    if self.rate == 1.0:
      return jnp.zeros_like(x)
    keys = example_keys(self.make_rng(self.rng_collection), x.shape[0],
                        self.axis_name)
    keep = per_example(jax.random.bernoulli, keys, 1.0 - self.rate,
                       x.shape[1:])
    return jnp.where(keep, x / (1.0 - self.rate), jnp.zeros_like(x))
