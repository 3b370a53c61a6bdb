"""Configs by name or path, importing each other plainly; their errors say
where they happened."""

import os
import textwrap

import pytest

from advjax import cli, config_changes, config_utils
from advjax.errors import UserError
from tests.helpers import ROOT


def _package(folder, **files):
  """A config package `folder` (named like its last part) with `files`."""
  folder.mkdir(parents=True)
  (folder / "__init__.py").write_text("")
  for name, text in files.items():
    (folder / f"{name}.py").write_text(textwrap.dedent(text))
  return folder


def test_a_config_by_name_is_the_shipped_file():
  assert config_utils.configs_dir() == os.path.join(ROOT, "configs")
  assert "quickstart" in config_utils.names()
  assert "common" not in config_utils.names()
  path = os.path.join(ROOT, "configs", "quickstart.py")
  assert config_utils.resolve("quickstart") == path
  assert config_utils.resolve("study_fashion_mnist:pgd") == (
      os.path.join(ROOT, "configs", "study_fashion_mnist.py") + ":pgd")
  by_name = config_utils.load("study_fashion_mnist:pgd")
  by_path = config_utils.load(os.path.join(ROOT, "configs",
                                           "study_fashion_mnist.py:pgd"))
  assert config_changes.diff_configs(by_name, by_path) == []
  assert by_name.adversarial_training.mode == "pgd"


def test_unknown_names_and_missing_paths_are_one_line_with_a_hint(tmp_path,
                                                                  monkeypatch):
  with pytest.raises(UserError, match="did you mean 'quickstart'"):
    config_utils.load("quickstrat")
  monkeypatch.chdir(tmp_path)  # outside the checkout
  with pytest.raises(UserError, match="--config=quickstart_gan"):
    config_utils.load("configs/quickstart_gan.py")
  with pytest.raises(UserError, match="does not exist"):
    config_utils.load("configs/nope.py")


def test_command_line_names_become_paths():
  argv = ["advjax-train", "--config=quickstart", "--config.seed=1",
          "--workdir=/tmp/x"]
  assert cli.resolve_config_file(argv) == [
      "advjax-train", f"--config={config_utils.find('quickstart')}",
      "--config.seed=1", "--workdir=/tmp/x"]
  assert cli.resolve_config_file(["p", "--config", "quickstart_gan"]) == [
      "p", f"--config={config_utils.find('quickstart_gan')}"]


def test_configs_import_their_own_package(tmp_path):
  for tag in ("one", "two"):  # two packages of the same name
    _package(tmp_path / tag / "configs",
             common=f"""\
                 import ml_collections
                 TAG = {tag!r}
                 def block():
                   return ml_collections.ConfigDict(dict(tag=TAG))
                 """,
             base="""\
                 from configs import common
                 def get_config():
                   return common.block()
                 """,
             child="""\
                 from configs import base
                 def get_config(arg="x"):
                   config = base.get_config()
                   config.arg = arg
                   return config
                 """)
  one = config_utils.load(str(tmp_path / "one" / "configs" / "child.py:y"))
  two = config_utils.load(str(tmp_path / "two" / "configs" / "child.py"))
  assert (one.tag, one.arg) == ("one", "y")
  assert (two.tag, two.arg) == ("two", "x")
  # ... and the shipped package is the one found by name again.
  assert config_utils.load("quickstart").model.name == "cnn"


@pytest.mark.parametrize("where, text, line, kind", [
    ("import", "import ml_collections\nX = undefined_name\n", 2,
     "raised NameError: name 'undefined_name'"),
    ("get_config", "def get_config():\n  a = 1\n  return a / 0\n", 3,
     "raised ZeroDivisionError"),
    ("syntax", "def get_config(:\n  pass\n", 1, "invalid syntax"),
])
def test_an_error_in_a_config_names_its_file_and_line(tmp_path, where, text,
                                                      line, kind):
  folder = _package(tmp_path / "configs", broken=text)
  with pytest.raises(UserError) as info:
    config_utils.load(str(folder / "broken.py"))
  message = str(info.value)
  assert "\n" not in message
  start = "syntax error in config file" if where == "syntax" else "config file"
  assert message.startswith(f"{start} {folder / 'broken.py'}:{line}"), message
  assert kind in message, message
  assert info.value.__cause__ is not None  # the original, for a traceback


def test_an_error_in_a_sibling_names_the_sibling(tmp_path):
  folder = _package(tmp_path / "configs",
                    common="def block():\n  return {}['missing']\n",
                    top="from configs import common\n\n\n"
                        "def get_config():\n  return common.block()\n")
  with pytest.raises(UserError, match=(
      f"^config file {folder / 'common.py'}:2 raised KeyError: 'missing'")):
    config_utils.load(str(folder / "top.py"))
  # A file outside any package loads too.
  (tmp_path / "plain.py").write_text(
      "import ml_collections\n\n\ndef get_config():\n"
      "  return ml_collections.ConfigDict(dict(a=1))\n")
  assert config_utils.load(str(tmp_path / "plain.py")).a == 1
