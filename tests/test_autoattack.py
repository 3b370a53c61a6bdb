"""Tests for advjax.attacks.autoattack on tiny linear models (no torch).

The comparison with torchattacks on a trained classifier is in
tests/test_autoattack_reference.py.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advjax import losses
from advjax.attacks import autoattack as aa
from advjax.errors import UserError

SHAPE = (6, 6, 2)  # the L2 Square Attack needs at least 5x5 pixels


def linear_logits(x, w, b):
  return x.reshape(x.shape[0], -1) @ w + b


def random_linear(num_classes=5, seed=0):
  rng = np.random.default_rng(seed)
  w = rng.normal(0, 0.3, (int(np.prod(SHAPE)), num_classes)).astype(np.float32)
  b = rng.normal(0, 0.3, num_classes).astype(np.float32)
  return functools.partial(linear_logits, w=jnp.asarray(w), b=jnp.asarray(b))


def disjoint_linear(num_classes=4, seed=0):
  """Class k reads only its own block of pixels, so raising one logit leaves
  the others unchanged."""
  d = int(np.prod(SHAPE))
  rng = np.random.default_rng(seed)
  w = np.zeros((d, num_classes), np.float32)
  for k, block in enumerate(np.array_split(np.arange(d), num_classes)):
    w[block, k] = rng.uniform(0.5, 1.5, len(block))
  return functools.partial(linear_logits, w=jnp.asarray(w),
                           b=jnp.zeros(num_classes))


def images(n=8, seed=1):
  """Random images with some pixels at the box's edges, and their labels
  under `model`."""
  x = np.random.default_rng(seed).uniform(-1, 1, (n, *SHAPE))
  x[:, 0] = 1.
  x[:, 1] = -1.
  return jnp.asarray(x, jnp.float32)


def labels(logits_fn, x):
  return jnp.argmax(logits_fn(x), axis=-1).astype(jnp.int32)


SMALL = {
    "apgd": (aa.apgd, {"num_steps": 12, "num_restarts": 2}),
    "apgd-dlr": (aa.apgd, {"loss": "dlr", "num_steps": 12}),
    "apgd-t": (aa.apgd_targeted, {"num_steps": 12, "n_target_classes": 3}),
    "fab-t": (aa.fab_targeted, {"num_steps": 12, "n_target_classes": 3,
                                "num_restarts": 2}),
    "square": (aa.square, {"num_queries": 100}),
}


@pytest.mark.parametrize("norm,eps", [("linf", 0.5), ("l2", 3.)])
@pytest.mark.parametrize("name", sorted(SMALL))
def test_every_attack_stays_in_the_eps_ball_and_the_image_box(name, norm,
                                                                eps):
  fn, kwargs = SMALL[name]
  logits_fn = random_linear()
  x = images()
  y = labels(logits_fn, x)
  out = fn(logits_fn, x, y, jax.random.key(0), eps=eps, norm=norm, **kwargs)
  adv = np.asarray(out["images"])
  delta = np.asarray(out["images"] - x).reshape(len(x), -1)
  dist = (np.abs(delta).max(-1) if norm == "linf"
          else np.sqrt(np.square(delta).sum(-1)))
  assert adv.shape == x.shape
  assert dist.max() <= eps * (1 + 1e-6)
  assert adv.min() >= -1 and adv.max() <= 1
  # The attack did something: these eps break most points of a random model.
  wrong = np.asarray(labels(logits_fn, out["images"]) != y)
  np.testing.assert_array_equal(np.asarray(out["success"]), wrong)
  assert wrong.sum() >= 5
  np.testing.assert_array_equal(adv[~wrong], np.asarray(x)[~wrong])


def test_points_misclassified_to_begin_with_are_left_alone():
  logits_fn = random_linear()
  x = images()
  y = (labels(logits_fn, x) + 1) % 5
  for fn, kwargs in SMALL.values():
    out = fn(logits_fn, x, y, jax.random.key(0), eps=0.3, **kwargs)
    assert np.asarray(out["success"]).all()
    np.testing.assert_array_equal(np.asarray(out["images"]), np.asarray(x))


# --- APGD's step-size schedule ------------------------------------------------


def test_apgd_checkpoints_follow_the_papers_sequence():
  # p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06), in
  # percent so that the arithmetic is exact; w_j = p_j * N for N = 100.
  p = [0, 22]
  while p[-1] + max(p[-1] - p[-2] - 3, 6) <= 100:
    p.append(p[-1] + max(p[-1] - p[-2] - 3, 6))
  assert aa.apgd_checkpoints(100) == p[1:] == [22, 41, 57, 70, 80, 87, 93, 99]
  # The authors' code in whole iterations: 2, then every iteration.
  assert aa.apgd_checkpoints(10) == list(range(2, 11))
  assert aa.apgd_checkpoints(0) == []


@pytest.mark.parametrize(
    "increases,reduced_last,best_last,best_now,want",
    [(16, True, 0., 1., True), (17, True, 0., 1., False),
     (22, False, 1., 1., True), (22, False, 0., 1., False),
     (22, True, 1., 1., False), (0, True, 0., 5., True)],
    ids=["few-increases", "enough-increases", "stalled-since-last-check",
         "improved-since-last-check", "halved-last-time", "no-increase"])
def test_step_is_halved_by_the_papers_two_conditions(increases, reduced_last,
                                                     best_last, best_now,
                                                     want):
  # Condition 1: at most rho * interval = 0.75 * 22 = 16.5 increases.
  # Condition 2: not halved at the last check and no better best loss since.
  got = aa.apgd_halve_step(jnp.asarray([increases]), 22, 0.75,
                           jnp.asarray([reduced_last]),
                           jnp.asarray([best_last]), jnp.asarray([best_now]))
  assert bool(got[0]) == want


def test_apgd_halves_the_step_at_every_checkpoint_when_the_loss_stalls():
  # A linear model, eps too small to break it: the first step reaches the
  # corner of the eps-box that maximises the loss and the loss stays there,
  # so condition 1 holds at each of the 8 checkpoints of 100 steps.
  logits_fn = random_linear()
  x = images(4)
  y = labels(logits_fn, x)
  for num_steps, halvings in ((100, 8), (21, 15), (0, 0)):
    assert len(aa.apgd_checkpoints(num_steps)) == halvings
    out = aa.apgd(logits_fn, x, y, jax.random.key(0), eps=1e-5,
                  num_steps=num_steps)
    assert not np.asarray(out["success"]).any()
    np.testing.assert_allclose(out["step_size"], 2e-5 / 2 ** halvings,
                               rtol=1e-6)


# --- losses -------------------------------------------------------------------


def test_dlr_losses_match_their_formulas():
  z = np.array([[3., 1., 2., -1.], [0.5, 4., 1., 2.], [1., 1., 0., -2.]],
               np.float32)
  y = np.array([0, 0, 1], np.int32)
  t = np.array([2, 3, 2], np.int32)
  s = -np.sort(-z, axis=1)  # pi_1 >= pi_2 >= ...
  want = [-(3 - 2) / (3 - 1), -(0.5 - 4) / (4 - 1), -(1 - 1) / (1 - 0)]
  np.testing.assert_allclose(aa.dlr_loss(z, y), want, rtol=1e-6)
  want_t = [-(z[i, y[i]] - z[i, t[i]]) / (s[i, 0] - (s[i, 2] + s[i, 3]) / 2)
            for i in range(3)]
  np.testing.assert_allclose(aa.targeted_dlr_loss(z, y, t), want_t, rtol=1e-6)
  # DLR does not change when the logits are shifted or scaled.
  np.testing.assert_allclose(aa.dlr_loss(3 * z + 7, y), want, rtol=1e-5)
  ce = -np.log(np.exp(z[0, 0]) / np.exp(z[0]).sum())
  np.testing.assert_allclose(losses.cross_entropy(z, y)[0], ce, rtol=1e-6)


# --- FAB's projection and targets ---------------------------------------------


def _bisection_projection(t, w, b, norm):
  """The same minimiser found by bisection on lam (slow, obviously right)."""
  c = b - w @ t
  w = w * np.sign(c)
  v = np.sign(w) if norm == "linf" else w
  lo, hi = 0., 1e6

  def reach(lam):
    return w @ np.clip(lam * v, -1 - t, 1 - t)

  if reach(hi) < abs(c):
    return np.clip(hi * v, -1 - t, 1 - t)
  for _ in range(200):
    mid = (lo + hi) / 2
    lo, hi = (mid, hi) if reach(mid) < abs(c) else (lo, mid)
  return np.clip(hi * v, -1 - t, 1 - t)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_fab_projection_is_the_smallest_step_onto_the_hyperplane_in_the_box(
    norm):
  rng = np.random.default_rng(0)
  t = rng.uniform(-1, 1, (5, 30)).astype(np.float32)
  t[:, :5] = 1.  # on the box's edge
  w = rng.normal(size=(5, 30)).astype(np.float32)
  w[:, 5:8] = 0.
  b = np.sum(w * t, axis=1) + rng.normal(size=5).astype(np.float32) * 3
  b[4] = np.sum(w[4] * t[4]) + 1e3  # out of the box's reach
  d = np.asarray(aa.project_onto_hyperplane_in_box(t, w, b, norm))
  for i in range(5):
    want = _bisection_projection(t[i].astype(np.float64),
                                 w[i].astype(np.float64), float(b[i]), norm)
    np.testing.assert_allclose(d[i], want, atol=1e-4)
  assert np.all(t + d <= 1 + 1e-6) and np.all(t + d >= -1 - 1e-6)
  np.testing.assert_allclose(np.sum(w[:4] * (t[:4] + d[:4]), axis=1), b[:4],
                             rtol=1e-4, atol=1e-3)
  assert np.all(d[:, 5:8] == 0)


@pytest.mark.parametrize("norm,eps", [("linf", 0.2), ("l2", 1.)])
@pytest.mark.parametrize("attack", ["apgd-t", "fab-t"])
def test_targeted_attacks_reach_their_target_on_a_linear_model(attack, norm,
                                                               eps):
  # Logits 5 and 4.5 (fixed) for classes 0 and 1, class 2 in [0, 3.6] and
  # able to climb past 5, class 3 fixed at -1. The first target (class 1,
  # the second most likely) cannot be reached; the second (class 2) can.
  d = int(np.prod(SHAPE))
  w = np.zeros((d, 4), np.float32)
  w[np.array_split(np.arange(d), 4)[2], 2] = 2.
  logits_fn = functools.partial(linear_logits, w=jnp.asarray(w),
                                b=jnp.asarray([5., 4.5, 0., -1.]))
  x = jnp.abs(images(6)) * 0.1
  y = labels(logits_fn, x)
  np.testing.assert_array_equal(jnp.argsort(-logits_fn(x), axis=-1),
                                [[0, 1, 2, 3]] * 6)
  fn = aa.apgd_targeted if attack == "apgd-t" else aa.fab_targeted
  first = fn(logits_fn, x, y, jax.random.key(0), eps=eps, norm=norm,
             num_steps=20, n_target_classes=1)
  assert not np.asarray(first["success"]).any()
  both = fn(logits_fn, x, y, jax.random.key(0), eps=eps, norm=norm,
            num_steps=20, n_target_classes=2)
  assert np.asarray(both["success"]).all()
  np.testing.assert_array_equal(labels(logits_fn, both["images"]), 2)
  # An untargeted attack breaks every point at this eps.
  untargeted = aa.apgd(logits_fn, x, y, jax.random.key(0), eps=eps,
                       norm=norm, num_steps=20)
  assert np.asarray(untargeted["success"]).all()


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_fab_finds_the_minimal_distance_to_a_linear_boundary(norm):
  # Far from the box's edges the smallest perturbation reaching
  # z_t - z_y = 0 is |z_t - z_y| / ||w_t - w_y||_dual; with disjoint weights
  # no third class gets in the way.
  logits_fn = disjoint_linear()
  x = images(6) * 0.05
  y = labels(logits_fn, x)
  w = np.asarray(logits_fn.keywords["w"])
  z = np.asarray(logits_fn(x))
  t = np.argsort(-z, axis=-1)[:, 1]
  dw = w[:, t] - w[:, np.asarray(y)]
  dual = np.abs(dw).sum(0) if norm == "linf" else np.sqrt((dw ** 2).sum(0))
  exact = (z[np.arange(6), np.asarray(y)] - z[np.arange(6), t]) / dual
  out = aa.fab_targeted(logits_fn, x, y, jax.random.key(0), eps=10.,
                        norm=norm, num_steps=20, n_target_classes=1)
  assert np.asarray(out["success"]).all()
  found = np.asarray(out["distance"])
  assert np.all(found >= exact * (1 - 1e-4))
  assert np.all(found <= exact * 1.06)  # FAB overshoots by eta = 1.05


# --- Square Attack ------------------------------------------------------------


def test_square_p_schedule_and_window_sizes_follow_the_paper():
  p = aa.square_p_schedule(5000, 0.8)
  assert p[0] == p[10] == 0.8 and p[11] == 0.4 and p[50] == 0.4
  assert p[51] == 0.2 and p[201] == 0.1 and p[501] == 0.05
  assert p[4000] == 0.8 / 64 and p[4001] == 0.8 / 128 and len(p) == 5000
  rescaled = aa.square_p_schedule(5000, 0.8, rescale_schedule=True)
  assert rescaled[5] == 0.8 and rescaled[6] == 0.4
  assert rescaled[4999] == 0.8 / 512
  sizes = aa.square_sizes(5000, 28, 28, "linf")
  assert sizes[0] == 25 and sizes[11] == 18 and sizes.min() >= 1
  l2_sizes = aa.square_sizes(5000, 28, 28, "l2")
  assert l2_sizes.min() >= 3 and np.all(l2_sizes % 2 == 1)


def test_square_l2_window_pattern():
  for s in (3, 4, 7):
    eta = aa.square_l2_window(s)
    assert eta.shape == (s, s)
    assert np.sum(eta ** 2) == pytest.approx(1.)
    assert np.all(eta[:s // 2] > 0) and np.all(eta[s // 2:] < 0)
  eta = aa.square_l2_window(7)
  np.testing.assert_allclose(eta, eta[:, ::-1], atol=1e-7)
  # Nested rings: the centre of each half (rows 0-2 and 3-6) weighs most.
  assert eta[1, 3] == eta[:3].max() and eta[5, 3] == eta[3:].min()
  assert eta[1, 3] > eta[1, 2] > eta[0, 1] > 0


# --- the AutoAttack cascade ---------------------------------------------------


def pixel_classifier(num_classes=4):
  """Predicts class k where pixel k is largest; a "break" sets a pixel."""

  def logits_fn(x):
    return x.reshape(x.shape[0], -1)[:, :num_classes] * 10.

  return logits_fn


def fake_attack(breaks, calls, name):
  """An attack that breaks the points whose first pixel value is listed in
  `breaks` (their image ids), moving them by 0.1 towards class (y+1) % K."""

  def attack(logits_fn, x, y, rng, *, eps, norm, **kwargs):
    del rng, kwargs
    ids = np.asarray(x)[:, 4, 0, 0]
    calls.append((name, len(ids), sorted(set(np.round(ids * 100).astype(int)))))
    hit = np.isin(np.round(ids * 100).astype(int), breaks)
    flat = np.asarray(x).reshape(len(ids), -1).copy()
    rows = np.flatnonzero(hit)
    step = 0.1 if name != "far" else 10 * eps
    flat[rows, (np.asarray(y)[rows] + 1) % 4] = (
        flat[rows, np.asarray(y)[rows]] + step)
    adv = jnp.asarray(flat.reshape(x.shape))
    return {"images": adv, "success": jnp.asarray(hit)}

  return attack


def cascade_images(n=10):
  x = np.zeros((n, *SHAPE), np.float32)
  x[:, 0, :2] = 0.45
  x[:, 0, 0, 0] = 0.5  # pixel 0 is the largest: class 0 for every point
  x[:, 4, 0, 0] = np.arange(n) / 100  # an id the fake attacks read
  return x, np.zeros(n, np.int32)


def test_autoattack_reports_the_per_point_worst_case(monkeypatch):
  calls = []
  monkeypatch.setitem(aa._ATTACK_FNS, "apgd-ce",  # pylint: disable=protected-access
                      (fake_attack([1, 2], calls, "a"), {}))
  monkeypatch.setitem(aa._ATTACK_FNS, "apgd-t",  # pylint: disable=protected-access
                      (fake_attack([2, 3, 7], calls, "b"), {}))
  monkeypatch.setitem(aa._ATTACK_FNS, "fab-t",  # pylint: disable=protected-access
                      (fake_attack([4], calls, "far"), {}))
  monkeypatch.setitem(aa._ATTACK_FNS, "square",  # pylint: disable=protected-access
                      (fake_attack([5], calls, "c"), {}))
  x, y = cascade_images()
  y[9] = 1  # misclassified to begin with
  result = aa.autoattack(pixel_classifier(), x, y, eps=0.2, batch_size=4)
  want = ["", "apgd-ce", "apgd-ce", "apgd-t", "", "square", "", "apgd-t", "",
          "clean"]
  assert result.broken_by.tolist() == want
  np.testing.assert_array_equal(result.robust, [b == "" for b in want])
  assert result.robust_accuracy == pytest.approx(0.4)
  assert result.clean_accuracy == pytest.approx(0.9)
  assert result.accuracy_after == pytest.approx(
      {"clean": 0.9, "apgd-ce": 0.7, "apgd-t": 0.5, "fab-t": 0.5,
       "square": 0.4})
  # Each attack saw only the points still standing, in chunks of <= 4
  # padded to power-of-two buckets (at least 8 would exceed batch_size 4).
  seen = {}
  for name, size, ids in calls:
    assert size == 4
    seen.setdefault(name, set()).update(ids)
  assert seen == {"a": set(range(9)), "b": {0, 3, 4, 5, 6, 7, 8},
                  "far": {0, 4, 5, 6, 8}, "c": {0, 4, 5, 6, 8}}
  # Broken points carry the image of the attack that broke them; a
  # misclassified image outside the eps-ball (fab-t's on point 4) does not
  # count.
  assert result.images[1].reshape(-1)[1] == pytest.approx(0.6)
  np.testing.assert_array_equal(result.images[4], x[4])
  np.testing.assert_array_equal(result.images[0], x[0])
  assert result.black_box_only.tolist() == [i == 5 for i in range(10)]
  assert any("Square" in f for f in result.gradient_masking_flags())
  assert "accuracy after square   40.00%" in result.summary()


def test_bucket_sizes_are_powers_of_two_up_to_the_batch_size():
  assert [aa._bucket(n, 500) for n in (1, 8, 9, 100, 300, 500)] == [  # pylint: disable=protected-access
      8, 8, 16, 128, 500, 500]
  chunks = list(aa._padded_chunks(np.arange(11), 8))  # pylint: disable=protected-access
  assert [len(r) for r, _ in chunks] == [8, 3]
  assert chunks[1][1].tolist() == [8, 9, 10, 10, 10, 10, 10, 10]


def test_fast_version_runs_apgd_only_and_finds_real_adversarials():
  logits_fn = random_linear()
  x = images(8)
  y = labels(logits_fn, x)
  result = aa.autoattack(logits_fn, np.asarray(x), np.asarray(y), eps=0.2,
                         version="fast", batch_size=8,
                         options={"apgd-ce": {"num_steps": 10},
                                  "apgd-t": {"num_steps": 10,
                                             "n_target_classes": 2}})
  assert result.attacks == ("apgd-ce", "apgd-t") and result.version == "fast"
  broken = ~result.robust
  assert broken.sum() >= 3
  pred = np.asarray(labels(logits_fn, jnp.asarray(result.images)))
  assert np.all(pred[broken] != np.asarray(y)[broken])
  assert np.abs(result.images - np.asarray(x)).max() <= 0.2 + 1e-6
  assert not result.zero_gradient.any()


def test_zero_gradients_are_reported():
  def flat_logits(x):  # piecewise constant in x: zero gradient everywhere
    return jnp.round(x.reshape(x.shape[0], -1)[:, :4] * 3)

  x = images(4) * 0 + 0.5
  x = x.at[:, 0, 0, 0].set(0.9)
  y = jnp.zeros(4, jnp.int32)
  result = aa.autoattack(flat_logits, x, y, eps=0.01, attacks=["apgd-ce"],
                         options={"apgd-ce": {"num_steps": 2}})
  assert result.zero_gradient.all() and result.version == "custom"
  assert any("zero input gradient" in f
             for f in result.gradient_masking_flags())


# --- malformed inputs ---------------------------------------------------------


def _call(kind):
  logits_fn = random_linear()
  x = images(4)
  y = labels(logits_fn, x)
  key = jax.random.key(0)
  calls = {
      "norm": lambda: aa.apgd(logits_fn, x, y, key, eps=0.1, norm="l1"),
      "eps": lambda: aa.apgd(logits_fn, x, y, key, eps=-0.1),
      "eps-vector": lambda: aa.square(logits_fn, x, y, key, eps=[0.1, 0.2]),
      "x-3d": lambda: aa.apgd(logits_fn, x[0], y, key, eps=0.1),
      "x-range": lambda: aa.apgd(logits_fn, x * 255, y, key, eps=0.1),
      "y-float": lambda: aa.apgd(logits_fn, x, y * 1., key, eps=0.1),
      "y-range": lambda: aa.fab_targeted(logits_fn, x, y + 10, key, eps=0.1),
      "loss": lambda: aa.apgd(logits_fn, x, y, key, eps=0.1, loss="cw"),
      "steps": lambda: aa.apgd(logits_fn, x, y, key, eps=0.1, num_steps=2.5),
      "restarts": lambda: aa.apgd(logits_fn, x, y, key, eps=.1,
                                  num_restarts=0),
      "rho": lambda: aa.apgd(logits_fn, x, y, key, eps=0.1, rho=1.5),
      "targets": lambda: aa.apgd_targeted(logits_fn, x, y, key, eps=0.1,
                                          n_target_classes=0),
      "classes": lambda: aa.apgd_targeted(
          functools.partial(linear_logits, w=jnp.ones((72, 3)), b=0.), x,
          y * 0, key, eps=0.1),
      "rng": lambda: aa.square(logits_fn, x, y, None, eps=0.1),
      "p_init": lambda: aa.square(logits_fn, x, y, key, eps=0.1, p_init=2.),
      "small-l2-square": lambda: aa.square(logits_fn, x[:, :4, :4], y, key,
                                           eps=0.1, norm="l2"),
      "beta": lambda: aa.fab_targeted(logits_fn, x, y, key, eps=0.1,
                                      beta=-1.),
      "version": lambda: aa.autoattack(logits_fn, x, y, 0.1, version="plus"),
      "attacks": lambda: aa.autoattack(logits_fn, x, y, 0.1,
                                       attacks=["apgd-ce", "pgd"]),
      "options": lambda: aa.autoattack(logits_fn, x, y, 0.1, version="fast",
                                       options={"square": {}}),
      "batch": lambda: aa.autoattack(logits_fn, x, y, 0.1, batch_size=0),
      "empty": lambda: aa.autoattack(logits_fn, x[:0], y[:0], 0.1),
  }
  return calls[kind]()


@pytest.mark.parametrize("kind", [
    "norm", "eps", "eps-vector", "x-3d", "x-range", "y-float", "y-range",
    "loss", "steps", "restarts", "rho", "targets", "classes", "rng", "p_init",
    "small-l2-square", "beta", "version", "attacks", "options", "batch",
    "empty"])
def test_malformed_inputs_give_one_line_user_errors(kind):
  with pytest.raises(UserError) as e:
    _call(kind)
  print(e.value)
  assert "\n" not in str(e.value)
