"""Adversarial training of classifiers (advjax.adversarial_training)."""

import functools
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds
from jax.sharding import PartitionSpec as P

from advjax import (adversarial_training, adversaries, attacks, inference,
                    losses, models, parallel, trainers)
from advjax.trainers import classifier as train
from advjax.errors import UserError
from tests.helpers import load_config

# One worker runs this module, so its module fixtures are built once
# (pyproject.toml: --dist=loadgroup).
pytestmark = pytest.mark.xdist_group("adversarial_training")

FM_SHAPE = (28, 28, 1)  # fashion_mnist, as the GAN fixture
SMALL = (8, 8, 1)


@pytest.fixture(scope="module")
def gan_workdir(tmp_path_factory):
  """A tiny AC-GAN trained for 2 steps on mock fashion_mnist."""
  config = load_config("quickstart_gan")
  config.model.generator.width = config.model.discriminator.width = 4
  config.model.latent_dim = 8
  config.batch_size = 8
  config.num_train_steps = 2
  config.eval_every_steps = config.checkpoint.every_steps = 2
  config.eval.samples_per_class = 1
  config.log_every_steps = 1
  config.progress_bar = False
  config.sample.num_columns = 2
  workdir = str(tmp_path_factory.mktemp("gan"))
  with tfds.testing.mock_data(num_examples=32):
    trainers.run(config, workdir)
  return workdir


def _config(mode=None, adversary=None, **aug):
  """A tiny CNN config; `aug` mixing fields, `adversary` the mode's own."""
  config = ml_collections.ConfigDict()
  config.model = ml_collections.ConfigDict(
      dict(name="cnn", widths=(4, 8), convs_per_stage=1, hidden=16,
           dropout_rate=0.0))
  config.optimizer = ml_collections.ConfigDict(
      dict(name="sgd", learning_rate=0.1, momentum=0.9, nesterov=True,
           weight_decay=1e-4, schedule="constant"))
  if mode is not None:
    config.adversarial_training = ml_collections.ConfigDict(
        dict(mode=mode, **aug))
    if adversary:
      config.adversarial_training[mode] = ml_collections.ConfigDict(
          adversary)
  return config


def _batches(n, batch_size=8, shape=SMALL, seed=0):
  rng = np.random.default_rng(seed)
  return [{"image": rng.uniform(-1, 1, (batch_size, *shape)).astype(np.float32),
           "label": rng.integers(0, 10, batch_size).astype(np.int32)}
          for _ in range(n)]


def _state(config, shape):
  plan, gan_variables = adversarial_training.read(config, 10, shape)
  model = models.create_model(config.model, 10, axis_name=parallel.AXIS,
                              dtype=jnp.dtype(config.get("dtype", "float32")))
  state = train.create_train_state(config, model, shape, jax.random.key(0),
                                   100)
  return model, state, plan, ({"gan": gan_variables} if gan_variables else {})


def _step(plan, mesh):
  return parallel.data_parallel(
      functools.partial(train.train_step,
                        settings=train.StepSettings(plan=plan)),
      mesh, in_specs=(P(), P(parallel.AXIS), P(), P()), out_specs=(P(), P()))


def _train(devices, batches, config, shape=SMALL):
  """Steps `batches` data-parallel over `devices`; (metrics, final state)."""
  mesh = parallel.make_mesh(devices)
  _, state, plan, frozen = _state(config, shape)
  state = parallel.replicate(state, mesh)
  step = _step(plan, mesh)
  rng = parallel.replicate(jax.random.key(1), mesh)
  frozen = parallel.replicate(frozen, mesh)
  history = []
  for b in batches:
    state, metrics = step(state, parallel.shard_batch(b, mesh), rng, frozen)
    history.append(jax.device_get(metrics))
  return history, jax.device_get(state)


def _augmented(config, batch, rng, shape=SMALL):
  """craft_batch (jit-compiled) with a freshly initialised classifier."""
  model, state, plan, frozen = _state(config, shape)
  variables = {"params": state.params, "batch_stats": state.batch_stats}

  @jax.jit
  def run(variables, frozen, batch, rng):
    logits_fn = lambda x: model.apply(variables, x, train=False)
    out = adversarial_training.craft_batch(
        plan, plan.target(logits_fn, frozen.get("gan")), batch, rng)
    counts = (out.pop("num_clean"), out.pop("num_aug"))
    return out, counts

  out, (n_clean, n_aug) = run(variables, frozen, batch, rng)
  out = jax.device_get(out)
  # Static ints (shapes), whatever jit made of them.
  out["num_clean"], out["num_aug"] = int(n_clean), int(n_aug)
  return out


def _formula(m, n_clean, n_aug, w=0.3):
  return (n_clean * m["clean_loss"] + w * n_aug * m["aug_loss"]) / (
      n_clean + w * n_aug)


def test_weighted_loss_is_kurakins_formula_on_hand_made_logits():
  logits = jnp.asarray([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0], [0.0, 3.0, 0.0],
                        [1.0, -2.0, 0.5], [0.0, 0.0, 4.0]])
  labels = jnp.asarray([0, 2, 1, 1, 2])
  z = np.asarray(logits, np.float64)
  logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
  ce = -logp[np.arange(5), np.asarray(labels)]
  n_c, n_a, w = 3, 2, 0.3
  expected = (n_c * ce[:3].mean() + w * n_a * ce[3:].mean()) / (n_c + w * n_a)
  per_example = losses.cross_entropy(logits, labels)
  np.testing.assert_allclose(per_example, ce, rtol=1e-5)
  loss, parts = adversarial_training.split_losses(per_example, logits, labels,
                                                  n_c, n_a, w)
  assert float(loss) == pytest.approx(expected, rel=1e-5)
  assert float(parts["clean_accuracy"]) == pytest.approx(2 / 3)
  assert float(parts["aug_accuracy"]) == pytest.approx(0.5)
  # Weight 1 is the plain mean over all examples.
  loss1, _ = adversarial_training.split_losses(per_example, logits, labels,
                                               n_c, n_a, 1.0)
  assert float(loss1) == pytest.approx(ce.mean(), rel=1e-5)


def test_mode_none_and_prop_zero_train_exactly_as_plain_training():
  assert adversarial_training.read(_config("none"), 10, SMALL) == (None, {})
  batches = _batches(3)
  devices = jax.devices()[:2]
  plain, s0 = _train(devices, batches, _config())
  zero, s1 = _train(devices, batches, _config("fgsm", prop=0.0))
  assert [m["loss"] for m in plain] == [m["loss"] for m in zero]
  assert set(zero[0]) == {"loss", "accuracy"}
  for a, b in zip(jax.tree.leaves(s0.params), jax.tree.leaves(s1.params)):
    np.testing.assert_array_equal(a, b)


def test_true_label_fgsm_examples_are_exactly_eps_from_the_real_images():
  batch = _batches(1, batch_size=8)[0]
  out = _augmented(_config("fgsm", dict(eps=0.1, target="true_label",
                                        random_eps=False), prop=0.5),
                   batch, jax.random.key(0))
  assert out["num_clean"] == 4 and out["num_aug"] == 4
  adv, src = np.asarray(out["image"][4:]), batch["image"][:4]
  np.testing.assert_array_equal(out["source_image"], src)
  np.testing.assert_array_equal(out["label"][4:], batch["label"][:4])
  diff = np.abs(adv - src)
  inside = np.abs(adv) < 1.0  # not clipped to the image range
  assert inside.mean() > 0.8
  np.testing.assert_allclose(diff[inside], 0.1, atol=1e-6)
  assert diff.max() <= 0.1 + 1e-6
  model, state, _, _ = _state(_config("fgsm"), SMALL)
  logits_fn = lambda x: model.apply({"params": state.params,
                                     "batch_stats": state.batch_stats}, x,
                                    train=False)
  np.testing.assert_allclose(adv, attacks.fgsm(logits_fn, src,
                                               batch["label"][:4], 0.1),
                             atol=1e-6)


def test_fgsm_training_takes_least_likely_steps_of_one_random_eps_per_batch():
  # Kurakin et al. 2017's "step l.l." with eps ~ U(1e-4, eps) per batch: the
  # default of mode fgsm.
  batch = _batches(1, batch_size=16)[0]
  config = _config("fgsm", dict(eps=0.1))
  model, state, _, _ = _state(config, SMALL)
  logits_fn = lambda x: model.apply({"params": state.params,
                                     "batch_stats": state.batch_stats}, x,
                                    train=False)
  src = batch["image"][:8]
  drawn = []
  for seed in range(3):
    out = _augmented(config, batch, jax.random.key(seed))
    adv = np.asarray(out["image"][8:])
    inside = np.abs(adv) < 1.0
    eps = np.abs(adv - src)[inside]
    assert inside.mean() > 0.8
    np.testing.assert_allclose(eps, eps[0], rtol=1e-4)  # one eps per batch
    assert 1e-4 <= eps[0] <= 0.1
    np.testing.assert_allclose(
        adv, attacks.fgsm_least_likely(logits_fn, src, float(eps[0])),
        atol=1e-5)
    drawn.append(float(eps[0]))
  assert len(set(np.round(drawn, 6))) == 3  # a fresh eps for each batch
  # Not the true-label step at that eps.
  assert not np.allclose(adv, attacks.fgsm(logits_fn, src, batch["label"][:8],
                                           drawn[-1]), atol=1e-5)


def test_replace_keeps_the_batch_size_and_add_grows_it():
  batch = _batches(1, batch_size=8)[0]
  for replace, n_clean, clean in ((True, 4, batch["image"][4:]),
                                  (False, 8, batch["image"])):
    out = _augmented(_config("fgsm", prop=0.5, replace=replace), batch,
                     jax.random.key(0))
    assert out["image"].shape[0] == n_clean + 4
    assert (out["num_clean"], out["num_aug"]) == (n_clean, 4)
    np.testing.assert_array_equal(out["image"][:n_clean], clean)
  # The step weighs all 8 real images of each device against its 4 added
  # ones: n_c = 8, n_a = 4 (replace, below: n_c = n_a).
  (m,), _ = _train(jax.devices()[:2], _batches(1, batch_size=16),
                   _config("fgsm", replace=False))
  assert float(m["loss"]) == pytest.approx(_formula(m, 8, 4), rel=1e-5)
  assert float(m["loss"]) != pytest.approx(_formula(m, 4, 4), rel=1e-5)


def test_prop_one_with_replace_trains_on_the_crafted_examples_only():
  history, state = _train(jax.devices()[:2], _batches(2),
                          _config("fgsm", prop=1.0))
  for m in history:
    assert np.isfinite(float(m["loss"]))
    assert float(m["loss"]) == pytest.approx(float(m["aug_loss"]), rel=1e-6)
    assert "clean_loss" not in m
    # The accuracy is the model's on the real images that were replaced.
    assert 0.0 <= float(m["accuracy"]) <= 1.0
    assert float(m["accuracy"]) == float(m["clean_accuracy"])
  assert int(state.bad_step) == -1


def test_train_step_gives_adversaries_the_device_axis(monkeypatch):
  seen = []
  craft_batch = adversarial_training.craft_batch

  def recording(plan, target, batch, rng):
    seen.append(target.axis_name)
    return craft_batch(plan, target, batch, rng)
  monkeypatch.setattr(adversarial_training, "craft_batch", recording)
  _train(jax.devices()[:2], _batches(1), _config("fgsm"))
  assert seen == [parallel.AXIS]


def test_unrestricted_adversary_averages_over_the_global_batch():
  # Two devices with the same 8 examples (same key, so the same z0) and the
  # device axis: the global batch is 16, so each example steps as it would
  # alone in a batch of 8 at half the learning rate.
  from tests import test_latent_attack as toy
  entry = adversaries.get("unrestricted")
  gan = adversaries.FrozenGAN(toy.generate_fn, toy.aux_logits_fn, toy.D)
  images = jnp.zeros((8, 4, 4, 1))
  labels = jnp.arange(8, dtype=jnp.int32) % toy.K
  rng = jax.random.key(0)

  def craft(lr, axis_name, images, labels):
    settings = entry.settings(num_steps=3, learning_rate=lr, langevin=False)
    target = adversaries.Target(toy.logits_fn, gan, axis_name=axis_name)
    return entry.craft(settings, target, images, labels, rng)["image"]

  mesh = parallel.make_mesh(jax.devices()[:2])
  two = parallel.data_parallel(
      functools.partial(craft, 1.0, parallel.AXIS), mesh,
      (P(parallel.AXIS), P(parallel.AXIS)), P(parallel.AXIS))(
          jnp.concatenate([images, images]), jnp.concatenate([labels, labels]))
  two = np.asarray(two)
  np.testing.assert_allclose(two[:8], two[8:], atol=1e-6)
  np.testing.assert_allclose(two[:8], craft(0.5, None, images, labels),
                             atol=1e-5)
  assert not np.allclose(two[:8], craft(1.0, None, images, labels),
                         atol=1e-4)


def test_one_and_two_devices_agree_for_the_same_global_batch():
  # Each device augments the first half of its own shard; order the
  # one-device batch so that it augments the same examples.
  batches = _batches(3, batch_size=16)
  order = np.r_[0:4, 8:12, 4:8, 12:16]
  single = [{k: v[order] for k, v in b.items()} for b in batches]
  config = _config("fgsm", dict(eps=0.1, random_eps=False))
  m1, s1 = _train(jax.devices()[:1], single, config)
  m2, s2 = _train(jax.devices()[:2], batches, config)
  for a, b in zip(m1, m2):
    for key in ("loss", "clean_loss", "aug_loss"):
      assert float(a[key]) == pytest.approx(float(b[key]), rel=1e-5, abs=1e-6)
    assert float(b["loss"]) == pytest.approx(_formula(b, 4, 4), rel=1e-5)
  for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s2.params)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_gan_mode_draws_the_frozen_generator_for_the_batch_labels(gan_workdir):
  config = _config("gan", gan_workdir=gan_workdir)
  batch = _batches(1, batch_size=8, shape=FM_SHAPE)[0]
  out = _augmented(config, batch, jax.random.key(3), FM_SHAPE)
  restored = inference.restore(gan_workdir, kind="gan")
  expected = restored.generate(out["latent"], batch["label"][:4])
  np.testing.assert_allclose(out["image"][4:], expected, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(out["label"][4:], batch["label"][:4])
  assert out["latent"].shape == (4, 8)


def tiny_study_config(mode, gan_workdir):
  """configs/study_fashion_mnist.py:<mode> for two steps of a tiny CNN."""
  config = load_config(f"study_fashion_mnist:{mode}")
  config.model.widths, config.model.hidden = (4,), 8
  config.batch_size = config.eval_batch_size = 8
  config.num_train_steps = 2
  config.eval_every_steps = config.checkpoint.every_steps = 2
  config.log_every_steps = 1
  config.progress_bar = False
  at = config.adversarial_training
  at.gan_workdir = gan_workdir
  at.unrestricted.num_steps = 3
  at.pgd.num_steps = 2
  at.trades.num_steps = at.mart.num_steps = 1
  at.overfit_check_examples = 8
  return config


def run_on_two_devices(config, workdir, monkeypatch):
  """(final metrics, logged training rows) of `config` on mock data, two
  devices."""
  make_mesh = parallel.make_mesh
  monkeypatch.setattr(parallel, "make_mesh",
                      lambda devices=None: make_mesh(jax.devices()[:2]))
  with tfds.testing.mock_data(num_examples=32):
    final = trainers.run(config, workdir)
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    logged = [json.loads(line) for line in f]
  return final, [r for r in logged if "train/loss" in r]


@pytest.mark.parametrize("mode", ["none", "fgsm", "pgd", "gan", "unrestricted",
                                  "trades", "mart", "fgsm_rs"])
def test_each_mode_trains_under_mock_data_on_two_devices(mode, gan_workdir,
                                                         tmp_path,
                                                         monkeypatch):
  config = tiny_study_config(mode, gan_workdir)
  final, train_rows = run_on_two_devices(config, str(tmp_path / mode),
                                         monkeypatch)
  assert np.isfinite(final["eval/loss"])
  assert len(train_rows) == 2
  assert all(np.isfinite(r["train/loss"]) for r in train_rows)
  if mode != "none":
    assert {"train/aug_loss", "train/aug_accuracy",
            "train/clean_accuracy"} <= set(train_rows[0])
  if mode == "unrestricted":
    assert 0.0 <= train_rows[0]["train/attack_success_rate"] <= 1.0
  # Fast AT's catastrophic-overfitting check, at evaluations only.
  assert ("eval/pgd_check_accuracy" in final) == (mode == "fgsm_rs")
  if mode in ("trades", "mart", "fgsm_rs"):  # the authors' 100% adversarial
    assert config.adversarial_training.prop == 1.0


def test_bfloat16_compute_trains_with_float32_params_and_finite_loss():
  config = _config("fgsm")
  config.dtype = "bfloat16"
  history, state = _train(jax.devices()[:2], _batches(3), config)
  assert all(np.isfinite(float(m["loss"])) for m in history)
  assert {np.dtype(p.dtype) for p in jax.tree.leaves(state.params)} == {
      np.dtype(np.float32)}
  _, start, _, _ = _state(config, SMALL)
  assert any(not np.array_equal(a, b) for a, b in zip(
      jax.tree.leaves(start.params), jax.tree.leaves(state.params)))
  config.dtype = "float16"
  with pytest.raises(UserError, match="config.dtype"):
    train.read_settings(config)


@pytest.mark.parametrize("aug, message", [
    (dict(mode="cutmix"), "not one of"),
    (dict(mode="fgsm", prop=1.5), "prop"),
    (dict(mode="gan"), "gan_workdir"),
    (dict(mode="fgsm", epsilon=0.1), "no field 'epsilon'"),
    (dict(mode="fgsm", fgsm=dict(epsilon=0.1)), "fgsm has no field"),
    (dict(mode="fgsm", pgd=dict(num_steps=-1)), "pgd.num_steps"),
])
def test_bad_adversarial_training_settings_are_one_line_user_errors(
    aug, message):
  config = _config()
  config.adversarial_training = ml_collections.ConfigDict(aug)
  with pytest.raises(UserError, match=message):
    adversarial_training.read(config, 10, SMALL)


def _all_consts(closed):
  """Constants of a closed jaxpr and of every jaxpr nested in it."""
  consts = list(closed.consts)
  for eqn in closed.jaxpr.eqns:
    for param in eqn.params.values():
      for sub in param if isinstance(param, (tuple, list)) else (param,):
        if isinstance(sub, jax.extend.core.ClosedJaxpr):
          consts += _all_consts(sub)
        elif isinstance(sub, jax.extend.core.Jaxpr):
          consts += _all_consts(jax.extend.core.ClosedJaxpr(sub, []))
  return consts


def test_frozen_gan_variables_are_step_inputs_not_constants(gan_workdir):
  config = _config("unrestricted", dict(num_steps=2), gan_workdir=gan_workdir)
  mesh = parallel.make_mesh(jax.devices()[:2])
  _, state, plan, frozen = _state(config, FM_SHAPE)
  assert set(frozen["gan"]) == {"generator", "discriminator"}
  step = _step(plan, mesh)
  batch = _batches(1, batch_size=8, shape=FM_SHAPE)[0]
  closed = jax.make_jaxpr(step)(state, batch, jax.random.key(0), frozen)
  sizes = [np.size(c) for c in _all_consts(closed)]
  smallest = min(np.size(x) for x in jax.tree.leaves(frozen))
  assert all(size < max(smallest, 2) for size in sizes), sizes


def test_checkpoint_holds_only_the_classifier_state(gan_workdir, tmp_path,
                                                    monkeypatch):
  config = load_config("study_fashion_mnist:unrestricted")
  config.model.widths, config.model.hidden = (4,), 8
  config.batch_size = config.eval_batch_size = 8
  config.num_train_steps = 1
  config.progress_bar = False
  config.adversarial_training.gan_workdir = gan_workdir
  config.adversarial_training.unrestricted.num_steps = 1
  make_mesh = parallel.make_mesh
  monkeypatch.setattr(parallel, "make_mesh",
                      lambda devices=None: make_mesh(jax.devices()[:2]))
  with tfds.testing.mock_data(num_examples=32):
    trainers.run(config, str(tmp_path / "run"))
  saved = inference.restore(str(tmp_path / "run"))
  assert set(saved.state) == {"step", "params", "batch_stats", "opt_state",
                              "bad_step"}
