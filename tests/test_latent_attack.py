"""Tests for advjax.attacks.unrestricted_attack on a toy linear AC-GAN.

G(z, y) = tanh(A z + B onehot(y)) as 4x4x1 images; the auxiliary classifier C
is a matched filter on the class patterns B (accurate on G's outputs); the
classifier f also reads the latent directions A, so small latent moves fool f
while C still recognises the source class. One set of closures is shared by
all tests, so compiled attack programs are reused.

The objective is a mean over the batch, so an example moves by lr / B times
its own gradient: `LR` = 0.1 * B is a step of 0.1 per example.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jax.sharding import PartitionSpec

from advjax import attacks, parallel
from advjax.errors import UserError

D, K, P = 8, 3, 16  # latent dims, classes, pixels (4x4x1)
B = 16
LR = 0.1 * B

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
                           aux_logits_fn, logits_fn, learning_rate=LR)


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


def _criterion(images, ys, yt=None, generated=None):
  """Success: f fooled on `images`, C keeps y_s on `generated` (G(z, y_s)
  before any pixel noise; `images` when omitted)."""
  generated = images if generated is None else generated
  pred = np.asarray(jnp.argmax(logits_fn(images), -1))
  aux_pred = np.asarray(jnp.argmax(aux_logits_fn(generated), -1))
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
  # lr / B times the gradient of its own loss (its part of the batch mean)
  # and stopping at its first success.
  lr, eps_z, lambda_z, lambda_aux, steps = 0.3 * B, 0.01, 5., 0.5, 3

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
        z = z - lr / B * grad(z, Z0[i], y)
    expected.append(np.asarray(z))
    first.append(hit)
  r = attack(Z0, YS, None, num_steps=steps, learning_rate=lr, eps_z=eps_z,
             lambda_z=lambda_z, lambda_aux=lambda_aux, langevin=False,
             iterate="first")
  np.testing.assert_allclose(np.asarray(r['z']), np.stack(expected), atol=1e-5)
  np.testing.assert_array_equal(r['first_success'], first)
  # The penalty was active (steps larger than eps_z) and nothing was trivial.
  assert np.abs(np.stack(expected) - np.asarray(Z0)).max() > 3 * eps_z
  assert 0 not in first


# A toy with closed-form gradients: G(z, y) = [z, 0.5 onehot(y)] as a
# 1x1x(DL + K) image, f(x) = x[:DL] W + 400 x[DL:] (linear; right on G(0, y)),
# C(x) = x[DL:] (right, with no gradient in z), so every example is attacked
# and, at these small steps, none succeeds or freezes. From z0 = 0 the
# targeted loss CE(f(x), y_t) has gradient W (softmax(f(x)) - onehot(y_t)).
DL = 512
_W = np.random.RandomState(1).normal(size=(DL, K)).astype(np.float32)
LIN_YS = jnp.asarray(1 + np.arange(B) % 2, jnp.int32)  # classes 1 and 2
LIN_YT = (LIN_YS + 1) % K


def _linear_generate_fn(z, y):
  return jnp.concatenate([z, 0.5 * jax.nn.one_hot(y, K)],
                         -1).reshape(-1, 1, 1, DL + K)


def _linear_logits_fn(x):
  x = x.reshape(x.shape[0], -1)
  return x[:, :DL] @ jnp.asarray(_W) + 400. * x[:, DL:]


def _onehot_aux_logits_fn(x):
  return x.reshape(x.shape[0], -1)[:, DL:]


def _linear_softmax(z, ys, scale=1.):
  logits = scale * (np.asarray(z, np.float64) @ _W.astype(np.float64)
                    + 200. * np.eye(K)[np.asarray(ys)])
  p = np.exp(logits - logits.max(-1, keepdims=True))
  return p / p.sum(-1, keepdims=True)


def _linear_grad(z, yt, ys=LIN_YS):
  """Each example's gradient of CE(f(G(z)), y_t) in z, in float64."""
  return (_linear_softmax(z, ys) - np.eye(K)[np.asarray(yt)]) @ (
      _W.T.astype(np.float64))


def _linear_attack(z0, ys, yt, **kwargs):
  return attacks.unrestricted_attack(
      _linear_generate_fn, _onehot_aux_logits_fn, _linear_logits_fn, z0, ys,
      jax.random.key(5), target_labels=yt, lambda_z=0., **kwargs)


def test_one_step_moves_z_by_lr_times_mean_gradient_plus_langevin_noise():
  lr = 0.5
  z0 = jnp.zeros((B, DL))
  g = _linear_grad(z0, LIN_YT)
  # Deterministic part: z_1 = -lr * g_b / B, so doubling the batch (with
  # copies) halves each example's step.
  one = _linear_attack(z0, LIN_YS, LIN_YT, num_steps=1, learning_rate=lr,
                       langevin=False)
  np.testing.assert_allclose(np.asarray(one['z']), -lr * g / B, rtol=1e-4,
                             atol=1e-7)
  twice = _linear_attack(jnp.concatenate([z0, z0]),
                         jnp.concatenate([LIN_YS, LIN_YS]),
                         jnp.concatenate([LIN_YT, LIN_YT]), num_steps=1,
                         learning_rate=lr, langevin=False)
  np.testing.assert_allclose(np.asarray(twice['z']),
                             np.concatenate([-lr * g / (2 * B)] * 2),
                             rtol=1e-4, atol=1e-7)
  assert not np.any(one['success']) and not np.any(twice['success'])
  # Noise: z_1 = -lr * (g_b / B + n_0), then z_2 = z_1 - lr * (g_b(z_1) / B
  # + n_1) with std(n_t) = sqrt(0.01 / (1 + t)^0.55), over B * DL
  # coordinates (the keys of step t are the same in both runs).
  z1 = np.asarray(_linear_attack(z0, LIN_YS, LIN_YT, num_steps=1,
                                 learning_rate=lr)['z'], np.float64)
  n0 = -z1 / lr - g / B
  z2 = np.asarray(_linear_attack(z0, LIN_YS, LIN_YT, num_steps=2,
                                 learning_rate=lr)['z'], np.float64)
  n1 = (z1 - z2) / lr - _linear_grad(z1, LIN_YT) / B
  for t, n in ((0, n0), (1, n1)):
    std = np.sqrt(0.01 / (1 + t) ** 0.55)
    assert abs(n.mean()) < 0.05 * std
    np.testing.assert_allclose(n.std(), std, rtol=0.05)
  # The deterministic part is not lost in the noise: noise std 0.1 against
  # a mean gradient of this size.
  assert np.abs(g / B).mean() > 0.02


def test_axis_name_averages_over_the_global_batch_of_every_device():
  # Two devices with half the batch each and axis_name take the same steps
  # as one device with the whole batch (no Langevin noise: deterministic).
  kwargs = dict(num_steps=3, langevin=False)
  whole = attack(Z0, YS, None, **kwargs)

  def per_device(z0, ys):
    r = attack(z0, ys, None, axis_name=parallel.AXIS, **kwargs)
    return r['z'], r['first_success']

  for n in (1, 2):
    mesh = parallel.make_mesh(jax.devices()[:n])
    spec = PartitionSpec(parallel.AXIS)
    z, first = parallel.data_parallel(per_device, mesh, (spec, spec),
                                      (spec, spec))(Z0, YS)
    np.testing.assert_allclose(np.asarray(z), np.asarray(whole['z']),
                               atol=1e-6)
    np.testing.assert_array_equal(first, whole['first_success'])
  # Without axis_name, a device's half batch is the whole batch: larger steps.
  half = attack(Z0[:B // 2], YS[:B // 2], None, **kwargs)
  assert not np.allclose(np.asarray(half['z']),
                         np.asarray(whole['z'])[:B // 2], atol=1e-4)


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
  # is what keeps z within about eps_z of z0. Without Langevin noise: at this
  # learning rate its std, LR * 0.1 / (1 + t)^0.275, is comparable to eps_z.
  eps_z, steps = 0.1, 100
  run = functools.partial(attacks.unrestricted_attack, generate_fn,
                          aux_logits_fn, robust_logits_fn, Z0,
                          jnp.zeros((B,), jnp.int32), RNG, num_steps=steps,
                          eps_z=eps_z, learning_rate=LR, langevin=False)
  # (LR / B) * lambda_z * 2 / D = 1: one step pulls a coordinate back to the
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
  short = attack(Z0, YS, RNG, num_steps=short_steps, iterate="first")
  long = attack(Z0, YS, RNG, num_steps=long_steps, iterate="first")
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
  np.testing.assert_allclose(np.asarray(r['generated']),
                             np.asarray(generate_fn(r['z'], YS)), atol=1e-6)
  diff = np.abs(np.asarray(r['images']) - np.asarray(r['generated']))
  assert diff.max() <= noise_eps + 1e-6
  assert diff.max() > 0.01  # tau was optimised
  assert np.asarray(r['images']).min() >= -1. and np.asarray(
      r['images']).max() <= 1.
  ok, _, _ = _criterion(r['images'], YS, generated=r['generated'])
  np.testing.assert_array_equal(r['success'], ok)
  assert np.mean(ok) >= 0.75


def test_pixel_noise_steps_tau_along_its_unit_gradient():
  # G's latent part is 0 (only tau moves those pixels); at tau = 0,
  # grad_x L_b = [W, 400 I] (softmax(f) - onehot(y_t)) / B scaled by
  # noise_eps, and tau_1 = -lr * that / ||that||_2 whatever f's scale (a
  # 10x larger f has a larger gradient) and without Langevin noise (which z
  # gets).
  lr, noise_eps = 1.0, 0.1
  z0 = jnp.zeros((B, DL))
  for scale in (1., 10.):
    g = _linear_softmax(z0, LIN_YS, scale) - np.eye(K)[np.asarray(LIN_YT)]
    direction = np.concatenate([g @ _W.T.astype(np.float64), 400. * g], -1)
    direction /= np.linalg.norm(direction, axis=-1, keepdims=True)
    r = attacks.unrestricted_attack(
        lambda z, y: _linear_generate_fn(0. * z, y), _onehot_aux_logits_fn,
        lambda x, s=scale: s * _linear_logits_fn(x), z0, LIN_YS,
        jax.random.key(5), target_labels=LIN_YT, num_steps=1,
        learning_rate=lr, lambda_z=0., noise_eps=noise_eps)
    np.testing.assert_array_equal(r['attacked'], True)
    delta = np.asarray(r['images'] - r['generated'], np.float64)
    tau = np.arctanh(delta / noise_eps).reshape(B, DL + K)
    np.testing.assert_allclose(np.linalg.norm(tau, axis=-1), lr, rtol=1e-3)
    np.testing.assert_allclose(tau, -lr * direction, atol=1e-4)


def test_auxiliary_classifier_judges_the_image_before_pixel_noise():
  # f has no gradient and is never fooled (source 0, f says 0): only the
  # auxiliary term could move tau, and C sees G(z, y_s) without the noise,
  # so tau stays 0 while z moves.
  ys = jnp.zeros((B,), jnp.int32)
  r = attacks.unrestricted_attack(
      generate_fn, aux_logits_fn, constant_logits_fn, Z0, ys, None,
      num_steps=5, learning_rate=LR, lambda_z=0., lambda_aux=1.,
      noise_eps=0.1, langevin=False)
  assert not np.any(r['success'])
  assert np.abs(np.asarray(r['z'] - Z0)).max() > 1e-3
  np.testing.assert_allclose(np.asarray(r['images']),
                             np.asarray(generate_fn(r['z'], ys)), atol=1e-6)


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
                          aux_logits_fn, logits_fn, learning_rate=LR)
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


def test_an_example_wrong_at_z0_is_never_a_success():
  # f says class 1 whatever it sees: examples of source 0 and 2 start
  # misclassified. They are not attacked (not moved, image G(z0, y_s)) and
  # never succeed, though "f fooled and C keeps y_s" holds for them at z0.
  def says_one(x):
    return logits_fn(x) + jnp.asarray([0., 60., 0.])

  for iterate in ("first", "last"):
    r = attacks.unrestricted_attack(generate_fn, aux_logits_fn, says_one, Z0,
                                    YS, RNG, num_steps=20, learning_rate=LR,
                                    iterate=iterate)
    wrong = np.asarray(YS) != 1
    np.testing.assert_array_equal(r['attacked'], ~wrong)
    assert not np.any(np.asarray(r['success'])[wrong])
    np.testing.assert_array_equal(np.asarray(r['first_success'])[wrong], -1)
    np.testing.assert_array_equal(np.asarray(r['z'])[wrong],
                                  np.asarray(Z0)[wrong])
    np.testing.assert_allclose(np.asarray(r['images'])[wrong],
                               np.asarray(generate_fn(Z0, YS))[wrong])
    # The old criterion would have counted them from iterate 0 on.
    pred = np.argmax(says_one(r['images']), -1)
    aux_pred = np.argmax(aux_logits_fn(r['images']), -1)
    assert ((pred != np.asarray(YS)) & (aux_pred == np.asarray(YS)))[
        wrong].all()


def test_an_example_the_aux_classifier_rejects_at_z0_is_not_attacked():
  # C says class 0 whatever it sees: only source-0 examples are attacked.
  def aux_says_zero(x):
    return aux_logits_fn(x) + jnp.asarray([60., 0., 0.])

  r = attacks.unrestricted_attack(generate_fn, aux_says_zero, logits_fn, Z0,
                                  YS, RNG, num_steps=20, learning_rate=LR)
  np.testing.assert_array_equal(r['attacked'], np.asarray(YS) == 0)
  assert not np.any(np.asarray(r['success'])[np.asarray(YS) != 0])


def test_baseline_is_the_search_with_the_classifier_gradients_switched_off():
  stopped = dict(
      logits_fn=lambda x: jax.lax.stop_gradient(logits_fn(x)),
      aux_logits_fn=lambda x: jax.lax.stop_gradient(aux_logits_fn(x)))
  kwargs = dict(num_steps=40, learning_rate=LR, lambda_z=1.)
  base = attacks.unrestricted_attack(generate_fn, aux_logits_fn, logits_fn,
                                     Z0, YS, RNG, baseline=True, **kwargs)
  off = attacks.unrestricted_attack(generate_fn, stopped["aux_logits_fn"],
                                    stopped["logits_fn"], Z0, YS, RNG,
                                    **kwargs)
  np.testing.assert_allclose(np.asarray(off['z']), np.asarray(base['z']),
                             atol=1e-6)
  np.testing.assert_array_equal(off['success'], base['success'])
  np.testing.assert_array_equal(off['attacked'], base['attacked'])
  # The baseline still moves (noise) and is judged like the attack; the
  # attack, with the gradient, does better from the same start and noise.
  assert np.abs(np.asarray(base['z'] - Z0)).max() > 1e-3
  ok, _, _ = _criterion(base['images'], YS)
  np.testing.assert_array_equal(base['success'],
                                ok & np.asarray(base['attacked']))
  full = attacks.unrestricted_attack(generate_fn, aux_logits_fn, logits_fn,
                                     Z0, YS, RNG, **kwargs)
  assert np.sum(full['success']) > np.sum(base['success'])


def test_last_iterate_is_judged_unless_first_is_asked():
  first = attack(Z0, YS, RNG, num_steps=60, iterate="first")
  last = attack(Z0, YS, RNG, num_steps=60, iterate="last")
  ok, _, _ = _criterion(last['images'], YS)
  np.testing.assert_array_equal(last['success'], ok & np.asarray(
      last['attacked']))
  # Same path until the first success; 'last' keeps walking after it.
  early = np.asarray(first['first_success']) < 60
  early &= np.asarray(first['success'])
  assert early.any()
  np.testing.assert_array_equal(np.asarray(last['first_success']),
                                np.asarray(first['first_success']))
  assert np.all(np.abs(np.asarray(last['z'] - first['z'])[early]).max(-1)
                > 0)
  # Judging the end point is the stricter requirement.
  assert np.sum(last['success']) <= np.sum(first['success'])
  with pytest.raises(UserError, match=r"iterate must be one of"):
    attack(Z0, YS, RNG, num_steps=1, iterate="best")


def test_presets_carry_the_reference_values():
  from advjax import adversaries
  seed, song = attacks.LATENT_PRESETS["seed"], attacks.LATENT_PRESETS["song"]
  # The seed study's code and Song et al.'s main.py defaults.
  assert seed == dict(num_steps=500, learning_rate=0.1, eps_z=0.1,
                      lambda_z=0.1, lambda_aux=0.1, langevin=True,
                      iterate="last")
  assert song == dict(num_steps=1000, learning_rate=1.0, eps_z=0.1,
                      lambda_z=100.0, lambda_aux=100.0, langevin=True,
                      iterate="last")
  # The adversary's and the function's defaults are the seed's.
  s = adversaries.UnrestrictedSettings()
  assert {k: getattr(s, k) for k in seed} == seed
  assert adversaries.matching_preset(s) == "seed"
  import inspect
  params = inspect.signature(attacks.unrestricted_attack).parameters
  assert {k: params[k].default for k in seed} == seed
  song_s = adversaries.get("unrestricted").evaluation_settings(
      adversaries.unrestricted_preset("song"))
  assert adversaries.matching_preset(song_s) == "song"
  tweaked = dataclasses.replace(song_s, learning_rate=2.)
  assert adversaries.matching_preset(tweaked) == ""
  with pytest.raises(UserError, match="unknown unrestricted preset 'madry'"):
    adversaries.unrestricted_preset("madry")


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
