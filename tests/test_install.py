"""Install anywhere: the wheel carries the configs, and a fresh venv trains.

Builds the wheel of this checkout (`pip wheel --no-deps`, from a copy so the
checkout gets no build folders), installs it into a fresh venv that sees
this environment's packages (`--system-site-packages`: no network), and
trains `--config=quickstart`, found by name, for a few tiny steps from a
folder outside the checkout.
"""

import glob
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

from tests.helpers import ROOT

pytestmark = pytest.mark.slow

TINY = ["--config.model.widths=(4, 8)", "--config.model.hidden=8",
        "--config.batch_size=8", "--config.eval_batch_size=8",
        "--config.num_train_steps=2", "--config.log_every_steps=1",
        "--config.progress_bar=False", "--config.checkpoint.async_save=False"]

# What `advjax-train` runs, inside tfds's mock data (no dataset on disk).
MOCK_TRAIN = """
import sys
import tensorflow_datasets as tfds
import advjax, configs
from advjax import main
print("advjax from", advjax.__file__, "configs from", configs.__file__)
with tfds.testing.mock_data(num_examples=16):
  main.entry_point(["advjax-train", *sys.argv[1:]])
"""


def _env(tmp_path):
  env = dict(os.environ)
  # Not this checkout: only what conftest put there (the network guard).
  paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep)
           if p and os.path.abspath(p) != ROOT]
  env.update({
      "PYTHONPATH": os.pathsep.join(paths),
      "JAX_PLATFORMS": "cpu",
      "XLA_FLAGS": "--xla_force_host_platform_device_count=1",
      "TF_CPP_MIN_LOG_LEVEL": "3",
      "HOME": str(tmp_path),
  })
  return env


def test_wheel_installs_in_a_fresh_venv_and_trains_the_quickstart_by_name(
    tmp_path):
  source = tmp_path / "source"
  shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
      ".git", ".ci", "build", "*.egg-info", "__pycache__", ".pytest_cache"))
  dist = tmp_path / "dist"
  subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                  "--no-build-isolation", "--no-index", "-q", "-w", str(dist),
                  str(source)], check=True, capture_output=True, timeout=300)
  (wheel,) = glob.glob(str(dist / "advjax-*.whl"))
  names = zipfile.ZipFile(wheel).namelist()
  assert "configs/quickstart.py" in names and "configs/common.py" in names
  assert any(n.endswith(".dist-info/licenses/LICENSE")
             or n.endswith(".dist-info/LICENSE") for n in names), names

  venv = tmp_path / "venv"
  subprocess.run([sys.executable, "-m", "venv", "--system-site-packages",
                  "--without-pip", str(venv)], check=True, timeout=120)
  python = str(venv / "bin" / "python")
  subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps",
                  "--no-index", "--ignore-installed", wheel], check=True,
                 capture_output=True, timeout=300, env=_env(tmp_path))
  assert os.path.isfile(venv / "bin" / "advjax-train")

  elsewhere = tmp_path / "elsewhere"
  elsewhere.mkdir()
  proc = subprocess.run(
      [python, "-c", MOCK_TRAIN, "--config=quickstart",
       f"--workdir={elsewhere / 'run'}", *TINY],
      cwd=elsewhere, env=_env(tmp_path), capture_output=True, text=True,
      timeout=600)
  out = proc.stdout + proc.stderr
  assert proc.returncode == 0, out[-3000:]
  site = str(venv)
  assert f"advjax from {site}" in out and f"configs from {site}" in out, out
  assert "test accuracy" in out, out[-3000:]
  assert os.path.isdir(elsewhere / "run" / "checkpoints")

  # A name that is no shipped config is one line naming the closest one.
  proc = subprocess.run(
      [python, "-c", MOCK_TRAIN, "--config=quickstrat",
       f"--workdir={elsewhere / 'run2'}"], cwd=elsewhere,
      env=_env(tmp_path), capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2
  assert "did you mean 'quickstart'" in proc.stderr.strip().splitlines()[-1]
