"""User-facing errors.

A `UserError` is a mistake a researcher can fix (a misspelt dataset name, a
batch size that does not split across devices, a missing directory). The entry
points print its message as one line and exit with status 2 instead of showing
a traceback from deep inside JAX or tfds.
"""


class UserError(ValueError):
  """An error caused by the user's input; its message says how to fix it."""


class TrainingDiverged(RuntimeError):
  """The loss stopped being finite; the message names the step."""


def one_line_errors(main, required: tuple[str, ...] = ("workdir",)):
  """Wraps an absl `main(argv)`: quiet absl logging, positional arguments
  and missing `required` flags refused, and a `UserError` ends the program
  with one line on stderr and exit status 2."""

  def wrapped(argv):
    import sys  # pylint: disable=g-import-not-at-top
    from absl import flags, logging  # pylint: disable=g-import-not-at-top
    logging.set_verbosity(logging.ERROR)
    try:
      if len(argv) > 1:
        raise UserError(f"unexpected argument(s) {' '.join(argv[1:])!r} "
                        f"(flags are --name=value)")
      for name in required:
        if not flags.FLAGS[name].value:
          raise UserError(f"--{name} is required")
      return main(argv)
    except UserError as e:
      print(f"advjax: error: {e}", file=sys.stderr, flush=True)
      sys.exit(2)
  return wrapped
