"""Extending the library in one place: a toy attack, a toy evaluator and a
toy GAN loss added through the registries alone reach training, the
robustness report, the study and both GAN trainers."""

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from advjax import (adversaries, evaluate, evaluators, inference, losses,
                    trainers)
from advjax.errors import UserError
from tests.helpers import load_config


@dataclasses.dataclass(frozen=True)
class SignNoiseSettings:
  eps: float = 0.1


def _sign_noise(s, target, images, labels, rng):
  """Random +-eps on every pixel: the weakest norm-bounded attack."""
  del target, labels
  noise = s.eps * jax.random.rademacher(rng, images.shape, images.dtype)
  return {"image": jnp.clip(images + noise, -1.0, 1.0)}


def _toy_d_loss(real, fake):
  return jnp.mean(jax.nn.softplus(-real)) + jnp.mean(jax.nn.softplus(fake))


def _toy_g_loss(fake):
  return jnp.mean(jax.nn.softplus(-fake))


@pytest.fixture
def toy_entries():
  adversaries.register("sign_noise", SignNoiseSettings,
                       label="sign noise")(_sign_noise)
  losses.register_adversarial_loss("toy_softplus", _toy_d_loss, _toy_g_loss)
  yield
  del adversaries.ADVERSARIES["sign_noise"]
  del losses.ADVERSARIAL_LOSSES["toy_softplus"]


def _tiny_classifier(config):
  config.model.widths, config.model.hidden = (4,), 8
  config.batch_size = config.eval_batch_size = 8
  config.num_train_steps = 2
  config.log_every_steps = 1
  config.progress_bar = False
  return config


def _tiny_gan():
  gan = load_config("quickstart_gan")
  gan.model.generator.width = gan.model.discriminator.width = 4
  gan.model.latent_dim = 8
  gan.batch_size, gan.num_train_steps, gan.progress_bar = 8, 2, False
  gan.eval_every_steps = gan.checkpoint.every_steps = 2
  gan.sample.num_columns = 2
  return gan


def test_a_registered_attack_trains_and_is_reported(toy_entries, tmp_path):
  assert "sign_noise" in adversaries.training_modes()
  config = _tiny_classifier(load_config("study_fashion_mnist:sign_noise"))
  # Its settings sit under its name, with its defaults.
  assert config.adversarial_training.sign_noise.eps == 0.1
  config.adversarial_training.sign_noise.eps = 0.3
  workdir = str(tmp_path / "run")
  with tfds.testing.mock_data(num_examples=32):
    trainers.run(config, workdir)
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
      logged = [json.loads(line) for line in f]
    assert any("train/aug_loss" in r for r in logged)
    out = str(tmp_path / "report")
    markdown = evaluate.report("robustness", workdir, out, eps=(0.0, 0.5),
                               attack_names=["fgsm", "sign_noise"],
                               num_examples=16, batch_size=8)
  assert "sign noise accuracy" in markdown
  with open(os.path.join(out, "robustness.json")) as f:
    rows = json.load(f)["rows"]
  # eps 0 changes nothing, so the column holds a real measurement.
  zero = rows[0]
  assert zero["sign_noise_accuracy"] == pytest.approx(zero["fgsm_accuracy"])
  assert 0.0 <= rows[1]["sign_noise_accuracy"] <= 1.0
  assert isinstance(inference.restore(workdir), inference.Classifier)


def test_an_unregistered_attack_is_a_one_line_error(tmp_path):
  with pytest.raises(UserError, match="unknown adversary 'sign_noise'"):
    adversaries.get("sign_noise")


def test_a_registered_gan_loss_trains_both_gan_trainers(toy_entries,
                                                        tmp_path):
  gan = _tiny_gan()
  gan.gan.loss = "toy_softplus"
  cyc = load_config("cyclegan_fashion_mnist")
  cyc.model.generator.width = cyc.model.discriminator.width = 4
  cyc.model.generator.num_blocks = 1
  cyc.model.discriminator.num_layers = 2
  cyc.cyclegan.pool_size = 4
  cyc.batch_size, cyc.num_train_steps, cyc.progress_bar = 4, 2, False
  cyc.eval_every_steps = cyc.checkpoint.every_steps = 2
  cyc.sample.num_rows, cyc.eval.num_examples = 2, 4
  cyc.cyclegan.loss = "toy_softplus"
  with tfds.testing.mock_data(num_examples=64):
    trainers.run(gan, str(tmp_path / "gan"))
    trainers.run(cyc, str(tmp_path / "cyclegan"))
  for run, key in (("gan", "train/g_adv_loss"),
                   ("cyclegan", "train/g_adv_a2b")):
    with open(tmp_path / run / "metrics.jsonl") as f:
      values = [json.loads(line)[key] for line in f if key in line]
    assert values and np.all(np.isfinite(values))


@dataclasses.dataclass(frozen=True)
class MeanImageSettings:
  num_examples: int = 8


def _mean_image(s, inputs):
  """The mean pixel of the first test images, and the classifier's step."""
  x, _ = next(evaluators.eval_data(inputs.classifier, s.num_examples,
                                   s.num_examples))
  return {"mean_pixel": float(np.mean(x)),
          "step": inputs.classifier.step, "count": len(x)}


@pytest.fixture
def toy_evaluator():
  evaluators.register("mean_image", MeanImageSettings,
                      markdown=lambda r: f"mean pixel {r['mean_pixel']:.4f}\n"
                      )(_mean_image)
  yield
  del evaluators.EVALUATORS["mean_image"]


def test_a_registered_evaluator_reaches_the_report_and_the_trainer(
    toy_evaluator, tmp_path):
  config = _tiny_classifier(load_config("quickstart"))
  config.eval_every_steps = 1
  config.eval = {"evaluators": {"mean_image": {"num_examples": 4}}}
  workdir = str(tmp_path / "run")
  out = str(tmp_path / "report")
  with tfds.testing.mock_data(num_examples=32):
    trainers.run(config, workdir)
    markdown = evaluate.report("robustness", workdir, out, eps=(0.1,),
                               attack_names=["fgsm"], num_examples=8,
                               batch_size=8)
  # The trainer logs its numbers at every evaluation, of the state then.
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    logged = [json.loads(line) for line in f if "eval/mean_image/step" in line]
  assert [r["eval/mean_image/step"] for r in logged] == [1, 2]
  assert all(r["eval/mean_image/count"] == 4 for r in logged)
  # The report runs it with its defaults, a section and a JSON entry.
  with open(os.path.join(out, "robustness.json")) as f:
    data = json.load(f)["mean_image"]
  assert data["count"] == 8 and data["step"] == 2
  assert f"mean pixel {data['mean_pixel']:.4f}" in markdown
  assert data["provenance"]["checkpoints"]["classifier"]["step"] == 2


def test_a_registered_evaluator_reaches_the_gan_trainer(tmp_path):
  @dataclasses.dataclass(frozen=True)
  class SampleSettings:
    n: int = 4

  def _sample_range(s, inputs):
    images = inputs.gan.sample(0, n=s.n)
    return {"step": inputs.gan.step, "max": float(np.max(images))}

  evaluators.register("sample_range", SampleSettings, needs=("gan",),
                      mode="gan")(_sample_range)
  try:
    gan = _tiny_gan()
    gan.eval.evaluators = {"sample_range": {"n": 2}}
    with tfds.testing.mock_data(num_examples=32):
      trainers.run(gan, str(tmp_path / "gan"))
  finally:
    del evaluators.EVALUATORS["sample_range"]
  with open(tmp_path / "gan" / "metrics.jsonl") as f:
    logged = [json.loads(line) for line in f if "sample_range" in line]
  assert [r["eval/sample_range/step"] for r in logged] == [2]
  assert -1.0 <= logged[0]["eval/sample_range/max"] <= 1.0
