"""Tests for advjax.attacks: closed forms, directions, norms, jit, errors."""

import functools

import jax
import jax.numpy as jnp
import flax.linen as nn
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


def _conv_model(hw=6, channels=3):
  """A flax CNN whose dense layer fixes the image size it accepts."""

  class Net(nn.Module):

    @nn.compact
    def __call__(self, x):
      x = nn.Conv(4, (3, 3))(x)
      return nn.Dense(K)(x.reshape(x.shape[0], -1))

  net = Net()
  variables = net.init(jax.random.key(0), jnp.zeros((1, hw, hw, channels)))
  return functools.partial(net.apply, variables)


def test_images_the_model_cannot_take_give_one_line_naming_the_shape():
  logits_fn, y = _conv_model(), _labels()
  x = jax.random.uniform(jax.random.key(0), (B, 6, 6, 3), minval=-1)
  with pytest.raises(UserError, match=r'cannot take images of shape '
                     r'\(4, 3, 6, 6\).*for NCHW pass x.transpose') as e:
    attacks.fgsm(logits_fn, x.transpose(0, 3, 1, 2), y, 0.1)
  assert '\n' not in str(e.value)
  with pytest.raises(UserError, match=r'shape \(4, 8, 8, 3\).*height, width '
                     'and channels the model was trained on'):
    attacks.pgd(logits_fn, jnp.zeros((B, 8, 8, 3)), y, jax.random.key(0),
                eps=0.1, step_size=0.1, num_steps=1)
  assert attacks.fgsm(logits_fn, x, y, 0.1).shape == x.shape


def test_nan_eps_or_step_size_is_refused():
  logits_fn, x, y = _mlp_model(), _images(), _labels()
  with pytest.raises(UserError, match='eps must be >= 0, got nan'):
    attacks.fgsm(logits_fn, x, y, float('nan'))
  with pytest.raises(UserError, match='eps must be >= 0, got nan'):
    attacks.pgd(logits_fn, x, y, jax.random.key(0), eps=jnp.nan,
                step_size=0.1, num_steps=1)
  with pytest.raises(UserError, match='step_size must be >= 0, got nan'):
    attacks.pgd(logits_fn, x, y, jax.random.key(0), eps=0.1,
                step_size=float('nan'), num_steps=1)


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


# --- adversarial patch -------------------------------------------------------


def _patch_images(n, seed, size=8, channels=3):
  rs = np.random.RandomState(seed)
  return jnp.asarray(rs.uniform(-0.5, 0.5, size=(n, size, size, channels)),
                     jnp.float32)


# A translation-invariant linear classifier (sum over pixels of x . U_k, plus
# a bias that makes class 2 the least likely on clean images).
_U = jnp.asarray(np.random.RandomState(5).normal(size=(3, 3)), jnp.float32)
_PATCH_BIAS = jnp.asarray([1., 1., -1.5])


def _patch_model(x):
  return jnp.einsum('bhwc,ck->bk', x, _U) / 8. + _PATCH_BIAS


def test_apply_patch_changes_only_the_patch_region():
  images = _patch_images(4, 0)
  patch = jax.random.uniform(jax.random.key(0), (3, 2, 3), minval=-1.,
                             maxval=1.)
  # Corners, the far edge and an interior position.
  positions = jnp.asarray([[0, 0], [5, 6], [2, 3], [5, 0]], jnp.int32)
  out = np.asarray(attacks.apply_patch(images, patch, positions))
  for i, (r, c) in enumerate(np.asarray(positions)):
    np.testing.assert_array_equal(out[i, r:r + 3, c:c + 2], patch)
    outside = np.ones((8, 8), bool)
    outside[r:r + 3, c:c + 2] = False
    np.testing.assert_array_equal(out[i][outside], np.asarray(images[i])[outside])
  # Differentiable in the patch: every patch pixel appears once per image.
  g = jax.grad(lambda p: attacks.apply_patch(images, p, positions).sum())(patch)
  np.testing.assert_allclose(np.asarray(g), 4.)
  with pytest.raises(UserError, match='positions must lie'):
    attacks.apply_patch(images, patch, positions.at[1, 0].set(6))
  with pytest.raises(UserError, match='patch must have shape'):
    attacks.apply_patch(images, patch[..., :1], positions)
  with pytest.raises(UserError, match='positions must be an int'):
    attacks.apply_patch(images, patch, positions[:2])


def test_train_patch_beats_a_random_patch():
  train, test = _patch_images(64, 1), _patch_images(64, 2)
  kwargs = dict(patch_size=3, num_steps=100, learning_rate=0.1, batch_size=16)
  r = attacks.train_patch(_patch_model, train, 2, jax.random.key(0), **kwargs)
  patch, loss = np.asarray(r['patch']), np.asarray(r['loss'])
  assert patch.shape == (3, 3, 3) and loss.shape == (100,)
  assert np.abs(patch).max() <= 1.
  assert loss[-10:].mean() < 0.5 * loss[:10].mean()
  random_patch = jax.random.uniform(jax.random.key(9), (3, 3, 3), minval=-1.,
                                    maxval=1.)
  rate = float(attacks.evaluate_patch(_patch_model, test, patch, 2,
                                      jax.random.key(1)))
  rate_random = float(attacks.evaluate_patch(_patch_model, test, random_patch,
                                             2, jax.random.key(1)))
  assert rate >= 0.9 and rate_random <= 0.2, (rate, rate_random)
  # An iterable of {'image': ...} batches is collected into the same array.
  batches = [{'image': np.asarray(train[i:i + 16])} for i in range(0, 64, 16)]
  r_iter = attacks.train_patch(_patch_model, iter(batches), 2,
                               jax.random.key(0), **kwargs)
  np.testing.assert_allclose(np.asarray(r_iter['patch']), patch, atol=1e-6)
  with pytest.raises(UserError, match='target_label'):
    attacks.train_patch(_patch_model, train, 3, jax.random.key(0), **kwargs)
  with pytest.raises(UserError, match='patch_size'):
    attacks.train_patch(_patch_model, train, 2, jax.random.key(0),
                        patch_size=9)
  with pytest.raises(UserError, match='no images'):
    attacks.train_patch(_patch_model, [], 2, jax.random.key(0), patch_size=3)


def test_evaluate_patch_rate():
  images = jnp.concatenate([jnp.full((4, 8, 8, 1), 0.9),
                            jnp.full((4, 8, 8, 1), -0.9)])
  patch = jnp.zeros((2, 2, 1))

  def always(target):
    return lambda x: jax.nn.one_hot(jnp.full(x.shape[:1], target), K)

  assert float(attacks.evaluate_patch(always(1), images, patch, 1,
                                      jax.random.key(0))) == 1.
  assert float(attacks.evaluate_patch(always(0), images, patch, 1,
                                      jax.random.key(0))) == 0.

  # Says 1 iff the image is bright (a 2x2 zero patch cannot change that).
  def bright(x):
    return jnp.stack([-x.mean((1, 2, 3)), x.mean((1, 2, 3))], -1)

  rate = attacks.evaluate_patch(bright, images, patch, 1, jax.random.key(0))
  assert float(rate) == 0.5
  # Two bright images already are class 1: they are left out, 2 / 6 remain.
  labels = jnp.asarray([1, 1, 0, 0, 0, 0, 0, 0], jnp.int32)
  rate = attacks.evaluate_patch(bright, images, patch, 1, jax.random.key(0),
                                labels=labels)
  np.testing.assert_allclose(float(rate), 2 / 6, rtol=1e-6)
  with pytest.raises(UserError, match='target_label'):
    attacks.evaluate_patch(bright, images, patch, 2, jax.random.key(0))


# --- black-box transfer ------------------------------------------------------


def _sum_substitute(x):
  """Class 0 iff the pixel sum is > 0."""
  s = x.sum((1, 2, 3))
  return jnp.stack([s, -s], -1)


def _numpy_only_target(calls, threshold=-0.15, scores=False):
  """A black box: numpy in, numpy out; fails if JAX ever traces it."""

  def predict(x):
    assert isinstance(x, np.ndarray) and not isinstance(x, jax.core.Tracer), (
        type(x))
    calls.append(x.shape)
    labels = np.where(x.mean(axis=(1, 2, 3)) > threshold, 0, 1)
    return np.eye(2)[labels] if scores else labels

  return predict


def _transfer_case():
  values = jnp.asarray([0.2, 0.05, -0.2, -0.05], jnp.float32)
  x = jnp.broadcast_to(values[:, None, None, None], (4, 2, 2, 1))
  y = jnp.asarray([0, 0, 1, 0], jnp.int32)
  return x, y


def test_transfer_attack_errors_on_a_hand_made_case():
  # FGSM (eps 0.3) on the substitute moves each constant image by -0.3 (label
  # 0) or +0.3 (label 1): values [-0.1, -0.25, 0.1, -0.35]. The substitute
  # (sign of the sum) is then wrong on all 4; the target (mean > -0.15) is
  # right on all 4 clean images and wrong on the last 3 adversarial ones.
  x, y = _transfer_case()
  for scores in (False, True):
    calls = []
    r = attacks.transfer_attack(attacks.fgsm, _sum_substitute,
                                _numpy_only_target(calls, scores=scores), x, y,
                                eps=0.3)
    np.testing.assert_allclose(np.asarray(r['images'])[:, 0, 0, 0],
                               [-0.1, -0.25, 0.1, -0.35], atol=1e-6)
    assert float(r['target_error_clean']) == 0.
    assert float(r['target_error_adv']) == 0.75
    assert float(r['substitute_error_adv']) == 1.
    assert len(calls) == 2  # clean and adversarial predictions only
  # Attacks with other signatures: pgd (rng keyword) and least-likely FGSM.
  r = attacks.transfer_attack(attacks.pgd, _sum_substitute,
                              _numpy_only_target([]), x, y,
                              rng=jax.random.key(0), eps=0.3, step_size=0.1,
                              num_steps=3, random_start=False)
  np.testing.assert_allclose(np.asarray(r['images']),
                             np.asarray(attacks.fgsm(_sum_substitute, x, y,
                                                     0.3)), atol=1e-6)
  # Least-likely FGSM takes no labels: the substitute predicts [0, 0, 1, 1],
  # so the last image moves toward class 0 instead (to 0.25).
  r = attacks.transfer_attack(attacks.fgsm_least_likely, _sum_substitute,
                              _numpy_only_target([]), x, y, eps=0.3)
  np.testing.assert_allclose(np.asarray(r['images'])[:, 0, 0, 0],
                             [-0.1, -0.25, 0.1, 0.25], atol=1e-6)
  assert float(r['target_error_adv']) == 0.5


def test_transfer_attack_never_differentiates_the_target():
  x, y = _transfer_case()
  calls = []
  target = _numpy_only_target(calls)
  # Under jit the target runs as a host callback on numpy arrays.
  jitted = jax.jit(functools.partial(attacks.transfer_attack, attacks.fgsm,
                                     _sum_substitute, target, eps=0.3))
  r = jitted(x, y)
  assert float(r['target_error_adv']) == 0.75 and len(calls) == 2

  # A target that JAX would have to trace or differentiate fails loudly.
  def raises_if_traced(x):
    if isinstance(x, jax.core.Tracer):
      raise AssertionError('the target was traced')
    return np.zeros(x.shape[0], np.int32)

  r = attacks.transfer_attack(attacks.fgsm, _sum_substitute, raises_if_traced,
                              x, y, eps=0.3)
  assert float(r['target_error_clean']) == 0.25
  with pytest.raises(UserError, match='target_predict_fn must return'):
    attacks.transfer_attack(attacks.fgsm, _sum_substitute,
                            lambda x: np.zeros(3), x, y, eps=0.3)


def test_every_attack_takes_bfloat16_images_and_gives_them_back():
  """The AutoAttack family computes in float32 (their loops keep float32
  carries) and returns the batch's own dtype, as the gradient attacks do."""
  from advjax.attacks import apgd, fab, square  # pylint: disable=g-import-not-at-top
  w = jax.random.normal(jax.random.key(0), (16, 4))
  fn = lambda x: x.reshape(x.shape[0], -1).astype(jnp.float32) @ w
  x = jax.random.uniform(jax.random.key(1), (4, 4, 4, 1), minval=-1,
                         maxval=1).astype(jnp.bfloat16)
  y = jnp.array([0, 1, 2, 3])
  key = jax.random.key(2)
  outs = {
      "fgsm": attacks.fgsm(fn, x, y, 0.1),
      "pgd": attacks.pgd(fn, x, y, key, eps=0.1, step_size=0.05,
                         num_steps=2),
      "apgd": apgd.apgd(fn, x, y, key, eps=0.1, num_steps=2)["images"],
      "apgd_t": apgd.apgd_targeted(fn, x, y, key, eps=0.1, num_steps=2,
                                   n_target_classes=2)["images"],
      "fab": fab.fab_targeted(fn, x, y, key, eps=0.1, num_steps=2,
                              n_target_classes=2)["images"],
      "square": square.square(fn, x, y, key, eps=0.1,
                              num_queries=4)["images"],
  }
  for name, adv in outs.items():
    assert adv.dtype == jnp.bfloat16, name
    gap = jnp.abs(adv.astype(jnp.float32) - x.astype(jnp.float32)).max()
    assert gap <= 0.1 + 1e-2, (name, gap)  # bfloat16 rounding


def test_targeted_unrestricted_draws_targets_with_a_key_of_its_own(
    monkeypatch):
  from advjax import adversaries  # pylint: disable=g-import-not-at-top
  seen = {}
  real_randint = jax.random.randint

  def randint(key, *args, **kwargs):
    seen["target_key"] = key
    return real_randint(key, *args, **kwargs)

  def attack(*args, **kwargs):
    seen["attack_key"] = args[5]
    z0 = args[3]
    return {"images": jnp.zeros((z0.shape[0], 4, 4, 1)),
            "success": jnp.zeros(z0.shape[0], bool)}

  monkeypatch.setattr(adversaries.jax.random, "randint", randint)
  monkeypatch.setattr(adversaries.attacks, "unrestricted_attack", attack)
  gan = adversaries.FrozenGAN(generate=lambda z, y: jnp.zeros((2, 4, 4, 1)),
                              aux_logits=None, latent_dim=3)
  target = adversaries.Target(lambda x: jnp.zeros((x.shape[0], 5)), gan)
  s = adversaries.get("unrestricted").settings(targeted=True, num_steps=5)
  adversaries.get("unrestricted").craft(
      s, target, jnp.zeros((2, 4, 4, 1)), jnp.array([0, 1]),
      jax.random.key(7))
  used = jax.random.key_data(seen["target_key"])
  for t in range(s.num_steps):  # every Langevin step's key differs
    step_key = jax.random.fold_in(seen["attack_key"], t)
    assert not np.array_equal(used, jax.random.key_data(step_key))
