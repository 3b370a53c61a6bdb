"""experiments/study.py: the whole study on tiny settings, resumable and
reproducible."""

import csv
import importlib.util
import json
import os
import time

import pytest
import tensorflow_datasets as tfds

from advjax.errors import UserError
from tests.helpers import ROOT

# One worker runs this module, so its module fixtures are built once
# (pyproject.toml: --dist=loadgroup).
pytestmark = pytest.mark.xdist_group("study")

MODES = ("none", "fgsm", "gan", "unrestricted")
GAN_OVERRIDES = ["model.generator.width=4", "model.discriminator.width=4",
                 "model.latent_dim=8", "batch_size=8", "num_train_steps=2",
                 "eval_every_steps=2", "checkpoint.every_steps=2",
                 "progress_bar=false", "sample.num_columns=2"]
CLASSIFIER_OVERRIDES = ["model.widths=[4]", "model.hidden=8", "batch_size=16",
                        "eval_batch_size=16", "num_train_steps=2",
                        "eval_every_steps=1", "progress_bar=false",
                        "adversarial_training.unrestricted.num_steps=2",
                        "adversarial_training.pgd.num_steps=1"]


def _study():
  spec = importlib.util.spec_from_file_location(
      "study", os.path.join(ROOT, "experiments", "study.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _run(study, workdir, logs, **kwargs):
  defaults = dict(
      modes=MODES, gan_overrides=GAN_OVERRIDES,
      classifier_overrides=CLASSIFIER_OVERRIDES, eps=0.1,
      attack_settings={"pgd": {"num_steps": 1},
                       "autoattack": {"version": "fast"},
                       "unrestricted": {"num_steps": 2}},
      num_examples=20, unrestricted={"num_samples": 6}, command="test")
  with tfds.testing.mock_data(num_examples=32):
    return study.run_study(
        workdir, gan_config=os.path.join(ROOT, "configs", "quickstart_gan.py"),
        classifier_config=os.path.join(ROOT, "configs",
                                       "study_fashion_mnist.py"),
        **{**defaults, **kwargs}, log=logs.append)


def _csv(path):
  with open(path, newline="") as f:
    return [{k: v for k, v in row.items() if k != "train_minutes"}
            for row in csv.DictReader(f)]


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
  study = _study()
  workdir = str(tmp_path_factory.mktemp("study"))
  logs = []
  rows = _run(study, workdir, logs)
  return study, workdir, rows, logs


def test_study_writes_table_csv_and_figures_for_every_mode(first_run):
  _, workdir, rows, _ = first_run
  assert [r["mode"] for r in rows] == list(MODES)
  files = set(os.listdir(workdir))
  assert {"study.md", "study.csv", "accuracy_curves.png"} <= files
  assert {f"unrestricted_{m}.png" for m in MODES} <= files
  table = open(os.path.join(workdir, "study.md")).read()
  for r in rows:
    assert 0.0 <= r["clean_accuracy"] <= 1.0
    assert f"| {r['mode']} | {100 * r['clean_accuracy']:.2f}% |" in table
    # Success needs the classifier fooled: it bounds accuracy from above
    # (success is a share of the attacked samples, accuracy of all).
    assert r["unrestricted_success"] * r["unrestricted_attacked"] <= (
        1 - r["unrestricted_accuracy"] + 1e-9)
    assert 0.0 <= r["unrestricted_baseline_success"] <= 1.0
  assert len(_csv(os.path.join(workdir, "study.csv"))) == len(MODES)
  assert "AutoAttack accuracy" in table and "version fast" in table
  assert "random-search baseline success" in table
  assert "A sample is attacked only if" in table
  for r in rows:
    assert r["autoattack_accuracy"] <= r["pgd_accuracy"]
    # The per-classifier JSON keeps which AutoAttack stage broke each point.
    with open(os.path.join(workdir, "classifiers", r["mode"],
                           "study_eval.json")) as f:
      (part,) = json.load(f)["parts"]["attack/autoattack"]
    stages = part["result"]["broken_by"]
    assert sum(stages.values()) == round(20 * (1 - r["autoattack_accuracy"]))


def test_seeds_give_one_csv_row_each_and_mean_and_std_in_the_table(
    first_run, tmp_path):
  study, workdir, rows, _ = first_run
  logs = []
  seeded = _run(study, str(tmp_path), logs, modes=("none", "fgsm"), seeds=2,
                gan_workdir=os.path.join(workdir, "acgan"))
  assert [(r["mode"], r["seed"]) for r in seeded] == [
      ("none", 0), ("none", 1), ("fgsm", 0), ("fgsm", 1)]
  assert {"none", "none.seed1", "fgsm", "fgsm.seed1"} <= set(
      os.listdir(tmp_path / "classifiers"))
  # Seed 0 is the single-seed run; seed 1 is another classifier.
  first = {r["mode"]: r for r in rows}
  assert seeded[0]["clean_accuracy"] == first["none"]["clean_accuracy"]
  csv_rows = _csv(tmp_path / "study.csv")
  assert [(r["mode"], r["seed"]) for r in csv_rows] == [
      ("none", "0"), ("none", "1"), ("fgsm", "0"), ("fgsm", "1")]
  table = (tmp_path / "study.md").read_text()
  assert "over 2 seeds (0, 1)" in table
  (mean,) = study.summarize(seeded[:2], ["clean_accuracy"])
  values = [r["clean_accuracy"] for r in seeded[:2]]
  assert mean["clean_accuracy"] == pytest.approx(sum(values) / 2)
  assert mean["clean_accuracy_std"] == pytest.approx(
      abs(values[0] - values[1]) / 2 ** 0.5)
  assert (f"| none | {100 * mean['clean_accuracy']:.2f}% ± "
          f"{100 * mean['clean_accuracy_std']:.2f}% |") in table
  with pytest.raises(UserError, match="--seeds must be a positive number"):
    study.run_study(str(tmp_path), gan_config="x", classifier_config="y",
                    seeds=0)


def test_classifiers_log_accuracy_on_gan_samples_during_training(first_run):
  study, workdir, _, _ = first_run
  steps, values = study._history(os.path.join(workdir, "classifiers", "none"),
                                 "eval/gan_sample_accuracy")
  assert steps == [1, 2] and all(0.0 <= v <= 1.0 for v in values)


def test_rerun_skips_finished_parts_and_gives_the_same_table(first_run):
  study, workdir, _, _ = first_run
  before = _csv(os.path.join(workdir, "study.csv"))
  logs = []
  _run(study, workdir, logs)
  assert any("GAN: already trained" in line for line in logs)
  assert sum("every result reused" in line for line in logs) == len(MODES)
  assert not any("training in" in line for line in logs)
  assert not any(line.startswith("  evaluating") for line in logs)
  assert _csv(os.path.join(workdir, "study.csv")) == before


def test_same_seed_in_a_fresh_folder_reproduces_the_numbers(first_run,
                                                            tmp_path):
  study, workdir, _, _ = first_run
  _run(study, str(tmp_path), [])
  assert (_csv(os.path.join(str(tmp_path), "study.csv"))
          == _csv(os.path.join(workdir, "study.csv")))


def test_unknown_mode_and_bad_override_are_refused(first_run, tmp_path):
  study = first_run[0]
  with pytest.raises(UserError, match="unknown mode"):
    study.run_study(str(tmp_path), gan_config="x", classifier_config="y",
                    modes=("nonsense",))
  config = study.config_utils.load(
      os.path.join(ROOT, "configs", "study_fashion_mnist.py:none"))
  with pytest.raises(UserError, match="no 'adversarial_training.nope'"):
    study.apply_overrides(config, ["adversarial_training.nope=1"])


def test_study_command_line_gives_one_line_errors(tmp_path):
  import subprocess
  import sys
  out = subprocess.run(
      [sys.executable, os.path.join(ROOT, "experiments", "study.py"),
       f"--workdir={tmp_path}", "--modes=none,nonsense"],
      capture_output=True, text=True, timeout=120,
      env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert out.returncode == 2, out.stderr[-2000:]
  assert out.stderr.strip().splitlines()[-1].startswith(
      "advjax: error: unknown mode(s) ['nonsense']")


def test_preset_settings_let_user_flags_win(first_run):
  study = first_run[0]
  small = study.preset_settings("small")
  assert small["num_examples"] == 1000
  # The latent attack keeps the seed study's settings.
  assert "unrestricted" not in small["attack_settings"]
  assert small["attack_settings"]["autoattack"]["version"] == "fast"
  assert small["unrestricted"]["num_samples"] == 128
  assert "num_epochs=0.5" in small["classifier_overrides"]
  mine = study.preset_settings(
      "small", num_examples=50,
      attack_settings={"unrestricted": {"num_steps": 7},
                       "pgd": {"num_steps": 3}},
      classifier_overrides=["num_epochs=2.0"])
  assert mine["num_examples"] == 50
  assert mine["attack_settings"]["unrestricted"]["num_steps"] == 7
  assert mine["attack_settings"]["pgd"]["num_steps"] == 3
  assert mine["unrestricted"]["num_samples"] == 128  # the preset's
  # Later overrides win: the user's come after the preset's.
  assert mine["classifier_overrides"][-1] == "num_epochs=2.0"
  full = study.preset_settings("full")
  assert full["num_examples"] == 10000 and not full["attack_settings"]
  with pytest.raises(UserError, match="unknown preset"):
    study.preset_settings("huge")


def _small(study, first_run, workdir, logs, **kwargs):
  """One 'none' classifier on the first run's GAN, FGSM and PGD only."""
  return _run(study, str(workdir), logs, **{
      "modes": ("none",), "attack_names": ("fgsm", "pgd"),
      "gan_workdir": os.path.join(first_run[1], "acgan"), **kwargs})


def _trained(logs):
  return any("training in" in line for line in logs)


def _evaluated(logs):
  return [line.strip() for line in logs if line.startswith("  evaluating")]


def test_another_eps_gives_its_numbers_and_the_first_is_reused(first_run,
                                                              tmp_path):
  study = first_run[0]
  first_logs, second_logs, third_logs = [], [], []
  (first,) = _small(study, first_run, tmp_path, first_logs)
  first_csv = _csv(tmp_path / "study.csv")
  (second,) = _small(study, first_run, tmp_path, second_logs, eps=0.3)
  table = (tmp_path / "study.md").read_text()
  assert "L-inf eps 0.3 " in table and "eps 0.1" not in table
  assert not _trained(second_logs)
  assert _evaluated(second_logs) == ["evaluating fgsm, pgd"]
  # The second table's numbers are those of eps 0.3, measured afresh.
  with tfds.testing.mock_data(num_examples=32):
    classifier = study.inference.restore(
        os.path.join(tmp_path, "classifiers", "none"))
    fresh = study.robustness.robustness(
        classifier, eps_list=[0.3], attack_names=["fgsm", "pgd"],
        attack_settings={"pgd": {"num_steps": 1}}, num_examples=20,
        batch_size=20)
  for name in ("fgsm", "pgd"):
    assert second[f"{name}_accuracy"] == fresh["rows"][0][f"{name}_accuracy"]
    assert (f"{100 * second[f'{name}_accuracy']:.2f}%" in table)
  assert second["clean_accuracy"] == first["clean_accuracy"]
  # Back to eps 0.1: nothing is trained or evaluated, the table is the
  # first one's.
  _small(study, first_run, tmp_path, third_logs)
  assert not _trained(third_logs) and not _evaluated(third_logs)
  assert "every result reused" in "\n".join(third_logs)
  assert _csv(tmp_path / "study.csv") == first_csv
  assert "L-inf eps 0.1 " in (tmp_path / "study.md").read_text()


def test_adding_an_attack_evaluates_only_that_attack(first_run, tmp_path):
  study = first_run[0]
  logs = []
  _small(study, first_run, tmp_path, [], attack_names=("fgsm",))
  (row,) = _small(study, first_run, tmp_path, logs,
                  attack_names=("fgsm", "pgd"))
  assert not _trained(logs)
  assert _evaluated(logs) == ["evaluating pgd"]
  table = (tmp_path / "study.md").read_text()
  assert "| FGSM accuracy | PGD accuracy |" in table
  assert f"{100 * row['pgd_accuracy']:.2f}%" in table


def test_another_gan_recomputes_only_the_gan_based_columns(first_run,
                                                         tmp_path):
  study = first_run[0]
  gan = study.config_utils.load(os.path.join(ROOT, "configs",
                                             "quickstart_gan.py"))
  study.apply_overrides(gan, GAN_OVERRIDES + ["seed=5"])
  with tfds.testing.mock_data(num_examples=32):
    study.trainers.run(gan, str(tmp_path / "other_gan"))
  logs = []
  (before,) = _small(study, first_run, tmp_path / "study", [])
  (after,) = _small(study, first_run, tmp_path / "study", logs,
                    gan_workdir=str(tmp_path / "other_gan"))
  assert _evaluated(logs) == ["evaluating unrestricted examples (2 latent "
                              "steps)"]
  assert after["made_with"]["gan"]["digest"] != before["made_with"]["gan"][
      "digest"]
  assert after["made_with"]["classifier"] == before["made_with"]["classifier"]
  for key in ("clean_accuracy", "fgsm_accuracy", "pgd_accuracy"):
    assert after[key] == before[key]
  with open(tmp_path / "study" / "classifiers" / "none" /
            "study_eval.json") as f:
    assert len(json.load(f)["parts"]["unrestricted"]) == 2


def test_study_command_line_attack_and_unrestricted_flags(first_run,
                                                          tmp_path):
  study = first_run[0]
  import subprocess
  import sys
  from tests.helpers import python_path
  script = ("import runpy, sys, tensorflow_datasets as tfds\n"
            "sys.argv = ['study.py'] + sys.argv[1:]\n"
            "with tfds.testing.mock_data(num_examples=32):\n"
            f"  runpy.run_path({os.path.join(ROOT, 'experiments', 'study.py')!r},"
            " run_name='__main__')\n")
  out = subprocess.run(
      [sys.executable, "-c", script, f"--workdir={tmp_path}",
       f"--gan_workdir={os.path.join(first_run[1], 'acgan')}", "--modes=none",
       "--attacks=fgsm,pgd", "--eps=0.1", "--num_examples=20",
       "--attack.pgd.num_steps=2", "--attack.unrestricted.num_steps=1",
       "--unrestricted.num_samples=4",
       *[f"--config.{o}" for o in CLASSIFIER_OVERRIDES]],
      capture_output=True, text=True, timeout=600, cwd=ROOT,
      env=dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=python_path()))
  assert out.returncode == 0, out.stderr[-3000:]
  table = (tmp_path / "study.md").read_text()
  assert "PGD: num_steps 2," in table and "(1 latent steps)" in table
  # --config.* reached the classifier's config (and so the loop's check).
  with tfds.testing.mock_data(num_examples=32):
    saved = study.inference.restore(str(tmp_path / "classifiers" / "none"))
  assert saved.config.model.hidden == 8 and saved.config.num_train_steps == 2
  with open(tmp_path / "classifiers" / "none" / "study_eval.json") as f:
    parts = json.load(f)["parts"]
  (pgd,) = parts["attack/pgd"]
  assert pgd["result"]["settings"]["num_steps"] == 2
  assert pgd["key"]["settings"]["settings"]["num_steps"] == 2
  (latent,) = parts["unrestricted"]
  assert latent["result"]["num_samples"] == 4
  assert latent["result"]["num_steps"] == 1


def test_a_registered_evaluator_is_a_column_of_the_study(first_run, tmp_path):
  import dataclasses
  from advjax import evaluators

  @dataclasses.dataclass(frozen=True)
  class StepSettings:
    offset: int = 0

  evaluators.register("step_of", StepSettings)(
      lambda s, inputs: {"step": inputs.classifier.step + s.offset})
  try:
    study = first_run[0]
    (row,) = _small(study, first_run, tmp_path, [],
                    evaluators_named={"step_of": {"offset": 1}})
  finally:
    del evaluators.EVALUATORS["step_of"]
  assert row["step_of/step"] == 3
  assert "| step_of/step |" in (tmp_path / "study.md").read_text()
  assert _csv(tmp_path / "study.csv")[0]["step_of/step"] == "3"


def test_a_gan_mode_classifier_refuses_a_changed_gan_at_the_same_path(
    first_run, tmp_path):
  study = first_run[0]
  gan = study.config_utils.load(os.path.join(ROOT, "configs",
                                             "quickstart_gan.py"))
  study.apply_overrides(gan, GAN_OVERRIDES)
  gan_dir = str(tmp_path / "gan")
  with tfds.testing.mock_data(num_examples=32):
    study.trainers.run(gan, gan_dir)
  _small(study, first_run, tmp_path / "study", [], modes=("gan",),
         attack_names=("fgsm",), gan_workdir=gan_dir)
  gan.num_train_steps = 4  # the same run, trained further: another GAN
  with tfds.testing.mock_data(num_examples=32):
    study.trainers.run(gan, gan_dir)
  with pytest.raises(UserError, match="was trained on another GAN"):
    _small(study, first_run, tmp_path / "study", [], modes=("gan",),
           attack_names=("fgsm",), gan_workdir=gan_dir)


def test_a_resume_that_trains_nothing_keeps_the_training_time(tmp_path,
                                                             monkeypatch):
  # A finished run re-invoked under a changed config (the loop accepts it
  # and trains nothing) keeps its training time; a continued run adds.
  from advjax import loop  # pylint: disable=g-import-not-at-top
  from tests.helpers import load_config  # pylint: disable=g-import-not-at-top
  study = _study()
  workdir = str(tmp_path)
  config = load_config("study_fashion_mnist:none")
  steps = [5]
  monkeypatch.setattr(study.checkpoints, "available_steps",
                      lambda _: list(steps))

  def train(config, workdir, options):
    del config, workdir, options
    time.sleep(0.05)
    steps.append(steps[-1] + extra[0])

  extra = [0]
  monkeypatch.setattr(study.trainers, "run", train)
  with open(os.path.join(workdir, study.RESULTS), "w") as f:
    json.dump({"train": {"config": {}, "step": 5, "train_seconds": 30.0,
                         "gan": None}, "parts": {}}, f)
  options = loop.RunOptions()
  record = study._train(config, workdir, "x", print, options)  # pylint: disable=protected-access
  assert record["train_seconds"] == 30.0 and record["step"] == 5
  # Continued by 3 steps: the earlier time plus this call's.
  extra[0] = 3
  steps[:] = [5]
  with open(os.path.join(workdir, study.RESULTS), "w") as f:
    json.dump({"train": {"config": {}, "step": 5, "train_seconds": 30.0,
                         "gan": None}, "parts": {}}, f)
  record = study._train(config, workdir, "x", print, options)  # pylint: disable=protected-access
  assert record["train_seconds"] > 30.04 and record["step"] == 8
