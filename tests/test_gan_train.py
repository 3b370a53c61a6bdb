"""The GAN trainer: every config runs, and each switch does what it says."""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import tensorflow_datasets as tfds
from jax.sharding import PartitionSpec as P

from advjax import inference, losses, parallel, trainers
from advjax.trainers import gan as gan_train
from advjax.errors import UserError
from tests.helpers import load_config

GAN_CONFIGS = ["gan_mlp_cifar10", "dcgan_cifar10", "cgan_fashion_mnist",
               "wgan_clip_cifar10", "acgan_cifar100", "quickstart_gan"]


def _shrink(config):
  """Tiny networks and a few steps, keeping each config's structure."""
  gen, disc = config.model.generator, config.model.discriminator
  if config.model.name == "mlp":
    gen.hidden, disc.hidden = (16,), (16,)
  else:
    gen.width, disc.width = 4, 4
  config.model.latent_dim = 8
  config.gan.critic_steps = min(config.gan.critic_steps, 2)
  config.batch_size = 8
  config.num_train_steps = 2
  config.eval_every_steps = 2
  config.checkpoint.every_steps = 2
  config.log_every_steps = 1
  config.progress_bar = False
  config.sample.num_columns = 3
  return config


@pytest.mark.parametrize("name", GAN_CONFIGS)
def test_gan_config_trains_under_mock_data_and_samples_from_checkpoint(
    name, tmp_path):
  config = _shrink(load_config(name))
  workdir = str(tmp_path / name)
  with tfds.testing.mock_data(num_examples=32):
    trainers.run(config, workdir)
  restored = inference.restore(workdir)
  assert restored.trainer == "gan" and restored.step == 2
  conditional = bool(config.model.conditional)
  images = restored.sample(1 if conditional else None, n=3, seed=0)
  h = 28 if "fashion" in config.dataset.name else 32
  assert images.shape[0] == 3 and images.shape[1:3] == (h, h)
  assert np.all(np.abs(images) <= 1.0)
  again = restored.sample(1 if conditional else None, n=3, seed=0)
  np.testing.assert_array_equal(images, again)
  for n in (0, -1):
    with pytest.raises(UserError, match="positive number of samples"):
      restored.sample(1 if conditional else None, n=n)
  grids = sorted(os.listdir(os.path.join(workdir, "images")))
  assert grids and grids[-1].startswith("samples_")


def _one_step(config, num_classes=10, image_shape=(8, 8, 1), steps=1):
  """Runs `steps` train steps on 2 devices; returns (initial, final, metrics)."""
  mesh = parallel.make_mesh(jax.devices()[:2])
  state0 = gan_train.create_train_state(config, num_classes, image_shape,
                                        jax.random.key(0), 100)
  k = config.gan.critic_steps
  step = parallel.data_parallel(
      gan_train.make_train_step(config, num_classes),
      mesh, in_specs=(P(), P(parallel.AXIS), P()), out_specs=(P(), P()))
  rng = np.random.default_rng(0)
  batch = {"image": rng.uniform(-1, 1, (k * 8, *image_shape)).astype(
               np.float32),
           "label": rng.integers(0, max(num_classes, 1), k * 8).astype(
               np.int32)}
  state = parallel.replicate(state0, mesh)
  key = parallel.replicate(jax.random.key(1), mesh)
  for _ in range(steps):
    state, metrics = step(state, parallel.shard_batch(batch, mesh), key)
  return state0, jax.device_get(state), jax.device_get(metrics)


def _steps_on(devices, config, num_classes=10, image_shape=(8, 8, 1),
              steps=2):
  """Final state after `steps` identical steps on `devices`."""
  mesh = parallel.make_mesh(devices)
  state = parallel.replicate(gan_train.create_train_state(
      config, num_classes, image_shape, jax.random.key(0), 100), mesh)
  step = parallel.data_parallel(
      gan_train.make_train_step(config, num_classes), mesh,
      in_specs=(P(), P(parallel.AXIS), P()), out_specs=(P(), P()))
  rng = np.random.default_rng(0)
  batch = {"image": rng.uniform(-1, 1, (8, *image_shape)).astype(np.float32),
           "label": rng.integers(0, num_classes, 8).astype(np.int32)}
  key = parallel.replicate(jax.random.key(1), mesh)
  for _ in range(steps):
    state, _ = step(state, parallel.shard_batch(batch, mesh), key)
  return jax.device_get(state)


def test_one_and_two_devices_give_the_same_gan_run():
  # Latents, class labels, instance noise and the penalty's interpolation
  # are drawn per example from its global row, BatchNorm statistics are
  # averaged over devices: with one critic step per generator step the
  # device count does not change the run.
  config = _tiny("cgan_fashion_mnist", instance_noise=0.1)
  config.dataset.name = "mnist"
  one = _steps_on(jax.devices()[:1], config)
  two = _steps_on(jax.devices()[:2], config)
  for a, b in zip(jax.tree.leaves(one.g_params) + jax.tree.leaves(
      one.d_params), jax.tree.leaves(two.g_params) + jax.tree.leaves(
          two.d_params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4,
                               atol=1e-5)


def _tiny(name="dcgan_cifar10", **gan):
  config = _shrink(load_config(name))
  config.dataset.name = "mnist"
  for k, v in gan.items():
    config.gan[k] = v
  return config


def test_weight_clipping_bounds_every_critic_weight():
  config = _tiny("wgan_clip_cifar10")
  config.d_optimizer.learning_rate = 1.0  # big steps, so clipping must act
  _, state, _ = _one_step(config, num_classes=0)
  leaves = jax.tree.leaves(state.d_params)
  assert max(float(np.abs(w).max()) for w in leaves) <= 0.01 + 1e-7
  assert any(float(np.abs(w).max()) > 0.009 for w in leaves)


def test_k_critic_steps_update_the_critic_k_times_per_generator_step():
  config = _tiny(critic_steps=3)
  _, state, _ = _one_step(config)
  counts = [int(c) for _, c in optax.tree_utils.tree_get_all_with_path(
      state.d_opt_state, "count")]
  g_counts = [int(c) for _, c in optax.tree_utils.tree_get_all_with_path(
      state.g_opt_state, "count")]
  assert counts and set(counts) == {3}
  assert g_counts and set(g_counts) == {1}


def test_generator_ema_follows_its_formula_with_warm_up():
  config = _tiny(ema_decay=0.999)
  state0, state, _ = _one_step(config)
  decay = min(0.999, 1 / 10)  # warm-up at the first step: (1 + 0) / (10 + 0)
  for e, p0, p1 in zip(jax.tree.leaves(state.g_ema),
                       jax.tree.leaves(state0.g_params),
                       jax.tree.leaves(state.g_params)):
    np.testing.assert_allclose(e, decay * np.asarray(p0) + (1 - decay) * p1,
                               rtol=1e-5, atol=1e-7)
  assert float(gan_train.ema_decay_at(0.999, jnp.asarray(10**6))) == (
      pytest.approx(0.999))
  assert state.sampling_params() is state.g_ema


def test_historical_average_is_the_mean_of_past_parameters():
  config = _tiny(historical_averaging=0.1)
  state0, state, _ = _one_step(config)
  for h, p0, p1 in zip(jax.tree.leaves(state.g_hist),
                       jax.tree.leaves(state0.g_params),
                       jax.tree.leaves(state.g_params)):
    np.testing.assert_allclose(h, (np.asarray(p0) + p1) / 2, rtol=1e-5,
                               atol=1e-7)


def test_instance_noise_is_annealed_linearly():
  config = _tiny(instance_noise=0.5, instance_noise_anneal_steps=4)
  _, _, metrics = _one_step(config, steps=3)
  # The third step runs at step index 2: 0.5 * (1 - 2/4).
  assert float(metrics["instance_noise"]) == pytest.approx(0.25)


def test_gradient_penalty_and_aux_terms_are_logged_for_the_acwgan_gp():
  config = _tiny("acgan_cifar100")
  _, _, metrics = _one_step(config, image_shape=(8, 8, 3))
  assert float(metrics["gradient_penalty"]) > 0
  assert 0.0 <= float(metrics["aux_accuracy_real"]) <= 1.0
  assert "aux_accuracy_fake" in metrics
  # Wasserstein: mean raw critic outputs, not probabilities.
  assert "d_real" in metrics and "d_fake" in metrics


def test_minimax_logs_discriminator_probabilities():
  config = _tiny("gan_mlp_cifar10")
  _, _, metrics = _one_step(config, num_classes=0)
  assert 0.0 < float(metrics["d_real"]) < 1.0
  assert 0.0 < float(metrics["d_fake"]) < 1.0


def test_feature_matching_and_minibatch_discrimination_and_vbn_train():
  config = _tiny(feature_matching=1.0, g_adversarial_weight=0.0)
  config.model.generator.virtual_batchnorm = True
  config.model.discriminator.minibatch_discrimination = True
  config.model.reference_batch_size = 4
  state0, state, metrics = _one_step(config)
  assert float(metrics["feature_matching"]) >= 0.0
  assert np.isfinite(float(metrics["g_loss"]))
  assert float(metrics["g_loss"]) == pytest.approx(
      float(metrics["feature_matching"]), rel=1e-5)
  # The VBN reference batch stays fixed while the weights train.
  np.testing.assert_array_equal(state.g_state["vbn_ref"]["z"],
                                state0.g_state["vbn_ref"]["z"])


def test_gradient_penalty_with_batchnorm_critic_is_refused():
  config = _tiny(gradient_penalty=10.0, loss="wasserstein")
  # 32x32 inputs give the DCGAN critic BatchNorm layers (8x8 has only one
  # conv, which never has BatchNorm).
  with pytest.raises(UserError, match="without BatchNorm"):
    gan_train.create_train_state(config, 10, (32, 32, 1), jax.random.key(0),
                                 10)


def test_gradient_penalty_with_minibatch_discrimination_is_refused():
  # The penalty's per-sample gradients assume samples are scored
  # independently (Gulrajani et al. 2017); minibatch discrimination couples
  # them.
  config = _tiny(gradient_penalty=10.0, loss="wasserstein")
  config.model.discriminator.minibatch_discrimination = True
  with pytest.raises(UserError, match="minibatch discrimination") as e:
    gan_train.create_train_state(config, 10, (8, 8, 1), jax.random.key(0), 10)
  assert "\n" not in str(e.value)
  config.gan.gradient_penalty = 0.0
  gan_train.create_train_state(config, 10, (8, 8, 1), jax.random.key(0), 10)


def test_unknown_loss_is_refused():
  config = _tiny(loss="nonsense")
  with pytest.raises(UserError, match="gan.loss"):
    gan_train.create_train_state(config, 10, (8, 8, 1), jax.random.key(0), 10)


@pytest.mark.parametrize("field, value, message", [
    ("critic_steps", 0, "critic_steps"),
    ("ema_decay", 1.5, "ema_decay"),
    ("gradient_penalty", -1.0, "gradient_penalty"),
    ("real_label", 0.9, "no real-label target"),
    ("lr", 0.1, "no field 'lr'"),
])
def test_bad_gan_settings_are_one_line_errors_naming_the_field(field, value,
                                                               message):
  config = _tiny("wgan_clip_cifar10")
  config.gan[field] = value
  with pytest.raises(UserError, match=message):
    gan_train.read_settings(config)


def test_critic_and_generator_objectives_are_the_step_pieces():
  # The critic objective the step differentiates, called directly on a
  # tiny state: the adversarial part is the registered loss of its scores.
  config = _tiny("dcgan_cifar10", loss="hinge")
  s = gan_train.read_settings(config)
  state = gan_train.create_train_state(config, 0, (8, 8, 1),
                                       jax.random.key(0), 10)
  real = jax.random.uniform(jax.random.key(1), (4, 8, 8, 1), minval=-1)
  fake = jax.random.uniform(jax.random.key(2), (4, 8, 8, 1), minval=-1)
  mesh = parallel.make_mesh(jax.devices()[:1])
  keys = tuple(jax.random.split(jax.random.key(3), 3))

  def pieces(state, real, fake):
    d_loss, (metrics, _) = gan_train.critic_objective(
        s, state, state.d_params, state.d_state, state.d_hist, real, fake,
        None, keys, jnp.zeros(()))
    out_real, _ = gan_train.run_discriminator(state, state.d_params,
                                              state.d_state, real, None)
    out_fake, _ = gan_train.run_discriminator(state, state.d_params,
                                              state.d_state, fake, None)
    return d_loss, metrics, out_real["score"], out_fake["score"]

  d_loss, metrics, s_real, s_fake = parallel.data_parallel(
      pieces, mesh, in_specs=(P(), P(), P()), out_specs=P())(
          state, real, fake)
  # In train mode BatchNorm of the second call sees the first call's
  # updated statistics only through running averages, which train mode does
  # not use: the scores are those of the objective.
  assert float(d_loss) == pytest.approx(
      float(losses.hinge_d_loss(s_real, s_fake)), rel=1e-6)
  assert float(metrics["d_adv_loss"]) == pytest.approx(float(d_loss))
