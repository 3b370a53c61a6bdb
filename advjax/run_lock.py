"""One run per work directory: a lock held by process 0 of a run.

`<workdir>/advjax.lock` holds a small JSON record of its holder (host, pid,
start time, a random run id); the record only names the holder in messages.
What decides who holds the directory depends on where it is:

  - Local paths (a local disk, an NFS-like mount, a volume shared by
    containers): a kernel lock, `flock` on the lock file, held for the run's
    whole life through one open file. The kernel releases it when its holder
    ends however it ends (SIGKILL, OOM killer, a container stopped), so there
    is no staleness to judge: no pid, boot id or heartbeat checks, and
    processes in separate PID namespaces (two containers with host
    networking, both pid 1) exclude each other all the same. Limits: on NFS
    the lock needs the server's lock service (NFSv4, or NLM for v3; a mount
    with `nolock` only locks within one client), and a filesystem without
    locks (some FUSE mounts) is refused with one line. A process forked
    without exec while the lock is held keeps it until it exits too.
  - Cloud Storage (`gs://...`): the record is created if absent
    (`ifGenerationMatch=0`), so of runs starting together exactly one
    creates it. A background thread rewrites it every `heartbeat_s` seconds
    as a compare-and-swap on the generation it last wrote
    (`ifGenerationMatch=<generation>`); a run whose beat finds another
    generation has lost the lock. A record whose last update is older than
    `stale_after_s` by the server's clock (the object's `updated` time
    against the `Date` of the same answer: no client clocks involved) is
    taken over, again as a compare-and-swap on the generation read, so of
    several runs meeting the same stale lock exactly one takes it over. A
    record of a process that ran in this kernel and PID namespace (same
    boot id and namespace, so its pid means the same here) and has ended is
    taken over at once (a run killed and rerun on the same VM).
    Limits: a run that stops beating for longer than `stale_after_s` (a VM
    frozen for minutes) loses the lock; it finds out at its next `check()`,
    and a write already in flight then (a checkpoint being saved) finishes.

A heartbeat that fails for any reason (an HTTP error after gcsfs's retries,
expired credentials, a dropped connection) marks the lock lost; so does a
beat that has not succeeded for `stale_after_s - margin` seconds (one stuck in
retries). `check()` then raises a one-line `UserError`: the training loop
calls it at every log step and before every checkpoint, so a run never goes
on writing a directory that another run may have taken over.

Release: leaving `with RunLock(workdir):` (also by KeyboardInterrupt) or
interpreter exit (atexit) removes the lock file if it is still this run's
(locally the same file, on Cloud Storage the generation last written). On
Cloud Storage, release waits at most `release_timeout_s` for a heartbeat
stuck in retries and for the delete; a record left behind counts as gone
`stale_after_s` after its last update.

Only process 0 of a multi-host run takes the lock; the others rely on it.
"""

from __future__ import annotations

import atexit
import dataclasses
import datetime
import email.utils
import json
import logging
import os
import socket
import threading
import time
import urllib.parse
import uuid
import warnings
from typing import Any

from etils import epath

from advjax.errors import UserError

LOCK_NAME = "advjax.lock"


# Run ids of the Cloud Storage locks this process holds.
_HELD: set[str] = set()


def _machine() -> str:
  """This kernel's boot id and this process's PID namespace: processes
  that share both see the same pids (unlike two containers on one host,
  which share the boot id and often the host name)."""
  try:
    with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
      boot = f.read().strip()
    return f"{boot}/{os.stat('/proc/self/ns/pid').st_ino}"
  except OSError:
    return ""  # Not Linux: no fast path, staleness by server time only.


def _process_start(pid: int) -> str | None:
  """The start time of `pid` in clock ticks since boot (Linux), or None."""
  try:
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
      fields = f.read().rsplit(")", 1)[1].split()
  except (OSError, IndexError):
    return None
  return fields[19] if len(fields) > 19 else None


def _pid_alive(pid: int, start: str | None) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    pass
  try:
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
      if f.read().rsplit(")", 1)[1].split()[0] == "Z":
        return False  # Killed, not yet reaped by its parent.
  except (OSError, IndexError):
    pass
  now_start = _process_start(pid)
  return start is None or now_start is None or now_start == start


def _utc(t: float) -> str:
  return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))


def _one_line(e: BaseException) -> str:
  text = (str(e).strip().splitlines() or [""])[0]
  return f"{type(e).__name__}: {text[:200]}" if text else type(e).__name__


@dataclasses.dataclass(frozen=True)
class LockRecord:
  """Who holds a work directory (for messages only)."""
  host: str
  pid: int
  started: float
  heartbeat: float
  run_id: str
  machine: str = ""  # boot id and PID namespace (Cloud Storage fast path)
  pid_start: str | None = None

  @classmethod
  def for_this_process(cls, now: float) -> "LockRecord":
    pid = os.getpid()
    return cls(host=socket.gethostname(), pid=pid, started=now,
               heartbeat=now, run_id=uuid.uuid4().hex, machine=_machine(),
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
                 heartbeat=float(data.get("heartbeat", data["started"])),
                 run_id=str(data["run_id"]),
                 machine=str(data.get("machine", "")),
                 pid_start=data.get("pid_start"))
    except (TypeError, KeyError, ValueError) as e:
      raise ValueError(f"not a lock record: {text[:80]!r}") from e

  @classmethod
  def parse(cls, data: bytes | str | None) -> "LockRecord | None":
    """A record from a lock file's bytes, or None (empty, garbage, not
    UTF-8)."""
    if data is None:
      return None
    if isinstance(data, bytes):
      data = data.decode("utf-8", errors="replace")
    try:
      return cls.from_json(data)
    except ValueError:
      return None

  def gone_from_this_machine(self) -> bool:
    """Whether the holder ran where this process runs (same host, boot and
    PID namespace, so its pid means the same here) and has ended."""
    if not self.machine or self.machine != _machine() or (
        self.host != socket.gethostname()):
      return False
    if self.pid == os.getpid():
      return self.run_id not in _HELD  # e.g. a notebook cell interrupted
    return not _pid_alive(self.pid, self.pid_start)

  def describe(self, age_s: float | None = None) -> str:
    text = (f"host {self.host}, pid {self.pid}, started "
            f"{_utc(self.started)}")
    if age_s is not None:
      text += f", last heartbeat {max(age_s, 0):.0f}s ago"
    return text


def _is_local(path: epath.Path) -> bool:
  return "://" not in str(path)


def _io_error(path: epath.Path, e: OSError) -> UserError:
  """A one-line UserError for a lock file that cannot be written."""
  if isinstance(e, (NotADirectoryError, FileExistsError)):
    return UserError(f"--workdir {path.parent} is not a directory")
  reason = e.strerror or type(e).__name__
  return UserError(f"cannot write {path} ({reason}); choose a writable "
                   f"--workdir")


def _run_bounded(fn, timeout_s: float) -> bool:
  """Runs `fn()` in a daemon thread; False if it did not end in time (it
  goes on in the background, and ends with the interpreter at the latest)."""
  thread = threading.Thread(target=fn, daemon=True,
                            name="advjax-run-lock-release")
  thread.start()
  thread.join(timeout_s)
  return not thread.is_alive()


class RunLock:
  """`with RunLock(workdir): train()` holds `<workdir>/advjax.lock`.

  Args:
    workdir: the run's work directory (local path or gs://...).
    heartbeat_s: Cloud Storage only: seconds between heartbeats (one small
      conditional write each); 0 for none (tests).
    stale_after_s: Cloud Storage only: a record not updated for this long
      (server time) is stale and taken over.
    release_timeout_s: Cloud Storage only: the longest `release()` waits for
      a heartbeat in flight and for the delete.
  """

  def __init__(self, workdir: Any, *, heartbeat_s: float = 30.0,
               stale_after_s: float = 120.0, release_timeout_s: float = 10.0):
    self.workdir = epath.Path(workdir)
    self.path = self.workdir / LOCK_NAME
    self.local = _is_local(self.path)
    self.heartbeat_s = float(heartbeat_s)
    self.stale_after_s = float(stale_after_s)
    # check() gives up this long before another run could judge us stale.
    self.margin_s = min(self.heartbeat_s, self.stale_after_s / 2)
    self.release_timeout_s = float(release_timeout_s)
    self.record: LockRecord | None = None
    self.taken_over: LockRecord | None = None  # the stale holder we replaced
    self.lost_to: LockRecord | None = None
    self._lost: str | None = None  # why the lock is no longer ours
    self._fd: int | None = None  # local: the open, flock'ed lock file
    self._generation: str | None = None  # gs://: the generation we wrote
    self._last_beat = 0.0  # time.monotonic() of the last successful write
    self._stop = threading.Event()
    self._thread: threading.Thread | None = None
    self._guard = threading.Lock()
    self._fs = None

  # -- acquiring --------------------------------------------------------------

  def acquire(self, timeout_s: float = 30.0) -> "RunLock":
    """Takes the lock or raises UserError naming its holder."""
    if self.record is not None:
      return self
    record = LockRecord.for_this_process(time.time())
    _HELD.add(record.run_id)  # Before it can be seen: never "a leftover".
    try:
      if self.local:
        try:
          self.workdir.mkdir(parents=True, exist_ok=True)
          self._acquire_local(record)
        except OSError as e:
          raise _io_error(self.path, e) from e
      else:
        try:
          self._acquire_object(record, timeout_s)
        except UserError:
          raise
        except Exception as e:  # pylint: disable=broad-except
          raise UserError(f"cannot take the lock {self.path} "
                          f"({_one_line(e)}); check the bucket and your "
                          f"Cloud Storage credentials") from e
    except BaseException:
      _HELD.discard(record.run_id)
      raise
    self.record = record
    self._last_beat = time.monotonic()
    atexit.register(self.release)
    if not self.local and self.heartbeat_s > 0:
      self._thread = threading.Thread(target=self._beat, daemon=True,
                                      name="advjax-run-lock-heartbeat")
      self._thread.start()
    return self

  def _in_use(self, holder: LockRecord | None, age_s: float | None,
              ) -> UserError:
    who = (holder.describe(age_s) if holder is not None else
           "its lock file names no holder"
           + (f"; updated {age_s:.0f}s ago" if age_s is not None else ""))
    how = "wait for it to end or stop it, or pass another --workdir"
    if not self.local:
      how += (f"; a run that stops heartbeating counts as gone "
              f"{self.stale_after_s:.0f}s after its last heartbeat, or "
              f"delete {self.path} if you are sure it has ended")
    return UserError(f"work directory {self.workdir} is in use by another "
                     f"run ({who}); {how}")

  def _warn_takeover(self, holder: LockRecord | None, reason: str) -> None:
    self.taken_over = holder
    who = (f"its holder ({holder.describe()})" if holder is not None
           else str(self.path))
    msg = f"advjax: taking over the lock of {self.workdir}: {who} {reason}"
    warnings.warn(msg, RuntimeWarning, stacklevel=4)
    logging.warning(msg)

  # -- local: a kernel lock -------------------------------------------------

  def _same_file(self, fd: int) -> bool:
    """Whether the lock path still names the file open as `fd`."""
    try:
      st = os.stat(os.fspath(self.path))
    except FileNotFoundError:
      return False
    own = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)

  @staticmethod
  def _read_fd(fd: int) -> bytes:
    return os.pread(fd, 1 << 16, 0)

  def _acquire_local(self, record: LockRecord) -> None:
    import fcntl  # pylint: disable=g-import-not-at-top
    path = os.fspath(self.path)
    while True:
      fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except BlockingIOError:
        holder = None
        for _ in range(10):  # The holder may not have written its record yet.
          holder = LockRecord.parse(self._read_fd(fd))
          if holder is not None:
            break
          time.sleep(0.1)
        os.close(fd)
        raise self._in_use(holder, None) from None
      except OSError as e:
        os.close(fd)
        raise UserError(f"cannot lock {path} ({e.strerror or _one_line(e)}): "
                        f"the file system of --workdir has no file locks; "
                        f"use a local disk, an NFS mount with locking, or "
                        f"gs://") from None
      if self._same_file(fd):
        break
      os.close(fd)  # Released and removed meanwhile: lock the new file.
    try:
      previous = self._read_fd(fd)
      if previous.strip():  # Its holder ended without releasing it.
        holder = LockRecord.parse(previous)
        self._warn_takeover(holder, "is no longer running" if holder else
                            "is an unreadable lock file")
      data = record.to_json().encode()
      os.ftruncate(fd, 0)
      os.pwrite(fd, data, 0)
      os.fsync(fd)
    except BaseException:
      os.close(fd)
      raise
    self._fd = fd

  # -- Cloud Storage: generation preconditions ------------------------------

  @property
  def fs(self):
    if self._fs is None:
      import fsspec  # pylint: disable=g-import-not-at-top
      self._fs = fsspec.filesystem("gs")
    return self._fs

  def _bucket_key(self) -> tuple[str, str]:
    bucket, key = self.fs.split_path(os.fspath(self.path))[:2]
    return bucket, key

  def _read_object(self):
    """The record object as (bytes, generation, age in seconds by the
    server's clock), or None if there is none."""
    bucket, key = self._bucket_key()
    for _ in range(5):
      try:
        headers, body = self.fs.call("GET", "b/{}/o/{}", bucket, key)
      except FileNotFoundError:
        return None
      meta = json.loads(body)
      generation = str(meta["generation"])
      updated = datetime.datetime.fromisoformat(
          meta["updated"].replace("Z", "+00:00"))
      date = headers.get("Date")
      now = (email.utils.parsedate_to_datetime(date).timestamp() if date
             else time.time())  # Every Cloud Storage answer has a Date.
      age = now - updated.timestamp()
      try:
        _, data = self.fs.call("GET", "b/{}/o/{}", bucket, key, alt="media",
                               generation=generation)
      except FileNotFoundError:
        continue  # Replaced or removed between the two requests.
      return data, generation, age
    return None

  def _upload(self, data: bytes, if_generation_match: str) -> str:
    """Writes the record if the live generation is `if_generation_match`
    ("0": no object); its new generation, or FileExistsError (412)."""
    bucket, key = self._bucket_key()
    url = (f"{self.fs._location}/upload/storage/v1/b/"  # pylint: disable=protected-access
           f"{urllib.parse.quote(bucket, safe='')}/o")
    obj = self.fs.call("POST", url, uploadType="media", name=key,
                       ifGenerationMatch=if_generation_match, data=data,
                       headers={"Content-Type": "application/octet-stream"},
                       json_out=True)
    return str(obj["generation"])

  def _acquire_object(self, record: LockRecord, timeout_s: float) -> None:
    data = record.to_json().encode()
    deadline = time.monotonic() + timeout_s
    while True:
      current = self._read_object()
      try:
        if current is None:
          self._generation = self._upload(data, "0")
          return
        text, generation, age = current
        holder = LockRecord.parse(text)
        if holder is not None and holder.gone_from_this_machine():
          reason = "is no longer running"
        elif age > self.stale_after_s:
          reason = (f"has not refreshed its heartbeat for {age:.0f}s (stale "
                    f"after {self.stale_after_s:.0f}s)" if holder else
                    f"is an unreadable lock record, {age:.0f}s old")
        else:
          raise self._in_use(holder, age)
        self._generation = self._upload(data, generation)
        self._warn_takeover(holder, reason)
        return
      except FileExistsError:
        pass  # Another run created or took it over first: look again.
      if time.monotonic() > deadline:
        raise UserError(f"could not take the lock {self.path} within "
                        f"{timeout_s:.0f}s: other processes keep changing it")
      time.sleep(0.05)

  # -- while held -------------------------------------------------------------

  def _beat(self) -> None:
    while not self._stop.wait(self.heartbeat_s):
      try:
        if not self.heartbeat():
          return
      except Exception as e:  # pylint: disable=broad-except
        # Whatever it is (HttpError, RefreshError, a dropped connection),
        # the lock can no longer be shown to be ours.
        self._lost = (f"could not refresh the lock {self.path} "
                      f"({_one_line(e)})")
        logging.warning("advjax: %s", self._lost)
        return

  def heartbeat(self) -> bool:
    """Refreshes the record (Cloud Storage); False (and the lock marked lost)
    if another run has taken it meanwhile or it was removed. Other errors
    propagate (the heartbeat thread then marks the lock lost)."""
    if self.local:
      return self.record is not None
    with self._guard:
      if self.record is None or self._lost is not None:
        return False
      record = dataclasses.replace(self.record, heartbeat=time.time())
      data = record.to_json().encode()
      try:
        self._generation = self._upload(data, self._generation)
      except FileExistsError:
        current = self._read_object()
        if current is not None and current[0] == data:
          self._generation = current[1]  # Ours landed; its answer was lost.
        else:
          self.lost_to = (LockRecord.parse(current[0]) if current is not None
                          else None)
          self._lost = (
              f"work directory {self.workdir} was taken over by another run"
              f" ({self.lost_to.describe(current[2])})" if self.lost_to
              else f"the lock {self.path} was removed or replaced")
          return False
      self.record = record
      self._last_beat = time.monotonic()
      return True

  def check(self) -> None:
    """Raises UserError unless this run still holds the lock (call at every
    step that writes: logs, checkpoints)."""
    if self.record is None:
      return
    lost = self._lost
    if lost is None and self.local:
      if self._fd is not None and not self._same_file(self._fd):
        lost = f"the lock file {self.path} was removed or replaced"
    elif lost is None and self.heartbeat_s > 0:
      since = time.monotonic() - self._last_beat
      if self._thread is not None and not self._thread.is_alive():
        lost = f"the heartbeat of the lock {self.path} stopped"
      elif since > self.stale_after_s - self.margin_s:
        lost = (f"the lock {self.path} was last refreshed {since:.0f}s ago "
                f"(another run may take it over after "
                f"{self.stale_after_s:.0f}s)")
    if lost is not None:
      raise UserError(f"{lost}; this run stops without saving; rerun the "
                      f"same command to resume from the last checkpoint")

  def release(self) -> None:
    """Stops the heartbeat and removes the lock file if it is still ours."""
    self._stop.set()
    atexit.unregister(self.release)
    if self.record is not None:
      _HELD.discard(self.record.run_id)
    if self.local:
      fd, self._fd, self.record = self._fd, None, None
      if fd is not None:
        try:
          if self._same_file(fd):
            os.unlink(os.fspath(self.path))  # Still locked: no one has it.
        except OSError:
          pass
        finally:
          os.close(fd)  # Releases the flock.
      return
    deadline = time.monotonic() + self.release_timeout_s
    thread = self._thread
    if thread is not None and thread is not threading.current_thread():
      thread.join(self.release_timeout_s)
    if not self._guard.acquire(timeout=max(deadline - time.monotonic(), 0)):
      self.record = None
      logging.warning("advjax: left %s behind (its heartbeat is stuck); "
                      "another run takes it over %.0fs after its last update",
                      self.path, self.stale_after_s)
      return
    try:
      record, self.record = self.record, None
      generation = self._generation
      if record is None or generation is None:
        return  # (A lost lock is deleted only if its generation is ours.)

      def delete():
        bucket, key = self._bucket_key()
        try:
          self.fs.call("DELETE", "b/{}/o/{}", bucket, key,
                       ifGenerationMatch=generation)
        except Exception:  # pylint: disable=broad-except
          pass  # Gone, or no longer ours (412): leave it.

      if not _run_bounded(delete, max(deadline - time.monotonic(), 1.0)):
        logging.warning("advjax: could not remove %s in time; another run "
                        "takes it over %.0fs after its last update",
                        self.path, self.stale_after_s)
    finally:
      self._guard.release()

  def __enter__(self) -> "RunLock":
    return self.acquire()

  def __exit__(self, *exc) -> None:
    self.release()
