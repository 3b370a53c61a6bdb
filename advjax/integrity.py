"""Checkpoint integrity: digests recorded at save time, checked on restore,
and moving an unreadable step aside instead of deleting it.

Orbax keeps no checksum: flipped bytes in an array file restore as wrong
numbers without a warning. So once orbax has committed a step, process 0
writes `<step>/advjax_digest.json`: the size and SHA-256 of every file of the
step folder. `verify(step_dir)` compares them again before a restore.

Where the digest lives: inside the step folder, as a file at its top level.
Orbax lists steps by folder name and restores items ('state', 'meta') by
their subfolders, so an extra top-level file changes neither, and retention
removes it with its step (tests/test_integrity.py checks all three). It is
written after the commit, so it is not part of orbax's atomic rename: a run
killed between the commit and the digest leaves a step without one.

When to write it: orbax saves asynchronously; a step is final once
`CheckpointManager.wait_until_finished()` returns, which orbax's own `save()`
calls before it starts the next save. `PendingDigests` records the steps this
process saved and digests them at that point (just before the next save, and
at close), so digesting adds no extra wait. Only steps this process saved are
digested: digesting an older step now could bless damage done since.

Verdicts (`Verification.status`):
  'verified'   the digest matches;
  'unverified' no digest (saved before digests existed, or the run stopped
               between commit and digest): accepted, with the note in
               `reason`, as orbax alone would accept it;
  'corrupt'    a file is missing, added, of another size or content, or the
               digest itself is unreadable: treat the step as unreadable;
  'missing'    the step folder itself is gone (removed while it was being
               checked, e.g. by a live run's retention): nothing to read and
               nothing to move aside.

An unreadable step is moved aside with `quarantine`, never deleted: the
folder `<step>` becomes `<step>.unreadable-<UTC time>`, which orbax neither
lists as a step nor removes as an unfinished save (on local disks it removes
only '*.orbax-checkpoint-tmp*' folders; on gs:// folders without
commit_success.txt, which a committed step carries along when moved).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from typing import Any

from etils import epath

DIGEST_NAME = "advjax_digest.json"
NOTE_NAME = "UNREADABLE.txt"
_ALGORITHM = "sha256"
_CHUNK = 1 << 20


def _files(step_dir: epath.Path) -> dict[str, epath.Path]:
  """{relative posix path: path} of every file under `step_dir`, except the
  digest (and its temporary twin)."""
  out = {}
  base = _without_scheme(step_dir)
  for root, _, names in step_dir.walk():
    # Object stores walk with bucket-relative roots ('bucket/a/b', no gs://).
    sub = _without_scheme(root)[len(base):].strip("/")
    for name in names:
      rel = f"{sub}/{name}" if sub else name
      if rel not in (DIGEST_NAME, DIGEST_NAME + ".tmp"):
        out[rel] = step_dir / rel
  return out


def _without_scheme(path: Any) -> str:
  text = os.fspath(path).rstrip("/")
  return text.split("://", 1)[1] if "://" in text else text


def _hash(path: epath.Path) -> tuple[int, str]:
  h, size = hashlib.new(_ALGORITHM), 0
  with path.open("rb") as f:
    while chunk := f.read(_CHUNK):
      h.update(chunk)
      size += len(chunk)
  return size, h.hexdigest()


def compute_digest(step_dir: Any) -> dict[str, Any]:
  """{'algorithm': 'sha256', 'files': {relpath: [size, hexdigest]}}."""
  step_dir = epath.Path(step_dir)
  files = {rel: list(_hash(p)) for rel, p in sorted(_files(step_dir).items())}
  return {"algorithm": _ALGORITHM, "files": files}


def write_digest(step_dir: Any) -> None:
  """Records the digest of a committed step (atomically on local disks;
  an object write is atomic by itself)."""
  step_dir = epath.Path(step_dir)
  text = json.dumps(compute_digest(step_dir), sort_keys=True)
  target = step_dir / DIGEST_NAME
  if "://" in str(step_dir):
    target.write_text(text)
    return
  tmp = step_dir / (DIGEST_NAME + ".tmp")
  tmp.write_text(text)
  os.replace(os.fspath(tmp), os.fspath(target))


@dataclasses.dataclass(frozen=True)
class Verification:
  """The verdict on one step folder; true unless it is corrupt."""
  status: str  # 'verified', 'unverified' or 'corrupt'
  reason: str = ""

  def __bool__(self) -> bool:
    return self.status not in ("corrupt", "missing")


def verify(step_dir: Any) -> Verification:
  """Checks a step folder against its digest (see the module docstring).

  A file or the whole folder that vanishes while it is checked gives a
  verdict, never a FileNotFoundError (issue 20): 'missing' if the folder is
  gone, else 'corrupt' naming the file."""
  step_dir = epath.Path(step_dir)
  try:
    return _verify(step_dir)
  except FileNotFoundError as e:
    if not step_dir.exists():
      return Verification("missing", f"{step_dir} does not exist")
    name = getattr(e, "filename", None) or str(e)
    return Verification("corrupt", f"file {name} vanished while it was "
                        f"checked")


def _verify(step_dir: epath.Path) -> Verification:
  try:
    text = (step_dir / DIGEST_NAME).read_text()
  except FileNotFoundError:
    if not step_dir.exists():
      return Verification("missing", f"{step_dir} does not exist")
    return Verification("unverified", "no digest: saved before digests were "
                        "recorded, or stopped between commit and digest")
  try:
    digest = json.loads(text)
    expected = {k: (int(v[0]), str(v[1])) for k, v in digest["files"].items()}
    algorithm = digest["algorithm"]
  except (ValueError, KeyError, TypeError, IndexError, AttributeError):
    return Verification("corrupt", f"its digest {DIGEST_NAME} is unreadable")
  if algorithm != _ALGORITHM:
    return Verification("corrupt", f"unknown digest algorithm {algorithm!r}")
  present = _files(step_dir)
  for rel in sorted(expected):
    if rel not in present:
      return Verification("corrupt", f"file {rel} is missing")
  for rel in sorted(present):
    if rel not in expected:
      return Verification("corrupt", f"file {rel} was not there at save time")
  for rel, path in sorted(present.items()):
    size, sha = _hash(path)
    if size != expected[rel][0]:
      return Verification("corrupt", f"file {rel} has {size} bytes, "
                          f"{expected[rel][0]} at save time")
    if sha != expected[rel][1]:
      return Verification("corrupt", f"file {rel} differs from its digest")
  return Verification("verified")


def fingerprint(step_dir: Any) -> str:
  """SHA-256 of a step's {file: [size, sha256]} listing: the same for the
  same files, whether taken from its digest or computed now; what a run
  records of a frozen model it reads (issue 20)."""
  step_dir = epath.Path(step_dir)
  try:
    files = json.loads((step_dir / DIGEST_NAME).read_text())["files"]
  except (FileNotFoundError, ValueError, KeyError, TypeError):
    files = compute_digest(step_dir)["files"]
  text = json.dumps(files, sort_keys=True)
  return hashlib.new(_ALGORITHM, text.encode()).hexdigest()


class PendingDigests:
  """The steps this process saved whose digest is not yet written.

      manager.wait_until_finished(); pending.flush()  # before each save
      manager.save(step, ...); pending.add(step)
      manager.wait_until_finished(); pending.flush()  # at close

  Only process 0 should write digests; steps removed by retention before
  `flush` are skipped.
  """

  def __init__(self, checkpoint_dir: Any):
    self.directory = epath.Path(checkpoint_dir)
    self._steps: list[int] = []

  def add(self, step: int) -> None:
    self._steps.append(int(step))

  def flush(self) -> list[int]:
    """Digests every pending step that exists; returns those steps."""
    done = []
    for step in self._steps:
      step_dir = self.directory / str(step)
      if step_dir.exists():
        write_digest(step_dir)
        done.append(step)
    self._steps = []
    return done


def free_name(directory: Any, prefix: str, now: float | None = None
              ) -> tuple[epath.Path, str]:
  """(`<directory>/<prefix>-<UTC time>[-k]` that does not exist yet, the
  time stamp): where something is moved aside."""
  directory = epath.Path(directory)
  stamp = time.strftime("%Y%m%dT%H%M%SZ",
                        time.gmtime(time.time() if now is None else now))
  target = directory / f"{prefix}-{stamp}"
  suffix = 1
  while target.exists():
    suffix += 1
    target = directory / f"{prefix}-{stamp}-{suffix}"
  return target, stamp


def quarantine(checkpoint_dir: Any, step: int, reason: str,
               now: float | None = None) -> epath.Path:
  """Moves `<checkpoint_dir>/<step>` to `<step>.unreadable-<UTC time>` and
  leaves `reason` in UNREADABLE.txt inside it; returns the new path.

  Nothing is deleted. On gs:// a rename is a copy then a delete: slow for a
  large step, but this happens once per damaged checkpoint. A manager that
  listed the step before must `reload()` to forget it.
  """
  directory = epath.Path(checkpoint_dir)
  source = directory / str(int(step))
  target, stamp = free_name(directory, f"{int(step)}.unreadable", now)
  source.rename(target)
  try:
    (target / NOTE_NAME).write_text(
        f"advjax moved checkpoint step {int(step)} here on {stamp}: {reason}\n")
  except OSError:
    pass  # The move is what matters; the note only explains it.
  return target
