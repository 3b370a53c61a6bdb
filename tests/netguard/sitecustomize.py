"""Refuses network connections to anything but this machine, and says so.

Python imports this module at start-up (as `sitecustomize`) in every process
whose PYTHONPATH holds this folder; it does nothing unless the environment
names a log file in ADVJAX_NETGUARD_LOG. tests/conftest.py sets both, so the
test processes and every Python process they start are guarded, and installs
the same guard in the test process itself.

A connection (or a DNS lookup of a name) that would leave the machine raises
`ForbiddenConnection` (a ConnectionRefusedError, so libraries handle it as if
offline) and appends a line to the log; conftest fails the test that wrote
it. Only code that goes through Python's `socket` module is seen: C++ clients
(tensorstore, array_record) are kept local by the emulator's variables alone.

Standard library only: the torch venv's Python imports it too.
"""

import os
import socket
import sys
import traceback

LOG_VAR = "ADVJAX_NETGUARD_LOG"
_LOCAL_NAMES = ("localhost", "", None)
_WILDCARDS = ("0.0.0.0", "::")  # Binding to every interface stays local.


class ForbiddenConnection(ConnectionRefusedError):
  """A test tried to reach another machine."""


def _is_loopback_ip(host):
  try:
    packed = socket.inet_pton(socket.AF_INET, host)
    return packed[0] == 127
  except (OSError, TypeError):
    pass
  try:
    packed = socket.inet_pton(socket.AF_INET6, host)
  except (OSError, TypeError):
    return False
  return (packed == socket.inet_pton(socket.AF_INET6, "::1")
          or (packed[:12] == b"\0" * 10 + b"\xff\xff" and packed[12] == 127))


def _is_ip(host):
  for family in (socket.AF_INET, socket.AF_INET6):
    try:
      socket.inet_pton(family, host)
      return True
    except (OSError, TypeError):
      pass
  return False


def _host(host):
  if isinstance(host, bytes):
    host = host.decode("ascii", "replace")
  if isinstance(host, str):
    host = host.split("%")[0]  # IPv6 zone
  return host


def _record(state, what):
  stack = "".join(traceback.format_stack(limit=12)[:-2])
  line = f"pid {os.getpid()} ({' '.join(sys.argv)[:200]}): {what}\n"
  try:
    with open(state["log"], "a", encoding="utf-8") as f:
      f.write(line + "".join("    " + s + "\n" for s in stack.splitlines()))
  except OSError:
    pass
  sys.stderr.write("advjax tests: " + line)
  raise state["error"](f"advjax tests: {what}: tests may only connect to "
                       "127.0.0.1")


def install(log_path):
  """Wraps socket connect/connect_ex/getaddrinfo, once per process; a later
  call only changes the log (an xdist worker's conftest, after start-up)."""
  state = getattr(socket, "_advjax_netguard", None)
  if state is not None:
    state["log"] = log_path
    return
  state = {"log": log_path, "error": ForbiddenConnection}
  own_name = socket.gethostname()
  connect, connect_ex = socket.socket.connect, socket.socket.connect_ex
  getaddrinfo = socket.getaddrinfo

  def check(sock, address):
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
      return  # Unix sockets, netlink, ...
    host = _host(address[0]) if isinstance(address, tuple) else address
    if host in ("localhost",) or _is_loopback_ip(host):
      return
    _record(state, f"connection to {address!r}")

  def guarded_connect(self, address):
    check(self, address)
    return connect(self, address)

  def guarded_connect_ex(self, address):
    check(self, address)
    return connect_ex(self, address)

  def guarded_getaddrinfo(host, *args, **kwargs):
    name = _host(host)
    if not (name in _LOCAL_NAMES or name in _WILDCARDS or name == own_name
            or _is_ip(name)):
      _record(state, f"DNS lookup of {name!r}")
    return getaddrinfo(host, *args, **kwargs)

  socket.socket.connect = guarded_connect
  socket.socket.connect_ex = guarded_connect_ex
  socket.getaddrinfo = guarded_getaddrinfo
  socket._advjax_netguard = state  # pylint: disable=protected-access


def _chain_next_sitecustomize():
  """Runs the sitecustomize this one shadows, if any."""
  import importlib  # pylint: disable=g-import-not-at-top
  here = os.path.dirname(os.path.abspath(__file__))
  this = sys.modules.pop("sitecustomize", None)
  saved = sys.path[:]
  sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]
  try:
    importlib.import_module("sitecustomize")
  except ImportError:
    pass
  finally:
    sys.path[:] = saved
    if this is not None:
      sys.modules["sitecustomize"] = this


if __name__ == "sitecustomize":
  if os.environ.get(LOG_VAR):
    install(os.environ[LOG_VAR])
  _chain_next_sitecustomize()
