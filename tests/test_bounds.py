"""bounds=(low, high): every attack, AutoAttack and the robustness report
take the model's valid input range, keep their images in it, count eps in
its units, refuse images outside it in one line, and warn when a batch
under the default [-1, 1] looks like [0, 1]."""

from __future__ import annotations

import functools
import json
import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advjax import attacks, evaluate
from advjax.attacks import apgd, autoattack, fab, square
from advjax.errors import UserError

# One worker runs this module, so its module fixtures are built once
# (pyproject.toml: --dist=loadgroup).
pytestmark = pytest.mark.xdist_group("bounds")


class _Net(nn.Module):
  """A tiny classifier on [0, 1] images (as a model outside advjax)."""

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(4, (3, 3))(x))
    return nn.Dense(5)(x.reshape(x.shape[0], -1))


@pytest.fixture(scope="module")
def model01():
  """(logits_fn on [0, 1], images in [0, 1], labels)."""
  net = _Net()
  x = np.asarray(jax.random.uniform(jax.random.key(0), (8, 6, 6, 1)))
  variables = net.init(jax.random.key(1), x)
  logits_fn = functools.partial(net.apply, variables)
  y = np.asarray(jnp.argmax(logits_fn(x), -1)).astype(np.int32)
  return logits_fn, x, y


EPS = 0.1  # in [0, 1] units


def _all_attacks(logits_fn, x, y, bounds, eps=EPS):
  """{name: adversarial images} of every attack at `bounds`."""
  key = jax.random.key(3)
  kw = dict(eps=eps, bounds=bounds)
  out = {
      "fgsm": attacks.fgsm(logits_fn, x, y, eps, bounds=bounds),
      "fgsm_least_likely": attacks.fgsm_least_likely(logits_fn, x, eps,
                                                     bounds=bounds),
      "pgd": attacks.pgd(logits_fn, x, y, key, step_size=eps / 4,
                         num_steps=5, **kw),
      "pgd_l2": attacks.pgd(logits_fn, x, y, key, step_size=eps,
                            num_steps=5, norm="l2", eps=10 * eps,
                            bounds=bounds),
      "apgd": apgd.apgd(logits_fn, x, y, key, num_steps=5, **kw)["images"],
      "apgd_t": apgd.apgd_targeted(logits_fn, x, y, key, num_steps=5,
                                   n_target_classes=2, **kw)["images"],
      "fab_t": fab.fab_targeted(logits_fn, x, y, key, num_steps=5,
                                n_target_classes=2, **kw)["images"],
      "square": square.square(logits_fn, x, y, key, num_queries=20,
                              **kw)["images"],
      "autoattack": autoattack.autoattack(logits_fn, x, y, eps,
                                          version="standard", rng=0,
                                          bounds=bounds, options={
                                              "apgd-ce": {"num_steps": 5},
                                              "apgd-t": {"num_steps": 5},
                                              "fab-t": {"num_steps": 5},
                                              "square": {"num_queries": 20}},
                                          ).images,
  }
  positions = attacks.random_positions(key, len(x), x.shape[1:3], (3, 3))
  out["patch"] = attacks.apply_patch(x, jnp.full((3, 3, 1), 1.), positions,
                                     bounds=bounds)
  return {k: np.asarray(v) for k, v in out.items()}


def test_every_attack_keeps_its_images_in_bounds_0_1(model01):
  logits_fn, x, y = model01
  for name, adv in _all_attacks(logits_fn, x, y, (0., 1.)).items():
    assert adv.shape == x.shape, name
    assert adv.min() >= 0. and adv.max() <= 1., (name, adv.min(), adv.max())
    if name not in ("patch", "pgd_l2"):
      assert np.abs(adv - x).max() <= EPS + 1e-6, name


def test_attacks_on_0_1_equal_those_on_minus_1_1_with_twice_the_eps(model01):
  """The same model seen in [-1, 1] (x -> (x + 1) / 2 inside) with eps in
  those units (2 eps) gives the same adversarial images, mapped back."""
  logits_fn, x, y = model01
  logits_pm = lambda z: logits_fn((z + 1) / 2)
  x_pm = 2 * x - 1
  ours = attacks.fgsm(logits_fn, x, y, EPS, bounds=(0, 1))
  theirs = attacks.fgsm(logits_pm, x_pm, y, 2 * EPS)
  np.testing.assert_allclose(np.asarray(ours), (np.asarray(theirs) + 1) / 2,
                             atol=1e-6)
  key = jax.random.key(5)
  ours = attacks.pgd(logits_fn, x, y, key, eps=EPS, step_size=EPS / 4,
                     num_steps=5, random_start=False, bounds=(0, 1))
  theirs = attacks.pgd(logits_pm, x_pm, y, key, eps=2 * EPS,
                       step_size=EPS / 2, num_steps=5, random_start=False)
  np.testing.assert_allclose(np.asarray(ours), (np.asarray(theirs) + 1) / 2,
                             atol=1e-5)


@pytest.mark.parametrize("call", ["fgsm", "pgd", "autoattack", "apgd",
                                  "report"])
def test_images_outside_the_bounds_are_refused_in_one_line(model01, call):
  logits_fn, x, y = model01
  x_bad = x * 2  # up to 2: outside (0, 1)
  fns = {
      "fgsm": lambda: attacks.fgsm(logits_fn, x_bad, y, EPS, bounds=(0, 1)),
      "pgd": lambda: attacks.pgd(logits_fn, x_bad, y, jax.random.key(0),
                                 eps=EPS, step_size=EPS, num_steps=1,
                                 bounds=(0, 1)),
      "autoattack": lambda: autoattack.autoattack(
          logits_fn, x_bad, y, EPS, version="fast", bounds=(0, 1)),
      "apgd": lambda: apgd.apgd(logits_fn, x_bad, y, jax.random.key(0),
                                eps=EPS, num_steps=2, bounds=(0, 1)),
      "report": lambda: evaluate.report_model(logits_fn, x_bad, y,
                                              bounds=(0, 1), eps=(EPS,)),
  }
  with pytest.raises(UserError) as e:
    fns[call]()
  message = str(e.value)
  assert "\n" not in message
  assert "[0, 1]" in message and "bounds=" in message


def test_bad_bounds_are_one_line():
  x = np.zeros((2, 4, 4, 1), np.float32)
  y = np.zeros(2, np.int32)
  logits_fn = lambda z: jnp.zeros((z.shape[0], 3)) + z.sum()
  for bounds, words in (((1, 0), "low < high"), ((0,), "(low, high)"),
                        ("ab", "(low, high)")):
    with pytest.raises(UserError, match=words):
      attacks.fgsm(logits_fn, x, y, 0.1, bounds=bounds)


def test_a_0_1_looking_batch_under_the_default_bounds_gets_one_warning(
    model01):
  logits_fn, x, y = model01
  with pytest.warns(UserWarning) as record:
    autoattack.autoattack(logits_fn, x, y, EPS, version="fast",
                          options={"apgd-ce": {"num_steps": 2},
                                   "apgd-t": {"num_steps": 2}})
  messages = [str(w.message) for w in record
              if "bounds=(0, 1)" in str(w.message)]
  assert len(messages) == 1 and "\n" not in messages[0]
  assert "[0, 1]" in messages[0]
  # The same images in [-1, 1] (some negative pixel), or with bounds given:
  # no warning.
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    attacks.fgsm(logits_fn, 2 * x - 1, y, EPS)
    attacks.fgsm(logits_fn, x, y, EPS, bounds=(0, 1))


def test_report_model_writes_the_standard_report_of_any_logits_fn(
    model01, tmp_path):
  """A plain flax model on [0, 1] images: the same sections as the
  checkpoint report, numbers equal to the attacks called directly, every
  shown image written, provenance naming the model and its data."""
  logits_fn, x, y = model01
  eps = (0.05, 0.1)
  md = evaluate.report_model(
      logits_fn, x, y, str(tmp_path), bounds=(0, 1), eps=eps,
      attack_settings={"pgd": {"num_steps": 3}, "autoattack": {
          "version": "fast", "batch_size": 8}},
      batch_size=4, name="tiny flax net")
  assert "eps in [0, 1] pixel units" in md
  assert "| 0.05 |" in md and "AutoAttack accuracy" in md
  data = json.loads((tmp_path / "robustness.json").read_text())
  assert data["num_examples"] == len(y)
  assert data["clean_accuracy"] == 1.0  # labels are the model's own
  prov = data["provenance"]
  assert prov["settings"]["bounds"] == [0.0, 1.0]
  assert prov["checkpoints"]["classifier"]["model"] == "tiny flax net"
  assert prov["checkpoints"]["classifier"]["num_images"] == len(y)
  for e in eps:
    assert (tmp_path / f"robustness_eps{e:g}.png").exists()
  # FGSM's column is attacks.fgsm with the same bounds, batch by batch.
  row = {r["eps"]: r for r in data["rows"]}
  for e in eps:
    hits = 0
    for lo in range(0, len(y), 4):
      adv = attacks.fgsm(logits_fn, x[lo:lo + 4], y[lo:lo + 4], e,
                         bounds=(0, 1))
      hits += int(np.sum(np.argmax(logits_fn(adv), -1) == y[lo:lo + 4]))
    assert row[e]["fgsm_accuracy"] == pytest.approx(hits / len(y))
    assert row[e]["autoattack_accuracy"] <= row[e]["fgsm_accuracy"] + 1e-9


def test_report_model_refuses_arrays_that_are_not_images_and_labels(model01):
  logits_fn, x, y = model01
  with pytest.raises(UserError, match="NHWC"):
    evaluate.report_model(logits_fn, x[..., 0], y, bounds=(0, 1))
  with pytest.raises(UserError, match="one per image"):
    evaluate.report_model(logits_fn, x, y[:3], bounds=(0, 1))
