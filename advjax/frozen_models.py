"""Frozen models a run reads, pinned to the checkpoint it started with.

A classifier trained against a GAN (adversarial training) or a student
against a teacher (distillation) reads another run's checkpoint and never
trains it. Found by path alone at each start, a resumed run would train
against whatever that other run's newest step is by then, maybe another
model than the one it started with (issue 20, review #9). So a run records,
for every frozen model it reads, the work directory, the step and the
fingerprint of the step's files (`integrity.fingerprint`) in each
checkpoint's meta (`"frozen": {role: record}`), and on resume:

  `Pins.restore` restores exactly the recorded step of that work directory,
    not its newest; if that step is gone or its files differ, the run is
    refused like a config change: one line naming the model, with the same
    two ways forward (another --workdir, or --allow_config_change, which
    reads the newest step and records that one);
  the loop compares the records of the step it restores with what the
    trainer read (`compare`), so a run never goes on silently against
    another model, whichever step it resumes from.

Models that only evaluate (`training=False`: `eval.gan_workdir`,
`eval.classifier_workdir`) are recorded and pinned the same way, but as with
the config's `eval.*` fields a change of them is accepted, with a line.
A checkpoint written before records existed pins nothing: the run goes on
and records what it reads from then on.
"""

from __future__ import annotations

from typing import Any

import jax

from advjax import checkpoints, config_changes, inference
from advjax.errors import UserError


def _describe(record: dict[str, Any] | None) -> str:
  if not record:
    return "<absent>"
  return (f"step {record.get('step')} of {record.get('workdir')}, files "
          f"{str(record.get('digest', ''))[:12]}")


def _same(a: dict[str, Any] | None, b: dict[str, Any] | None) -> bool:
  keys = ("workdir", "step", "digest")
  return bool(a) and bool(b) and all(a.get(k) == b.get(k) for k in keys)


def compare(saved: dict[str, Any] | None, now: dict[str, Any]) -> list[str]:
  """The training models (one description each) whose record differs from
  the saved one; [] when `saved` is None (a checkpoint without records)."""
  if saved is None:
    return []
  changes = []
  for role in sorted(set(saved) | set(now)):
    old, new = saved.get(role), now.get(role)
    training = any(r.get("training", True) for r in (old, new) if r)
    if training and not _same(old, new):
      changes.append(f"{role} ({_describe(old)} -> {_describe(new)})")
  return changes


def refused_message(changes: list[str], workdir: str) -> str:
  """The one-line refusal, worded like a refused config change."""
  return (f"the frozen models differ from those the run in {workdir} was "
          f"started with: {', '.join(changes)}; "
          f"{config_changes.ways_forward()}")


class Pins:
  """The frozen models one run reads: restores them, pinned on resume.

      pins = Pins(workdir, options.allow_config_change)
      gan = pins.restore("gan", gan_workdir, kind="gan")
      ... loop.Task(..., frozen_pins=pins.records)

  `workdir` None pins nothing (a notebook, a test).
  """

  def __init__(self, workdir: str | None = None, allow_change: bool = False):
    self.workdir = workdir
    self.allow_change = allow_change
    self.records: dict[str, dict[str, Any]] = {}
    self._saved: dict[str, Any] | None = None

  def saved(self) -> dict[str, Any]:
    """The records of the run's newest checkpoint ({} without any)."""
    if self._saved is None:
      meta = checkpoints.newest_meta(self.workdir) if self.workdir else {}
      self._saved = dict(meta.get("frozen") or {})
    return self._saved

  def restore(self, role: str, path: str, kind: str,
              training: bool = True) -> inference.Run:
    """The run in `path` (an `inference` handle of `kind`): the step the
    run recorded for `role` when it resumes, else the newest."""
    pin = self.saved().get(role)
    handle = None
    if pin and pin.get("workdir") == path and not self.allow_change:
      handle = self._pinned(role, path, kind, pin, training)
    if handle is None:
      handle = inference.restore(path, kind=kind)
    self.records[role] = {
        "workdir": path, "step": int(handle.step),
        "digest": checkpoints.fingerprint(path, handle.step),
        "training": bool(training)}
    return handle

  def _pinned(self, role, path, kind, pin, training):
    step = int(pin["step"])
    try:
      handle = inference.restore(path, step=step, kind=kind)
    except checkpoints.RestoreError:
      raise
    except UserError:
      handle, now = None, f"step {step} of {path} is gone"
    else:
      now = None
      if checkpoints.fingerprint(path, step) != pin.get("digest"):
        now = f"step {step} of {path} has other files"
    if now is None:
      return handle
    if training:
      raise UserError(refused_message([f"{role} ({_describe(pin)} -> {now})"],
                                      self.workdir))
    if jax.process_index() == 0:
      print(f"advjax: resuming with a changed {role} ({now}; evaluating "
            f"with its newest step)", flush=True)
    return None
