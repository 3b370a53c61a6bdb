"""The field's training modes: TRADES, MART and fast AT (FGSM-RS).

Their losses and inner attacks against PyTorch and ART on identical weights
are in tests/test_training_modes_reference.py; here: the registry sees them,
the losses' equations on hand-made logits, the attacks' constraints, and the
classifier step's use of a mode's own loss (the modes' study configs train in
tests/test_adversarial_training.py).
"""

import dataclasses
import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advjax import (adversarial_training, adversaries, evaluate, losses,
                    models, robust_losses)
from advjax.models.cnn import SmallCNN
from advjax.evaluators import robustness
from advjax.trainers import classifier
from tests.helpers import ROOT
from tests.test_adversarial_training import (SMALL, _batches, _config,
                                             _state, _train)

MODES = ("trades", "mart", "fgsm_rs")


def _softmax(z):
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def _logits(seed=0, shape=(6, 5), scale=2.0):
  return np.random.default_rng(seed).normal(0, scale, shape).astype(
      np.float32)


def test_training_the_report_and_the_study_see_the_new_modes():
  spec = importlib.util.spec_from_file_location(
      "study", os.path.join(ROOT, "experiments", "study.py"))
  study = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(study)
  for name in MODES:
    entry = adversaries.get(name)
    assert entry.trains and entry.norm_bounded
    assert name in adversaries.training_modes()
    assert name in study.all_modes()
    # A report runs them when named (--attacks=trades), not by default:
    # their examples are PGD's or FGSM's under another loss.
    assert name in robustness.attackable()
    assert name not in robustness.default_attacks()
    assert name in evaluate.attack_flags()
  assert adversaries.get("trades").loss is not None
  assert adversaries.get("mart").loss is not None
  assert adversaries.get("fgsm_rs").loss is None
  assert adversaries.get("fgsm_rs").check_overfitting
  # The authors' defaults.
  assert adversaries.get("trades").settings().beta == 6.0
  assert adversaries.get("mart").settings().beta == 6.0
  assert adversaries.get("trades").settings().num_steps == 10
  assert adversaries.get("fgsm_rs").settings().rel_step_size == 1.25


def test_a_loss_needs_a_mode_that_trains():
  with pytest.raises(ValueError, match="does not train"):
    adversaries.register("lossy", adversaries.TRADESSettings, trains=False,
                         loss=lambda *a: 0.0)(lambda *a: {})
  assert "lossy" not in adversaries.ADVERSARIES


def test_trades_and_mart_losses_are_their_equations():
  clean, adv = _logits(0), _logits(1)
  y = np.array([0, 1, 2, 3, 4, 0])
  p, q = _softmax(clean), _softmax(adv)
  kl = np.sum(p * (np.log(p) - np.log(q)), -1)
  ce = -np.log(p[np.arange(6), y])
  np.testing.assert_allclose(
      robust_losses.trades_loss(clean, adv, y, 6.0), ce + 6.0 * kl,
      rtol=1e-5)
  others = np.where(np.eye(5, dtype=bool)[y], -1.0, q)
  bce = -np.log(q[np.arange(6), y]) - np.log(1 - others.max(-1))
  want = bce + 6.0 * kl * (1 - p[np.arange(6), y])
  np.testing.assert_allclose(
      robust_losses.mart_loss(clean, adv, y, y, 6.0), want, rtol=1e-5)
  # No perturbation: TRADES is the cross-entropy, the KL terms vanish.
  np.testing.assert_allclose(robust_losses.trades_loss(clean, clean, y, 6.),
                             ce, rtol=1e-5)


def _model_and_fn(seed=0, shape=(8, 8, 1)):
  model = SmallCNN(num_classes=10, widths=(4,), convs_per_stage=1, hidden=8)
  x = jax.random.uniform(jax.random.key(seed), (6, *shape), minval=-1.,
                         maxval=1.)
  variables = model.init(jax.random.key(seed + 1), x, train=False)
  return (lambda z: model.apply(variables, z, train=False)), x


def test_inner_attacks_stay_in_the_ball_and_the_valid_range():
  logits_fn, x = _model_and_fn()
  y = jnp.arange(6) % 10
  eps = 0.3
  rng = jax.random.key(2)
  for name in MODES:
    entry = adversaries.get(name)
    s = entry.settings(eps=eps)
    out = jax.jit(lambda x, y, r: entry.craft(
        s, adversaries.Target(logits_fn), x, y, r)["image"])(x, y, rng)
    assert np.abs(np.asarray(out) - np.asarray(x)).max() <= eps + 1e-6
    assert np.asarray(out).min() >= -1 and np.asarray(out).max() <= 1
  # The KL attack raises the KL it ascends.
  clean = logits_fn(x)
  start = robust_losses.gaussian_start(rng, x, 0.002)
  adv = robust_losses.kl_pgd(logits_fn, x, start, eps=eps, step_size=0.1,
                             num_steps=3)
  assert float(jnp.sum(robust_losses.kl_divergence(clean, logits_fn(adv)))) > (
      float(jnp.sum(robust_losses.kl_divergence(clean, logits_fn(start)))))


def test_fgsm_rs_is_wong_et_al_s_step():
  logits_fn, x = _model_and_fn(3)
  y = jnp.arange(6) % 10
  eps, alpha = 0.2, 0.25
  delta = robust_losses.uniform_start(jax.random.key(0), x, eps)
  got = robust_losses.fgsm_rs(logits_fn, x, y, delta, eps=eps, alpha=alpha)
  # Their code: clamp the start to the range, one signed step on delta,
  # clamp delta to the ball, then x + delta to the range.
  delta = jnp.clip(delta, -1 - x, 1 - x)
  g = jax.grad(lambda d: jnp.sum(losses.cross_entropy(logits_fn(x + d), y)))(
      delta)
  delta = jnp.clip(delta + alpha * jnp.sign(g), -eps, eps)
  want = jnp.clip(x + delta, -1, 1)
  np.testing.assert_allclose(got, want, atol=1e-6)


def _fixed_craft(monkeypatch, name, shift=0.05):
  """Replaces mode `name`'s craft by x + shift (clipped), keeping its
  loss."""
  entry = adversaries.ADVERSARIES[name]
  fixed = dataclasses.replace(
      entry, craft=lambda s, t, x, y, r: {"image": jnp.clip(x + shift, -1, 1)})
  monkeypatch.setitem(adversaries.ADVERSARIES, name, fixed)


@pytest.mark.parametrize("name,prop", [("trades", 1.0), ("mart", 1.0),
                                       ("trades", 0.5)])
def test_the_step_trains_on_the_modes_loss_from_two_train_passes(
    monkeypatch, name, prop):
  _fixed_craft(monkeypatch, name)
  config = _config(name, prop=prop)
  batch = _batches(1, batch_size=8)[0]
  _, state, plan, _ = _state(config, SMALL)
  x, y = jnp.asarray(batch["image"]), jnp.asarray(batch["label"])
  k = plan.num_crafted(8)

  # One device: the same model without BatchNorm's cross-device mean.
  model = models.create_model(config.model, 10, axis_name=None)

  def apply(stats, images):
    return jax.jit(lambda v, z: model.apply(
        v, z, train=True, mutable=["batch_stats"]))(
            {"params": state.params, "batch_stats": stats}, images)

  real, upd = apply(state.batch_stats, x)
  adv, upd = apply(upd["batch_stats"], jnp.clip(x[:k] + 0.05, -1, 1))
  crafted = plan.loss(real[:k], adv, y[:k], y[:k])
  if k == 8:
    want = float(jnp.mean(crafted))
  else:
    clean = float(jnp.mean(losses.cross_entropy(real[k:], y[k:])))
    want = float(adversarial_training.weighted_loss(
        clean, jnp.mean(crafted), 8 - k, k, 0.3))
  history, final = _train(jax.devices()[:1], [batch], config)
  assert float(history[0]["loss"]) == pytest.approx(want, rel=1e-5)
  assert float(history[0]["aug_loss"]) == pytest.approx(
      float(jnp.mean(crafted)), rel=1e-5)
  # Both passes update the BatchNorm averages, in turn.
  for a, b in zip(jax.tree.leaves(upd["batch_stats"]),
                  jax.tree.leaves(final.batch_stats)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_the_overfitting_warning_fires_below_the_fraction_of_the_best():
  assert classifier.overfitting_warning(0.3, 0.5, 0.5, 256, "FGSM-RS") is None
  warning = classifier.overfitting_warning(0.1, 0.5, 0.5, 256, "FGSM-RS")
  assert "catastrophic overfitting of FGSM-RS" in warning
  assert "10.0%" in warning and "50.0%" in warning
