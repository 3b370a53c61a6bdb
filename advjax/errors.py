"""User-facing errors.

A `UserError` is a mistake a researcher can fix (a misspelt dataset name, a
batch size that does not split across devices, a missing directory). The entry
points (`advjax.cli`) print its message as one line and exit with status 2
instead of showing a traceback from deep inside JAX or tfds.
"""


class UserError(ValueError):
  """An error caused by the user's input; its message says how to fix it."""


class TrainingDiverged(RuntimeError):
  """The loss stopped being finite; the message names the step."""
