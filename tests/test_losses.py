"""Tests for advjax.losses: known values, gradients and the WGAN-GP penalty."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advjax import losses
from advjax.errors import UserError

LOG2 = np.log(2.)


def _log_sigmoid(z):
  return -np.logaddexp(0., -np.asarray(z, np.float64))


# --- minimax / non-saturating ------------------------------------------------


def test_minimax_values_at_zero_logits():
  z = jnp.zeros((8,))
  np.testing.assert_allclose(losses.minimax_d_loss(z, z), 2 * LOG2, rtol=1e-6)
  np.testing.assert_allclose(losses.minimax_g_loss(z), -LOG2, rtol=1e-6)
  np.testing.assert_allclose(losses.nonsaturating_g_loss(z), LOG2, rtol=1e-6)


def test_minimax_values_at_general_logits():
  d_real = jnp.array([2., -1., 0.5, 3.])
  d_fake = jnp.array([-2., 1., -0.3, 0.])
  # -E[log D(x)] - E[log(1 - D(G(z)))], log(1 - sigmoid(z)) = log_sigmoid(-z).
  expected_d = (-_log_sigmoid(d_real).mean() - _log_sigmoid(-d_fake).mean())
  np.testing.assert_allclose(losses.minimax_d_loss(d_real, d_fake),
                             expected_d, rtol=1e-6)
  np.testing.assert_allclose(losses.minimax_g_loss(d_fake),
                             _log_sigmoid(-d_fake).mean(), rtol=1e-6)
  np.testing.assert_allclose(losses.nonsaturating_g_loss(d_fake),
                             -_log_sigmoid(d_fake).mean(), rtol=1e-6)
  # [B, 1] discriminator outputs give the same value.
  np.testing.assert_allclose(
      losses.minimax_d_loss(d_real[:, None], d_fake[:, None]), expected_d,
      rtol=1e-6)


def test_probabilistic_losses_are_stable_at_extreme_logits():
  big = jnp.array([100., -100.])
  for fn in (lambda z: losses.minimax_d_loss(z, -z),
             losses.minimax_g_loss, losses.nonsaturating_g_loss):
    value, grad = jax.value_and_grad(fn)(big)
    assert np.isfinite(value) and np.all(np.isfinite(grad))
  # D(x) ~ 1 on reals and D(G(z)) ~ 0 on fakes: the D loss is ~0, not NaN.
  assert losses.minimax_d_loss(jnp.array([100.]), jnp.array([-100.])) < 1e-6


def test_saturating_g_loss_vanishes_where_nonsaturating_does_not():
  # A confident discriminator: D(G(z)) = sigmoid(-10) ~ 4.5e-5.
  d_fake = jnp.full((4,), -10.)
  g_sat = jax.grad(losses.minimax_g_loss)(d_fake)
  g_ns = jax.grad(losses.nonsaturating_g_loss)(d_fake)
  # d/dz log(1 - sigmoid(z)) = -sigmoid(z);  d/dz -log sigmoid(z) = -sigmoid(-z)
  np.testing.assert_allclose(g_sat, -jax.nn.sigmoid(-10.) / 4, rtol=1e-4)
  np.testing.assert_allclose(g_ns, -jax.nn.sigmoid(10.) / 4, rtol=1e-4)
  assert np.all(np.abs(g_sat) < 1e-4) and np.all(np.abs(g_ns) > 0.2)
  # Both push the generator to raise D(G(z)) (negative gradient w.r.t. logit).
  assert np.all(g_sat < 0) and np.all(g_ns < 0)


def test_one_sided_label_smoothing_changes_only_the_real_term():
  d_real = jnp.array([2., -1., 0.5, 3.])
  for d_fake in (jnp.array([-2., 1., -0.3, 0.]), jnp.array([5., 5., 5., 5.])):
    diff = (losses.minimax_d_loss(d_real, d_fake, real_label=0.9)
            - losses.minimax_d_loss(d_real, d_fake))
    # -(0.9 log s + 0.1 log(1 - s)) + log s = 0.1 (log s - log(1 - s)) = 0.1 z
    np.testing.assert_allclose(diff, 0.1 * np.mean(d_real), rtol=1e-5)
    # The fake target stays 0: gradients w.r.t. d_fake are unchanged.
    g_smooth = jax.grad(losses.minimax_d_loss, argnums=1)(d_real, d_fake, 0.9)
    g_plain = jax.grad(losses.minimax_d_loss, argnums=1)(d_real, d_fake)
    np.testing.assert_allclose(g_smooth, g_plain, rtol=1e-6)
  # With reals fixed, smoothing changes the real-logit gradient: the optimum
  # of the real term moves from +inf to logit(0.9).
  z_opt = jnp.full((1,), np.log(9.))
  g = jax.grad(losses.minimax_d_loss)(z_opt, jnp.zeros((1,)), 0.9)
  np.testing.assert_allclose(g, 0., atol=1e-6)
  with pytest.raises(UserError):
    losses.minimax_d_loss(d_real, d_real, real_label=1.5)


# --- least squares, hinge, Wasserstein ---------------------------------------


def test_least_squares_minimum_at_targets():
  ones, zeros = jnp.ones((3,)), jnp.zeros((3,))
  assert losses.least_squares_d_loss(ones, zeros) == 0.
  assert losses.least_squares_g_loss(ones) == 0.
  g_real, g_fake = jax.grad(losses.least_squares_d_loss, argnums=(0, 1))(
      ones, zeros)
  np.testing.assert_allclose(g_real, 0.)
  np.testing.assert_allclose(g_fake, 0.)
  # Known values away from the targets (a=0, b=1, c=1, plain mean squared
  # errors without the paper's 1/2 factors, as CycleGAN's code).
  np.testing.assert_allclose(losses.least_squares_d_loss(zeros, ones), 2.)
  np.testing.assert_allclose(
      losses.least_squares_d_loss(jnp.array([3.]), jnp.array([-2.])), 4 + 4)
  np.testing.assert_allclose(losses.least_squares_g_loss(jnp.array([3.])), 4.)
  np.testing.assert_allclose(
      losses.least_squares_g_loss(jnp.array([0., 3.])), (1 + 4) / 2)


def test_hinge_zero_when_margins_satisfied():
  assert losses.hinge_d_loss(jnp.array([1., 2., 5.]),
                             jnp.array([-1., -3., -1.5])) == 0.
  np.testing.assert_allclose(
      losses.hinge_d_loss(jnp.zeros((2,)), jnp.zeros((2,))), 2.)
  # Only margin violations count: reals below 1, fakes above -1.
  np.testing.assert_allclose(
      losses.hinge_d_loss(jnp.array([0.5, 2.]), jnp.array([0., -4.])),
      0.5 * 0.5 + 0.5 * 1.)
  np.testing.assert_allclose(losses.hinge_g_loss(jnp.array([1., 3.])), -2.)


def test_wasserstein_signs():
  c_real, c_fake = jnp.array([3., 5.]), jnp.array([-1., 1.])
  # Critic: E[C(G(z))] - E[C(x)] = 0 - 4.
  np.testing.assert_allclose(losses.wasserstein_d_loss(c_real, c_fake), -4.)
  np.testing.assert_allclose(losses.wasserstein_g_loss(c_fake), 0.)
  np.testing.assert_allclose(losses.wasserstein_g_loss(c_real), -4.)
  g_real, g_fake = jax.grad(losses.wasserstein_d_loss, argnums=(0, 1))(
      c_real, c_fake)
  # Descending the critic loss raises real scores and lowers fake scores.
  assert np.all(g_real < 0) and np.all(g_fake > 0)
  assert np.all(jax.grad(losses.wasserstein_g_loss)(c_fake) < 0)


def test_clip_weights_bounds_every_leaf():
  params = {'dense': {'kernel': jnp.array([[-3., 0.005], [0.2, 7.]]),
                      'bias': jnp.array([-0.001, 0.5])},
            'scale': jnp.array(-2.)}
  clipped = losses.clip_weights(params, 0.01)
  assert (jax.tree_util.tree_structure(clipped)
          == jax.tree_util.tree_structure(params))
  for leaf in jax.tree_util.tree_leaves(clipped):
    assert np.all(np.abs(leaf) <= 0.01)
  np.testing.assert_allclose(clipped['dense']['kernel'],
                             [[-0.01, 0.005], [0.01, 0.01]])
  np.testing.assert_allclose(clipped['dense']['bias'], [-0.001, 0.01])
  assert clipped['scale'] == -0.01
  with pytest.raises(UserError):
    losses.clip_weights(params, -1.)


# --- WGAN-GP gradient penalty ------------------------------------------------


def _batch(seed, shape=(4, 3, 3, 2)):
  return jnp.asarray(np.random.RandomState(seed).uniform(-1, 1, size=shape),
                     jnp.float32)


def _linear_critic(w):
  return lambda x: jnp.sum(x * w, axis=(1, 2, 3))


@pytest.mark.parametrize('w_norm', [1., 0.5, 3.])
def test_gradient_penalty_linear_critic(w_norm):
  # C(x) = <w, x> has gradient w everywhere: GP = (||w||_2 - 1)^2.
  w = _batch(0, (3, 3, 2))
  w = w / jnp.linalg.norm(w) * w_norm
  real, fake = _batch(1), _batch(2)
  gp, mean_norm = losses.gradient_penalty(
      _linear_critic(w), real, fake, jax.random.key(0), return_norm=True)
  np.testing.assert_allclose(gp, (w_norm - 1.) ** 2, atol=1e-5)
  np.testing.assert_allclose(mean_norm, w_norm, rtol=1e-5)
  assert losses.gradient_penalty(_linear_critic(w), real, fake,
                                 jax.random.key(0)).shape == ()


def test_gradient_penalty_uses_per_sample_norms():
  # C(x) = 0.5 ||x||^2 has gradient x. With real == fake, x_hat = real, so the
  # per-sample gradient norms are the norms of the rows: 0.5, 1, 2, 3.
  norms = np.array([0.5, 1., 2., 3.])
  direction = _batch(3)
  direction = direction / jnp.sqrt(
      jnp.sum(direction ** 2, axis=(1, 2, 3), keepdims=True))
  x = direction * norms[:, None, None, None]
  critic = lambda v: 0.5 * jnp.sum(v ** 2, axis=(1, 2, 3))
  gp, mean_norm = losses.gradient_penalty(critic, x, x, jax.random.key(1),
                                          return_norm=True)
  # Mean of per-sample penalties, (0.25 + 0 + 1 + 4) / 4; a batch-wide norm
  # would give (sqrt(14.25) - 1)^2 ~ 7.7 and (mean norm - 1)^2 ~ 0.39.
  np.testing.assert_allclose(gp, np.mean((norms - 1.) ** 2), rtol=1e-5)
  np.testing.assert_allclose(mean_norm, norms.mean(), rtol=1e-5)


def test_gradient_penalty_interpolates_uniformly_per_sample():
  # real has unit norm, fake = 0, C(x) = 0.5 ||x||^2: the gradient norm at
  # x_hat = e * real is e, so with e ~ U[0, 1] per sample,
  # mean norm ~ 1/2 and GP = E[(e - 1)^2] ~ 1/3.
  n = 512
  real = jnp.ones((n, 2, 2, 1)) / 2.
  critic = lambda v: 0.5 * jnp.sum(v ** 2, axis=(1, 2, 3))
  gp, mean_norm = losses.gradient_penalty(critic, real, jnp.zeros_like(real),
                                          jax.random.key(2), return_norm=True)
  assert abs(float(mean_norm) - 0.5) < 0.05
  assert abs(float(gp) - 1. / 3.) < 0.05


def test_gradient_penalty_is_differentiable_in_critic_params():
  # d/dw (||w|| - 1)^2 = 2 (||w|| - 1) w / ||w||  (needs double backprop).
  w = _batch(4, (3, 3, 2))
  real, fake = _batch(5), _batch(6)

  def gp_of(w):
    critic = lambda x: jnp.sum(x * w, axis=(1, 2, 3))[:, None]  # [B, 1]
    return losses.gradient_penalty(critic, real, fake, jax.random.key(3))

  n = jnp.linalg.norm(w)
  np.testing.assert_allclose(jax.jit(jax.grad(gp_of))(w),
                             2 * (n - 1) * w / n, rtol=1e-4, atol=1e-6)


def test_gradient_penalty_rejects_bad_shapes():
  critic = _linear_critic(jnp.ones((3, 3, 2)))
  with pytest.raises(UserError, match='same shape'):
    losses.gradient_penalty(critic, _batch(0), _batch(1)[:2], jax.random.key(0))
  with pytest.raises(UserError, match='one score per sample'):
    losses.gradient_penalty(lambda x: x, _batch(0), _batch(1),
                            jax.random.key(0))


# --- classification terms ----------------------------------------------------


def test_classification_and_auxiliary_losses():
  logits = jnp.array([[2., 0., -1.], [0., 0., 0.]])
  labels = jnp.array([0, 2], jnp.int32)
  logp = np.asarray(jax.nn.log_softmax(logits))
  expected = -(logp[0, 0] + logp[1, 2]) / 2
  np.testing.assert_allclose(losses.classification_loss(logits, labels),
                             expected, rtol=1e-6)
  np.testing.assert_allclose(losses.auxiliary_classifier_loss(logits, labels),
                             expected, rtol=1e-6)
  # Smoothing 0.3 with K=3: targets 0.8 on the label, 0.1 elsewhere.
  t = np.full((2, 3), 0.1)
  t[0, 0] = t[1, 2] = 0.8
  np.testing.assert_allclose(
      losses.classification_loss(logits, labels, label_smoothing=0.3),
      -(t * logp).sum(-1).mean(), rtol=1e-6)
  with pytest.raises(UserError, match='labels'):
    losses.classification_loss(logits, jnp.array([0, 3], jnp.int32))
  with pytest.raises(UserError):
    losses.classification_loss(logits, jax.nn.one_hot(labels, 3))


# --- Improved-GAN techniques -------------------------------------------------


def test_feature_matching():
  f_real = _batch(7, (6, 5))
  # Different samples with the same mean give zero loss.
  f_fake = f_real[::-1] * 1.
  np.testing.assert_allclose(losses.feature_matching_loss(f_real, f_fake), 0.,
                             atol=1e-10)
  shift = jnp.array([1., -2., 0., 0.5, 0.])
  np.testing.assert_allclose(
      losses.feature_matching_loss(f_real, f_real + shift),
      float(jnp.sum(shift ** 2)), rtol=1e-5)
  # Only the means matter: a different batch size is fine.
  np.testing.assert_allclose(
      losses.feature_matching_loss(f_real, f_real.mean(0, keepdims=True)), 0.,
      atol=1e-10)


def test_historical_average_running_mean_and_penalty():
  rs = np.random.RandomState(8)
  snaps = [{'a': jnp.asarray(rs.normal(size=(2, 3)), jnp.float32),
            'b': {'c': jnp.asarray(rs.normal(size=(4,)), jnp.float32)}}
           for _ in range(5)]
  update = jax.jit(losses.update_historical_average)
  avg = jax.tree_util.tree_map(lambda p: jnp.full_like(p, 123.), snaps[0])
  for step, params in enumerate(snaps):
    avg = update(avg, params, step)
    expected = jax.tree_util.tree_map(lambda *xs: np.mean(xs, axis=0),
                                      *snaps[:step + 1])
    for got, want in zip(jax.tree_util.tree_leaves(avg),
                         jax.tree_util.tree_leaves(expected)):
      np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  penalty = losses.historical_averaging_penalty(snaps[-1], avg)
  want = sum(float(np.sum((np.asarray(p) - np.asarray(a)) ** 2))
             for p, a in zip(jax.tree_util.tree_leaves(snaps[-1]),
                             jax.tree_util.tree_leaves(avg)))
  np.testing.assert_allclose(penalty, want, rtol=1e-5)
  assert losses.historical_averaging_penalty(avg, avg) == 0.
