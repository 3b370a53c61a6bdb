"""Generated data in the adversarial loss (`adversarial_training.generated`):
the last part of each batch replaced by AC-GAN samples, unrestricted
examples or a class-conditional Gaussian, trained on with the mode's loss."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from advjax import adversarial_training, inference, parallel, trainers
from advjax.errors import UserError
from advjax.models import gans
from tests.helpers import load_config
# gan_workdir is a fixture (module-scoped): pytest finds it by name here.
from tests.test_adversarial_training import (  # pylint: disable=unused-import
    FM_SHAPE, _batches, _config, _state, _train, gan_workdir,
    run_on_two_devices, tiny_study_config)


def _mixed(config, batch, rng, shape=FM_SHAPE):
  model, state, plan, frozen = _state(config, shape)
  variables = {"params": state.params, "batch_stats": state.batch_stats}

  @jax.jit
  def run(variables, frozen, batch, rng):
    logits_fn = lambda x: model.apply(variables, x, train=False)
    return adversarial_training.mix_generated(
        plan, plan.target(logits_fn, frozen.get("gan")), frozen.get("gan"),
        batch, rng)

  return plan, jax.device_get(run(variables, frozen, batch, rng))


def test_gan_source_replaces_the_last_fraction_by_generator_samples(
    gan_workdir):
  config = _config("trades", gan_workdir=gan_workdir, generated=dict(
      source="gan", fraction=0.5, labels="real"))
  batch = _batches(1, batch_size=8, shape=FM_SHAPE)[0]
  rng = jax.random.key(4)
  plan, out = _mixed(config, batch, rng)
  assert plan.num_generated(8) == 4
  np.testing.assert_array_equal(out["generated"], [0] * 4 + [1] * 4)
  np.testing.assert_array_equal(out["image"][:4], batch["image"][:4])
  # 'real' labels: those of the examples they replace.
  np.testing.assert_array_equal(out["label"], batch["label"])
  gan = inference.restore(gan_workdir, kind="gan")
  z = gans.sample_latents(jax.random.split(rng)[1], 4, gan.latent_dim)
  np.testing.assert_allclose(out["image"][4:],
                             gan.generate(z, batch["label"][4:]),
                             rtol=1e-5, atol=1e-5)


def test_uniform_labels_are_drawn_over_every_class(gan_workdir):
  config = _config("pgd", gan_workdir=gan_workdir, generated=dict(
      source="gan", fraction=1.0))
  batch = _batches(1, batch_size=64, shape=FM_SHAPE)[0]
  batch["label"][:] = 3
  _, out = _mixed(config, batch, jax.random.key(0))
  assert out["generated"].all()
  assert len(set(out["label"].tolist())) >= 8  # 64 uniform draws of 10


def _source(images, labels):
  return [{"image": im, "label": int(y)} for im, y in zip(images, labels)]


def test_gaussian_is_each_class_per_pixel_mean_and_std():
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (60, 4, 4, 1), dtype=np.uint8)
  labels = np.arange(60) % 3
  fit = adversarial_training.fit_gaussian(_source(images, labels), 3,
                                          chunk=7)
  x = images.astype(np.float64) / 127.5 - 1.
  for k in range(3):
    np.testing.assert_allclose(fit["mean"][k], x[labels == k].mean(0),
                               atol=1e-5)
    np.testing.assert_allclose(fit["std"][k], x[labels == k].std(0),
                               atol=1e-5)


def test_gaussian_samples_follow_their_class_and_stay_in_range():
  mean = np.stack([np.full((4, 4, 1), v, np.float32) for v in (-.5, .5)])
  frozen = {"gaussian": {"mean": mean, "std": np.full_like(mean, 0.1)}}
  config = _config("pgd", generated=dict(source="gaussian", fraction=0.5,
                                         labels="real"))
  plan, _ = adversarial_training.read(config, 2, (4, 4, 1), train_source=
                                      _source(np.zeros((4, 4, 4, 1), np.uint8),
                                              np.arange(4) % 2))
  batch = {"image": jnp.zeros((200, 4, 4, 1)),
           "label": jnp.asarray(np.arange(200) % 2, jnp.int32)}
  out = adversarial_training.mix_generated(plan, None, frozen, batch,
                                           jax.random.key(0))
  x, y = np.asarray(out["image"][100:]), np.asarray(out["label"][100:])
  assert x.min() >= -1 and x.max() <= 1
  for k, m in enumerate((-.5, .5)):
    assert abs(x[y == k].mean() - m) < 0.02
    assert abs(x[y == k].std() - 0.1) < 0.02


def test_label_smoothing_touches_only_the_generated_rows():
  config = _config("pgd", generated=dict(source="gaussian",
                                         label_smoothing=0.2))
  plan, _ = adversarial_training.read(config, 4, (2, 2, 1), train_source=
                                      _source(np.zeros((4, 2, 2, 1), np.uint8),
                                              np.arange(4)))
  labels = jnp.asarray([0, 1, 2, 3])
  t = np.asarray(adversarial_training.generated_targets(
      plan, labels, jnp.asarray([False, False, True, True]), 0.0))
  np.testing.assert_allclose(t[:2], np.eye(4)[:2])
  np.testing.assert_allclose(t[2:], 0.8 * np.eye(4)[2:] + 0.05)


def test_generated_data_needs_a_training_mode_and_valid_settings():
  with pytest.raises(UserError, match="needs a training mode"):
    adversarial_training.read(_config("none", generated=dict(source="gan")),
                              10, FM_SHAPE)
  with pytest.raises(UserError, match="generated.source"):
    adversarial_training.read(_config("pgd", generated=dict(source="vae")),
                              10, FM_SHAPE)
  with pytest.raises(UserError, match="generated.fraction"):
    adversarial_training.read(_config("pgd", generated=dict(
        source="gan", fraction=1.5)), 10, FM_SHAPE)


def test_the_modes_loss_covers_the_generated_examples(gan_workdir):
  """TRADES with every example generated trains on them alone: the logged
  loss is the mean TRADES loss of the generated batch."""
  config = _config("trades", dict(num_steps=1), gan_workdir=gan_workdir,
                   prop=1.0, generated=dict(source="gan", fraction=1.0))
  history, _ = _train(jax.devices()[:2], _batches(2, shape=FM_SHAPE),
                      config, FM_SHAPE)
  for m in history:
    assert float(m["generated_fraction"]) == 1.0
    assert np.isfinite(float(m["loss"]))
    assert float(m["loss"]) == pytest.approx(float(m["aug_loss"]), rel=1e-6)


@pytest.mark.parametrize("mode,source", [("trades", "gan"),
                                         ("pgd", "unrestricted"),
                                         ("mart", "gaussian")])
def test_each_source_trains_from_the_command_line_config(
    mode, source, gan_workdir, tmp_path, monkeypatch):
  config = tiny_study_config(mode, gan_workdir)
  config.adversarial_training.generated.source = source
  config.adversarial_training.generated.fraction = 0.5
  final, rows = run_on_two_devices(config, str(tmp_path / source),
                                   monkeypatch)
  assert np.isfinite(final["eval/loss"])
  assert rows and all(r["train/generated_fraction"] == 0.5 for r in rows)
  assert all(np.isfinite(r["train/loss"]) for r in rows)
