"""Loading experiment configs (`configs/*.py`) by name or by path.

    config = advjax.config_utils.load("quickstart")          # by name
    config = advjax.config_utils.load("configs/quickstart.py")  # by path

`configs/` is a Python package installed beside `advjax` (in a clone it is
the folder beside `advjax/`; in an installed wheel, the `configs` package in
the same site-packages), so config files build on each other with plain
imports (`from configs import common, dcgan_cifar10`). A name without a
folder or `.py` (`quickstart`, `study_fashion_mnist:pgd`) is the config of
that name in that package (`find`); `resolve` turns one into its path, which
is what the command lines give ml_collections.

As with ml_collections' `--config=path.py:arg`, a path or name may end in
`:arg`; the file's `get_config(arg)` then receives the string `arg`.

A mistake inside a config file (a syntax error, an exception while it is
imported or in its `get_config`) is one `UserError` line that names the
file and line where it happened (`config file configs/x.py:12 raised
NameError: ...`), with the
original exception as its cause.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import os
import sys
import traceback

import ml_collections

from advjax.errors import UserError

PACKAGE = "configs"


def split_arg(path: str) -> tuple[str, str | None]:
  """('file.py', 'arg') for 'file.py:arg'; (path, None) without an arg."""
  head, sep, arg = path.rpartition(":")
  if sep and head and not os.path.isfile(path) and os.sep not in arg:
    return head, arg
  return path, None


def configs_dir() -> str:
  """The folder of the shipped configs: the `configs` package beside the
  `advjax` package (a clone's `configs/`, or the installed one)."""
  import advjax  # pylint: disable=g-import-not-at-top
  root = os.path.dirname(os.path.dirname(os.path.abspath(advjax.__file__)))
  return os.path.join(root, PACKAGE)


def names() -> list[str]:
  """The names of the shipped configs (`common` holds shared blocks)."""
  folder = configs_dir()
  if not os.path.isdir(folder):
    return []
  return sorted(f[:-3] for f in os.listdir(folder)
                if f.endswith(".py") and not f.startswith("_")
                and f != "common.py")


def _is_name(path: str) -> bool:
  return ("/" not in path and os.sep not in path and not path.endswith(".py")
          and not os.path.exists(path))


def find(name: str) -> str:
  """The path of the shipped config `name` (a UserError naming the closest
  one otherwise)."""
  path = os.path.join(configs_dir(), name + ".py")
  if os.path.isfile(path):
    return path
  known = names()
  close = difflib.get_close_matches(name, known, n=1)
  hint = f"; did you mean '{close[0]}'?" if close else ""
  raise UserError(f"no config named '{name}'{hint} (the configs shipped in "
                  f"{configs_dir()}: {', '.join(known) or 'none'}; or pass a "
                  f"path to a .py file)")


def resolve(spec: str) -> str:
  """`spec` ('name[:arg]' or 'path.py[:arg]') as 'path.py[:arg]'."""
  path, arg = split_arg(spec)
  if _is_name(path):
    path = find(path)
  elif not os.path.exists(os.path.expanduser(path)):
    base = os.path.basename(path)
    if base.endswith(".py") and base[:-3] in names():
      raise UserError(f"config file '{path}' does not exist; the shipped "
                      f"config of that name is --config={base[:-3]}")
  return path if arg is None else f"{path}:{arg}"


def _where(e: BaseException, folder: str) -> str:
  """'file:line' of the innermost frame of `e`'s traceback in `folder` (the
  config's package or its own folder), else the innermost frame."""
  if isinstance(e, SyntaxError) and e.filename:
    return f"{e.filename}:{e.lineno}"
  frames = traceback.extract_tb(e.__traceback__)
  inside = [f for f in frames
            if os.path.dirname(os.path.abspath(f.filename)) == folder]
  frame = (inside or frames or [None])[-1]
  return f"{frame.filename}:{frame.lineno}" if frame else "?"


def _first_line(e: BaseException) -> str:
  if isinstance(e, SyntaxError):
    return e.msg or ""
  return (str(e).strip().splitlines() or [""])[0][:200]


def _fail(e: Exception, folder: str) -> UserError:
  if isinstance(e, SyntaxError):
    return UserError(f"syntax error in config file {_where(e, folder)}: "
                     f"{_first_line(e)}")
  return UserError(f"config file {_where(e, folder)} raised "
                   f"{type(e).__name__}: {_first_line(e)}")


def use_package(folder: str) -> None:
  """Makes the package in `folder` the importable one of its name (its
  parent first on sys.path; a same-named package imported from elsewhere is
  forgotten), so a config file there imports its own siblings."""
  name = os.path.basename(folder)
  parent = os.path.dirname(folder)
  if parent not in sys.path:
    sys.path.insert(0, parent)
  module = sys.modules.get(name)
  paths = [os.path.realpath(p) for p in getattr(module, "__path__", [])]
  if module is not None and os.path.realpath(folder) not in paths:
    for key in [k for k in sys.modules
                if k == name or k.startswith(name + ".")]:
      del sys.modules[key]
    sys.path.remove(parent)
    sys.path.insert(0, parent)
  importlib.invalidate_caches()


def _import(path: str):
  """The module of the config file at `path` (as `<package>.<name>` when its
  folder is a package)."""
  folder = os.path.dirname(path)
  stem = os.path.splitext(os.path.basename(path))[0]
  if os.path.isfile(os.path.join(folder, "__init__.py")):
    use_package(folder)
    return importlib.import_module(f"{os.path.basename(folder)}.{stem}")
  spec = importlib.util.spec_from_file_location("advjax_config_" + stem, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def load(spec: str) -> ml_collections.ConfigDict:
  """`get_config()` of the config `spec` names (a name or a path; with
  ':arg', `get_config(arg)`)."""
  path, arg = split_arg(resolve(spec))
  path = os.path.abspath(os.path.expanduser(path))
  if not os.path.isfile(path):
    raise UserError(f"config file '{path}' does not exist")
  folder = os.path.dirname(path)
  try:
    module = _import(path)
  except UserError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise _fail(e, folder) from e
  if not hasattr(module, "get_config"):
    raise UserError(f"config file '{path}' defines no get_config()")
  try:
    return module.get_config() if arg is None else module.get_config(arg)
  except UserError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise _fail(e, folder) from e
