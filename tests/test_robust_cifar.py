"""The CIFAR-10 robust-training configs, their networks (PreActResNet-18,
WRN-28-10) and the benchmark that prints their FLOPs."""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from advjax import models
from advjax.errors import UserError
from tests.helpers import load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("options,count", [
    # The published sizes: 11.2M (PreActResNet-18 with its final BN, for 10
    # classes) and 36.5M (WRN-28-10).
    (dict(name="preact_resnet"), 11_172_170),
    (dict(name="wide_resnet", depth=28, widen=10), 36_479_194)])
def test_networks_have_the_papers_sizes(options, count):
  model = models.create_model(ml_collections.ConfigDict(options), 10)
  variables = jax.eval_shape(lambda: model.init(
      jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False))
  assert models.count_params(variables["params"]) == count


@pytest.mark.parametrize("options", [
    dict(name="preact_resnet", blocks=(1, 1), width=4),
    dict(name="wide_resnet", depth=10, widen=1)])
def test_small_versions_train_and_give_logits_and_features(options):
  model = models.create_model(ml_collections.ConfigDict(options), 10)
  x = jax.random.uniform(jax.random.key(0), (4, 32, 32, 3), minval=-1,
                         maxval=1)
  variables = model.init(jax.random.key(1), x, train=False)
  logits, updates = model.apply(variables, x, train=True,
                                mutable=["batch_stats"])
  assert logits.shape == (4, 10) and logits.dtype == jnp.float32
  assert jax.tree.leaves(updates["batch_stats"])
  logits, features = model.apply(variables, x, train=False,
                                 return_features=True)
  assert features.shape[0] == 4 and np.all(np.isfinite(logits))


def test_bad_network_shapes_are_one_line():
  with pytest.raises(UserError, match="multiple of 6"):
    models.create_model(ml_collections.ConfigDict(
        dict(name="wide_resnet", depth=27)), 10)
  with pytest.raises(UserError, match="blocks >= 1"):
    models.create_model(ml_collections.ConfigDict(
        dict(name="preact_resnet", blocks=(2, 0))), 10)


def test_config_arguments_pick_mode_generated_data_model_and_seed():
  c = load_config("robust_cifar10:trades+gan,model=wrn28_10,seed=3")
  at = c.adversarial_training
  assert (at.mode, at.generated.source, at.prop) == ("trades", "gan", 1.0)
  assert c.model.name == "wide_resnet" and c.seed == 3
  assert at.trades.eps == at.pgd.eps == pytest.approx(16 / 255)
  assert load_config("robust_cifar10").model.name == "preact_resnet"
  for bad in ("trades,model=vgg", "trades,lr=1", "trades,seed=x"):
    with pytest.raises(UserError):
      load_config(f"robust_cifar10:{bad}")


def test_benchmark_prints_step_time_and_epoch_flops():
  proc = subprocess.run(
      [sys.executable, os.path.join(ROOT, "experiments", "benchmark.py"),
       "--configs=quickstart;study_fashion_mnist:trades", "--steps=1",
       "--batch_size=8", "--peak_tflops=100"],
      capture_output=True, text=True, timeout=600,
      env=dict(os.environ, PYTHONPATH=ROOT))
  assert proc.returncode == 0, proc.stderr[-2000:]
  rows = {line.split()[0]: line.split() for line in proc.stdout.splitlines()
          if line.startswith(("quickstart", "study_"))}
  plain, trades = rows["quickstart"], rows["study_fashion_mnist:trades"]
  # Columns: params batch compile step images/s GFLOP/img passes PFLOP s.
  assert float(plain[6]) > 0 and float(plain[7]) == 1.0
  # TRADES: two train-mode passes and its inner steps on every example.
  steps = load_config("study_fashion_mnist:trades").adversarial_training \
      .trades.num_steps
  assert float(trades[7]) == 2 + steps
  epoch_pflop = 3 * float(trades[6]) * 1e9 * (2 + steps) * 60_000 / 1e15
  assert float(trades[8]) == pytest.approx(epoch_pflop, abs=0.006)
  assert float(trades[9]) == pytest.approx(
      epoch_pflop * 1e15 / (100e12 * 0.4), abs=0.06)
