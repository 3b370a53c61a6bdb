"""Shared bits for the tests: loading configs by path, running the CLI."""

from __future__ import annotations

import fcntl
import functools
import gzip
import os
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def python_path() -> str:
  """PYTHONPATH for a subprocess: the repository, then what conftest set
  (the network guard's sitecustomize)."""
  return os.pathsep.join(p for p in [ROOT, os.environ.get("PYTHONPATH")] if p)


TORCH_VENV = os.path.join(ROOT, ".ci", "torch-venv")
TORCH_PY = os.path.join(TORCH_VENV, "bin", "python")


def build_torch_venv() -> str | None:
  """Builds (or checks) the test-only PyTorch venv with `.ci/torch_env.sh`,
  under a lock; None when it is ready, else the build's last words.

  tests/conftest.py calls it once when the README's test command starts,
  before the network guard is on (a few minutes the first time, from the
  package registry), so the reference checks run for everyone, not only in
  CI.
  """
  os.makedirs(os.path.dirname(TORCH_VENV), exist_ok=True)
  with open(TORCH_VENV + ".lock", "w", encoding="utf-8") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    proc = subprocess.run(["bash", os.path.join(ROOT, ".ci", "torch_env.sh")],
                          capture_output=True, text=True, timeout=3600)
  return proc.stderr.strip()[-300:] if proc.returncode else None


@functools.cache
def torch_python() -> str:
  """The test-only PyTorch interpreter (torch, pytorch-fid, torchattacks,
  ART); skips, saying why, when the venv could not be built here."""
  import pytest  # pylint: disable=g-import-not-at-top
  error = build_torch_venv()  # Only checks, once conftest has built it.
  if error:
    pytest.skip("the test-only torch venv could not be built by "
                f".ci/torch_env.sh: {error}")
  return TORCH_PY


def load_config(name: str):
  """`get_config()` of configs/<name>.py; `get_config(arg)` for 'name:arg'."""
  from advjax import config_utils  # pylint: disable=g-import-not-at-top
  name, sep, arg = name.partition(":")
  return config_utils.load(os.path.join(ROOT, "configs", name + ".py")
                           + (sep + arg if sep else ""))


def run_cli(args: list[str], *, num_devices: int = 4, mock_examples: int = 32,
            timeout: float = 300, env: dict[str, str] | None = None,
            wait: bool = True, mock_data: bool = True):
  """Runs `advjax.main` with `args` in a fresh process, on mock data unless
  `mock_data` is False."""
  full_env = dict(os.environ)
  full_env.update({
      "JAX_PLATFORMS": "cpu",
      "XLA_FLAGS": (f"--xla_force_host_platform_device_count={num_devices}"
                    " --xla_backend_optimization_level=0"
                    " --xla_cpu_collective_call_terminate_timeout_seconds=600"),
      "MOCK_NUM_EXAMPLES": str(mock_examples),
      "PYTHONPATH": python_path(),
      "TF_CPP_MIN_LOG_LEVEL": "3",
  })
  full_env.update(env or {})
  main = ([os.path.join(ROOT, "tests", "mock_main.py")] if mock_data
          else ["-m", "advjax.main"])
  cmd = [sys.executable, *main, *args]
  if not wait:
    return subprocess.Popen(cmd, env=full_env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
  return subprocess.run(cmd, env=full_env, cwd=ROOT, capture_output=True,
                        text=True, timeout=timeout)


def write_idx_gz(path, array) -> None:
  """Writes `array` as a gzipped uint8 IDX file (the MNIST format)."""
  header = bytes([0, 0, 8, array.ndim])
  header += np.asarray(array.shape, ">i4").tobytes()
  with gzip.open(path, "wb") as f:
    f.write(header + np.asarray(array).astype(np.uint8).tobytes())
