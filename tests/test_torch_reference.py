"""experiments/benchmark_torch.py's PyTorch workloads compute what advjax's do.

Each workload of the side-by-side benchmark is built at tiny shapes, run once
in advjax, and run once in the test-only torch venv (.ci/torch-venv) with the
same weights and inputs; outputs, losses and gradients must agree. Skips
without the venv. Speeds are the benchmark's business, not the tests'.
"""

import importlib.util
import json
import os
import subprocess

import numpy as np
import pytest

from tests.helpers import ROOT, torch_python


# Cheap versions of the benchmark's workloads (dropout off: its masks are
# framework-specific random draws).
TINY_CNN = {"model.widths": (4, 8), "model.hidden": 16,
            "model.dropout_rate": 0.0}
TINY = {
    "cnn_train": dict(batch=8, overrides=TINY_CNN),
    "fgsm": dict(batch=8, overrides=TINY_CNN),
    "pgd10": dict(batch=8, num_steps=3, overrides=TINY_CNN),
    "latent_attack": dict(batch=8, num_steps=3, overrides=TINY_CNN,
                          gan_overrides={"model.generator.width": 4,
                                         "model.discriminator.width": 4,
                                         "model.latent_dim": 8}),
    "densenet_train": dict(batch=8, overrides={"model.depth": 10,
                                               "model.growth_rate": 4}),
    "wgan_gp_train": dict(batch=8, overrides={"model.generator.width": 8,
                                              "model.discriminator.width": 8,
                                              "gan.critic_steps": 1}),
}


def _benchmark():
  spec = importlib.util.spec_from_file_location(
      "benchmark_torch", os.path.join(ROOT, "experiments",
                                      "benchmark_torch.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.mark.parametrize("name", sorted(TINY))
def test_pytorch_workload_matches_advjax(name, tmp_path):
  torch_py = torch_python()
  bench = _benchmark()
  workload = {**bench.WORKLOADS[name], **TINY[name]}
  workload["overrides"] = {**bench.WORKLOADS[name].get("overrides", {}),
                           **TINY[name]["overrides"]}
  built = bench.build(workload)
  expected = built.reference()
  np.savez(tmp_path / "in.npz", **built.export)
  proc = subprocess.run(
      [torch_py, bench.TORCH_SCRIPT, f"--spec={json.dumps(built.spec)}",
       f"--weights={tmp_path / 'in.npz'}", f"--check={tmp_path / 'out.npz'}",
       "--threads=1"], capture_output=True, text=True, timeout=300,
      check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  with np.load(tmp_path / "out.npz") as f:
    got = {k: f[k] for k in f.files}
  assert set(expected) <= set(got), sorted(set(expected) - set(got))
  for key, want in expected.items():
    have = got[key]
    if key == "images" or key == "x_adv":
      have = have.transpose(0, 2, 3, 1)
    scale = max(float(np.max(np.abs(want))), 1e-3)
    np.testing.assert_allclose(have, want, rtol=2e-3, atol=2e-4 * scale,
                               err_msg=key)
