"""The work-directory lock: one run per directory, stale locks taken over."""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from advjax import run_lock
from advjax.errors import UserError
from tests.helpers import ROOT

HOLD = textwrap.dedent("""
    import sys, time
    from advjax import run_lock
    lock = run_lock.RunLock(sys.argv[1], heartbeat_s=0.2,
                            exclusive_create=sys.argv[2] == "1",
                            settle_s=float(sys.argv[3]))
    try:
      lock.acquire()
    except Exception as e:
      print("refused", e, flush=True)
      sys.exit(2)
    print("held", flush=True)
    time.sleep(float(sys.argv[4]))
    lock.release()
""")


def _hold(workdir, exclusive=True, settle=0.0, seconds=60.0):
  return subprocess.Popen(
      [sys.executable, "-c", HOLD, str(workdir), "1" if exclusive else "0",
       str(settle), str(seconds)],
      cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT},
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _write_record(workdir, **fields):
  record = dict(host=socket.gethostname(), pid=os.getpid(),
                started=time.time() - 60, heartbeat=time.time(),
                run_id="other", boot_id=run_lock._boot_id(),  # pylint: disable=protected-access
                pid_start=None)
  record.update(fields)
  (workdir / run_lock.LOCK_NAME).write_text(json.dumps(record))


def test_second_run_meets_one_line_naming_the_holder(tmp_path):
  holder = _hold(tmp_path)
  try:
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(UserError) as e:
      run_lock.RunLock(tmp_path, heartbeat_s=0).acquire()
    message = str(e.value)
    assert "\n" not in message
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
  lock = run_lock.RunLock(tmp_path, heartbeat_s=0)
  with pytest.warns(RuntimeWarning, match="is no longer running"):
    lock.acquire()
  assert lock.taken_over.pid == holder.pid
  assert json.loads(lock.path.read_text())["pid"] == os.getpid()
  lock.release()
  assert not lock.path.exists()


def test_reused_pid_does_not_keep_a_dead_run_s_lock(tmp_path):
  # Our own (live) pid, but recorded with another start time: the pid
  # was reused by another process since the holder died.
  _write_record(tmp_path, pid=os.getppid(), pid_start="1")
  lock = run_lock.RunLock(tmp_path, heartbeat_s=0)
  with pytest.warns(RuntimeWarning, match="no longer running"):
    lock.acquire()
  lock.release()


def test_lock_from_another_machine_is_stale_only_after_its_heartbeat_stops(
    tmp_path):
  _write_record(tmp_path, host="tpu-vm-7", heartbeat=time.time() - 10)
  with pytest.raises(UserError, match="tpu-vm-7.*counts as gone 120s after"):
    run_lock.RunLock(tmp_path, heartbeat_s=0).acquire()
  _write_record(tmp_path, host="tpu-vm-7", heartbeat=time.time() - 500)
  lock = run_lock.RunLock(tmp_path, heartbeat_s=0)
  with pytest.warns(RuntimeWarning, match="heartbeat for 50[0-9]s"):
    lock.acquire()
  lock.release()


def test_same_host_name_after_a_reboot_counts_as_another_machine(tmp_path):
  _write_record(tmp_path, boot_id="before-reboot", heartbeat=time.time())
  with pytest.raises(UserError, match="in use"):
    run_lock.RunLock(tmp_path, heartbeat_s=0).acquire()


def test_unreadable_lock_file_is_taken_over(tmp_path):
  (tmp_path / run_lock.LOCK_NAME).write_text("{garbage")
  lock = run_lock.RunLock(tmp_path, heartbeat_s=0)
  with pytest.warns(RuntimeWarning, match="unreadable lock file"):
    lock.acquire()
  lock.release()


def test_heartbeat_advances_and_release_removes_the_file(tmp_path):
  with run_lock.RunLock(tmp_path, heartbeat_s=0.05) as lock:
    first = json.loads(lock.path.read_text())["heartbeat"]
    deadline = time.time() + 10
    while json.loads(lock.path.read_text())["heartbeat"] == first:
      assert time.time() < deadline
      time.sleep(0.02)
    lock.check()
  assert not (tmp_path / run_lock.LOCK_NAME).exists()


def test_run_that_lost_its_lock_stops_beating_and_check_raises(tmp_path):
  lock = run_lock.RunLock(tmp_path, heartbeat_s=0).acquire()
  _write_record(tmp_path, host="new-vm", run_id="newcomer")
  assert not lock.heartbeat()
  with pytest.raises(UserError, match="taken over by another run.*new-vm"):
    lock.check()
  lock.release()
  assert json.loads(lock.path.read_text())["run_id"] == "newcomer"


def test_leftover_lock_of_this_process_is_taken_over(tmp_path):
  _write_record(tmp_path, pid=os.getpid(),
                pid_start=run_lock._process_start(os.getpid()))  # pylint: disable=protected-access
  with pytest.warns(RuntimeWarning, match="unreleased lock of this process"):
    run_lock.RunLock(tmp_path, heartbeat_s=0).acquire().release()


def test_workdir_that_is_a_file_is_a_user_error(tmp_path):
  path = tmp_path / "afile"
  path.write_text("")
  with pytest.raises(UserError, match="is not a directory"):
    run_lock.RunLock(path, heartbeat_s=0).acquire()


@pytest.mark.parametrize("exclusive", [True, False],
                         ids=["o_excl", "write_then_confirm"])
def test_of_processes_starting_together_exactly_one_holds_the_lock(
    tmp_path, exclusive):
  procs = [_hold(tmp_path, exclusive=exclusive, settle=1.0, seconds=3.0)
           for _ in range(3)]
  outcomes = sorted(p.stdout.readline().split()[0] for p in procs)
  for p in procs:
    p.kill()
    p.wait()
  assert outcomes == ["held", "refused", "refused"]
