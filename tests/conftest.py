"""Test set-up: four CPU devices, so data-parallel code is exercised on CPU.

Also: fast, unoptimised XLA compiles.

This must run before JAX initialises its backends; pytest imports conftest.py
before any test module.

Cloud Storage: an in-memory emulator on 127.0.0.1 (tests/gcs_emulator.py)
serves every `gs://` path of the tests; fixtures `gcs` and `gcs_dir`.
Nothing may connect anywhere but this machine (tests/netguard).
"""

import atexit
import os
import re
import shutil
import sys
import tempfile
import uuid

import pytest

from tests import gcs_emulator
from tests import helpers
from tests.netguard import sitecustomize as netguard

os.environ.setdefault("JAX_PLATFORMS", "cpu")
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
  _flags += " --xla_force_host_platform_device_count=4"
# Tests use tiny models: XLA's backend optimisations cost far more compile
# time than they save in run time (about 4x faster tests overall).
if "xla_backend_optimization_level" not in _flags:
  _flags += " --xla_backend_optimization_level=0"
# Four fake devices per process on a 2-core machine: under load one device's
# share of a collective can start long after the others'; XLA:CPU aborts the
# process after 40 s of waiting by default.
if "xla_cpu_collective_call_terminate_timeout_seconds" not in _flags:
  _flags += " --xla_cpu_collective_call_terminate_timeout_seconds=600"
os.environ["XLA_FLAGS"] = _flags.strip()
# Keep TensorFlow (used only when tfds prepares a dataset) quiet and on the CPU.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

# Cloud Storage: an in-memory emulator on 127.0.0.1 (tests/gcs_emulator.py),
# and every client pointed at it before any of them is imported (some read
# their variables once per process). The port is reserved here by a listening
# socket that the emulator process inherits, so subprocesses that tests start
# see the same variables. Nothing may connect anywhere else: a guard (here and,
# through sitecustomize on PYTHONPATH, in every Python subprocess) refuses
# such connections and fails the test.
# The PyTorch reference checks' test-only venv: built once by the README's
# test command itself (the main process, before any worker starts and before
# the network guard is on: a set-up step, not a test).
if not os.environ.get("PYTEST_XDIST_WORKER"):
  if not os.path.exists(helpers.TORCH_PY):
    print("advjax tests: building the test-only torch venv (.ci/torch_env.sh, "
          "once)", file=sys.stderr, flush=True)
  _TORCH_ERROR = helpers.build_torch_venv()
  if _TORCH_ERROR:
    print(f"advjax tests: the torch venv could not be built; the reference "
          f"checks will skip: {_TORCH_ERROR}", file=sys.stderr, flush=True)

GCS_BUCKET = "advjax-test"
_STATE_DIR = tempfile.mkdtemp(prefix="advjax-tests-")
atexit.register(shutil.rmtree, _STATE_DIR, True)
_NETGUARD_LOG = os.path.join(_STATE_DIR, "netguard.log")
open(_NETGUARD_LOG, "w", encoding="utf-8").close()
os.makedirs(os.path.join(_STATE_DIR, "gcloud"))
_GCS_LISTENER = gcs_emulator.reserve_port(listen=True)
_METADATA_SOCKET = gcs_emulator.reserve_port(listen=False)
gcs_emulator.apply_env(gcs_emulator.env(
    _GCS_LISTENER.getsockname()[1], _METADATA_SOCKET.getsockname()[1],
    os.path.join(_STATE_DIR, "gcloud")))
os.environ[netguard.LOG_VAR] = _NETGUARD_LOG
_NETGUARD_DIR = os.path.dirname(os.path.abspath(netguard.__file__))
_paths = os.environ.get("PYTHONPATH", "").split(os.pathsep)
if _NETGUARD_DIR not in _paths:
  os.environ["PYTHONPATH"] = os.pathsep.join(p for p in [_NETGUARD_DIR, *_paths]
                                             if p)
netguard.install(_NETGUARD_LOG)


@pytest.fixture(scope="session", autouse=True)
def gcs():
  """The Cloud Storage emulator of this test process (one per xdist worker)."""
  emulator = gcs_emulator.start(_GCS_LISTENER, GCS_BUCKET,
                                os.path.join(_STATE_DIR, "gcs_emulator.log"))
  yield emulator
  emulator.stop()
  _GCS_LISTENER.close()  # Late clients get 'connection refused', not a hang.


@pytest.fixture
def gcs_dir(gcs, request) -> str:  # pylint: disable=redefined-outer-name
  """A fresh `gs://` folder for one test."""
  name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)[:80]
  return f"{gcs.root}/{name}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def fashion_dir(tmp_path_factory):
  """A data_dir with Fashion-MNIST built once from the Debian files."""
  pytest.importorskip("tensorflow")
  from advjax import input_pipeline  # pylint: disable=g-import-not-at-top
  if not input_pipeline._has_local_fashion_mnist(  # pylint: disable=protected-access
      input_pipeline.FASHION_MNIST_DIR):
    pytest.skip("apt-get install dataset-fashion-mnist")
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  input_pipeline.get_source("fashion_mnist", "test", data_dir)  # both splits
  return data_dir


@pytest.fixture(autouse=True)
def no_connections_off_this_machine():
  """Fails a test in which any process tried to reach another machine."""
  start = os.path.getsize(_NETGUARD_LOG)
  yield
  with open(_NETGUARD_LOG, encoding="utf-8") as f:
    f.seek(start)
    attempts = f.read()
  if attempts:
    pytest.fail("tests may only connect to 127.0.0.1; attempts (logged in "
                f"{_NETGUARD_LOG}):\n{attempts[:4000]}", pytrace=False)
