"""Checkpoint retention, corrupt-checkpoint fallback, notebook restore."""

import glob
import os
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advjax import checkpoints, inference
from advjax.errors import UserError


def _state(value):
  return {"params": {"w": jnp.full((3,), float(value))},
          "step": jnp.asarray(value, jnp.int32)}


def _meta(step):
  return {"trainer": "classifier", "data_position": {"step": step},
          "config": {"dataset": {"name": "mnist"},
                     "checkpoint": {"best_metric": "eval/accuracy",
                                    "best_mode": "max"}}}


def _save_steps(workdir, accuracies, keep=2):
  ckpt = checkpoints.Checkpointer(workdir, checkpoints.Settings(
      keep=keep, best_metric="eval/accuracy", async_save=False))
  for step, acc in accuracies.items():
    metrics = None if acc is None else {"eval/accuracy": acc}
    ckpt.save(step, _state(step), _meta(step), metrics=metrics)
  ckpt.close()


def test_keeps_the_last_k_and_the_best(tmp_path):
  workdir = str(tmp_path)
  _save_steps(workdir, {1: 0.5, 2: 0.9, 3: 0.6, 4: None, 5: 0.7}, keep=2)
  assert checkpoints.available_steps(workdir) == [2, 4, 5]
  assert checkpoints.load(workdir).step == 5
  best = checkpoints.load(workdir, best=True)
  assert best.step == 2
  assert best.meta["metrics"]["eval/accuracy"] == pytest.approx(0.9)
  np.testing.assert_array_equal(best.state["params"]["w"], np.full(3, 2.0))


def test_resume_skips_a_corrupt_latest_checkpoint_with_a_warning(tmp_path):
  workdir = str(tmp_path)
  _save_steps(workdir, {1: None, 2: None, 3: None}, keep=3)
  # Damage every data file of the newest checkpoint's state.
  for path in glob.glob(os.path.join(workdir, "checkpoints", "3", "state",
                                     "**", "*"), recursive=True):
    if os.path.isfile(path):
      with open(path, "wb") as f:
        f.write(b"garbage")
  ckpt = checkpoints.Checkpointer(
      workdir, checkpoints.Settings(keep=3, async_save=False))
  with pytest.warns(RuntimeWarning, match="checkpoint step 3 cannot be read"):
    state, meta = ckpt.restore_latest(_state(0))
  ckpt.close()
  assert meta["step"] == 2 and meta["data_position"]["step"] == 2
  np.testing.assert_array_equal(state["params"]["w"], np.full(3, 2.0))
  # The damaged step was moved aside, not deleted: later reads skip it.
  assert checkpoints.available_steps(workdir) == [1, 2]
  assert any(name.startswith("3.unreadable-")
             for name in os.listdir(os.path.join(workdir, "checkpoints")))
  assert checkpoints.load(workdir).step == 2


def test_half_written_checkpoint_is_ignored(tmp_path):
  workdir = str(tmp_path)
  _save_steps(workdir, {1: None, 2: None}, keep=3)
  # What a crash during a save leaves: orbax's temporary folder.
  os.makedirs(os.path.join(workdir, "checkpoints",
                           "3.orbax-checkpoint-tmp-1234", "state"))
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    assert checkpoints.load(workdir).step == 2
  ckpt = checkpoints.Checkpointer(
      workdir, checkpoints.Settings(keep=3, async_save=False))
  _, meta = ckpt.restore_latest(_state(0))
  ckpt.close()
  assert meta["step"] == 2


def test_restore_explains_what_is_missing(tmp_path):
  with pytest.raises(UserError, match="no checkpoints"):
    checkpoints.load(str(tmp_path))
  _save_steps(str(tmp_path), {1: None}, keep=1)
  with pytest.raises(UserError, match="available: \\[1\\]"):
    checkpoints.load(str(tmp_path), step=7)
  with pytest.raises(UserError, match="'classifier' trainer, not a gan"):
    inference.restore(str(tmp_path), kind="gan")
  assert isinstance(inference.restore(str(tmp_path)), inference.Classifier)


def test_step_folder_without_its_files_falls_back(tmp_path):
  workdir = str(tmp_path)
  _save_steps(workdir, {1: None, 2: None}, keep=3)
  os.makedirs(os.path.join(workdir, "checkpoints", "3", "state"))
  with pytest.warns(RuntimeWarning, match="cannot be read"):
    assert checkpoints.load(workdir).step == 2


def test_listing_steps_survives_a_live_run_deleting_an_old_one(tmp_path,
                                                               monkeypatch):
  """A training run may remove step k while another process lists the folder:
  orbax then raises FileNotFoundError; the listing is retried."""
  from advjax import checkpoints as ck
  os.makedirs(ck.checkpoint_dir(str(tmp_path)))
  calls = []

  class Flaky:
    def __init__(self, *args, **kwargs):
      calls.append(1)
      if len(calls) == 1:
        raise FileNotFoundError("checkpoints/10")

    def all_steps(self):
      return [30, 20]

    def close(self):
      pass

  monkeypatch.setattr(ck.ocp, "CheckpointManager", Flaky)
  assert ck.available_steps(str(tmp_path)) == [20, 30]
  assert len(calls) == 2
