"""What every command line of advjax shares: one clear line for each mistake.

`run(main, argv)` parses the absl flags and calls `main(argv)`. Anything a
user can get wrong ends the program with `advjax: error: <what>` on stderr
and exit status 2 instead of a usage dump or a traceback: an unknown flag or
a value of the wrong type, a positional argument, a missing required flag, a
config file that does not exist, does not parse, raises or has no
`get_config()`, a `--config.<field>` (or any other config-dict flag's)
override naming no field (with the closest one suggested), and any
`UserError` raised later. An override given twice takes its last value. A diverging
run ends with status 3; a run stopped by SIGINT or SIGTERM with one line and
status 128 + the signal (see `advjax.loop.Stopped`), and one interrupted before
its loop with one line saying whether there is a checkpoint to resume from.
Trouble with the environment is one line with status 2 too: missing or
expired Google Cloud credentials, a failed Cloud Storage request, any OSError
(naming its path) and an empty or corrupt JSON file.
"""

from __future__ import annotations

import difflib
import json
import sys
from typing import Any, Callable, Sequence

from advjax import config_utils
from advjax import loop
from advjax.errors import TrainingDiverged, UserError


def fail(message: str, status: int = 2) -> None:
  """Prints `advjax: error: <first line of message>` and exits."""
  first = (str(message).strip().splitlines() or [""])[0]
  print(f"advjax: error: {first}", file=sys.stderr, flush=True)
  sys.exit(status)


def _flag_values(argv: Sequence[str], name: str) -> list[tuple[str, str]]:
  """(flag, value) of every `--<name>...=value` in argv (also `--flag v`)."""
  out = []
  for i, arg in enumerate(argv):
    if not arg.startswith(f"--{name}"):
      continue
    flag, sep, value = arg[2:].partition("=")
    if not sep and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
      value = argv[i + 1]
    if flag == name or flag.startswith(name + "."):
      out.append((flag, value))
  return out


def last_wins(argv: Sequence[str]) -> list[str]:
  """`argv` with only the last of repeated `--a.b=value` overrides: the
  last value wins for every field (absl would concatenate tuples)."""
  last = {}
  for i, arg in enumerate(argv):
    name, sep, _ = arg.partition("=")
    if sep and arg.startswith("--") and "." in name:
      last[name] = i
  return [arg for i, arg in enumerate(argv)
          if not (arg.startswith("--") and "=" in arg
                  and "." in arg.partition("=")[0]
                  and last[arg.partition("=")[0]] != i)]


def check_overrides(argv: Sequence[str], flag: str, config: Any) -> None:
  """One-line errors for `--<flag>.<field>=...` overrides of `config`: each
  must name a field (else the closest one is suggested)."""
  for name, _ in _flag_values(argv, flag):
    if name == flag:
      continue
    node, path = config, []
    for key in name.split(".")[1:]:
      keys = list(node.keys()) if hasattr(node, "keys") else []
      if key not in keys:
        close = difflib.get_close_matches(key, [str(k) for k in keys], n=1)
        where = ".".join(path + [key])
        hint = (f"; did you mean {'.'.join(path + [close[0]])}?" if close
                else f"; the fields there are {sorted(map(str, keys))}"
                if keys else "")
        raise UserError(f"unknown {flag} field {where}{hint}")
      node, path = node[key], path + [key]


def define_config_dict(name: str, config: Any, help_text: str) -> None:
  """`config_flags.DEFINE_config_dict`, after checking the command line's
  `--<name>.<field>` overrides (ml_collections reads them as the flag is
  defined, with a traceback for a misspelt field)."""
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  try:
    check_overrides(sys.argv, name, config)
  except UserError as e:
    fail(str(e))
  config_flags.DEFINE_config_dict(name, config, help_text)


def resolve_config_file(argv: Sequence[str], flag: str = "config"
                        ) -> list[str]:
  """`argv` with a config named by name (`--config=quickstart[:arg]`)
  replaced by its file's path (`config_utils.resolve`)."""
  out, skip = [], False
  for i, arg in enumerate(argv):
    if skip:
      skip = False
      continue
    if arg == f"--{flag}" and i + 1 < len(argv):
      out.append(f"--{flag}={config_utils.resolve(argv[i + 1])}")
      skip = True
    elif arg.startswith(f"--{flag}="):
      out.append(f"--{flag}={config_utils.resolve(arg.partition('=')[2])}")
    else:
      out.append(arg)
  return out


def check_config_file(argv: Sequence[str], flag: str = "config") -> None:
  """The `--config=FILE` must load (`config_utils.load` says why not) and its
  overrides must name fields, once each."""
  files = [v for f, v in _flag_values(argv, flag) if f == flag]
  if files:
    check_overrides(argv, flag, config_utils.load(files[-1]))


def parse_flags(argv: Sequence[str], config_flag: str | None = "config"
                ) -> list[str]:
  """absl flag parsing with one-line errors; returns the remaining argv.

  `config_flag` names a config-file flag whose file and overrides are
  checked first (config-dict flags are checked where they are defined,
  `define_config_dict`).
  """
  from absl import flags  # pylint: disable=g-import-not-at-top
  try:
    if config_flag:
      argv = resolve_config_file(argv, config_flag)
      check_config_file(argv, config_flag)
    return flags.FLAGS(last_wins(argv))
  except UserError as e:
    fail(str(e))
  except flags.Error as e:
    fail(str(e))
  except (AttributeError, KeyError) as e:
    fail(f"unknown config field {str(e).strip(chr(34))}")
  except Exception as e:  # pylint: disable=broad-except
    fail(f"{type(e).__name__}: {e}")
  raise AssertionError("unreachable")


def run(main: Callable[[list[str]], Any], argv: Sequence[str] | None = None,
        *, required: Sequence[str] = ("workdir",),
        config_flag: str | None = "config") -> None:
  """Parses flags, checks `required` ones and calls `main(argv)`, turning
  every mistake into one line (see the module docstring)."""
  from absl import flags, logging  # pylint: disable=g-import-not-at-top
  argv = list(sys.argv if argv is None else argv)
  remaining = parse_flags(argv, config_flag)
  logging.set_verbosity(logging.ERROR)
  try:
    if len(remaining) > 1:
      raise UserError(f"unexpected argument(s) "
                      f"{' '.join(remaining[1:])!r} (flags are --name=value)")
    for name in required:
      if not flags.FLAGS[name].value:
        example = {"config": "=configs/<experiment>.py",
                   "workdir": "=DIR"}.get(name, "")
        raise UserError(f"--{name}{example} is required")
    main(remaining)
  except UserError as e:
    fail(str(e))
  except TrainingDiverged as e:
    fail(str(e), status=3)
  except loop.Stopped as e:
    print(f"advjax: {e}", file=sys.stderr, flush=True)
    sys.exit(128 + e.signum)
  except KeyboardInterrupt:
    print(f"advjax: {_interrupted_message()}", file=sys.stderr, flush=True)
    sys.exit(130)
  except Exception as e:  # pylint: disable=broad-except
    message = environment_error(e)
    if message is None:
      raise
    fail(message)


def _interrupted_message() -> str:
  """What an interrupt before (or outside) the training loop leaves."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  from advjax import checkpoints  # pylint: disable=g-import-not-at-top
  try:
    workdir = flags.FLAGS["workdir"].value
    steps = checkpoints.available_steps(workdir) if workdir else []
  except Exception:  # pylint: disable=broad-except
    return "interrupted"
  if not steps:
    return (f"interrupted before a checkpoint was saved in {workdir}; "
            f"nothing to resume from yet")
  return (f"interrupted; nothing new was saved; rerun the same command to "
          f"resume from {checkpoints.checkpoint_dir(workdir)}/{steps[-1]}")


def environment_error(error: BaseException) -> str | None:
  """One line for trouble with credentials, storage, files or JSON in
  `error` or its causes; None for anything else."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    message = _describe(error)
    if message is not None:
      return message
    error = error.__cause__
  return None


def _describe(error: BaseException) -> str | None:
  name = type(error).__name__
  module = type(error).__module__ or ""
  text = " ".join(str(error).split())
  if module.startswith("google.auth"):
    return (f"no usable Google Cloud credentials ({name}: {text}); run "
            f"'gcloud auth application-default login' or set "
            f"GOOGLE_APPLICATION_CREDENTIALS to a key file")
  if module.startswith("gcsfs") and name == "HttpError":
    code = getattr(error, "code", None)
    return (f"Cloud Storage request failed"
            f"{f' (HTTP {code})' if code else ''}: {text}; check the bucket "
            f"name and your access to it, or retry")
  if isinstance(error, json.JSONDecodeError):
    return (f"a JSON file is empty or corrupt ({error.msg}: line "
            f"{error.lineno} column {error.colno}); a process killed while "
            f"writing it can leave it so: delete it to redo that part")
  if isinstance(error, OSError):
    what = (error.strerror or text or name).rstrip(".")
    paths = [p for p in (error.filename, error.filename2) if p is not None]
    return (f"{what[:1].lower()}{what[1:]}: "
            + " -> ".join(map(str, paths)) if paths else f"{name}: {what}")
  return None
