"""Tests for advjax.attacks: closed forms, directions, norms, jit, errors."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advjax import attacks
from advjax.errors import UserError

B, H, W, C, K = 4, 3, 3, 2, 5
D = H * W * C


def _linear_model(seed=0):
  """logits = W x_flat + b, with its numpy parameters for closed forms."""
  rs = np.random.RandomState(seed)
  w = rs.normal(size=(K, D)).astype(np.float32)
  b = rs.normal(size=(K,)).astype(np.float32)

  def logits_fn(x):
    return x.reshape(x.shape[0], -1) @ jnp.asarray(w).T + jnp.asarray(b)

  return logits_fn, w, b


def _mlp_model(seed=1, hidden=16):
  """A tiny non-linear classifier (tanh MLP) with fixed random weights."""
  rs = np.random.RandomState(seed)
  w1 = jnp.asarray(rs.normal(size=(D, hidden)) / np.sqrt(D), jnp.float32)
  w2 = jnp.asarray(rs.normal(size=(hidden, K)) * 2 / np.sqrt(hidden),
                   jnp.float32)

  def logits_fn(x):
    return jnp.tanh(x.reshape(x.shape[0], -1) @ w1) @ w2

  return logits_fn


def _images(seed=2, scale=0.5):
  rs = np.random.RandomState(seed)
  return jnp.asarray(rs.uniform(-scale, scale, size=(B, H, W, C)), jnp.float32)


def _labels(seed=3):
  return jnp.asarray(np.random.RandomState(seed).randint(0, K, size=B),
                     jnp.int32)


def _softmax(z):
  z = z - z.max(-1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(-1, keepdims=True)


def _closed_form_grad(w, b, x, y):
  """grad_x CE(W x + b, y) = W^T (softmax(W x + b) - onehot(y)), per example."""
  xf = np.asarray(x, np.float64).reshape(B, -1)
  p = _softmax(xf @ w.T.astype(np.float64) + b)
  onehot = np.eye(K)[np.asarray(y)]
  return ((p - onehot) @ w.astype(np.float64)).reshape(x.shape)


def _prob(logits_fn, x, cls):
  p = jax.nn.softmax(logits_fn(x), axis=-1)
  return np.asarray(jnp.take_along_axis(p, cls[:, None], axis=-1)[:, 0])


# --- closed form on a linear softmax model -----------------------------------


def test_fgsm_matches_closed_form_on_linear_model():
  logits_fn, w, b = _linear_model()
  # Values near the range edges so that the clip to [-1, 1] is exercised.
  x = _images(scale=0.95)
  y = _labels()
  eps = 0.1
  g = _closed_form_grad(w, b, x, y)
  expected = np.clip(np.asarray(x) + eps * np.sign(g), -1., 1.)
  got = attacks.fgsm(logits_fn, x, y, eps)
  np.testing.assert_allclose(np.asarray(got), expected, atol=1e-6)
  assert np.any(expected == 1.) or np.any(expected == -1.)  # clip was used

  target = (y + 1) % K
  g_t = _closed_form_grad(w, b, x, target)
  expected_t = np.clip(np.asarray(x) - eps * np.sign(g_t), -1., 1.)
  got_t = attacks.fgsm(logits_fn, x, target, eps, targeted=True)
  np.testing.assert_allclose(np.asarray(got_t), expected_t, atol=1e-6)


def test_pgd_l2_single_step_matches_closed_form():
  # One L2 step from x with step_size < eps: x' = x + s * g_i / ||g_i||_2 with
  # the norm per example (a norm over the whole batch would fail this).
  logits_fn, w, b = _linear_model()
  x = _images(scale=0.3)
  y = _labels()
  s = 0.2
  g = _closed_form_grad(w, b, x, y)
  gn = np.sqrt((g ** 2).reshape(B, -1).sum(-1)).reshape(B, 1, 1, 1)
  expected = np.clip(np.asarray(x) + s * g / gn, -1., 1.)
  got = attacks.pgd(logits_fn, x, y, None, eps=1.0, step_size=s, num_steps=1,
                    norm='l2', random_start=False)
  np.testing.assert_allclose(np.asarray(got), expected, atol=1e-5)


def test_bim_one_step_equals_fgsm():
  logits_fn = _mlp_model()
  x, y = _images(), _labels()
  got = attacks.pgd(logits_fn, x, y, None, eps=0.1, step_size=0.1,
                    num_steps=1, random_start=False)
  np.testing.assert_allclose(np.asarray(got),
                             np.asarray(attacks.fgsm(logits_fn, x, y, 0.1)),
                             atol=1e-6)


# --- attack directions (a flipped sign fails these) --------------------------


def test_untargeted_attacks_lower_true_class_probability():
  logits_fn = _mlp_model()
  x, y = _images(), _labels()
  p0 = _prob(logits_fn, x, y)
  p_fgsm = _prob(logits_fn, attacks.fgsm(logits_fn, x, y, 0.05), y)
  assert np.all(p_fgsm < p0), (p0, p_fgsm)
  for norm, eps, step in (('linf', 0.1, 0.03), ('l2', 0.5, 0.2)):
    x_adv = attacks.pgd(logits_fn, x, y, jax.random.key(0), eps=eps,
                        step_size=step, num_steps=5, norm=norm)
    p_pgd = _prob(logits_fn, x_adv, y)
    assert np.all(p_pgd < p0), (norm, p0, p_pgd)


def test_targeted_attacks_raise_target_probability():
  logits_fn = _mlp_model()
  x, y = _images(), _labels()
  target = (y + 2) % K
  p0 = _prob(logits_fn, x, target)
  x_fgsm = attacks.fgsm(logits_fn, x, target, 0.05, targeted=True)
  assert np.all(_prob(logits_fn, x_fgsm, target) > p0)
  for norm, eps, step in (('linf', 0.1, 0.03), ('l2', 0.5, 0.2)):
    x_adv = attacks.pgd(logits_fn, x, target, jax.random.key(1), eps=eps,
                        step_size=step, num_steps=5, norm=norm, targeted=True)
    assert np.all(_prob(logits_fn, x_adv, target) > p0), norm


def test_least_likely_moves_toward_least_likely_class():
  logits_fn = _mlp_model()
  x = _images()
  ll = jnp.argmin(logits_fn(x), axis=-1)
  p0 = _prob(logits_fn, x, ll)
  x_adv = attacks.fgsm_least_likely(logits_fn, x, 0.05)
  assert np.all(_prob(logits_fn, x_adv, ll) > p0)
  # It is exactly targeted FGSM toward the argmin class.
  np.testing.assert_array_equal(
      np.asarray(x_adv),
      np.asarray(attacks.fgsm(logits_fn, x, ll.astype(jnp.int32), 0.05,
                              targeted=True)))


# --- constraints -------------------------------------------------------------


def test_pgd_linf_stays_in_eps_box_and_range():
  logits_fn = _mlp_model()
  x = _images(scale=0.98)
  y = _labels()
  eps = 0.08
  x_adv = np.asarray(attacks.pgd(logits_fn, x, y, jax.random.key(0), eps=eps,
                                 step_size=0.05, num_steps=6))
  assert np.max(np.abs(x_adv - np.asarray(x))) <= eps + 1e-6
  assert x_adv.min() >= -1. and x_adv.max() <= 1.
  # The sign steps saturate the box somewhere (the attack really moved).
  assert np.max(np.abs(x_adv - np.asarray(x))) > 0.9 * eps


def test_pgd_l2_stays_in_ball_and_range():
  logits_fn = _mlp_model()
  x = _images(scale=0.98)
  y = _labels()
  eps = 0.5
  x_adv = np.asarray(attacks.pgd(logits_fn, x, y, jax.random.key(0), eps=eps,
                                 step_size=0.3, num_steps=6, norm='l2'))
  norms = np.sqrt(((x_adv - np.asarray(x)) ** 2).reshape(B, -1).sum(-1))
  assert np.all(norms <= eps + 1e-5), norms
  assert x_adv.min() >= -1. and x_adv.max() <= 1.


def test_pgd_l2_projection_is_per_example():
  # A step 3x larger than eps from the centre of the range (no clipping) must
  # land exactly on each example's L2 sphere. A batch-wide norm or an L-inf
  # projection gives different per-example norms.
  logits_fn = _mlp_model()
  x = jnp.zeros((B, H, W, C), jnp.float32) + _images(scale=0.01)
  y = _labels()
  eps = 0.4
  x_adv = np.asarray(attacks.pgd(logits_fn, x, y, None, eps=eps,
                                 step_size=3 * eps, num_steps=1, norm='l2',
                                 random_start=False))
  norms = np.sqrt(((x_adv - np.asarray(x)) ** 2).reshape(B, -1).sum(-1))
  np.testing.assert_allclose(norms, eps, rtol=1e-5)


@pytest.mark.parametrize('norm, eps', [('linf', 0.1), ('l2', 0.5)])
def test_random_start_depends_on_rng(norm, eps):
  logits_fn = _mlp_model()
  x, y = _images(), _labels()
  run = functools.partial(attacks.pgd, logits_fn, x, y, eps=eps,
                          step_size=eps / 4, num_steps=0, norm=norm)
  a = np.asarray(run(jax.random.key(0)))
  b = np.asarray(run(jax.random.key(1)))
  a2 = np.asarray(run(jax.random.key(0)))
  assert not np.allclose(a, b)
  np.testing.assert_array_equal(a, a2)
  # num_steps=0 returns the random start itself: inside the ball, not at x.
  delta = (a - np.asarray(x)).reshape(B, -1)
  if norm == 'linf':
    assert np.abs(delta).max() <= eps + 1e-6
  else:
    assert np.all(np.sqrt((delta ** 2).sum(-1)) <= eps + 1e-5)
  assert np.all(np.abs(delta).sum(-1) > 0)


# --- jit ---------------------------------------------------------------------


def test_jit_matches_eager():
  logits_fn = _mlp_model()
  x, y = _images(), _labels()
  rng = jax.random.key(3)
  for norm in ('linf', 'l2'):
    kwargs = dict(eps=0.1, step_size=0.03, num_steps=3, norm=norm)
    jitted = jax.jit(functools.partial(attacks.pgd, logits_fn, **kwargs))
    np.testing.assert_allclose(
        np.asarray(jitted(x, y, rng)),
        np.asarray(attacks.pgd(logits_fn, x, y, rng, **kwargs)), atol=1e-5)
  fgsm_jit = jax.jit(functools.partial(attacks.fgsm, logits_fn, eps=0.1))
  np.testing.assert_allclose(np.asarray(fgsm_jit(x, y)),
                             np.asarray(attacks.fgsm(logits_fn, x, y, 0.1)),
                             atol=1e-6)
  ll_jit = jax.jit(functools.partial(attacks.fgsm_least_likely, logits_fn,
                                     eps=0.1))
  assert ll_jit(x).shape == x.shape


# --- input validation --------------------------------------------------------


def test_malformed_inputs_raise_user_error():
  logits_fn = _mlp_model()
  x, y = _images(), _labels()
  with pytest.raises(UserError, match='4-D'):
    attacks.fgsm(logits_fn, x[0], y, 0.1)
  with pytest.raises(UserError, match='4-D'):  # static check, also under jit
    jax.jit(functools.partial(attacks.fgsm, logits_fn, eps=0.1))(x[0], y)
  with pytest.raises(UserError, match='eps'):
    attacks.fgsm(logits_fn, x, y, -0.1)
  with pytest.raises(UserError, match='eps'):
    attacks.pgd(logits_fn, x, y, jax.random.key(0), eps=-1., step_size=0.1,
                num_steps=1)
  with pytest.raises(UserError, match='labels'):
    attacks.fgsm(logits_fn, x, y.at[0].set(K), 0.1)
  with pytest.raises(UserError, match='labels'):
    attacks.pgd(logits_fn, x, y.at[1].set(-1), jax.random.key(0), eps=0.1,
                step_size=0.1, num_steps=1)
  with pytest.raises(UserError, match='batch size'):
    attacks.fgsm(logits_fn, x, y[:2], 0.1)
  with pytest.raises(UserError, match='norm'):
    attacks.pgd(logits_fn, x, y, jax.random.key(0), eps=0.1, step_size=0.1,
                num_steps=1, norm='l1')
  with pytest.raises(UserError, match='rng'):
    attacks.pgd(logits_fn, x, y, None, eps=0.1, step_size=0.1, num_steps=1)
  with pytest.raises(UserError, match='shape \\[B\\]'):
    attacks.fgsm(logits_fn, x, jax.nn.one_hot(y, K), 0.1)


def test_check_attack_inputs_accepts_valid_and_skips_traced_values():
  x, y = _images(), _labels()
  attacks.check_attack_inputs(x, y, num_classes=K, eps=0.1)
  with pytest.raises(UserError, match='labels'):
    attacks.check_attack_inputs(x, y, num_classes=2)

  @jax.jit
  def traced(y):
    # Values are unknown while tracing: only shapes are checked, no error.
    attacks.check_attack_inputs(x, y, num_classes=1, eps=0.1)
    return y

  traced(y)
