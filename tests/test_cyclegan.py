"""CycleGAN: losses, the image pool, the configs end to end, and resume."""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from advjax import inference, metric_writers, trainers
from advjax.trainers import cyclegan as cyclegan_train
from advjax.errors import UserError
from advjax.models import cyclegan as cyclegan_models
from tests.helpers import load_config

CONFIGS = ["cyclegan_fashion_mnist", "cyclegan_horse2zebra"]


def _shrink(config, image_size=16):
  """Tiny networks, 16x16 images (28x28 for Fashion-MNIST), a few steps."""
  config.model.generator.width = 4
  config.model.generator.num_blocks = 1
  config.model.discriminator.width = 4
  config.model.discriminator.num_layers = 2
  if config.dataset.image_size:
    config.dataset.image_size = image_size
  config.cyclegan.pool_size = 4
  config.batch_size = 4
  config.num_train_steps = 2
  config.eval_every_steps = 2
  config.checkpoint.every_steps = 2
  config.log_every_steps = 1
  config.progress_bar = False
  config.sample.num_rows = 2
  config.eval.num_examples = 6
  return config


def test_generator_keeps_the_image_size_and_range():
  for shape in ((28, 28, 1), (15, 15, 3)):
    gen = cyclegan_models.ResNetTranslator(width=4, num_blocks=1,
                                           out_channels=shape[-1])
    x = jax.random.uniform(jax.random.key(0), (2, *shape), minval=-1,
                           maxval=1)
    y = jax.jit(gen.apply)(jax.jit(gen.init)(jax.random.key(1), x), x)
    assert y.shape == x.shape and float(jnp.max(jnp.abs(y))) <= 1.0
  disc = cyclegan_models.PatchDiscriminator(width=4, num_layers=2)
  x = jnp.zeros((2, 28, 28, 1))
  scores = disc.apply(disc.init(jax.random.key(0), x), x)
  assert scores.shape[0] == 2 and scores.shape[-1] == 1
  assert scores.shape[1] > 1  # a map of patch scores, not one number


def test_cycle_loss_is_zero_for_identity_generators_and_not_otherwise():
  a = jax.random.uniform(jax.random.key(0), (3, 8, 8, 1), minval=-1)
  b = jax.random.uniform(jax.random.key(1), (3, 8, 8, 1), minval=-1)
  # Identity translators reconstruct perfectly.
  assert float(cyclegan_train.cycle_loss(a, a, b, b)) == 0.0
  # F(G(a)) = a + 0.25 and G(F(b)) = b: the mean L1 of domain A is 0.25.
  assert float(cyclegan_train.cycle_loss(a, a + 0.25, b, b)) == (
      pytest.approx(0.25))
  assert float(cyclegan_train.cycle_loss(a, a + 0.25, b, b - 0.5)) == (
      pytest.approx(0.75))


def test_the_step_runs_the_tested_cycle_loss(monkeypatch):
  config = _shrink(load_config("cyclegan_fashion_mnist"))
  s = cyclegan_train.read_settings(config)
  state = cyclegan_train.create_train_state(config, (8, 8, 1),
                                            jax.random.key(0), 10)
  calls = []
  real = cyclegan_train.cycle_loss
  monkeypatch.setattr(cyclegan_train, "cycle_loss",
                      lambda *args: calls.append(1) or real(*args))
  a = jax.random.uniform(jax.random.key(1), (2, 8, 8, 1), minval=-1)
  loss, (metrics, _, _) = cyclegan_train.translator_objective(
      s, state, state.g_params, a, a)
  assert calls and float(metrics["cycle_loss"]) >= 0.0


def test_least_squares_terms_are_plain_mean_squared_errors():
  # Zhu et al.'s code: G's adversarial term is MSE(D(G(a)), 1); each critic
  # minimises 0.5 * (MSE(D(b), 1) + MSE(D(G(a)), 0)).
  config = _shrink(load_config("cyclegan_fashion_mnist"))
  config.cyclegan.loss = "least_squares"
  s = cyclegan_train.read_settings(config)
  state = cyclegan_train.create_train_state(config, (8, 8, 1),
                                            jax.random.key(0), 10)
  a = jax.random.uniform(jax.random.key(1), (2, 8, 8, 1), minval=-1)
  b = jax.random.uniform(jax.random.key(2), (2, 8, 8, 1), minval=-1)
  _, (metrics, fake_a, fake_b) = cyclegan_train.translator_objective(
      s, state, state.g_params, a, b)
  score = lambda name, x: np.asarray(state.players.discriminator.apply(
      {"params": state.d_params[name]}, x, train=True), np.float64)
  np.testing.assert_allclose(metrics["g_adv_a2b"],
                             np.mean((score("b", fake_b) - 1) ** 2),
                             rtol=1e-5)
  np.testing.assert_allclose(metrics["g_adv_b2a"],
                             np.mean((score("a", fake_a) - 1) ** 2),
                             rtol=1e-5)
  _, d_metrics = cyclegan_train.discriminator_objective(
      s, state, state.d_params, {"a": a, "b": b}, {"a": fake_a, "b": fake_b})
  np.testing.assert_allclose(
      d_metrics["d_b_loss"], 0.5 * (np.mean((score("b", b) - 1) ** 2)
                                    + np.mean(score("b", fake_b) ** 2)),
      rtol=1e-5)


@pytest.mark.parametrize("prob", [0.5, 0.2])
def test_image_pool_returns_past_fakes_with_the_configured_probability(prob):
  size, n, rounds = 10, 50, 40
  # Image k is filled with the value k: the returned values tell which
  # fakes came back.
  pool = jnp.zeros((size, 2, 2, 1))
  count = jnp.asarray(0, jnp.int32)
  first = jnp.broadcast_to(jnp.arange(size, dtype=jnp.float32)[:, None, None,
                                                               None],
                           (size, 2, 2, 1))
  out, pool, count = cyclegan_train.image_pool_query(
      pool, count, first, jax.random.key(0), prob)
  # While filling, every fake is stored and returned as is.
  np.testing.assert_array_equal(out, first)
  np.testing.assert_array_equal(pool, first)
  assert int(count) == size
  query = jax.jit(functools.partial(cyclegan_train.image_pool_query,
                                    prob=prob))
  old = 0
  for r in range(rounds):
    start = size + r * n
    fakes = jnp.broadcast_to(
        jnp.arange(start, start + n, dtype=jnp.float32)[:, None, None, None],
        (n, 2, 2, 1))
    before = set(np.asarray(pool[:, 0, 0, 0]).tolist())
    out, pool, count = query(pool, count, fakes, jax.random.key(r + 1))
    values = np.asarray(out[:, 0, 0, 0])
    new = values == np.asarray(fakes[:, 0, 0, 0])
    old += int(np.sum(~new))
    # Anything not new was in the pool before or stored earlier this call.
    assert set(values[~new].tolist()) <= before | set(
        np.asarray(fakes[:, 0, 0, 0]).tolist())
    assert int(count) == size
  rate = old / (rounds * n)
  # 2000 Bernoulli draws: standard deviation <= 0.012.
  assert abs(rate - prob) < 0.05, rate


def test_image_pool_of_size_zero_passes_fakes_through():
  fakes = jnp.ones((3, 2, 2, 1))
  out, pool, count = cyclegan_train.image_pool_query(
      jnp.zeros((0, 2, 2, 1)), jnp.asarray(0), fakes, jax.random.key(0))
  np.testing.assert_array_equal(out, fakes)
  assert pool.shape[0] == 0 and int(count) == 0


@pytest.mark.parametrize("name", CONFIGS)
def test_config_trains_under_mock_data_and_translates_from_checkpoint(
    name, tmp_path):
  config = _shrink(load_config(name))
  config.cyclegan.supervised_weight = 0.5  # exercised, though data unpaired
  workdir = str(tmp_path / name)
  with tfds.testing.mock_data(num_examples=64):
    metrics = trainers.run(config, workdir)
  assert np.isfinite(metrics["eval/cycle_l1_a"])
  assert np.isfinite(metrics["eval/cycle_l1_b"])
  restored = inference.restore(workdir)
  assert restored.trainer == "cyclegan" and restored.step == 2
  shape = (28, 28, 1) if "fashion" in name else (16, 16, 3)
  images = np.random.default_rng(0).uniform(-1, 1, (3, *shape)).astype(
      np.float32)
  for direction in ("a2b", "b2a"):
    out = restored.translate(images, direction)
    assert out.shape == images.shape and np.all(np.abs(out) <= 1.0)
  np.testing.assert_array_equal(restored.translate(images[0]),
                                restored.translate(images[:1]))
  with pytest.raises(UserError):
    restored.translate(images, "b2c")
  grids = sorted(os.listdir(os.path.join(workdir, "images")))
  assert grids and grids[-1].startswith("translations_")
  records = metric_writers.read_metrics(workdir)
  logged = set().union(*records)
  assert {"train/cycle_loss", "train/g_adv_a2b", "train/g_adv_b2a",
          "train/d_a_loss", "train/d_b_loss",
          "train/supervised_l1"} <= logged
  # The identity loss is on by default (0.5 x cycle weight), off in the
  # Fashion-MNIST config.
  assert ("train/identity_loss" in logged) == ("fashion" not in name)
  # The pools (size 4) are in the checkpoint, full after a global batch of 4.
  for domain in ("a", "b"):
    assert int(restored.state["pools"][domain]["count"]) == 4
    assert restored.state["pools"][domain]["images"].shape == (4, *shape)
  first_params = jax.tree.leaves(restored.state["g_params"])

  # Resume: a longer run continues from step 2 instead of starting over.
  config.num_train_steps = 3
  with tfds.testing.mock_data(num_examples=64):
    trainers.run(config, workdir)
  resumed = inference.restore(workdir)
  assert resumed.step == 3 and int(resumed.state["step"]) == 3
  assert int(resumed.state["pools"]["a"]["count"]) == 4
  assert any(not np.allclose(p0, p1) for p0, p1 in zip(
      first_params, jax.tree.leaves(resumed.state["g_params"])))
  steps = [r["step"] for r in metric_writers.read_metrics(workdir)
           if "train/cycle_loss" in r]
  assert steps == [1, 2, 3]  # step 3 only, after the resume


def test_bad_settings_are_user_errors():
  config = _shrink(load_config("cyclegan_fashion_mnist"))
  config.cyclegan.loss = "lsgan"
  with pytest.raises(UserError, match="cyclegan.loss"):
    cyclegan_train.create_train_state(config, (8, 8, 1), jax.random.key(0),
                                      10)
  config.cyclegan.loss = "least_squares"
  config.cyclegan.pool_prob = 1.5
  with pytest.raises(UserError, match="cyclegan.pool_prob"):
    cyclegan_train.create_train_state(config, (8, 8, 1), jax.random.key(0),
                                      10)
