"""Resuming with a changed config: what is accepted, what is refused."""

import fnmatch
import glob
import json
import os

from advjax import checkpoints, config_changes
from advjax.config_changes import ABSENT, ConfigChange, compare_configs
from tests.helpers import ROOT, load_config


def _saved(config):
  """The config as a checkpoint's meta holds it (JSON: tuples are lists)."""
  return json.loads(json.dumps(checkpoints.config_to_json(config)))


def test_changes_that_extend_or_observe_a_run_are_accepted():
  config = load_config("quickstart")
  saved = _saved(config)
  config.num_train_steps = 400
  config.log_every_steps = 10
  config.progress_bar = False
  config.checkpoint.keep = 5
  config.checkpoint.every_steps = 25
  config.dataset.data_dir = "/data/tfds"
  accepted, refused = compare_configs(saved, config)
  assert refused == []
  assert [c.field for c in accepted] == [
      "checkpoint.every_steps", "checkpoint.keep", "dataset.data_dir",
      "log_every_steps", "num_train_steps", "progress_bar"]
  assert ConfigChange("num_train_steps", -1, 400) in accepted


def test_model_optimizer_seed_and_best_metric_changes_are_refused():
  config = load_config("quickstart")
  saved = _saved(config)
  config.model.widths = (16, 32)
  config.optimizer.learning_rate = 0.1
  config.seed = 1
  config.checkpoint.best_metric = "eval/loss"
  accepted, refused = compare_configs(saved, config)
  assert accepted == []
  assert refused == [
      ConfigChange("checkpoint.best_metric", "eval/accuracy", "eval/loss"),
      ConfigChange("model.widths", [32, 64], [16, 32]),
      ConfigChange("optimizer.learning_rate", 2e-3, 0.1),
      ConfigChange("seed", 0, 1)]


def test_unchanged_config_read_back_from_json_has_no_changes():
  config = load_config("study_fashion_mnist:pgd")
  assert compare_configs(_saved(config), config) == ([], [])


def test_field_missing_from_the_saved_config_is_a_change_from_absent():
  config = load_config("quickstart_gan")
  saved = _saved(config)
  del saved["gan"]["instance_noise"]
  saved["eval"].pop("samples_per_class")
  accepted, refused = compare_configs(saved, config)
  assert refused == [ConfigChange("gan.instance_noise", ABSENT, 0.0)]
  assert accepted == [ConfigChange("eval.samples_per_class", ABSENT, 100)]


def test_refused_message_is_one_line_with_both_ways_forward():
  refused = [ConfigChange("model.widths", [8, 16], [16, 32]),
             ConfigChange("optimizer.name", "adam", "sgd"),
             ConfigChange("seed", 0, 1), ConfigChange("dtype", "a", "b"),
             ConfigChange("batch_size", 32, 64)]
  message = config_changes.refused_message(refused, "/tmp/run")
  assert "\n" not in message
  assert "/tmp/run" in message
  assert 'model.widths ([8, 16] -> [16, 32])' in message
  assert 'optimizer.name ("adam" -> "sgd")' in message
  assert "and 1 more" in message and "batch_size" not in message
  assert "another --workdir" in message
  assert config_changes.ALLOW_FLAG in message


def test_accepted_message_lists_old_and_new_values():
  line = config_changes.accepted_message(
      [ConfigChange("num_train_steps", 200, 400)])
  assert line == "advjax: resuming with a changed num_train_steps (200 -> 400)"


def test_every_extending_field_names_a_field_of_a_shipped_config():
  fields = set()
  for path in glob.glob(os.path.join(ROOT, "configs", "*.py")):
    name = os.path.basename(path)[:-3]
    if name == "common":  # shared blocks, not an experiment
      continue
    if name.startswith("study_"):
      name += ":pgd"
    fields |= set(config_changes.flatten(load_config(name)))
  for pattern in config_changes.EXTENDING_FIELDS:
    assert any(fnmatch.fnmatchcase(f, pattern) for f in fields), pattern
