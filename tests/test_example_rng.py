"""Per-example random draws: one run, whatever the number of devices."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import PartitionSpec as P

from advjax import example_rng, parallel
from advjax.parallel import AXIS


def _on(num_devices, fn, *args):
  """fn(*args) per device over the first `num_devices` devices: the first
  argument split along the batch, the others replicated."""
  mesh = parallel.make_mesh(jax.devices()[:num_devices])
  specs = (P(AXIS),) + (P(),) * (len(args) - 1)
  run = parallel.data_parallel(fn, mesh, in_specs=specs, out_specs=P(AXIS))
  return np.asarray(run(*args))


def test_dropout_masks_are_the_same_on_one_and_four_devices():
  x = jnp.ones((8, 5, 3))
  key = jax.random.key(0)

  def example_dropout(x, key):
    return example_rng.ExampleDropout(0.5, axis_name=AXIS).apply(
        {}, x, deterministic=False, rngs={"dropout": key})

  def flax_dropout(x, key):  # Today's way: the device index folded in.
    key = parallel.device_rng(key, 0)
    return nn.Dropout(0.5).apply({}, x, deterministic=False,
                                 rngs={"dropout": key})

  one, four = _on(1, example_dropout, x, key), _on(4, example_dropout, x, key)
  np.testing.assert_array_equal(one, four)
  assert set(np.unique(one)) == {0.0, 2.0}
  assert not np.array_equal(_on(1, flax_dropout, x, key),
                            _on(4, flax_dropout, x, key))


def test_dropout_keeps_one_minus_rate_of_the_units_and_rescales():
  layer = example_rng.ExampleDropout(0.25)
  x = jnp.ones((64, 1000))
  y = np.asarray(layer.apply({}, x, deterministic=False,
                             rngs={"dropout": jax.random.key(1)}))
  assert abs((y > 0).mean() - 0.75) < 0.01
  np.testing.assert_allclose(y[y > 0], 1 / 0.75)
  # Different examples get different masks.
  assert not np.array_equal(y[0], y[1])
  np.testing.assert_array_equal(layer.apply({}, x, deterministic=True), x)


def test_per_example_latents_do_not_depend_on_the_device_count():
  def latents(rows, key):
    keys = example_rng.example_keys(key, rows.shape[0], AXIS)
    return example_rng.per_example(jax.random.normal, keys, (3,))

  rows = jnp.zeros((8,))
  key = jax.random.key(2)
  np.testing.assert_array_equal(_on(1, latents, rows, key),
                                _on(4, latents, rows, key))


class _Net(nn.Module):

  @nn.compact
  def __call__(self, x, train):
    x = nn.Dense(16)(x)
    x = nn.BatchNorm(use_running_average=not train, axis_name=AXIS)(x)
    x = example_rng.ExampleDropout(0.5, deterministic=not train,
                                   axis_name=AXIS)(nn.relu(x))
    return nn.Dense(3)(x)


def _losses(num_devices, steps=3):
  """Losses of `steps` SGD steps of _Net on a fixed batch of 8."""
  net = _Net()
  gen = np.random.default_rng(0)
  x = jnp.asarray(gen.normal(size=(8, 6)), jnp.float32)
  y = jnp.asarray(gen.integers(0, 3, 8), jnp.int32)
  variables = net.init(jax.random.key(0), x[:1], train=False)
  tx = optax.sgd(0.5)

  def step(batch, params, stats, opt_state, i):
    rng = example_rng.step_key(jax.random.key(1), i)

    def loss_fn(params):
      logits, updates = net.apply(
          {"params": params, "batch_stats": stats}, batch["x"], train=True,
          mutable=["batch_stats"], rngs={"dropout": rng})
      loss = optax.softmax_cross_entropy_with_integer_labels(
          logits, batch["y"]).mean()
      return loss, updates

    (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    grads, loss = jax.lax.pmean((grads, loss), AXIS)
    new, opt_state = tx.update(grads, opt_state)
    return optax.apply_updates(params, new), updates["batch_stats"], \
        opt_state, loss

  mesh = parallel.make_mesh(jax.devices()[:num_devices])
  run = parallel.data_parallel(step, mesh, in_specs=(P(AXIS), P(), P(), P(),
                                                     P()),
                               out_specs=(P(), P(), P(), P()))
  params, stats = variables["params"], variables["batch_stats"]
  opt_state, losses = tx.init(params), []
  for i in range(steps):
    params, stats, opt_state, loss = run({"x": x, "y": y}, params, stats,
                                         opt_state, jnp.asarray(i))
    losses.append(float(loss))
  return losses


def test_training_with_example_dropout_is_the_same_run_on_one_and_four_devices():
  one, four = _losses(1), _losses(4)
  np.testing.assert_allclose(one, four, rtol=1e-5)
  assert abs(one[-1] - one[0]) > 1e-3
