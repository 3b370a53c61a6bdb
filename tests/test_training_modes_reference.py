"""TRADES, MART and fast AT against PyTorch and ART on identical weights.

A small SmallCNN (random weights, random BatchNorm averages, sharpened
logits) and a batch of images with fixed random starts go to
tests/torch_reference/training_modes_torch.py in the test-only torch venv
(.ci/torch_env.sh), which runs the authors' inner-attack loops and losses
written in PyTorch, and ART's TRADES and FBF ("fast is better than free")
trainers when ART imports. Compared here with advjax's, within float
tolerance:

- the inner attacks from the same starts: TRADES' KL attack, MART's
  cross-entropy attack, fast AT's FGSM-RS step (ours and ART's FBF);
- per-example losses on the same fixed adversarial batch, train mode: TRADES
  (the authors' formula; ART's batch mean), MART (the paper's equations; the
  authors' code differs only by its constants 1e-4, 1e-12, 1e-7, checked
  loosely).

ART's TRADES trainer takes any attack (its examples use PGD on the
cross-entropy), not the authors' KL attack, so only its loss is compared.
Skips without the torch venv.
"""

import json
import os
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import core as flax_core
from flax import traverse_util

from advjax import adversaries, losses, robust_losses
from advjax.models.cnn import SmallCNN
from tests.helpers import ROOT

# One worker runs this module, so its module fixtures are built once
# (pyproject.toml: --dist=loadgroup).
pytestmark = pytest.mark.xdist_group("training_modes_reference")

TORCH_PY = os.path.join(ROOT, ".ci", "torch-venv", "bin", "python")
SCRIPT = os.path.join(ROOT, "tests", "torch_reference",
                      "training_modes_torch.py")
SETTINGS = {"num_classes": 10, "widths": [4, 8], "hidden": 16, "eps": 0.2,
            "step_size": 0.05, "num_steps": 5, "beta": 6.0, "alpha": 0.25}
N, SHAPE = 16, (16, 16, 1)


def _model_and_variables():
  model = SmallCNN(num_classes=10, widths=tuple(SETTINGS["widths"]),
                   convs_per_stage=1, hidden=SETTINGS["hidden"])
  variables = model.init(jax.random.key(0), jnp.zeros((1, *SHAPE)),
                         train=False)
  variables = jax.tree.map(np.array, flax_core.unfreeze(variables))
  rng = np.random.default_rng(1)
  variables["params"]["logits"]["kernel"] *= 3.0  # confident predictions
  for stats in variables["batch_stats"].values():
    stats["mean"] = rng.normal(0, 0.1, stats["mean"].shape).astype(np.float32)
    stats["var"] = rng.uniform(0.5, 1.5, stats["var"].shape).astype(
        np.float32)
  return model, variables


def _data():
  rng = np.random.default_rng(2)
  # Some pixels at -1: the valid range's clipping matters.
  x = np.clip(rng.uniform(-1.3, 1., (N, *SHAPE)), -1, 1).astype(np.float32)
  y = rng.integers(0, 10, N).astype(np.int32)
  key = jax.random.key(3)
  x_start = np.asarray(robust_losses.gaussian_start(key, jnp.asarray(x),
                                                    0.002))
  delta = np.asarray(robust_losses.uniform_start(key, jnp.asarray(x),
                                                 SETTINGS["eps"]))
  x_adv = np.clip(x + rng.choice([-1., 1.], x.shape) * SETTINGS["eps"], -1,
                  1).astype(np.float32)
  return dict(x=x, y=y, x_start=x_start, delta=delta, x_adv=x_adv)


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
  if not os.path.exists(TORCH_PY):
    pytest.skip(f"torch reference env not found at {TORCH_PY}; create it "
                f"with `bash .ci/torch_env.sh`")
  folder = tmp_path_factory.mktemp("training_modes_reference")
  model, variables = _model_and_variables()
  data = _data()
  flat = traverse_util.flatten_dict(variables, sep="/")
  np.savez(folder / "weights.npz", **flat)
  np.savez(folder / "data.npz", **data)
  (folder / "settings.json").write_text(json.dumps(SETTINGS))
  proc = subprocess.run([TORCH_PY, SCRIPT, str(folder)], capture_output=True,
                        text=True, timeout=600, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  with np.load(folder / "torch.npz") as f:
    theirs = {k: f[k] for k in f.files}

  s = SETTINGS
  logits_fn = jax.jit(lambda z: model.apply(variables, z, train=False))
  x, y = jnp.asarray(data["x"]), jnp.asarray(data["y"])
  steps = dict(eps=s["eps"], step_size=s["step_size"],
               num_steps=s["num_steps"])
  ours = {
      "trades_attack": robust_losses.kl_pgd(logits_fn, x, data["x_start"],
                                            **steps),
      "mart_attack": robust_losses.ce_pgd(logits_fn, x, y, data["x_start"],
                                          **steps),
      "fgsm_rs": robust_losses.fgsm_rs(logits_fn, x, y, data["delta"],
                                       eps=s["eps"], alpha=s["alpha"]),
  }
  train = jax.jit(lambda z: model.apply(variables, z, train=True,
                                        mutable=["batch_stats"])[0])
  clean, adv = train(x), train(jnp.asarray(data["x_adv"]))
  trades = adversaries.get("trades")
  mart = adversaries.get("mart")
  ours["trades_loss"] = trades.loss(trades.settings(beta=s["beta"]), clean,
                                    adv, y, y)
  ours["mart_loss"] = mart.loss(mart.settings(beta=s["beta"]), clean, adv, y,
                                y)
  ours["fgsm_rs_eval_ce"] = losses.cross_entropy(
      logits_fn(ours["fgsm_rs"]), y).mean()
  return jax.tree.map(np.asarray, ours), theirs


# An example whose gradient sign differs in float rounding moves by one step
# in one pixel: the attacks must agree on all but a few pixels.
MAX_DIFFERENT_PIXELS = 0.002


@pytest.mark.parametrize("attack", ["trades_attack", "mart_attack", "fgsm_rs"])
def test_inner_attacks_match_the_authors_loops(compared, attack):
  ours, theirs = compared
  diff = np.abs(ours[attack] - theirs[attack])
  assert np.mean(diff > 1e-5) <= MAX_DIFFERENT_PIXELS, (attack,
                                                        np.mean(diff > 1e-5))
  assert np.abs(ours[attack] - _data()["x"]).max() <= SETTINGS["eps"] + 1e-5


def test_trades_and_mart_losses_match_per_example(compared):
  ours, theirs = compared
  np.testing.assert_allclose(ours["trades_loss"], theirs["trades_loss"],
                             rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(ours["mart_loss"], theirs["mart_loss"],
                             rtol=1e-4, atol=1e-5)
  # The authors' constants move MART's loss by at most about 1e-3 here.
  np.testing.assert_allclose(ours["mart_loss"], theirs["mart_loss_authors"],
                             rtol=1e-2, atol=1e-3)


def test_art_trainers_agree(compared):
  ours, theirs = compared
  if "art_error" in theirs:
    pytest.skip(f"ART does not import in the torch venv: "
                f"{theirs['art_error']}")
  np.testing.assert_allclose(theirs["art_trades_mean"],
                             ours["trades_loss"].mean(), rtol=1e-4)
  diff = np.abs(theirs["art_fbf_x"].transpose(0, 2, 3, 1) - ours["fgsm_rs"])
  assert np.mean(diff > 1e-5) <= MAX_DIFFERENT_PIXELS
  np.testing.assert_allclose(theirs["art_fbf_mean"], ours["fgsm_rs_eval_ce"],
                             rtol=1e-4)
