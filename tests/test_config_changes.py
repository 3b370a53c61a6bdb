"""Resuming with a changed config: what is accepted, what is refused."""

import json

from advjax import checkpoints, config_changes, config_utils
from advjax.config_changes import ABSENT, ConfigChange, compare_configs
from tests.helpers import load_config


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
  config.eval.samples_per_class = 50
  saved = _saved(config)
  saved["gan"].pop("aux_weight_g")  # 1.0 here, 0.0 by default
  saved["eval"].pop("samples_per_class")
  saved["model"]["old_option"] = 3  # a field this advjax no longer has
  accepted, refused = compare_configs(saved, config)
  assert refused == [ConfigChange("gan.aux_weight_g", ABSENT, 1.0),
                     ConfigChange("model.old_option", 3, ABSENT)]
  assert accepted == [ConfigChange("eval.samples_per_class", ABSENT, 50)]


def test_field_missing_at_its_default_is_no_change():
  """A config saved before a field existed resumes under a config holding
  that field at its default (the dataclass's)."""
  config = load_config("quickstart_gan")
  saved = _saved(config)
  del saved["gan"]["instance_noise"]  # default 0.0
  del saved["dataset"]["image_size"]  # default 0
  del saved["temperature"]  # default 1.0
  saved["eval"].pop("samples_per_class")  # default 100
  saved["g_optimizer"].pop("weight_decay")
  assert compare_configs(saved, config) == ([], [])
  assert compare_configs(config, saved) == ([], [])


def test_settings_of_an_adversary_the_run_does_not_use_are_no_change():
  """A new default of one adversary does not stop the runs of the others:
  a pgd run reads only the pgd block (and the unrestricted one when its
  generated data is unrestricted examples)."""
  config = load_config("study_fashion_mnist:pgd")
  saved = _saved(config)
  saved["adversarial_training"]["unrestricted"]["learning_rate"] = 4.0
  del saved["adversarial_training"]["unrestricted"]["iterate"]
  saved["adversarial_training"]["trades"]["beta"] = 1.0
  assert compare_configs(saved, config) == ([], [])
  config.adversarial_training.pgd.num_steps = 7  # its own block: refused
  config.adversarial_training.generated.source = "unrestricted"
  # A run that reads the block (before or after) sees its changes.
  _, refused = compare_configs(saved, config)
  assert [c.field for c in refused] == [
      "adversarial_training.generated.source",
      "adversarial_training.pgd.num_steps",
      "adversarial_training.unrestricted.iterate",
      "adversarial_training.unrestricted.learning_rate"]
  saved["adversarial_training"]["generated"]["source"] = "unrestricted"
  _, refused = compare_configs(saved, config)
  assert [c.field for c in refused] == [
      "adversarial_training.pgd.num_steps",
      "adversarial_training.unrestricted.iterate",
      "adversarial_training.unrestricted.learning_rate"]


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
  for name in config_utils.names():
    if name.startswith("study_"):
      name += ":pgd"
    fields |= set(config_changes.flatten(load_config(name)))
  extending = config_changes.extending_fields()
  assert extending and set(extending) <= fields, set(extending) - fields


def test_whether_a_field_extends_a_run_is_metadata_of_its_dataclass():
  import dataclasses  # pylint: disable=g-import-not-at-top
  from advjax import run_settings, settings  # pylint: disable=g-import-not-at-top
  from advjax.trainers import gan  # pylint: disable=g-import-not-at-top
  field = {f.name: f for f in dataclasses.fields(gan.EvalSettings)}
  assert field["samples_per_class"].metadata[settings.EXTENDS_RUN]
  assert config_changes.is_extending("eval.samples_per_class")
  assert config_changes.is_extending("num_train_steps")
  assert config_changes.is_extending("dataset.data_dir")
  assert not config_changes.is_extending("dataset.name")
  assert not config_changes.is_extending("seed")
  assert not config_changes.is_extending("checkpoint.best_metric")
  assert not hasattr(config_changes, "EXTENDING_FIELDS")

  @settings.register("toy")
  @dataclasses.dataclass(frozen=True)
  class Toy:
    interval: int = settings.extends_run(5, "toy interval")
    size: int = 3

  try:
    assert config_changes.is_extending("toy.interval")
    assert not config_changes.is_extending("toy.size")
  finally:
    settings.BLOCKS.pop("toy")
  assert "num_epochs" in settings.extending_fields()
  assert run_settings.RunSettings in settings.BLOCKS[""]
