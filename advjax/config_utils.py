"""Loading experiment configs (`configs/*.py`) outside the command line.

    config = advjax.config_utils.load("configs/quickstart.py")

Config files may build on each other with `base("other_config")`, which
loads a config file from the same folder as the caller, and share blocks
through `sibling("common")`, which imports `common.py` from that folder as a
module (`configs/common.py`: the blocks every config repeats).

As with ml_collections' `--config=path.py:arg`, a path may end in `:arg`;
the file's `get_config(arg)` then receives the string `arg`.
"""

from __future__ import annotations

import importlib.util
import inspect
import os
import sys
import types

import ml_collections

from advjax.errors import UserError


def split_arg(path: str) -> tuple[str, str | None]:
  """('file.py', 'arg') for 'file.py:arg'; (path, None) without an arg."""
  head, sep, arg = path.rpartition(":")
  if sep and head and not os.path.isfile(path) and os.sep not in arg:
    return head, arg
  return path, None


def load(path: str) -> ml_collections.ConfigDict:
  """`get_config()` of the config file at `path` (`get_config(arg)` for
  'path:arg')."""
  path, arg = split_arg(path)
  path = os.path.abspath(os.path.expanduser(path))
  if not os.path.isfile(path):
    raise UserError(f"config file '{path}' does not exist")
  name = "advjax_config_" + os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
  except SyntaxError as e:
    raise UserError(f"syntax error in config file '{path}' line {e.lineno}: "
                    f"{e.msg}") from None
  except UserError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise UserError(f"config file '{path}' raised {type(e).__name__}: "
                    f"{_first_line(e)}") from None
  if not hasattr(module, "get_config"):
    raise UserError(f"config file '{path}' defines no get_config()")
  try:
    return module.get_config() if arg is None else module.get_config(arg)
  except UserError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise UserError(f"get_config() of '{path}' raised {type(e).__name__}: "
                    f"{_first_line(e)}") from None


def _first_line(e: BaseException) -> str:
  return (str(e).strip().splitlines() or [""])[0][:200]


def base(name: str) -> ml_collections.ConfigDict:
  """The config `<name>.py` (or `<name>.py:arg` for 'name:arg') from the
  caller's folder (for config files)."""
  caller = inspect.stack()[1].filename
  name, sep, arg = name.partition(":")
  return load(os.path.join(os.path.dirname(os.path.abspath(caller)),
                           name + ".py") + (sep + arg if sep else ""))


def sibling(name: str) -> types.ModuleType:
  """The module `<name>.py` from the caller's folder, imported once (for
  config files that share blocks, e.g. `common = sibling("common")`)."""
  caller = inspect.stack()[1].filename
  path = os.path.join(os.path.dirname(os.path.abspath(caller)), name + ".py")
  key = f"advjax_configs_{abs(hash(path))}_{name}"
  if key not in sys.modules:
    if not os.path.isfile(path):
      raise UserError(f"config module '{path}' does not exist")
    spec = importlib.util.spec_from_file_location(key, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[key] = module
    spec.loader.exec_module(module)
  return sys.modules[key]
