"""Checkpoint retention (across resumes), damaged-checkpoint fallback, restore
errors that stop the run, the restore step agreed across processes, notebook
restore."""

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


def test_best_checkpoint_survives_any_number_of_resumes(tmp_path):
  """Issue 20 item 1: each save, close and reopen (a resume) keeps the best
  step; orbax writes the metrics into the step only when best_fn is set."""
  workdir = str(tmp_path)
  _save_steps(workdir, {1: 0.9, 2: 0.5, 3: 0.6}, keep=2)
  _save_steps(workdir, {4: 0.4, 5: 0.3}, keep=2)
  _save_steps(workdir, {6: None, 7: 0.2}, keep=2)
  assert checkpoints.available_steps(workdir) == [1, 6, 7]
  assert checkpoints.load(workdir, best=True).step == 1


@pytest.mark.parametrize("mode,values,best", [
    ("max", {1: 0.5, 2: 0.9, 3: float("nan"), 4: 0.7}, 2),
    ("min", {1: 0.5, 2: 0.1, 3: float("nan"), 4: float("inf")}, 2)])
def test_non_finite_best_metric_never_ranks_as_best(tmp_path, mode, values,
                                                     best):
  """Review #15: with a NaN among the values `sorted` keeps the wrong step."""
  workdir = str(tmp_path)
  ckpt = checkpoints.Checkpointer(workdir, checkpoints.Settings(
      keep=1, best_metric="eval/accuracy", best_mode=mode, async_save=False))
  for step, value in values.items():
    meta = _meta(step)
    meta["config"]["checkpoint"]["best_mode"] = mode
    ckpt.save(step, _state(step), meta, metrics={"eval/accuracy": value})
  ckpt.close()
  assert checkpoints.available_steps(workdir) == [best, 4]
  assert checkpoints.load(workdir, best=True).step == best


def _fail_state_restore(monkeypatch, error):
  """Makes every orbax restore of the 'state' item raise `error`."""
  real = checkpoints.ocp.CheckpointManager.restore

  def restore(self, step, *args, **kwargs):
    items = kwargs.get("args") or (args[0] if args else None)
    if items is not None and checkpoints.STATE in dict(items.items()):
      raise error
    return real(self, step, *args, **kwargs)

  monkeypatch.setattr(checkpoints.ocp.CheckpointManager, "restore", restore)


@pytest.mark.parametrize("error", [
    jax.errors.JaxRuntimeError(
        "RESOURCE_EXHAUSTED: Out of memory while trying to allocate 4.0GiB"),
    OSError(5, "Input/output error"),
    ValueError("UNAVAILABLE: Error reading gs://bucket/checkpoints/3: 503"),
    RuntimeError("Reauthentication is needed.")], ids=str)
def test_restore_trouble_stops_with_one_line_and_moves_nothing(
    tmp_path, monkeypatch, error):
  """Review #1: only verified damage moves a step aside; out of memory, a
  storage or credentials error stops naming the step, every step kept."""
  workdir = str(tmp_path)
  _save_steps(workdir, {1: None, 2: None, 3: None}, keep=3)
  before = sorted(os.listdir(os.path.join(workdir, "checkpoints")))
  _fail_state_restore(monkeypatch, error)
  ckpt = checkpoints.Checkpointer(
      workdir, checkpoints.Settings(keep=3, async_save=False))
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    with pytest.raises(checkpoints.RestoreError) as info:
      ckpt.restore_latest(_state(0))
  ckpt.close()
  message = str(info.value)
  assert isinstance(info.value, UserError) and "\n" not in message
  assert "checkpoint step 3" in message and type(error).__name__ in message
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == before
  with pytest.raises(checkpoints.RestoreError, match="step 3"):
    checkpoints.load(workdir)  # the notebook path: no silent fall-back


def test_every_process_restores_the_step_process_0_chose(tmp_path,
                                                         monkeypatch):
  """Review #10: with several processes, process 0 verifies and decides;
  the others take its step (broadcast_one_to_all) without reading files."""
  from jax.experimental import multihost_utils
  workdir = str(tmp_path)
  _save_steps(workdir, {1: None, 2: None, 3: None}, keep=3)
  sent = []

  def broadcast(value):
    sent.append(int(value))
    return np.int32(2)  # what process 0 decided

  monkeypatch.setattr(checkpoints, "_process_count", lambda: 2)
  monkeypatch.setattr(multihost_utils, "broadcast_one_to_all", broadcast)
  monkeypatch.setattr(checkpoints.integrity, "verify", None)  # not called
  ckpt = checkpoints.Checkpointer(
      workdir, checkpoints.Settings(keep=3, async_save=False), writer=False)
  _, meta = ckpt.restore_latest(_state(0))
  ckpt.close()
  assert sent == [-1] and meta["step"] == 2


def test_best_step_saved_before_orbax_kept_metrics_survives_a_resume(
    tmp_path, monkeypatch):
  """Steps written without orbax's metrics item (an advjax without best_fn)
  are ranked from advjax's own meta['metrics']."""
  import dataclasses
  real = checkpoints._options
  monkeypatch.setattr(checkpoints, "_options", lambda s, read_only=False: (
      dataclasses.replace(real(s, read_only), best_fn=None)))
  workdir = str(tmp_path)
  _save_steps(workdir, {1: 0.9, 2: 0.5, 3: 0.6}, keep=2)
  assert not os.path.exists(os.path.join(workdir, "checkpoints", "1",
                                         "metrics"))
  monkeypatch.setattr(checkpoints, "_options", real)
  _save_steps(workdir, {4: 0.4}, keep=2)
  assert checkpoints.available_steps(workdir) == [1, 3, 4]
