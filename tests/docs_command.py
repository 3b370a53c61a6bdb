"""`python tests/docs_command.py <a documented command's argv>`: parses it.

Runs the command (`-m advjax.main`, or a script such as
`experiments/study.py`) with its work taken out: advjax's command lines all
go through `advjax.cli.run`, which here parses the flags, checks the config
file, its `--config.<field>` overrides and the required flags as the command
would, then stops instead of training or evaluating (argparse commands stop
after parsing). An unknown or renamed flag, a config file that is gone or
fails, or a field the config does not have fails with the command's own
one-line error. tests/test_docs.py runs it on every shell
command of README.md and docs/ that is not run for real.
"""

import argparse
import os
import runpy
import sys
import warnings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from advjax import cli  # pylint: disable=g-import-not-at-top


def _parse_only(run):
  """`cli.run` with everything but the work: parses the flags, checks the
  config file, its overrides and the required flags, then stops."""
  def parse(main, *args, **kwargs):
    del main
    return run(lambda argv: print("ok: the command parses"), *args, **kwargs)
  return parse


def _argparse_only(parse_args):
  def parse(self, *args, **kwargs):
    parse_args(self, *args, **kwargs)
    print("ok: the command parses")
    sys.exit(0)
  return parse


def main(argv: list[str]) -> None:
  cli.run = _parse_only(cli.run)
  argparse.ArgumentParser.parse_args = _argparse_only(
      argparse.ArgumentParser.parse_args)
  # The CLI modules are imported by advjax.cli before runpy runs them.
  warnings.filterwarnings("ignore", category=RuntimeWarning, module="runpy")
  if argv[0] == "-m":
    sys.argv = [argv[1], *argv[2:]]
    runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
  else:
    sys.argv = list(argv)
    runpy.run_path(os.path.join(ROOT, argv[0]), run_name="__main__")


if __name__ == "__main__":
  main(sys.argv[1:])
