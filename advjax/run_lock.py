"""One run per work directory: a lock file held by process 0 of a run.

`<workdir>/advjax.lock` is a small JSON record of its holder: host, boot id,
pid (and the pid's start time, to recognise a reused pid), start time, a
heartbeat time refreshed every `heartbeat_s` seconds by a background thread,
and a random run id. A second run meets a `UserError` naming the holder.

A lock is stale, and is taken over with a warning, when
  - its holder ran on this machine (same host name and boot id) and that
    process is gone (or its pid now belongs to another process), or
  - its holder ran elsewhere (another host, or this host before a reboot:
    a preempted VM replaced by a fresh one) and its heartbeat is older than
    `stale_after_s` (clocks of the two machines are assumed to agree to well
    within that).

What is guaranteed:
  - Local (POSIX) work directories: a free lock is created with O_EXCL, so of
    processes starting together exactly one gets it. A stale lock is taken
    over under a second O_EXCL file (`advjax.lock.takeover`), after checking
    that the lock still holds the stale record, so of several processes
    meeting the same stale lock one takes it over and the others then meet
    it as live.
  - Object stores (`gs://...`; no exclusive create): the record is written,
    then read back after `settle_s` seconds; the process whose run id is read
    back holds the lock. Object writes are atomic and reads after a write see
    it, so this excludes every contender that writes within `settle_s` of the
    first; one that is slower than that between its existence check and its
    write can end up believing it holds a lock it lost. Both cases are caught
    by the heartbeat: each beat reads the record first, and a process whose
    run id is no longer there stops beating and `check()` raises, so a run
    that calls `check()` before each checkpoint save never saves into a
    directory another run holds.

Release: leaving `with RunLock(workdir):` (also by KeyboardInterrupt) or
interpreter exit (atexit) removes the file if it is still ours. SIGTERM's
default action ends Python without either: a handler that raises (SystemExit)
makes it release. A process killed outright (SIGKILL, power loss) leaves the
file; the next run on this machine takes it over at once, one elsewhere after
`stale_after_s`.

Only process 0 of a multi-host run takes the lock; the others rely on it.
"""

from __future__ import annotations

import atexit
import dataclasses
import json
import logging
import os
import socket
import threading
import time
import uuid
import warnings
from typing import Any

from etils import epath

from advjax.errors import UserError

LOCK_NAME = "advjax.lock"
_TAKEOVER_SUFFIX = ".takeover"
# A takeover claim older than this was left by a process killed mid-takeover.
_STALE_CLAIM_S = 30.0
# Run ids of the locks this process holds (a leftover of this process that
# is not among them, e.g. from a notebook cell that was interrupted, is stale).
_HELD: set[str] = set()


def _boot_id() -> str:
  try:
    with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
      return f.read().strip()
  except OSError:
    return ""


def _process_start(pid: int) -> str | None:
  """The start time of `pid` in clock ticks since boot (Linux), or None."""
  try:
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
      fields = f.read().rsplit(")", 1)[1].split()
  except (OSError, IndexError):
    return None
  return fields[19] if len(fields) > 19 else None


def _process_state(pid: int) -> str | None:
  try:
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
      return f.read().rsplit(")", 1)[1].split()[0]
  except (OSError, IndexError):
    return None


def pid_alive(pid: int, start: str | None = None) -> bool:
  """Whether process `pid` of this machine runs (and, given its recorded
  start time, is still the same process rather than a reused pid)."""
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    pass
  if _process_state(pid) == "Z":  # Killed, not yet reaped by its parent.
    return False
  now_start = _process_start(pid)
  return start is None or now_start is None or now_start == start


def _utc(t: float) -> str:
  return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))


@dataclasses.dataclass(frozen=True)
class LockRecord:
  """Who holds a work directory."""
  host: str
  pid: int
  started: float
  heartbeat: float
  run_id: str
  boot_id: str = ""
  pid_start: str | None = None

  @classmethod
  def for_this_process(cls, now: float) -> "LockRecord":
    pid = os.getpid()
    return cls(host=socket.gethostname(), pid=pid, started=now,
               heartbeat=now, run_id=uuid.uuid4().hex, boot_id=_boot_id(),
               pid_start=_process_start(pid))

  def to_json(self) -> str:
    return json.dumps(dataclasses.asdict(self), sort_keys=True)

  @classmethod
  def from_json(cls, text: str) -> "LockRecord":
    """Parses a record; ValueError if it is not one."""
    try:
      data = json.loads(text)
      return cls(host=str(data["host"]), pid=int(data["pid"]),
                 started=float(data["started"]),
                 heartbeat=float(data["heartbeat"]),
                 run_id=str(data["run_id"]),
                 boot_id=str(data.get("boot_id", "")),
                 pid_start=data.get("pid_start"))
    except (TypeError, KeyError, json.JSONDecodeError) as e:
      raise ValueError(f"not a lock record: {text[:80]!r}") from e

  def on_this_machine(self) -> bool:
    return self.host == socket.gethostname() and self.boot_id == _boot_id()

  def describe(self, now: float) -> str:
    return (f"host {self.host}, pid {self.pid}, started {_utc(self.started)},"
            f" last heartbeat {max(now - self.heartbeat, 0):.0f}s ago")


def _is_local(path: epath.Path) -> bool:
  return "://" not in str(path)


def _io_error(path: epath.Path, e: OSError) -> UserError:
  """A one-line UserError for a lock file that cannot be written."""
  if isinstance(e, (NotADirectoryError, FileExistsError)):
    return UserError(f"--workdir {path.parent} is not a directory")
  reason = e.strerror or type(e).__name__
  return UserError(f"cannot write {path} ({reason}); choose a writable "
                   f"--workdir")


class RunLock:
  """`with RunLock(workdir): train()` holds `<workdir>/advjax.lock`.

  Args:
    workdir: the run's work directory (local path or gs://...).
    heartbeat_s: seconds between heartbeats (one small write each).
    stale_after_s: a lock from another machine whose heartbeat is older than
      this is stale.
    settle_s: object stores only: how long to wait before reading a written
      record back to confirm it.
    exclusive_create: use O_EXCL creation (default: for local paths).
  """

  def __init__(self, workdir: Any, *, heartbeat_s: float = 30.0,
               stale_after_s: float = 120.0, settle_s: float = 2.0,
               exclusive_create: bool | None = None):
    self.workdir = epath.Path(workdir)
    self.path = self.workdir / LOCK_NAME
    self.heartbeat_s = float(heartbeat_s)
    self.stale_after_s = float(stale_after_s)
    self.settle_s = float(settle_s)
    self.exclusive = (_is_local(self.path) if exclusive_create is None
                      else bool(exclusive_create))
    self.record: LockRecord | None = None
    self.taken_over: LockRecord | None = None
    self.lost_to: LockRecord | None = None
    self._stop = threading.Event()
    self._thread: threading.Thread | None = None
    self._guard = threading.Lock()

  # -- reading and writing the record ---------------------------------------

  def read_text(self) -> str | None:
    try:
      return self.path.read_text()
    except FileNotFoundError:
      return None

  def read(self, attempts: int = 5) -> tuple[str | None, LockRecord | None]:
    """The lock file's text and record; (None, None) without a lock file,
    (text, None) if the text stays unparsable (a writer killed mid-write,
    garbage)."""
    for attempt in range(attempts):
      text = self.read_text()
      if text is None:
        return None, None
      try:
        return text, LockRecord.from_json(text)
      except ValueError:
        if attempt < attempts - 1:
          time.sleep(0.1)  # An O_EXCL creator may not have written it yet.
    return text, None

  def _write(self, record: LockRecord) -> None:
    """Replaces the lock file's content atomically."""
    if not self.exclusive:
      self.path.write_text(record.to_json())
      return
    tmp = self.path.with_name(f"{LOCK_NAME}.{record.run_id}.tmp")
    tmp.write_text(record.to_json())
    os.replace(os.fspath(tmp), os.fspath(self.path))

  def _create_exclusive(self, path: epath.Path, text: str) -> bool:
    try:
      fd = os.open(os.fspath(path), os.O_WRONLY | os.O_CREAT | os.O_EXCL,
                   0o644)
    except FileExistsError:
      return False
    with os.fdopen(fd, "w", encoding="utf-8") as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    return True

  # -- acquiring --------------------------------------------------------------

  def stale_reason(self, holder: LockRecord, now: float) -> str | None:
    """Why `holder` no longer holds the directory, or None if it does."""
    if holder.on_this_machine():
      if holder.pid == os.getpid() and holder.run_id not in _HELD:
        return "is an unreleased lock of this process"
      if not pid_alive(holder.pid, holder.pid_start):
        return "is no longer running"
      return None
    age = now - holder.heartbeat
    if age > self.stale_after_s:
      return (f"has not refreshed its heartbeat for {age:.0f}s (stale after "
              f"{self.stale_after_s:.0f}s)")
    return None

  def _in_use(self, holder: LockRecord, now: float) -> UserError:
    wait = ""
    if not holder.on_this_machine():
      wait = (f"; a run on another machine counts as gone "
              f"{self.stale_after_s:.0f}s after its last heartbeat")
    return UserError(f"work directory {self.workdir} is in use by another "
                     f"run ({holder.describe(now)}); wait for it to end or "
                     f"stop it, or pass another --workdir{wait}")

  def acquire(self, timeout_s: float = 30.0) -> "RunLock":
    """Takes the lock or raises UserError naming its holder."""
    if self.record is not None:
      return self
    try:
      self.workdir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
      raise _io_error(self.path, e) from e
    record = LockRecord.for_this_process(time.time())
    deadline = time.time() + timeout_s
    while True:
      try:
        if self._try_acquire(record):
          break
      except OSError as e:
        raise _io_error(self.path, e) from e
      if time.time() > deadline:
        raise UserError(f"could not take the lock {self.path} within "
                        f"{timeout_s:.0f}s: other processes keep changing it")
      time.sleep(0.05)
    self.record = record
    _HELD.add(record.run_id)
    atexit.register(self.release)
    if self.heartbeat_s > 0:
      self._thread = threading.Thread(target=self._beat, daemon=True,
                                      name="advjax-run-lock-heartbeat")
      self._thread.start()
    return self

  def _try_acquire(self, record: LockRecord) -> bool:
    """One attempt; True when `record` holds the lock, False to retry."""
    text, holder = self.read()
    if text is None:
      return self._create(record)
    if holder is None:
      self._warn_takeover(None, "is an unreadable lock file")
      return self._take_over(text, record)
    reason = self.stale_reason(holder, time.time())
    if reason is None:
      raise self._in_use(holder, time.time())
    self._warn_takeover(holder, reason)
    return self._take_over(text, record)

  def _create(self, record: LockRecord) -> bool:
    if self.exclusive:
      return self._create_exclusive(self.path, record.to_json())
    self._write(record)
    return self._confirm(record)

  def _confirm(self, record: LockRecord) -> bool:
    time.sleep(self.settle_s)
    _, holder = self.read()
    return holder is not None and holder.run_id == record.run_id

  def _take_over(self, stale_text: str, record: LockRecord) -> bool:
    """Replaces the lock file if it still reads `stale_text`."""
    if not self.exclusive:
      self._write(record)
      return self._confirm(record)
    claim = self.path.with_name(LOCK_NAME + _TAKEOVER_SUFFIX)
    if not self._create_exclusive(claim, record.run_id):
      self._remove_stale_claim(claim)
      return False
    try:
      current = self.read_text()
      if current is None:
        return self._create_exclusive(self.path, record.to_json())
      if current != stale_text:
        return False  # Someone else took it over first: look again.
      self._write(record)
      return True
    finally:
      claim.unlink(missing_ok=True)

  @staticmethod
  def _remove_stale_claim(claim: epath.Path) -> None:
    try:
      if time.time() - os.stat(os.fspath(claim)).st_mtime > _STALE_CLAIM_S:
        claim.unlink(missing_ok=True)
    except FileNotFoundError:
      pass

  def _warn_takeover(self, holder: LockRecord | None, reason: str) -> None:
    self.taken_over = holder
    who = ("its holder (" + holder.describe(time.time()) + ")"
           if holder is not None else str(self.path))
    msg = f"advjax: taking over the lock of {self.workdir}: {who} {reason}"
    warnings.warn(msg, RuntimeWarning, stacklevel=4)
    logging.warning(msg)

  # -- while held -------------------------------------------------------------

  def _beat(self) -> None:
    while not self._stop.wait(self.heartbeat_s):
      if not self.heartbeat():
        return

  def heartbeat(self) -> bool:
    """Refreshes the heartbeat; False (and `lost_to` set) if another run
    has taken the lock meanwhile. A failed write is retried next beat."""
    with self._guard:
      if self.record is None or self.lost_to is not None:
        return False
      try:
        _, holder = self.read(attempts=1)
      except OSError:
        return True
      if holder is not None and holder.run_id != self.record.run_id:
        self.lost_to = holder
        return False
      self.record = dataclasses.replace(self.record, heartbeat=time.time())
      try:
        self._write(self.record)
      except OSError as e:
        logging.warning("advjax: could not refresh %s: %s", self.path, e)
      return True

  def check(self) -> None:
    """Raises UserError if another run has taken this work directory (call
    before writing a checkpoint)."""
    if self.lost_to is not None:
      raise UserError(f"work directory {self.workdir} was taken over by "
                      f"another run ({self.lost_to.describe(time.time())}); "
                      f"this run stops without saving")

  def release(self) -> None:
    """Stops the heartbeat and removes the lock file if it is still ours."""
    self._stop.set()
    if self._thread is not None and self._thread is not threading.current_thread():
      self._thread.join()
    with self._guard:
      record, self.record = self.record, None
      if record is None:
        return
      _HELD.discard(record.run_id)
      try:
        _, holder = self.read()
        if holder is not None and holder.run_id == record.run_id:
          self.path.unlink(missing_ok=True)
      except OSError:
        pass
    atexit.unregister(self.release)

  def __enter__(self) -> "RunLock":
    return self.acquire()

  def __exit__(self, *exc) -> None:
    self.release()
