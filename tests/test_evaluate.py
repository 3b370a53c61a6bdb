"""`python -m advjax.evaluate`: robustness and GAN reports from checkpoints."""

import json
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from advjax import attacks, evaluate, inference, trainers
from advjax.errors import UserError
from tests.helpers import load_config

# One worker runs this module, so its module fixtures are built once
# (pyproject.toml: --dist=loadgroup).
pytestmark = pytest.mark.xdist_group("evaluate")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """A tiny classifier and a tiny AC-GAN on mock Fashion-MNIST."""
  root = tmp_path_factory.mktemp("runs")
  cls = load_config("quickstart")
  cls.model.widths, cls.model.hidden = (4,), 8
  cls.batch_size = cls.eval_batch_size = 16
  cls.num_train_steps, cls.progress_bar = 3, False
  gan = load_config("quickstart_gan")
  gan.model.generator.width = gan.model.discriminator.width = 4
  gan.model.latent_dim = 8
  gan.batch_size, gan.num_train_steps, gan.progress_bar = 8, 2, False
  gan.eval_every_steps = gan.checkpoint.every_steps = 2
  with tfds.testing.mock_data(num_examples=48):
    trainers.run(cls, str(root / "classifier"))
    trainers.run(gan, str(root / "gan"))
  return str(root / "classifier"), str(root / "gan")


def test_robustness_report_table_matches_its_numbers(runs):
  classifier_dir, _ = runs
  with tfds.testing.mock_data(num_examples=48):
    restored = inference.restore(classifier_dir)
    result = evaluate.robustness(restored, eps_list=[0.0, 0.5],
                                 attack_names=["fgsm", "pgd"],
                                 attack_settings={"pgd": {"num_steps": 2}},
                                 num_examples=40, batch_size=16,
                                 substitute=restored)
  assert result["num_examples"] == 40
  zero, big = result["rows"]
  # eps = 0 changes nothing; a transfer attack from the model itself is the
  # white-box FGSM, so its error is 1 - FGSM accuracy.
  assert zero["fgsm_accuracy"] == pytest.approx(result["clean_accuracy"])
  assert zero["pgd_accuracy"] == pytest.approx(result["clean_accuracy"])
  assert big["transfer_error"] == pytest.approx(1 - big["fgsm_accuracy"])
  assert result["settings"]["pgd"]["num_steps"] == 2
  table = evaluate.robustness_markdown(result)
  drop = 100 * (result["clean_accuracy"]
                - min(big["fgsm_accuracy"], big["pgd_accuracy"]))
  assert f"{drop:.2f} points" in table
  assert "num_steps 2" in table  # the settings used are in the table
  clean, adv, _ = result["examples"][0.5]
  assert np.abs(adv - clean).max() <= 0.5 + 1e-6 and np.abs(adv).max() <= 1


def test_the_reports_fgsm_is_the_true_label_fgsm_at_each_eps(runs):
  # Training defaults to least-likely FGSM with a random eps; the report's
  # column is the standard FGSM (Goodfellow et al. 2015) at the row's eps.
  classifier_dir, _ = runs
  with tfds.testing.mock_data(num_examples=48):
    classifier = inference.restore(classifier_dir)
    result = evaluate.robustness(classifier, eps_list=[0.3],
                                 attack_names=["fgsm"], num_examples=16,
                                 batch_size=16)
    x, y = next(evaluate.eval_data(classifier, 16, 16))
  assert result["settings"]["fgsm"] == {"target": "true_label",
                                        "random_eps": False}
  x_adv = attacks.fgsm(classifier.logits_fn(), x, y, 0.3)
  expected = np.mean(np.asarray(classifier.predict(x_adv)) == y)
  assert result["rows"][0]["fgsm_accuracy"] == pytest.approx(expected)
  ll = attacks.fgsm_least_likely(classifier.logits_fn(), x, 0.3)
  assert not np.allclose(np.asarray(ll), np.asarray(x_adv))


def test_reports_write_markdown_json_and_images(runs, tmp_path):
  classifier_dir, gan_dir = runs
  out = str(tmp_path / "report")
  with tfds.testing.mock_data(num_examples=48):
    evaluate.report("robustness", classifier_dir, out, eps=(0.1,),
                    num_examples=20, batch_size=10,
                    attack_settings={"autoattack": {"version": "fast"}})
    markdown = evaluate.report("gan", gan_dir, out,
                               classifier_workdir=classifier_dir,
                               num_samples=30, num_real=20, inception=False)
  files = set(os.listdir(out))
  assert {"robustness.md", "robustness.json", "robustness_eps0.1.png",
          "gan.md", "gan.json", "gan_samples.png"} <= files
  with open(os.path.join(out, "gan.json")) as f:
    data = json.load(f)
  assert data["num_samples"] == 30 and data["num_real"] == 20
  assert 0.0 <= data["classifier_accuracy_on_samples"] <= 1.0
  assert data["classifier_fid"] >= 0.0
  assert f"{100 * data['classifier_accuracy_on_samples']:.2f}%" in markdown
  # Every FID names its sizes, and sizes this small are flagged.
  assert "(not Inception FID; 20 train images vs 30 samples)" in markdown
  assert "below the standard sample sizes" in data["warning"]
  assert f"Warning: {data['warning']}." in markdown


@pytest.mark.parametrize("flags, needle", [
    ([], "no checkpoints in"),
    (["--eps=abc"], "--eps takes numbers"),
    (["--batch_size=0"], "--batch_size must be > 0"),
    (["--attack.pgd.num_step=3"], "did you mean"),
    (["extra"], "unexpected argument(s) 'extra'"),
])
def test_evaluate_cli_gives_one_line_errors(tmp_path, flags, needle):
  import subprocess, sys
  from tests.helpers import ROOT
  out = subprocess.run(
      [sys.executable, "-m", "advjax.evaluate", "--mode=robustness",
       f"--workdir={tmp_path}", *flags], cwd=ROOT, capture_output=True,
      text=True, timeout=120)
  assert out.returncode == 2, out.stderr[-2000:]
  lines = out.stderr.strip().splitlines()
  assert lines[-1].startswith("advjax: error:") and needle in lines[-1]
  assert "Traceback" not in out.stderr


def test_nan_or_negative_eps_is_refused(runs):
  classifier_dir, _ = runs
  classifier = inference.restore(classifier_dir)
  for eps in (float("nan"), -0.1):
    with pytest.raises(UserError, match="eps must be finite and >= 0"):
      evaluate.robustness(classifier, eps_list=[eps])


def test_gan_metrics_say_why_inception_fid_is_missing(runs, monkeypatch,
                                                       tmp_path):
  _, gan_dir = runs
  from advjax import inception
  monkeypatch.setenv("HOME", str(tmp_path))
  monkeypatch.delenv("ADVJAX_FID_WEIGHTS", raising=False)

  def offline(*args, **kwargs):
    raise OSError("no network")
  monkeypatch.setattr(inception, "_download", offline)
  with tfds.testing.mock_data(num_examples=48):
    result = evaluate.gan_metrics(inference.restore(gan_dir), None,
                                  num_samples=20, num_real=10)
  assert result["inception"].startswith("not computed:")
  assert "warning" not in result  # no FID or IS to warn about
  assert "ADVJAX_FID_WEIGHTS" in result["inception"]
  assert "| Inception FID / IS | not computed" in evaluate.gan_markdown(result)


class _FakeInception:
  """Stands in for InceptionV3: 'pool' features are 6 pixels, 'logits' 4;
  records how many images each call got."""
  calls: list = []

  def __init__(self, *args, **kwargs):
    del args, kwargs

  def __call__(self, images):
    images = np.asarray(images, np.float64).reshape(len(images), -1)
    _FakeInception.calls.append(len(images))
    return images[:, :6], images[:, 6:10]


def test_gan_metrics_cache_the_real_statistics_and_name_their_sizes(
    runs, monkeypatch, tmp_path):
  _, gan_dir = runs
  from advjax import fid
  monkeypatch.setattr(fid, "FeatureExtractor", _FakeInception)
  weights = tmp_path / "pt_inception-test.pth"
  weights.write_bytes(b"not read by the stand-in")
  cache = tmp_path / "fid_stats"
  kwargs = dict(num_samples=20, num_real=12, fid_weights=str(weights),
                cache_dir=str(cache))
  with tfds.testing.mock_data(num_examples=48):
    gan = inference.restore(gan_dir)
    _FakeInception.calls = []
    with pytest.warns(RuntimeWarning, match="below the standard"):
      first = evaluate.gan_metrics(gan, None, **kwargs)
    assert _FakeInception.calls == [12, 20]  # training images, then samples
    cached = cache / "fashion_mnist-train-12-pt_inception-test.pth.npz"
    assert os.listdir(cache) == [cached.name]
    _FakeInception.calls = []
    with pytest.warns(RuntimeWarning):
      second = evaluate.gan_metrics(gan, None, **kwargs)
    assert _FakeInception.calls == [20]  # the real images were not read again
    # Another count is another entry.
    evaluate.gan_metrics(gan, None, **dict(kwargs, num_real=10))
    assert len(os.listdir(cache)) == 2
  assert second["inception_fid"] == pytest.approx(first["inception_fid"])
  mu, sigma = fid.load_statistics(str(cached))
  assert mu.shape == (6,) and sigma.shape == (6, 6)
  assert first["num_real"] == 12 and first["num_samples"] == 20
  markdown = evaluate.gan_markdown(first)
  assert "| Inception FID (12 train images vs 20 samples) |" in markdown
  assert "| Inception Score (20 samples, 10 splits) |" in markdown


def test_only_sizes_below_the_published_ones_are_flagged():
  # Published: FID of >= 10,000 samples vs the whole training set, IS of
  # 50,000 samples.
  from advjax import fid
  assert fid.below_standard_sizes(60_000, 50_000, 60_000) is None
  assert "IS from 10000 samples" in fid.below_standard_sizes(60_000, 10_000,
                                                             60_000)
  assert fid.below_standard_sizes(60_000, 10_000, 60_000,
                                  inception_score=False) is None
  assert "FID from 2000 of 60000 training images" in (
      fid.below_standard_sizes(2000, 50_000, 60_000))
  assert "and 5000 samples" in fid.below_standard_sizes(
      60_000, 5000, 60_000, inception_score=False)
  assert fid.below_standard_sizes(2000, 100, 60_000, fid=False,
                                  inception_score=False) is None


def test_gan_metrics_refuse_a_classifier_of_another_dataset(runs):
  classifier_dir, gan_dir = runs
  with tfds.testing.mock_data(num_examples=48):
    gan = inference.restore(gan_dir)
    classifier = inference.restore(classifier_dir)
    classifier.config.dataset.name = "mnist"
    with pytest.raises(UserError, match="trained on mnist"):
      evaluate.gan_metrics(gan, classifier, num_samples=20, num_real=10,
                           inception=False)


def test_unrestricted_report_numbers_are_consistent(runs):
  classifier_dir, gan_dir = runs
  classifier = inference.restore(classifier_dir)
  gan = inference.restore(gan_dir)
  report = dict(num_samples=12, batch_size=8)
  none = evaluate.unrestricted(classifier, gan, {"num_steps": 0}, report)
  # Zero steps: the returned samples are the clean ones, and none succeeds
  # (an attacked sample is one the classifier gets right at z0).
  assert none["classifier_accuracy_attacked_samples"] == pytest.approx(
      none["classifier_accuracy_clean_samples"])
  assert none["aux_keeps_source_attacked"] == pytest.approx(
      none["aux_keeps_source_clean"])
  assert none["successes"] == 0 and none["baseline"]["successes"] == 0
  assert none["num_attacked"] <= 12 * min(
      none["classifier_accuracy_clean_samples"],
      none["aux_keeps_source_clean"]) + 1e-9
  assert none["latent_rms_displacement"] in (0.0, None)
  result = evaluate.unrestricted(
      classifier, gan, dict(num_steps=5, learning_rate=20.0, targeted=True),
      report)
  assert result["num_samples"] == 12
  assert result["num_attacked"] == none["num_attacked"]  # same draws
  for r in (result, result["baseline"]):
    # Success needs both: the classifier fooled and the source class kept;
    # it is a share of the attacked samples, accuracy one of all samples.
    assert r["successes"] <= 12 * (
        1 - r["classifier_accuracy_attacked_samples"]) + 1e-9
    assert r["successes"] <= 12 * r["aux_keeps_source_attacked"] + 1e-9
    assert r["success_rate"] == (r["successes"] / result["num_attacked"]
                                 if result["num_attacked"] else 0.0)
    if result["num_attacked"]:
      assert r["latent_rms_displacement"] > 0
      assert 0.0 <= r["within_eps_z"] <= 1.0
      assert r["pixel_linf_distance"] >= r["pixel_rms_distance"] > 0
    else:
      assert r["latent_rms_displacement"] is None
  assert result["successes"] <= 12 * result["target_hit_rate"] + 1e-9
  grid = result["grid"]
  # G(z0), the attack's and the baseline's images: three rows of 28x28.
  assert grid.shape[0] == 3 * 28 + 4
  table = evaluate.unrestricted_markdown(result)
  assert (f"{100 * result['classifier_accuracy_attacked_samples']:.2f}%"
          in table)
  assert f"{result['num_attacked']} of 12" in table
  assert "settings custom" in table and "last iterate" in table
  seed = evaluate.unrestricted(classifier, gan, {"num_steps": 2}, report)
  assert "settings of the seed study's code" not in (
      evaluate.unrestricted_markdown(seed))  # 2 steps is not the seed's
  song = evaluate.unrestricted(classifier, gan, {"num_steps": 2},
                               dict(report, preset="song"))
  assert song["settings"]["lambda_z"] == 100.0 and song["num_steps"] == 2


def test_robustness_report_with_gan_writes_the_latent_attack(runs, tmp_path):
  classifier_dir, gan_dir = runs
  out = str(tmp_path / "report")
  with tfds.testing.mock_data(num_examples=48):
    markdown = evaluate.report("robustness", classifier_dir, out, eps=(0.1,),
                               num_examples=10, batch_size=10,
                               gan_workdir=gan_dir,
                               attack_settings={"unrestricted": {
                                   "num_steps": 2}},
                               unrestricted_settings={"num_samples": 6})
  assert "Unrestricted adversarial examples" in markdown
  assert "unrestricted.png" in os.listdir(out)
  with open(os.path.join(out, "robustness.json")) as f:
    data = json.load(f)
  assert data["unrestricted"]["num_steps"] == 2


def test_unrestricted_attack_refuses_a_classifier_checkpoint_as_gan(
    runs, tmp_path):
  classifier_dir, _ = runs
  classifier = inference.restore(classifier_dir)
  with pytest.raises(UserError, match="'classifier' trainer, not a gan"):
    evaluate.unrestricted(classifier, classifier)
  with pytest.raises(UserError, match="'classifier' trainer, not a gan"):
    evaluate.report("robustness", classifier_dir, str(tmp_path), eps=(0.1,),
                    gan_workdir=classifier_dir)


def test_patch_report_trains_on_train_images_and_counts_other_classes(
    runs, tmp_path):
  classifier_dir, _ = runs
  out = str(tmp_path / "report")
  settings = evaluate.patch_config()
  settings.update(size=4, target=3, num_steps=3, num_train_images=16,
                  batch_size=4)
  with tfds.testing.mock_data(num_examples=48):
    markdown = evaluate.report("robustness", classifier_dir, out, eps=(0.1,),
                               num_examples=20, batch_size=10,
                               patch_settings=settings)
    labels = np.concatenate([y for _, y in evaluate.eval_data(
        inference.restore(classifier_dir), 20, 10)])
  with open(os.path.join(out, "robustness.json")) as f:
    data = json.load(f)["patch"]
  assert data["num_train_images"] == 16 and data["size"] == 4
  # Only test images whose label is not the target class count.
  assert data["num_evaluated"] == int(np.sum(labels != 3))
  assert 0.0 <= data["success_rate"] <= 1.0
  assert "Adversarial patch" in markdown and "patch.png" in os.listdir(out)


def test_autoattack_column_is_at_most_pgd_and_fgsm_on_the_same_points(runs):
  classifier_dir, _ = runs
  with tfds.testing.mock_data(num_examples=48):
    restored = inference.restore(classifier_dir)
    result = evaluate.robustness(
        restored, eps_list=[0.05, 0.3],
        attack_names=["fgsm", "pgd", "autoattack"],
        attack_settings={"autoattack": {"version": "fast"}},
        num_examples=32, batch_size=16)
  assert result["settings"]["autoattack"]["version"] == "fast"
  for row in result["rows"]:
    assert row["autoattack_accuracy"] <= row["pgd_accuracy"]
    assert row["pgd_accuracy"] <= row["fgsm_accuracy"]
    # Every point the cascade broke is counted once, at the stage that did.
    stages = row["broken_by"]["autoattack"]
    assert list(stages) == ["clean", "apgd-ce", "apgd-t"]
    assert sum(stages.values()) == round(32 * (1 - row["autoattack_accuracy"]))
    assert stages["clean"] == round(32 * (1 - result["clean_accuracy"]))
  table = evaluate.robustness_markdown(result)
  assert "AutoAttack accuracy" in table
  assert "- eps 0.3, AutoAttack: clean " in table


def test_report_warns_about_zero_gradients_and_flat_accuracy():
  import jax
  import jax.numpy as jnp
  from advjax import adversaries
  # A classifier of rounded pixels: its input gradient is exactly zero.
  weights = jax.random.normal(jax.random.key(0), (4 * 4, 5))
  logits_fn = lambda x: jnp.round(x).reshape(len(x), -1) @ weights
  x = jax.random.uniform(jax.random.key(1), (8, 4, 4, 1), minval=-1, maxval=1)
  y = jnp.argmax(logits_fn(x), -1)
  entry = adversaries.get("autoattack")
  out = entry.craft(entry.evaluation_settings({"version": "fast"}, eps=0.05),
                    adversaries.Target(logits_fn), x, y, jax.random.key(2))
  assert out["signals"]["zero input gradient"].all()
  result = {"clean_accuracy": 1.0, "num_examples": 8,
            "attacks": ["autoattack"], "labels": {"autoattack": "AutoAttack"},
            "settings": {},
            "rows": [{"eps": 0.05, "autoattack_accuracy": 0.5,
                      "signals": {"autoattack": {"zero input gradient": 8}}},
                     {"eps": 0.1, "autoattack_accuracy": 0.5}]}
  table = evaluate.robustness_markdown(result)
  assert "- eps 0.05, AutoAttack: 8 of 8 points with zero input gradient" in table
  assert "AutoAttack: accuracy does not fall from eps 0.05 to 0.1" in table
  result["rows"][1]["autoattack_accuracy"] = 0.25
  del result["rows"][0]["signals"]
  assert "gradient masking" not in evaluate.robustness_markdown(result)


def test_the_transfer_column_is_attacks_transfer_attack(runs, tmp_path):
  # A substitute other than the model: the column is the library's
  # transfer attack (FGSM on the substitute, the model judged as a black
  # box), batch by batch.
  classifier_dir, _ = runs
  cls = load_config("quickstart")
  cls.model.widths, cls.model.hidden = (4,), 8
  cls.batch_size = cls.eval_batch_size = 16
  cls.num_train_steps, cls.progress_bar, cls.seed = 2, False, 7
  with tfds.testing.mock_data(num_examples=48):
    trainers.run(cls, str(tmp_path / "substitute"))
    classifier = inference.restore(classifier_dir)
    substitute = inference.restore(str(tmp_path / "substitute"))
    result = evaluate.robustness(classifier, eps_list=[0.3],
                                 attack_names=["fgsm"], num_examples=32,
                                 batch_size=16, substitute=substitute)
    errors = [float(attacks.transfer_attack(
        attacks.fgsm, substitute.logits_fn(), classifier.predict, x, y,
        eps=0.3)["target_error_adv"])
              for x, y in evaluate.eval_data(classifier, 32, 16)]
  assert result["rows"][0]["transfer_error"] == pytest.approx(
      np.mean(errors))


def test_every_report_section_records_what_produced_it(runs, tmp_path):
  classifier_dir, gan_dir = runs
  out = str(tmp_path / "report")
  with tfds.testing.mock_data(num_examples=48):
    evaluate.report("robustness", classifier_dir, out, eps=(0.1,),
                    attack_names=["fgsm"], num_examples=16, batch_size=16,
                    gan_workdir=gan_dir,
                    attack_settings={"unrestricted": {"num_steps": 1}},
                    unrestricted_settings={"num_samples": 4})
  with open(os.path.join(out, "robustness.json")) as f:
    data = json.load(f)
  import advjax
  for section, roles in ((data, {"classifier"}),
                         (data["unrestricted"], {"classifier", "gan"})):
    made = section["provenance"]
    assert made["advjax_version"] == advjax.__version__
    assert set(made["checkpoints"]) == roles
    for record in made["checkpoints"].values():
      assert record["step"] > 0 and len(record["digest"]) == 16
  assert data["provenance"]["settings"]["eps"] == [0.1]
  assert data["provenance"]["settings"]["attack"]["fgsm"] == {
      "target": "true_label", "random_eps": False}
  assert data["unrestricted"]["provenance"]["settings"]["attack"][
      "num_steps"] == 1


def test_the_command_line_has_a_flag_for_every_evaluator_setting():
  # Each evaluator's defaults are its settings dataclass's: the flags are
  # built from them (an evaluator without flags of its own gets
  # --<name>.<field>).
  import subprocess, sys
  from tests.helpers import ROOT, python_path
  script = ("from absl import flags\n"
            "from advjax import evaluate\n"
            "evaluate._define_flags()\n"
            "f = flags.FLAGS\n"
            "f(['x'])\n"
            "print(','.join(f.eps), f.num_examples, f.num_samples, "
            "len(f.evaluators), f.gan_samples.num_samples, "
            "f.unrestricted.num_samples, f.patch.size)\n")
  out = subprocess.run([sys.executable, "-c", script], cwd=ROOT,
                       capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, PYTHONPATH=python_path()))
  assert out.returncode == 0, out.stderr[-2000:]
  from advjax.evaluators import gan_quality, gan_samples, robustness
  r, q = robustness.Settings(), gan_quality.Settings()
  assert out.stdout.split() == [
      ",".join(f"{e:g}" for e in r.eps), str(r.num_examples),
      str(q.num_samples), "0", str(gan_samples.Settings().num_samples),
      "256", "0"]
