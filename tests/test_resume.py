"""Resuming a run in one process, with a toy task (no model, no dataset):
memory at restore, the logs of a run that left no checkpoint, restore errors,
and the frozen models a run is pinned to (issue 20)."""

import os

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from advjax import checkpoints, frozen_models, loop, parallel
from advjax.errors import UserError
from advjax.metric_writers import read_metrics


@flax.struct.dataclass
class _State:
  step: jax.Array
  bad_step: jax.Array
  w: jax.Array


def _step(state, batch, rng, frozen):
  del rng, frozen
  loss = jax.lax.pmean(jnp.mean(batch["image"]), parallel.AXIS)
  return state.replace(step=state.step + 1, w=state.w + 1), {"loss": loss}


def _config(steps):
  return ml_collections.ConfigDict({
      "seed": 0, "num_train_steps": steps, "batch_size": 4,
      "log_every_steps": 1,
      "eval_every_steps": 100, "progress_bar": False,
      "dataset": {"name": "toy"},
      "checkpoint": {"every_steps": 2, "keep": 5, "async_save": False}})


def _task(pins=None):
  source = [{"image": np.full((2, 2, 1), i, np.uint8), "label": 0}
            for i in range(8)]
  state = _State(step=jnp.asarray(0, jnp.int32),
                 bad_step=jnp.asarray(-1, jnp.int32), w=jnp.zeros((4,)))
  return loop.Task(trainer="toy", state=state, step_fn=_step, batch_size=4,
                   train_source=source, evaluate=lambda s, i, w: {},
                   summary=lambda m: "done", frozen_pins=pins or {})


def _train(workdir, steps, task=None, options=loop.RunOptions()):
  return loop.run(_config(steps), workdir, task or _task(), parallel.make_mesh(),
                  steps, 2, options=options)


def test_initial_state_is_off_the_devices_while_a_checkpoint_is_restored(
    tmp_path, monkeypatch):
  """Review #1: restoring into the abstract state with the initial state's
  buffers freed peaks at one state, not two."""
  workdir = str(tmp_path)
  _train(workdir, 2)
  task = _task()
  real = checkpoints.Checkpointer.restore_latest
  seen = {}

  def restore_latest(self, target, check_meta=None):
    seen["initial alive"] = [not x.is_deleted()
                             for x in jax.tree.leaves(task.state)]
    seen["abstract"] = all(isinstance(x, jax.ShapeDtypeStruct)
                           for x in jax.tree.leaves(target))
    return real(self, target, check_meta)

  monkeypatch.setattr(checkpoints.Checkpointer, "restore_latest",
                      restore_latest)
  _train(workdir, 4, task)
  assert seen == {"initial alive": [False, False, False], "abstract": True}
  assert checkpoints.load(workdir).state["w"].tolist() == [4.0] * 4


def test_logs_of_a_run_without_a_checkpoint_are_moved_aside_not_erased(
    tmp_path):
  """Review #12: starting again at step 0 over metrics.jsonl with records
  moves the old logs into earlier-<time>/."""
  workdir = str(tmp_path)
  _train(workdir, 4)
  before = read_metrics(workdir)
  assert [r["step"] for r in before] == [1, 2, 3, 4]
  os.rename(os.path.join(workdir, "checkpoints"),
            os.path.join(workdir, "gone"))
  _train(workdir, 2)
  aside = [n for n in os.listdir(workdir) if n.startswith("earlier-")]
  assert len(aside) == 1
  assert read_metrics(os.path.join(workdir, aside[0])) == before
  assert [r["step"] for r in read_metrics(workdir)] == [1, 2]
  assert os.path.isdir(os.path.join(workdir, aside[0], "tensorboard"))


def test_out_of_memory_at_restore_stops_the_run_and_keeps_every_step(
    tmp_path, monkeypatch):
  """Review #1 through the loop: one UserError line, nothing moved, and the
  logs stay where they are."""
  workdir = str(tmp_path)
  _train(workdir, 4)
  names = sorted(os.listdir(os.path.join(workdir, "checkpoints")))
  records = read_metrics(workdir)

  def oom(*args, **kwargs):
    raise jax.errors.JaxRuntimeError(
        "RESOURCE_EXHAUSTED: Out of memory while trying to allocate 2.0GiB")

  monkeypatch.setattr(checkpoints.ocp.CheckpointManager, "restore", oom)
  with pytest.raises(UserError, match="cannot read checkpoint step 4") as e:
    _train(workdir, 6)
  assert "\n" not in str(e.value) and "RESOURCE_EXHAUSTED" in str(e.value)
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == names
  assert read_metrics(workdir) == records
  assert not [n for n in os.listdir(workdir) if n.startswith("earlier-")]


def _gan_run(workdir, steps, value=0.0, keep=5):
  """A stand-in for an AC-GAN run: checkpoints a 'gan' handle restores."""
  ckpt = checkpoints.Checkpointer(workdir, checkpoints.Settings(
      keep=keep, async_save=False))
  for step in steps:
    ckpt.save(step, {"g_params": {"w": jnp.full((2,), value + step)}},
              {"trainer": "gan", "config": {"dataset": {"name": "mnist"}},
               "data_position": {"step": step}})
  ckpt.close()


def test_resume_against_another_gan_is_refused_like_a_config_change(tmp_path):
  """Review #9: the run records the GAN's step and digest; when that step is
  gone or its files differ, a resume is refused with the two ways forward;
  --allow_config_change reads the newest and records it."""
  gan_dir, run_dir = str(tmp_path / "gan"), str(tmp_path / "run")
  _gan_run(gan_dir, [1, 2])
  pins = frozen_models.Pins(run_dir)
  assert pins.restore("gan", gan_dir, kind="gan").step == 2
  _train(run_dir, 2, _task(pins.records))
  saved = checkpoints.load(run_dir).meta["frozen"]["gan"]
  assert saved["step"] == 2 and saved["workdir"] == gan_dir

  # The GAN run goes on: the resumed run still reads step 2.
  _gan_run(gan_dir, [3], keep=5)
  assert frozen_models.Pins(run_dir).restore("gan", gan_dir, "gan").step == 2

  # The GAN run is trained again from scratch: step 2 has other files.
  os.rename(gan_dir, str(tmp_path / "old_gan"))
  _gan_run(gan_dir, [1, 2, 3], value=10.0)
  with pytest.raises(UserError) as e:
    frozen_models.Pins(run_dir).restore("gan", gan_dir, "gan")
  line = str(e.value)
  assert "\n" not in line and "gan (step 2 of" in line
  assert "other files" in line
  assert "another --workdir" in line and "--allow_config_change" in line

  # Step 2 gone altogether.
  _gan_run(gan_dir, [4, 5], value=10.0, keep=1)
  with pytest.raises(UserError, match="step 2 of .* is gone"):
    frozen_models.Pins(run_dir).restore("gan", gan_dir, "gan")

  # Whatever the trainer read, the loop checks the step it restores.
  other = frozen_models.Pins(run_dir, allow_change=True)
  assert other.restore("gan", gan_dir, "gan").step == 5
  with pytest.raises(UserError, match="frozen models differ.*--allow_config"):
    _train(run_dir, 4, _task(other.records))
  _train(run_dir, 4, _task(other.records),
         options=loop.RunOptions(allow_config_change=True))
  assert checkpoints.load(run_dir).meta["frozen"]["gan"]["step"] == 5


def test_logs_are_moved_aside_in_a_bucket_too(gcs_dir):
  """The same on Cloud Storage (a rename there is a copy and a delete)."""
  from advjax import fileio, metric_writers
  writer = metric_writers.MetricWriter(gcs_dir)
  writer.write_scalars(1, {"train/loss": 0.5})
  writer.write_images(1, {"grid": np.zeros((4, 4, 3), np.float32)})
  writer.close()
  aside = metric_writers.set_aside_logs(gcs_dir)
  assert aside is not None and aside.startswith(gcs_dir + "/earlier-")
  assert [r["step"] for r in read_metrics(aside)] == [1]
  assert not fileio.exists(fileio.join(gcs_dir, "metrics.jsonl"))
  assert fileio.listdir(fileio.join(aside, "images"))
  assert metric_writers.set_aside_logs(gcs_dir) is None
