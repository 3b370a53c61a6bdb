"""Test set-up: four CPU devices, so data-parallel code is exercised on CPU.

Also: fast, unoptimised XLA compiles.

This must run before JAX initialises its backends; pytest imports conftest.py
before any test module.
"""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
  _flags += " --xla_force_host_platform_device_count=4"
# Tests use tiny models: XLA's backend optimisations cost far more compile
# time than they save in run time (about 4x faster tests overall).
if "xla_backend_optimization_level" not in _flags:
  _flags += " --xla_backend_optimization_level=0"
os.environ["XLA_FLAGS"] = _flags.strip()
# Keep TensorFlow (used only when tfds prepares a dataset) quiet and on the CPU.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
