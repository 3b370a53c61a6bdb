"""The work-directory lock: one run per directory, locally through a kernel
lock, on Cloud Storage through generation preconditions (the emulator)."""

import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import types
from unittest import mock

import pytest

from advjax import run_lock
from advjax.errors import UserError
from tests.helpers import ROOT, python_path

HOLD = textwrap.dedent("""
    import sys, time
    from advjax import run_lock
    lock = run_lock.RunLock(sys.argv[1], heartbeat_s=0.2)
    try:
      lock.acquire()
    except Exception as e:
      print("refused", e, flush=True)
      sys.exit(2)
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
    lock.release()
""")


def _hold(workdir, seconds=60.0, prefix=()):
  return subprocess.Popen(
      [*prefix, sys.executable, "-c", HOLD, str(workdir), str(seconds)],
      cwd=ROOT, env={**os.environ, "PYTHONPATH": python_path()},
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _record(**fields) -> str:
  record = dict(host=socket.gethostname(), pid=os.getpid(),
                started=time.time() - 60, heartbeat=time.time(),
                run_id="other")
  record.update(fields)
  return json.dumps(record)


def _one_line(e: pytest.ExceptionInfo) -> str:
  message = str(e.value)
  assert "\n" not in message
  return message


# ---------------------------------------------------------------------------
# Local directories: a kernel lock.


def test_second_run_meets_one_line_naming_the_holder(tmp_path):
  holder = _hold(tmp_path)
  try:
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(UserError) as e:
      run_lock.RunLock(tmp_path).acquire()
    message = _one_line(e)
    assert "in use by another run" in message
    assert f"pid {holder.pid}" in message
    assert f"host {socket.gethostname()}" in message
    assert "started 20" in message and "UTC" in message
    assert "another --workdir" in message
  finally:
    holder.kill()
    holder.wait()


def test_lock_of_a_killed_process_is_taken_over_with_a_warning(tmp_path):
  holder = _hold(tmp_path)
  assert holder.stdout.readline().strip() == "held"
  os.kill(holder.pid, signal.SIGKILL)
  holder.wait()
  lock = run_lock.RunLock(tmp_path)
  with pytest.warns(RuntimeWarning, match="is no longer running"):
    lock.acquire()
  assert lock.taken_over.pid == holder.pid
  assert json.loads(lock.path.read_text())["pid"] == os.getpid()
  lock.release()
  assert not lock.path.exists()


def _unshare_pid_works() -> bool:
  if shutil.which("unshare") is None:
    return False
  return subprocess.run(["unshare", "--pid", "--fork", "--kill-child", "true"],
                        capture_output=True, check=False).returncode == 0


@pytest.mark.skipif(not _unshare_pid_works(),
                    reason="needs unshare --pid (root)")
def test_runs_in_separate_pid_namespaces_exclude_each_other(tmp_path):
  # Two containers with host networking: same host name and boot id, each
  # python is pid 1 of its own PID namespace.
  prefix = ["unshare", "--pid", "--fork", "--kill-child"]
  first = _hold(tmp_path, prefix=prefix)
  try:
    assert first.stdout.readline().strip() == "held"
    assert json.loads((tmp_path / run_lock.LOCK_NAME).read_text())["pid"] == 1
    second = _hold(tmp_path, seconds=0, prefix=prefix)
    out, _ = second.communicate(timeout=60)
    assert second.returncode == 2, out
    assert out.startswith("refused work directory") and "pid 1," in out
    assert len(out.strip().splitlines()) == 1
    os.kill(first.pid, signal.SIGKILL)  # unshare kills its pid 1 with it
    first.wait()
    third = _hold(tmp_path, seconds=0, prefix=prefix)
    out, err = third.communicate(timeout=60)
    assert third.returncode == 0 and out.strip() == "held", out + err
    assert "taking over the lock" in err and "is no longer running" in err
  finally:
    first.kill()
    first.wait()


def test_non_utf8_lock_file_is_one_line_or_a_warning(tmp_path):
  path = tmp_path / run_lock.LOCK_NAME
  path.write_bytes(b"\xff\xfe\x00garbage\x9c")
  # Held by a live process (here: this one, through another open file).
  with open(path, "rb+") as f:
    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    with pytest.raises(UserError) as e:
      run_lock.RunLock(tmp_path).acquire()
    assert "in use by another run (its lock file names no holder)" in (
        _one_line(e))
  # Left by a run that is gone: taken over.
  lock = run_lock.RunLock(tmp_path)
  with pytest.warns(RuntimeWarning, match="unreadable lock file"):
    lock.acquire()
  lock.release()


def test_a_second_lock_in_the_same_process_is_refused(tmp_path):
  with run_lock.RunLock(tmp_path) as lock:
    with pytest.raises(UserError, match=f"in use.*pid {os.getpid()}"):
      run_lock.RunLock(tmp_path).acquire()
    lock.check()
  assert not (tmp_path / run_lock.LOCK_NAME).exists()
  run_lock.RunLock(tmp_path).acquire().release()  # free again


def test_run_whose_lock_file_was_replaced_stops_at_check(tmp_path):
  lock = run_lock.RunLock(tmp_path).acquire()
  replacement = tmp_path / "other.lock"
  replacement.write_text(_record(host="new-vm", run_id="newcomer"))
  os.replace(replacement, lock.path)
  with pytest.raises(UserError) as e:
    lock.check()
  assert "was removed or replaced; this run stops without saving" in (
      _one_line(e))
  lock.release()
  assert json.loads(lock.path.read_text())["run_id"] == "newcomer"


def test_workdir_that_is_a_file_is_a_user_error(tmp_path):
  path = tmp_path / "afile"
  path.write_text("")
  with pytest.raises(UserError, match="is not a directory"):
    run_lock.RunLock(path).acquire()


def test_of_processes_starting_together_exactly_one_holds_the_lock(tmp_path):
  procs = [_hold(tmp_path, seconds=3.0) for _ in range(3)]
  outcomes = sorted(p.stdout.readline().split()[0] for p in procs)
  for p in procs:
    p.kill()
    p.wait()
  assert outcomes == ["held", "refused", "refused"]


@pytest.mark.slow
def test_run_stops_at_its_next_log_step_once_its_lock_is_gone(tmp_path):
  from tests.test_runs import _one_error, _run  # pylint: disable=g-import-not-at-top
  from advjax.metric_writers import read_metrics  # pylint: disable=g-import-not-at-top
  workdir = tmp_path / "run"
  run = _run(workdir, "--config.checkpoint.every_steps=1000000",
             steps=1000000, wait=False)
  try:
    deadline = time.time() + 240
    while not ((workdir / "metrics.jsonl").is_file()
               and read_metrics(str(workdir))):
      assert run.poll() is None and time.time() < deadline, run.stderr.read()
      time.sleep(0.2)
    replacement = workdir / "other.lock"
    replacement.write_text(_record(host="new-vm", run_id="newcomer"))
    os.replace(replacement, workdir / run_lock.LOCK_NAME)
    _, err = run.communicate(timeout=120)
  finally:
    if run.poll() is None:
      run.kill()
  out = types.SimpleNamespace(returncode=run.returncode, stderr=err)
  assert "was removed or replaced; this run stops without saving" in (
      _one_error(out))
  assert not (workdir / "checkpoints").exists() or not [
      n for n in os.listdir(workdir / "checkpoints") if n[0].isdigit()]


# ---------------------------------------------------------------------------
# Cloud Storage: generation preconditions, server time.


def _put(path: str, data: bytes) -> None:
  import fsspec  # pylint: disable=g-import-not-at-top
  fsspec.filesystem("gs").pipe_file(path, data)


def _get(path: str) -> bytes:
  import fsspec  # pylint: disable=g-import-not-at-top
  return fsspec.filesystem("gs").cat_file(path)


def _first_view(lock, view):
  """`lock` reads `view` (an out-of-date one) first, then the real record."""
  real = lock._read_object  # pylint: disable=protected-access
  calls = []

  def read():
    calls.append(1)
    return view if len(calls) == 1 else real()

  return mock.patch.object(lock, "_read_object", side_effect=read)


def _race(locks) -> list[str]:
  """Acquires every lock at once, one thread each; 'held' or the error."""
  barrier = threading.Barrier(len(locks))
  outcomes = [None] * len(locks)

  def contend(i):
    barrier.wait()
    try:
      locks[i].acquire()
      outcomes[i] = "held"
    except UserError as e:
      outcomes[i] = str(e)

  threads = [threading.Thread(target=contend, args=(i,))
             for i in range(len(locks))]
  for t in threads:
    t.start()
  for t in threads:
    t.join(60)
  return outcomes


def test_gcs_runs_creating_at_once_exactly_one_wins(gcs_dir):
  locks = [run_lock.RunLock(gcs_dir, heartbeat_s=0) for _ in range(4)]
  outcomes = _race(locks)
  assert outcomes.count("held") == 1, outcomes
  assert all("in use by another run" in o for o in outcomes if o != "held")
  winner = locks[outcomes.index("held")]
  holder = json.loads(_get(str(winner.path)))
  assert holder["run_id"] == winner.record.run_id
  # One that saw no lock, a moment too late: the create is conditional.
  late = run_lock.RunLock(gcs_dir, heartbeat_s=0)
  with _first_view(late, None), pytest.raises(UserError, match="in use by"):
    late.acquire()
  assert winner.heartbeat()
  winner.check()
  winner.release()
  with pytest.raises(FileNotFoundError):
    _get(str(winner.path))


def test_gcs_stale_lock_is_taken_over_by_exactly_one(gcs_dir):
  path = f"{gcs_dir}/{run_lock.LOCK_NAME}"
  # Its client clock says "now": staleness is by the server's clock.
  _put(path, _record(host="tpu-vm-7", heartbeat=time.time() + 3600).encode())
  with pytest.raises(UserError) as e:
    run_lock.RunLock(gcs_dir, heartbeat_s=0, stale_after_s=2).acquire()
  assert "tpu-vm-7" in _one_line(e) and "counts as gone 2s after" in str(
      e.value)
  time.sleep(3.5)
  locks = [run_lock.RunLock(gcs_dir, heartbeat_s=0, stale_after_s=2)
           for _ in range(4)]
  with pytest.warns(RuntimeWarning, match="has not refreshed its heartbeat"):
    outcomes = _race(locks)
  assert outcomes.count("held") == 1, outcomes
  winner = locks[outcomes.index("held")]
  assert winner.taken_over.host == "tpu-vm-7"
  # One that read the stale record just before the winner replaced it.
  stale_view = (_record(host="tpu-vm-7").encode(), "1", 100.0)
  late = run_lock.RunLock(gcs_dir, heartbeat_s=0, stale_after_s=2)
  with _first_view(late, stale_view), pytest.raises(UserError,
                                                     match="in use by"):
    late.acquire()
  assert json.loads(_get(path))["run_id"] == winner.record.run_id
  winner.release()


def test_gcs_run_that_lost_its_lock_stops_and_leaves_the_new_one(gcs_dir):
  lock = run_lock.RunLock(gcs_dir, heartbeat_s=0).acquire()
  assert lock.heartbeat()
  _put(str(lock.path), _record(host="new-vm", run_id="newcomer").encode())
  assert not lock.heartbeat()
  with pytest.raises(UserError) as e:
    lock.check()
  assert "taken over by another run (host new-vm" in _one_line(e)
  lock.release()
  assert json.loads(_get(str(lock.path)))["run_id"] == "newcomer"


def test_gcs_heartbeat_failure_stops_the_run_at_its_next_check(gcs_dir):
  from gcsfs.retry import HttpError  # pylint: disable=g-import-not-at-top
  lock = run_lock.RunLock(gcs_dir, heartbeat_s=0.05).acquire()
  error = HttpError({"code": 503, "message": "Backend Error\nmore detail"})
  with mock.patch.object(lock, "_upload", side_effect=error):
    deadline = time.time() + 30
    while lock._thread.is_alive():  # pylint: disable=protected-access
      assert time.time() < deadline
      time.sleep(0.02)
  with pytest.raises(UserError) as e:
    lock.check()
  message = _one_line(e)
  assert "could not refresh the lock" in message and "HttpError" in message
  assert "this run stops without saving" in message
  lock.release()  # still ours: removed
  with pytest.raises(FileNotFoundError):
    _get(str(lock.path))


def test_gcs_heartbeat_stuck_past_its_margin_stops_the_run(gcs_dir):
  lock = run_lock.RunLock(gcs_dir, heartbeat_s=30, stale_after_s=120,
                          release_timeout_s=0.5).acquire()
  lock.check()
  stuck = threading.Event()
  with mock.patch.object(lock, "_upload",
                         side_effect=lambda *a: stuck.wait(60)):
    lock._last_beat -= 91  # pylint: disable=protected-access
    with pytest.raises(UserError, match="last refreshed 9[0-9]s ago"):
      lock.check()
    # A beat stuck in retries does not hold up the exit.
    lock._stop.set()  # pylint: disable=protected-access
    beat = threading.Thread(target=lock.heartbeat, daemon=True)
    beat.start()
    time.sleep(0.1)
    start = time.monotonic()
    lock.release()
    assert time.monotonic() - start < 3
    stuck.set()


def test_gcs_non_utf8_lock_record_is_one_line(gcs_dir):
  path = f"{gcs_dir}/{run_lock.LOCK_NAME}"
  _put(path, b"\xff\xfe\x00garbage\x9c")
  with pytest.raises(UserError) as e:
    run_lock.RunLock(gcs_dir, heartbeat_s=0).acquire()
  assert "its lock file names no holder; updated" in _one_line(e)
  time.sleep(2.5)
  lock = run_lock.RunLock(gcs_dir, heartbeat_s=0, stale_after_s=1)
  with pytest.warns(RuntimeWarning, match="unreadable lock record"):
    lock.acquire()
  lock.release()


def test_gcs_errors_are_one_line(gcs):
  with pytest.raises(UserError) as e:
    run_lock.RunLock("gs://no-such-bucket-here/run", heartbeat_s=0).acquire()
  assert "cannot take the lock gs://no-such-bucket-here/run/advjax.lock" in (
      _one_line(e))


def test_gcs_lock_of_a_process_killed_here_is_taken_over_at_once(gcs_dir):
  holder = _hold(gcs_dir)
  try:
    assert holder.stdout.readline().strip() == "held", holder.stderr.read()
    with pytest.raises(UserError, match=f"in use.*pid {holder.pid}"):
      run_lock.RunLock(gcs_dir, heartbeat_s=0).acquire()
  finally:
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
  lock = run_lock.RunLock(gcs_dir, heartbeat_s=0)
  with pytest.warns(RuntimeWarning, match="is no longer running"):
    lock.acquire()
  assert lock.taken_over.pid == holder.pid
  lock.release()


def test_gcs_lock_from_another_pid_namespace_waits_for_server_time(gcs_dir):
  # Another container on this host: same host name and boot id, its own
  # PID namespace, so its pid says nothing here.
  boot = run_lock._machine().split("/")[0]  # pylint: disable=protected-access
  _put(f"{gcs_dir}/{run_lock.LOCK_NAME}", _record(
      pid=1, machine=f"{boot}/4026531999", pid_start=None).encode())
  with pytest.raises(UserError, match="in use by another run.*pid 1,"):
    run_lock.RunLock(gcs_dir, heartbeat_s=0).acquire()
