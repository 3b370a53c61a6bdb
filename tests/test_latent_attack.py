"""Tests for advjax.attacks.unrestricted_attack on a toy linear AC-GAN.

G(z, y) = tanh(A z + B onehot(y)) as 4x4x1 images; the auxiliary classifier C
is a matched filter on the class patterns B (accurate on G's outputs); the
classifier f also reads the latent directions A, so small latent moves fool f
while C still recognises the source class. One set of closures is shared by
all tests, so compiled attack programs are reused.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from advjax import attacks
from advjax.errors import UserError

D, K, P = 8, 3, 16  # latent dims, classes, pixels (4x4x1)
B = 16

_rs = np.random.RandomState(0)
_A = _rs.normal(size=(P, D)).astype(np.float32) * 0.3
_BM = _rs.choice([-1., 1.], size=(P, K)).astype(np.float32)
_V = _rs.normal(size=(D, K)).astype(np.float32)
_A_PINV = np.linalg.pinv(_A).astype(np.float32)  # [D, P]


def generate_fn(z, y):
  pre = z @ jnp.asarray(_A).T + jax.nn.one_hot(y, K) @ jnp.asarray(_BM).T
  return jnp.tanh(pre).reshape(-1, 4, 4, 1)


def aux_logits_fn(x):
  return 0.5 * x.reshape(x.shape[0], -1) @ jnp.asarray(_BM)


def logits_fn(x):
  xf = x.reshape(x.shape[0], -1)
  return 0.3 * xf @ jnp.asarray(_BM) + 0.6 * (xf @ jnp.asarray(_A_PINV).T) @ (
      jnp.asarray(_V))


def robust_logits_fn(x):
  """f plus a huge bias for class 0: never fooled, but has a gradient."""
  return logits_fn(x) + jnp.asarray([50., 0., 0.])


def constant_logits_fn(x):
  """Always class 0, with an exactly zero input gradient."""
  return jnp.zeros((x.shape[0], K)) + jnp.asarray([5., 0., 0.])


Z0 = jax.random.normal(jax.random.key(0), (B, D)) * 0.5
YS = jnp.arange(B, dtype=jnp.int32) % K
YT = (YS + 1) % K
RNG = jax.random.key(1)

attack = functools.partial(attacks.unrestricted_attack, generate_fn,
                           aux_logits_fn, logits_fn)


def _log_softmax(v):
  v = np.asarray(v, np.float64)
  v = v - v.max(-1, keepdims=True)
  return v - np.log(np.exp(v).sum(-1, keepdims=True))


def _ref_loss(z, ys, yt=None, eps_z=0.1, lambda_z=0.1, lambda_aux=0.1):
  """The per-example objective, recomputed in float64 numpy."""
  x = generate_fn(jnp.asarray(z), ys)
  logp = _log_softmax(logits_fn(x))
  ys, rows = np.asarray(ys), np.arange(len(ys))
  if yt is None:
    masked = np.where(np.eye(K, dtype=bool)[ys], np.inf, -logp)
    l0 = masked.min(-1)  # min over k != y_s of CE(f(x), k)
  else:
    l0 = -logp[rows, np.asarray(yt)]
  dz2 = (np.asarray(z, np.float64) - np.asarray(Z0, np.float64)) ** 2
  penalty = np.maximum(dz2 - eps_z ** 2, 0.).mean(-1)
  aux = -_log_softmax(aux_logits_fn(x))[rows, ys]
  return l0 + lambda_z * penalty + lambda_aux * aux


def _criterion(images, ys, yt=None):
  pred = np.asarray(jnp.argmax(logits_fn(images), -1))
  aux_pred = np.asarray(jnp.argmax(aux_logits_fn(images), -1))
  fooled = pred != np.asarray(ys) if yt is None else pred == np.asarray(yt)
  return fooled & (aux_pred == np.asarray(ys)), pred, aux_pred


def test_toy_setup_is_clean():
  # Otherwise "success" could be trivial: f and C are right on G(z0, y_s).
  x0 = generate_fn(Z0, YS)
  np.testing.assert_array_equal(np.argmax(aux_logits_fn(x0), -1), YS)
  np.testing.assert_array_equal(np.argmax(logits_fn(x0), -1), YS)


def test_untargeted_attack_succeeds_and_flags_are_consistent():
  r = attack(Z0, YS, RNG, num_steps=60)
  success = np.asarray(r['success'])
  assert success.mean() >= 0.75, success
  # `success` describes exactly the returned images (both ways).
  ok, pred, aux_pred = _criterion(r['images'], YS)
  np.testing.assert_array_equal(success, ok)
  assert np.all(pred[success] != np.asarray(YS)[success])
  assert np.all(aux_pred[success] == np.asarray(YS)[success])
  # Images are G(z, y_s) of the returned z; loss is the documented objective.
  np.testing.assert_allclose(np.asarray(r['images']),
                             np.asarray(generate_fn(r['z'], YS)), atol=1e-6)
  np.testing.assert_allclose(np.asarray(r['loss']), _ref_loss(r['z'], YS),
                             rtol=1e-4, atol=1e-5)
  assert r['target_labels'] is None
  np.testing.assert_array_equal(r['source_labels'], YS)
  assert r['images'].shape == (B, 4, 4, 1) and r['z'].shape == (B, D)


def test_targeted_attack_reaches_the_target():
  r = attack(Z0, YS, RNG, num_steps=60, target_labels=YT)
  success = np.asarray(r['success'])
  assert success.mean() >= 0.75, success
  ok, pred, aux_pred = _criterion(r['images'], YS, YT)
  np.testing.assert_array_equal(success, ok)
  np.testing.assert_array_equal(pred[success], np.asarray(YT)[success])
  np.testing.assert_array_equal(aux_pred[success], np.asarray(YS)[success])
  np.testing.assert_allclose(np.asarray(r['loss']), _ref_loss(r['z'], YS, YT),
                             rtol=1e-4, atol=1e-5)
  np.testing.assert_array_equal(r['target_labels'], YT)


def test_steps_are_per_example_gradient_descent_with_freezing():
  # Reference: a Python loop over examples and steps, each example descending
  # the gradient of its own loss and stopping at its first success.
  lr, eps_z, lambda_z, lambda_aux, steps = 0.3, 0.01, 5., 0.5, 3

  def one_loss(z, z0, y):
    x = generate_fn(z[None], y[None])
    logp = jax.nn.log_softmax(logits_fn(x)[0])
    l0 = -jnp.max(jnp.where(jnp.arange(K) == y, -jnp.inf, logp))
    pen = jnp.mean(jnp.maximum((z - z0) ** 2 - eps_z ** 2, 0.))
    aux = -jax.nn.log_softmax(aux_logits_fn(x)[0])[y]
    return l0 + lambda_z * pen + lambda_aux * aux

  grad = jax.jit(jax.grad(one_loss))
  expected, first = [], []
  for i in range(B):
    z, y, hit = Z0[i], YS[i], -1
    for t in range(steps + 1):
      if _criterion(generate_fn(z[None], y[None]), y[None])[0][0]:
        hit = t
        break
      if t < steps:
        z = z - lr * grad(z, Z0[i], y)
    expected.append(np.asarray(z))
    first.append(hit)
  r = attack(Z0, YS, None, num_steps=steps, learning_rate=lr, eps_z=eps_z,
             lambda_z=lambda_z, lambda_aux=lambda_aux, langevin=False)
  np.testing.assert_allclose(np.asarray(r['z']), np.stack(expected), atol=1e-5)
  np.testing.assert_array_equal(r['first_success'], first)
  # The penalty was active (steps larger than eps_z) and nothing was trivial.
  assert np.abs(np.stack(expected) - np.asarray(Z0)).max() > 3 * eps_z
  assert 0 not in first


def test_langevin_noise_has_the_decaying_variance():
  # Zero gradient (constant f, no aux or latent term): z_T - z0 is
  # -lr * sum_t n_t with n_t ~ N(0, 0.01 / (1 + t)^0.55), added to the
  # gradient. Noise added to z itself (x100) or without decay (x3) fails.
  lr, steps, batch = 0.1, 30, 64
  z0 = jax.random.normal(jax.random.key(2), (batch, D))
  ys = jnp.zeros((batch,), jnp.int32)
  r = attacks.unrestricted_attack(
      generate_fn, aux_logits_fn, constant_logits_fn, z0, ys,
      jax.random.key(3), num_steps=steps, learning_rate=lr, lambda_z=0.,
      lambda_aux=0.)
  assert not np.any(r['success'])
  np.testing.assert_array_equal(r['first_success'], -1)
  delta = np.asarray(r['z'] - z0, np.float64)
  expected_var = lr ** 2 * sum(0.01 / (1 + t) ** 0.55 for t in range(steps))
  assert abs(delta.mean()) < 0.2 * np.sqrt(expected_var)
  np.testing.assert_allclose(delta.var(), expected_var, rtol=0.25)
  # Different keys give different noise; langevin=False gives none.
  r2 = attacks.unrestricted_attack(
      generate_fn, aux_logits_fn, constant_logits_fn, z0, ys, None,
      num_steps=steps, learning_rate=lr, lambda_z=0., lambda_aux=0.,
      langevin=False)
  np.testing.assert_array_equal(r2['z'], z0)


def test_soft_constraint_keeps_z_near_z0():
  # f is never fooled, so every example takes all steps; the latent penalty
  # is what keeps z within about eps_z of z0.
  eps_z, steps = 0.1, 100
  run = functools.partial(attacks.unrestricted_attack, generate_fn,
                          aux_logits_fn, robust_logits_fn, Z0,
                          jnp.zeros((B,), jnp.int32), RNG, num_steps=steps,
                          eps_z=eps_z)
  # lr * lambda_z * 2 / D = 1: one step pulls a coordinate back to the
  # boundary |z - z0| = eps_z (a larger product makes descent unstable).
  held = run(lambda_z=40.)
  free = run(lambda_z=0.)
  assert not np.any(held['success']) and not np.any(free['success'])
  d_held = np.abs(np.asarray(held['z'] - Z0))
  d_free = np.abs(np.asarray(free['z'] - Z0))
  assert np.mean(d_held > 2 * eps_z) < 0.05, d_held.max()
  penalty = np.maximum(d_held ** 2 - eps_z ** 2, 0.).mean()
  assert penalty < 0.01, penalty
  assert d_free.mean() > 10 * d_held.mean(), (d_free.mean(), d_held.mean())
  assert np.mean(d_free > 2 * eps_z) > 0.5


def test_examples_freeze_at_their_first_success():
  short_steps, long_steps = 12, 60
  short = attack(Z0, YS, RNG, num_steps=short_steps)
  long = attack(Z0, YS, RNG, num_steps=long_steps)
  for r, n in ((short, short_steps), (long, long_steps)):
    first = np.asarray(r['first_success'])
    success = np.asarray(r['success'])
    np.testing.assert_array_equal(success, first >= 0)
    assert np.all((first[success] >= 0) & (first[success] <= n))
    np.testing.assert_array_equal(first[~success], -1)
  s = np.asarray(short['success'])
  assert 0 < s.sum() < B  # both kinds are present
  # Same noise sequence, so examples done within 12 steps are unchanged by
  # 48 more steps: same image, same z, same first success.
  np.testing.assert_array_equal(np.asarray(long['first_success'])[s],
                                np.asarray(short['first_success'])[s])
  np.testing.assert_allclose(np.asarray(long['images'])[s],
                             np.asarray(short['images'])[s], atol=1e-6)
  np.testing.assert_allclose(np.asarray(long['z'])[s],
                             np.asarray(short['z'])[s], atol=1e-6)
  # The others first succeeded later, and they did keep moving.
  long_first = np.asarray(long['first_success'])[~s]
  assert np.all((long_first > short_steps) | (long_first == -1))
  assert np.all(np.abs(np.asarray(long['z'] - short['z'])[~s]).max(-1) > 0)


def test_pixel_noise_stays_within_noise_eps():
  noise_eps = 0.1
  r = attack(Z0, YS, RNG, num_steps=60, noise_eps=noise_eps)
  clean = np.clip(np.asarray(generate_fn(r['z'], YS)), -1., 1.)
  diff = np.abs(np.asarray(r['images']) - clean)
  assert diff.max() <= noise_eps + 1e-6
  assert diff.max() > 0.01  # tau was optimised
  assert np.asarray(r['images']).min() >= -1. and np.asarray(
      r['images']).max() <= 1.
  ok, _, _ = _criterion(r['images'], YS)
  np.testing.assert_array_equal(r['success'], ok)
  assert np.mean(ok) >= 0.75


def test_optax_optimizer_path():
  # optax.sgd(lr) is the built-in gradient descent.
  plain = attack(Z0, YS, None, num_steps=12, learning_rate=0.1,
                 langevin=False)
  sgd = attack(Z0, YS, None, num_steps=12, learning_rate=123.,
               langevin=False, optimizer=optax.sgd(0.1))
  np.testing.assert_allclose(np.asarray(sgd['z']), np.asarray(plain['z']),
                             atol=1e-5)
  np.testing.assert_array_equal(sgd['first_success'], plain['first_success'])
  # Adam (with Langevin noise) works, and learning_rate is then unused.
  adam = optax.adam(0.05)
  r = attack(Z0, YS, RNG, num_steps=60, optimizer=adam)
  r_lr = attack(Z0, YS, RNG, num_steps=60, optimizer=adam, learning_rate=9.)
  np.testing.assert_array_equal(r['z'], r_lr['z'])
  ok, _, _ = _criterion(r['images'], YS)
  np.testing.assert_array_equal(r['success'], ok)
  assert np.mean(ok) >= 0.75
  # Adam's steps differ from gradient descent's.
  assert not np.allclose(np.asarray(r['z']),
                         np.asarray(attack(Z0, YS, RNG, num_steps=60)['z']))


def test_jit_and_one_compiled_loop():
  calls = []

  def counting_generate_fn(z, y):
    calls.append(1)
    return generate_fn(z, y)

  run = functools.partial(attacks.unrestricted_attack, counting_generate_fn,
                          aux_logits_fn, logits_fn)
  jitted = jax.jit(functools.partial(run, num_steps=60))
  r_jit = jitted(Z0, YS, RNG)
  r_eager = attack(Z0, YS, RNG, num_steps=60)
  np.testing.assert_allclose(np.asarray(r_jit['images']),
                             np.asarray(r_eager['images']), atol=1e-5)
  np.testing.assert_array_equal(r_jit['first_success'],
                                r_eager['first_success'])
  # New values, same shapes: the compiled program is reused, not retraced.
  n = len(calls)
  jitted(Z0 + 0.1, YS, jax.random.key(7))
  assert len(calls) == n
  # The steps are one lax.scan: tracing cost does not grow with num_steps.
  def traced(steps):
    del calls[:]
    jaxpr = jax.make_jaxpr(functools.partial(run, num_steps=steps))(
        Z0, YS, RNG)
    return len(calls), len(jaxpr.eqns), str(jaxpr)

  calls_3, eqns_3, text = traced(3)
  calls_300, eqns_300, _ = traced(300)
  assert calls_3 == calls_300 <= 4
  assert eqns_3 == eqns_300
  assert 'scan' in text


def test_malformed_inputs_raise_user_error():
  with pytest.raises(UserError, match=r'z0 must be a \[B, D\]'):
    attack(Z0[0], YS, RNG, num_steps=1)
  with pytest.raises(UserError, match=r'z0 must be a \[B, D\]'):
    attack(Z0[:, :, None], YS, RNG, num_steps=1)
  with pytest.raises(UserError, match='source_labels must be integer'):
    attack(Z0, YS[:3], RNG, num_steps=1)
  with pytest.raises(UserError, match='source_labels must be integer'):
    attack(Z0, YS.astype(jnp.float32), RNG, num_steps=1)
  with pytest.raises(UserError, match=r'source_labels must lie in \[0, 3\)'):
    attack(Z0, YS.at[2].set(K), RNG, num_steps=1)
  with pytest.raises(UserError, match=r'target_labels must lie in \[0, 3\)'):
    attack(Z0, YS, RNG, num_steps=1, target_labels=YT.at[0].set(-1))
  with pytest.raises(UserError, match='target != source'):
    attack(Z0, YS, RNG, num_steps=1, target_labels=YT.at[4].set(YS[4]))
  with pytest.raises(UserError, match='num_steps must be >= 0'):
    attack(Z0, YS, RNG, num_steps=-1)
  with pytest.raises(UserError, match='num_steps must be a Python int'):
    attack(Z0, YS, RNG, num_steps=2.5)
  with pytest.raises(UserError, match='eps_z must be >= 0'):
    attack(Z0, YS, RNG, num_steps=1, eps_z=-0.1)
  with pytest.raises(UserError, match='noise_eps must be >= 0'):
    attack(Z0, YS, RNG, num_steps=1, noise_eps=-0.1)
  with pytest.raises(UserError, match='eps_z must be >= 0, got nan'):
    attack(Z0, YS, RNG, num_steps=1, eps_z=float('nan'))
  with pytest.raises(UserError, match=r"generate_fn cannot take latents z0 of "
                     r"shape \(16, 5\).*the GAN's latent size D"):
    attack(Z0[:, :5], YS, RNG, num_steps=1)
  with pytest.raises(UserError, match='PRNG key'):
    attack(Z0, YS, None, num_steps=1)
  with pytest.raises(UserError, match='optax GradientTransformation'):
    attack(Z0, YS, RNG, num_steps=1, optimizer='adam')
  with pytest.raises(UserError, match='generate_fn must map'):
    attacks.unrestricted_attack(lambda z, y: generate_fn(z, y)[..., 0],
                                aux_logits_fn, logits_fn, Z0, YS, RNG,
                                num_steps=1)
  with pytest.raises(UserError, match='aux_logits_fn must map'):
    attacks.unrestricted_attack(generate_fn, lambda x: x, logits_fn, Z0, YS,
                                RNG, num_steps=1)
  # Every message is one line.
  try:
    attack(Z0, YS, RNG, num_steps=1, target_labels=YS)
  except UserError as e:
    assert '\n' not in str(e)
