"""Checkpoint digests and quarantine, on real orbax checkpoints."""

import os

import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from advjax import integrity

ITEMS = ("state", "meta")


def _manager(directory, keep=5):
  return ocp.CheckpointManager(
      directory, options=ocp.CheckpointManagerOptions(
          max_to_keep=keep, enable_async_checkpointing=True),
      item_names=ITEMS)


def _state(value):
  return {"params": {"w": jnp.full((64, 64), float(value)),
                     "b": jnp.arange(64.0) + value},
          "step": jnp.asarray(value, jnp.int32)}


def _save(directory, steps, keep=5, digest=True):
  """Saves `steps` the way the loop will: digest each step once orbax has
  committed it (before the next save and at close)."""
  mngr = _manager(directory, keep)
  pending = integrity.PendingDigests(directory)
  for step in steps:
    mngr.wait_until_finished()
    if digest:
      pending.flush()
    mngr.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(_state(step)),
        meta=ocp.args.JsonSave({"step": step})))
    pending.add(step)
  mngr.wait_until_finished()
  if digest:
    pending.flush()
  mngr.close()


def _restore(directory, step):
  mngr = _manager(directory)
  out = mngr.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(_state(0)), meta=ocp.args.JsonRestore()))
  mngr.close()
  return out


def _largest_array_file(step_dir):
  files = [os.path.join(root, f) for root, _, names in
           os.walk(os.path.join(step_dir, "state")) for f in names]
  return max(files, key=os.path.getsize)


def test_intact_checkpoint_verifies_and_orbax_ignores_the_digest(tmp_path):
  _save(tmp_path, [1, 2])
  assert (tmp_path / "2" / integrity.DIGEST_NAME).exists()
  assert integrity.verify(tmp_path / "2") == integrity.Verification(
      "verified")
  mngr = _manager(tmp_path)
  assert mngr.all_steps() == [1, 2]
  assert set(mngr.item_metadata(2)) >= set(ITEMS)
  mngr.close()
  out = _restore(tmp_path, 2)
  np.testing.assert_array_equal(out["state"]["params"]["b"],
                                np.arange(64.0) + 2)
  assert out["meta"]["step"] == 2


def test_retention_removes_a_step_together_with_its_digest(tmp_path):
  _save(tmp_path, [1, 2, 3], keep=2)
  assert sorted(os.listdir(tmp_path)) == ["2", "3"]


def test_flipped_bytes_in_an_array_file_fail_verification(tmp_path):
  _save(tmp_path, [1])
  path = _largest_array_file(tmp_path / "1")
  with open(path, "r+b") as f:
    data = bytearray(f.read())
    middle = len(data) // 2
    data[middle:middle + 64] = bytes(b ^ 0xFF for b in data[middle:middle + 64])
    f.seek(0)
    f.write(data)
  verdict = integrity.verify(tmp_path / "1")
  assert not verdict
  assert "differs from its digest" in verdict.reason
  assert os.path.relpath(path, tmp_path / "1") in verdict.reason


@pytest.mark.parametrize("damage,needle", [
    ("truncate", "bytes"), ("delete_metadata", "_METADATA is missing"),
    ("garbage_meta", "meta/metadata"), ("extra_file", "not there at save"),
    ("garbage_digest", "digest"), ("missing_folder", "does not exist")])
def test_damaged_checkpoint_fails_verification_naming_the_damage(
    tmp_path, damage, needle):
  _save(tmp_path, [1])
  step_dir = tmp_path / "1"
  if damage == "truncate":
    path = _largest_array_file(step_dir)
    with open(path, "r+b") as f:
      f.truncate(os.path.getsize(path) // 2)
  elif damage == "delete_metadata":
    os.remove(step_dir / "state" / "_METADATA")
  elif damage == "garbage_meta":
    (step_dir / "meta" / "metadata").write_text("{not json")
  elif damage == "extra_file":
    (step_dir / "state" / "stray").write_text("x")
  elif damage == "garbage_digest":
    (step_dir / integrity.DIGEST_NAME).write_text("[1, 2")
  else:
    step_dir = tmp_path / "7"
  verdict = integrity.verify(step_dir)
  assert not verdict
  assert verdict.status == ("missing" if damage == "missing_folder"
                            else "corrupt")
  assert needle in verdict.reason


def test_checkpoint_without_a_digest_is_accepted_with_a_note(tmp_path):
  _save(tmp_path, [1], digest=False)
  verdict = integrity.verify(tmp_path / "1")
  assert verdict and verdict.status == "unverified"
  assert "no digest" in verdict.reason


def test_pending_digests_skip_steps_that_retention_removed(tmp_path):
  _save(tmp_path, [1], digest=False)
  pending = integrity.PendingDigests(tmp_path)
  pending.add(1)
  pending.add(5)
  assert pending.flush() == [1]
  assert pending.flush() == []


def test_quarantined_step_is_kept_and_ignored_by_orbax(tmp_path):
  _save(tmp_path, [1, 2, 3])
  files_before = sum(len(f) for _, _, f in os.walk(tmp_path / "3"))
  mngr = _manager(tmp_path, keep=2)
  moved = integrity.quarantine(tmp_path, 3, "file x differs from its digest",
                               now=0.0)
  assert moved.name == "3.unreadable-19700101T000000Z"
  assert "differs from its digest" in (moved / integrity.NOTE_NAME).read_text()
  # The live manager forgets the step after reload(); saving that step
  # again (the resumed run reaching it) works, and retention leaves the
  # quarantined folder alone.
  mngr.reload()
  assert mngr.all_steps() == [1, 2]
  for step in (3, 4, 5):
    mngr.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(_state(step)),
        meta=ocp.args.JsonSave({"step": step})))
  mngr.close()
  mngr = _manager(tmp_path)  # A fresh manager cleans up unfinished saves.
  assert mngr.all_steps() == [4, 5]
  mngr.close()
  assert moved.exists()
  # The step's files and the note.
  assert sum(len(f) for _, _, f in os.walk(moved)) == files_before + 1


def test_quarantining_the_same_step_twice_keeps_both(tmp_path):
  for _ in range(2):
    _save(tmp_path, [1])
    integrity.quarantine(tmp_path, 1, "bad", now=0.0)
  assert sorted(os.listdir(tmp_path)) == ["1.unreadable-19700101T000000Z",
                                          "1.unreadable-19700101T000000Z-2"]


def test_a_file_that_vanishes_during_verification_is_a_verdict(
    tmp_path, monkeypatch):
  """A live run's retention may remove a step while it is checked: a
  verdict, never a FileNotFoundError traceback."""
  _save(tmp_path, [1, 2])
  real = integrity._hash

  def vanish(path):
    if "state" in str(path):
      raise FileNotFoundError(2, "No such file", str(path))
    return real(path)

  monkeypatch.setattr(integrity, "_hash", vanish)
  verdict = integrity.verify(tmp_path / "1")
  assert verdict.status == "corrupt" and "vanished" in verdict.reason

  def vanish_all(path):
    import shutil
    shutil.rmtree(tmp_path / "2", ignore_errors=True)
    raise FileNotFoundError(2, "No such file", str(path))

  monkeypatch.setattr(integrity, "_hash", vanish_all)
  verdict = integrity.verify(tmp_path / "2")
  assert verdict.status == "missing" and not verdict
