"""Checkpoints: writing them during training and reading them back.

A checkpoint (orbax `CheckpointManager`, one folder per step under
`<workdir>/checkpoints`) holds two items:
  'state': the train state pytree (params, batch stats, optimiser state,
           step, ...: what training changes), so a resumed run continues bit
           for bit; frozen models a run only reads (a distillation teacher, the
           GAN of adversarial training) are not in it;
  'meta':  JSON with the experiment config, the trainer's name, the input
           pipeline position and, where evaluation ran at that step, its
           metrics.

Retention keeps the last `keep` checkpoints plus the best one by a chosen
evaluation metric, across any number of resumes: orbax writes each step's
metrics into the step (`<step>/metrics`) only when `best_fn` is set, and reads
them back when a later process opens the folder; a non-finite value of the
metric never ranks (issue 20, review #2 and #15).

Restoring tells damage from trouble (review #1): a checkpoint that is
verifiably damaged (its files do not match their digest, or orbax's metadata
or format cannot be decoded) is moved aside with a warning in favour of the
one before it; any other error (out of memory, a storage or network error,
missing credentials) stops the run with one line naming the step, and nothing
is moved. With several processes, process 0 decides the step and every
process restores that one (review #10).

This module only reads and writes: `load(workdir)` gives the raw
`Checkpoint` (config, state as nested dicts, meta). The typed handles a
notebook uses (`predict`, `sample`, `translate`, ...) are in
`advjax.inference`, whose `restore(workdir)` builds the right one.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import time
import warnings
from typing import Any, Callable

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from advjax import fileio, integrity
from advjax import settings as settings_lib
from advjax.errors import UserError

STATE = "state"
META = "meta"
CHECKPOINT_DIR = "checkpoints"


def checkpoint_dir(workdir: str) -> str:
  """`<workdir>/checkpoints`; `workdir` local or `gs://...` (orbax writes
  arrays there with tensorstore and commits with a marker file, no rename)."""
  return fileio.join(fileio.resolve(workdir), CHECKPOINT_DIR)


@settings_lib.register("checkpoint")
@dataclasses.dataclass(frozen=True)
class Settings:
  """`config.checkpoint`, read once: a checkpoint every `every_steps` (<= 0:
  once per epoch) and at the end; the last `keep` kept plus the best by the
  evaluation metric `best_metric` ('' = none), `best_mode` 'max' or 'min';
  `async_save` writes while training goes on."""
  every_steps: int = settings_lib.extends_run(-1, "checkpoint interval")
  keep: int = settings_lib.extends_run(3, "number of checkpoints kept")
  best_metric: str = ""
  best_mode: str = "max"
  async_save: bool = settings_lib.extends_run(
      True, "how checkpoints are written")

  def __post_init__(self):
    settings_lib.check_positive(self, "keep")
    settings_lib.check_choice(self, "best_mode", ("max", "min"))


def read_settings(config: ml_collections.ConfigDict) -> Settings:
  return settings_lib.read(Settings, config, "checkpoint")


def rank(metrics: Any, best_metric: str, best_mode: str) -> float:
  """The keep-the-best score of a step's metrics: higher is better whatever
  `best_mode`; a missing or non-finite (NaN, inf) value of `best_metric` is
  the worst score, -inf, so it never ranks as best (review #15: `sorted`
  with a NaN leaves the list in the wrong order)."""
  try:
    value = float(metrics[best_metric])
  except (KeyError, TypeError, ValueError):
    return -math.inf
  if not math.isfinite(value):
    return -math.inf
  return -value if best_mode == "min" else value


def _options(s: Settings, read_only: bool = False):
  cm = ocp.checkpoint_managers
  policies = [cm.LatestN(n=s.keep)]
  best_fn = None
  if s.best_metric:
    best_fn = functools.partial(rank, best_metric=s.best_metric,
                                best_mode=s.best_mode)
    policies.append(cm.BestN(get_metric_fn=best_fn, reverse=False, n=1,
                             keep_checkpoints_without_metrics=False))
  return ocp.CheckpointManagerOptions(
      preservation_policy=cm.AnyPreservationPolicy(policies),
      # Retention is the preservation policy's; best_fn makes orbax write
      # each step's metrics to disk and read them back on reopening.
      best_fn=best_fn, best_mode="max",
      enable_async_checkpointing=s.async_save,
      cleanup_tmp_directories=not read_only,
      create=not read_only,
      read_only=read_only)


class StateMismatch(UserError):
  """The saved train state does not fit the one this config builds."""


class RestoreError(UserError):
  """A checkpoint could not be read for a reason other than damage (out of
  memory, a storage or credentials error): the run stops, nothing moved."""


# Status codes (absl / tensorstore / XLA) and phrases of errors that say the
# files could not be read *now*, whatever their content.
_TROUBLE = ("RESOURCE_EXHAUSTED", "UNAVAILABLE", "DEADLINE_EXCEEDED",
            "PERMISSION_DENIED", "UNAUTHENTICATED", "ABORTED", "CANCELLED",
            "out of memory", "Out of memory")


def is_damage(error: BaseException, step_dir: str) -> bool:
  """Whether a restore error proves the step's files damaged (review #1).

  Damage: orbax's JSON metadata or meta cannot be decoded
  (`json.JSONDecodeError`, `UnicodeDecodeError`), a file or item of a step
  that still exists is missing (`FileNotFoundError`, orbax's KeyError 'Item
  ... was not found in the checkpoint'), or tensorstore reports `DATA_LOSS`.
  Anything else, and anything whose message carries an out-of-memory or
  transient status code, is trouble: the files may be fine.
  """
  seen = set()
  chain = []
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    chain.append(error)
    error = error.__cause__ or error.__context__
  if any(isinstance(e, MemoryError) or any(t in str(e) for t in _TROUBLE)
         for e in chain):
    return False
  first = chain[0]
  if isinstance(first, (json.JSONDecodeError, UnicodeDecodeError)):
    return True
  if isinstance(first, FileNotFoundError) or (
      isinstance(first, KeyError)
      and "was not found in the checkpoint" in str(first)):
    try:
      return fileio.isdir(step_dir)
    except Exception:  # pylint: disable=broad-except
      return False
  return isinstance(first, ValueError) and "DATA_LOSS" in str(first)


def restore_error_message(directory: str, step: int,
                          error: BaseException) -> str:
  """The one line for a checkpoint that could not be read (not damage)."""
  return (f"cannot read checkpoint step {step} in {directory} "
          f"({_describe(error)}); nothing was moved or deleted; fix the cause "
          f"(memory, storage access) and rerun the same command, or move that "
          f"step out of {directory} if it is damaged")


LEGACY_FROZEN = ("teacher", "augment_vars")


class Checkpointer:
  """Saves and resumes one run's train state (orbax, plus digests).

  Process 0 (`writer`) writes a digest of each step once orbax has committed
  it (`advjax.integrity`) and moves damaged steps aside; nothing saved is
  ever deleted or moved because it could not be read.
  """

  def __init__(self, workdir: str, settings: Settings = Settings(),
               writer: bool = True):
    self.directory = checkpoint_dir(workdir)
    self.workdir = workdir
    self.best_metric = settings.best_metric
    self.writer = writer
    self._manager = ocp.CheckpointManager(
        self.directory, options=_options(settings),
        item_handlers=_handlers())
    self._digests = integrity.PendingDigests(self.directory)
    if self.best_metric:
      self._seed_metrics()

  def _seed_metrics(self) -> None:
    """Gives orbax the metrics of steps saved without its `metrics` item
    (by an advjax before best_fn was set) from advjax's own meta, so that
    the best of those steps survives this run's first save too (review #2).
    Orbax has no public way to set them: its list of CheckpointInfo is
    filled in place, and left alone if orbax changes."""
    infos = getattr(self._manager, "_checkpoints", None)
    for info in list(infos or []):
      if getattr(info, "metrics", False) is not None:
        continue
      try:
        meta = self._manager.restore(info.step, args=ocp.args.Composite(
            **{META: ocp.args.JsonRestore()}))[META]
      except Exception:  # pylint: disable=broad-except
        continue  # restore_latest judges unreadable steps
      metrics = meta.get("metrics") if isinstance(meta, dict) else None
      if metrics and math.isfinite(float(metrics.get(self.best_metric,
                                                     math.nan))):
        info.metrics = metrics

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def _finish_pending(self) -> None:
    """Waits for the save in flight, then digests what this run saved."""
    self._manager.wait_until_finished()
    if self.writer:
      self._digests.flush()

  def save(self, step: int, state: Any, meta: dict[str, Any],
           metrics: dict[str, float] | None = None) -> None:
    """Saves `state` and the JSON `meta` at `step` (non-blocking if async).

    `metrics` (evaluation results at this step) rank the checkpoint for the
    keep-the-best rule; only checkpoints that carry the chosen metric compete.
    """
    if metrics is not None and self.best_metric and (
        self.best_metric not in metrics):
      raise UserError(f"checkpoint.best_metric '{self.best_metric}' is not "
                      f"among the evaluation metrics {sorted(metrics)}")
    meta = dict(meta, step=int(step))
    if metrics is not None:
      meta["metrics"] = {k: float(v) for k, v in metrics.items()}
    ranked = None
    if self.best_metric and metrics is not None and math.isfinite(
        meta["metrics"][self.best_metric]):
      ranked = meta["metrics"]  # a non-finite value does not compete
    self._finish_pending()
    self._manager.save(
        int(step),
        args=ocp.args.Composite(**{STATE: ocp.args.StandardSave(state),
                                   META: ocp.args.JsonSave(meta)}),
        metrics=ranked, force=True)
    self._digests.add(step)

  def restore_latest(self, target: Any,
                     check_meta: Callable[[dict], None] | None = None
                     ) -> tuple[Any, dict] | None:
    """Restores the newest intact checkpoint into the structure of `target`.

    `target`: the state's tree of arrays or of `jax.ShapeDtypeStruct`s (with
    the shardings wanted); only shapes, dtypes and shardings are used, so a
    caller that passes the abstract tree holds one state at the peak.

    Returns (state, meta), or None when there is no checkpoint. Newest first,
    a step that is verifiably damaged (`is_damage`: its files do not match
    their digest, or orbax's metadata or format cannot be decoded) is moved
    aside (`integrity.quarantine`, by the writer) with a warning, and the one
    before it is tried. Any other error (out of memory, a storage, network
    or credentials error) is a `RestoreError` naming the step: nothing is
    moved, and no older step is tried. `check_meta(meta)` runs on the first
    readable meta before any array is read (the loop compares configs
    there). A state of another structure than `target` is a
    `StateMismatch`, never a reason to move a step aside. With several
    processes, process 0 verifies the steps and decides which one every
    process restores (`multihost_utils.broadcast_one_to_all`).
    """
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    checked = False
    below = None
    while True:
      step = self._agree(self._newest_intact(below))
      if step < 0:
        return None
      below = step
      try:
        meta = dict(self._manager.restore(step, args=ocp.args.Composite(
            **{META: ocp.args.JsonRestore()}))[META])
        if check_meta is not None and not checked:
          check_meta(meta)
          checked = True
        self._check_structure(step, abstract)
        restored = self._manager.restore(step, args=ocp.args.Composite(
            **{STATE: ocp.args.StandardRestore(abstract)}))
      except UserError:
        raise
      except Exception as e:  # pylint: disable=broad-except
        if not is_damage(e, fileio.join(self.directory, str(step))):
          raise RestoreError(restore_error_message(
              self.directory, step, e)) from None
        self._set_aside(step, _describe(e))
        continue
      return restored[STATE], meta

  def _newest_intact(self, below: int | None) -> int:
    """The newest step under `below` whose files match their digest, or -1;
    damaged steps on the way are moved aside. Process 0's answer counts
    (`_agree`): the other processes do not read the files."""
    if not self.writer and _process_count() > 1:
      return -1
    for step in reversed(self.all_steps()):
      if below is not None and step >= below:
        continue
      try:
        verdict = integrity.verify(fileio.join(self.directory, str(step)))
      except Exception as e:  # pylint: disable=broad-except
        raise RestoreError(restore_error_message(
            self.directory, step, e)) from None
      if verdict.status == "missing":
        _warn_unreadable(self.directory, step, verdict.reason)
        continue
      if not verdict:
        self._set_aside(step, verdict.reason)
        continue
      return step
    return -1

  @staticmethod
  def _agree(step: int) -> int:
    """`step` as process 0 decided it (review #10); unchanged with one
    process."""
    if _process_count() == 1:
      return step
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    return int(multihost_utils.broadcast_one_to_all(np.int32(step)))

  def _check_structure(self, step: int, abstract: Any) -> None:
    """A StateMismatch unless the saved tree has `abstract`'s paths, shapes
    and dtypes (read from orbax's metadata, no array is loaded)."""
    try:
      metadata = self._manager.item_metadata(step)[STATE]
    except Exception:  # pylint: disable=broad-except
      return  # unreadable metadata: the restore itself will tell
    tree = metadata.tree if hasattr(metadata, "tree") else metadata
    saved = _shapes(tree)
    wanted = _shapes(abstract)
    if not saved or saved == wanted:
      return  # (no metadata to compare: the restore itself will tell)
    legacy = sorted({p.split("/")[0] for p in saved} & set(LEGACY_FROZEN))
    if legacy:
      raise StateMismatch(
          f"the checkpoint at step {step} in {self.workdir} was written by an "
          f"advjax that kept frozen models ({', '.join(legacy)}) in the train "
          f"state, which cannot be resumed now; evaluate it with "
          f"advjax.inference.restore, or train again in another --workdir")
    diff = sorted(set(saved.items()) ^ set(wanted.items()))
    path = diff[0][0]
    raise StateMismatch(
        f"the saved state at step {step} in {self.workdir} does not fit the "
        f"state this config builds ({path}: saved "
        f"{saved.get(path, 'nothing')}, now {wanted.get(path, 'nothing')}); "
        f"train in another --workdir")

  def _set_aside(self, step: int, reason: str) -> None:
    where = f"{self.directory}/{step}"
    if self.writer:
      moved = integrity.quarantine(self.directory, step, reason)
      self._manager.reload()
      where = f"{where}, moved to {moved}"
    msg = (f"advjax: checkpoint step {step} cannot be read ({reason}); "
           f"resuming from an earlier one ({where})")
    warnings.warn(msg, RuntimeWarning, stacklevel=3)
    logging.warning(msg)

  def close(self) -> None:
    self._finish_pending()
    self._manager.close()


def _process_count() -> int:
  return jax.process_count()


def _shapes(tree: Any) -> dict[str, tuple]:
  """{'a/b/c': (shape, dtype)} of the array leaves of a (metadata) tree."""
  out = {}
  flat, _ = jax.tree_util.tree_flatten_with_path(
      tree, is_leaf=lambda x: hasattr(x, "shape") and hasattr(x, "dtype"))
  for path, leaf in flat:
    if hasattr(leaf, "shape") and hasattr(leaf, "dtype"):
      key = "/".join(str(getattr(k, "key", getattr(k, "name", k)))
                     for k in path)
      out[key] = (tuple(leaf.shape), str(np.dtype(leaf.dtype))
                  if not jax.dtypes.issubdtype(leaf.dtype,
                                               jax.dtypes.prng_key)
                  else "key")
  return out


def _warn_unreadable(directory: str, step: int, reason: str) -> None:
  msg = (f"advjax: checkpoint {directory}/{step} cannot be read ({reason}); "
         f"falling back to an earlier one")
  warnings.warn(msg, RuntimeWarning, stacklevel=3)
  logging.warning(msg)


def _describe(error: Exception) -> str:
  text = str(error).strip().splitlines()[0][:200] if str(error) else ""
  return f"{type(error).__name__}: {text}"


# ---------------------------------------------------------------------------
# Reading a run's checkpoint without training code.


@dataclasses.dataclass
class Checkpoint:
  """One checkpoint as saved.

  Attributes:
    config: the experiment config the run was started with.
    state: the saved train-state pytree as nested dicts of arrays on the
      default device (`state['params']`, `state['batch_stats']`, ...).
    meta: the JSON saved beside it (trainer name, step, metrics, ...).
    step: the training step of the checkpoint.
    workdir: where it came from.
  """
  config: ml_collections.ConfigDict
  state: dict[str, Any]
  meta: dict[str, Any]
  step: int
  workdir: str

  @property
  def trainer(self) -> str:
    """The name of the trainer that wrote it ('classifier', 'gan', ...)."""
    return self.meta.get("trainer", "classifier")


def _handlers() -> dict[str, Any]:
  return {STATE: ocp.StandardCheckpointHandler(),
          META: ocp.JsonCheckpointHandler()}


def _read_only_manager(directory: str,
                       attempts: int = 5) -> ocp.CheckpointManager:
  """A manager that only reads. A run that is still training may delete an
  old step while orbax lists the folder (FileNotFoundError): list again."""
  for attempt in range(attempts):
    try:
      return ocp.CheckpointManager(
          directory, options=_options(Settings(keep=1, async_save=False),
                                      read_only=True),
          item_handlers=_handlers())
    except FileNotFoundError:
      if attempt == attempts - 1:
        raise
      time.sleep(0.2 * (attempt + 1))
  raise AssertionError("unreachable")


def available_steps(workdir: str) -> list[int]:
  directory = checkpoint_dir(workdir)
  if not fileio.isdir(directory):
    return []
  mngr = _read_only_manager(directory)
  steps = sorted(mngr.all_steps())
  mngr.close()
  return steps


def load(workdir: str, step: int | None = None,
         best: bool = False) -> Checkpoint:
  """Reads a checkpoint of `workdir` (see `advjax.inference.restore` for the
  typed handle a notebook wants).

  Args:
    workdir: the run's work directory (the one given to `advjax.main`).
    step: a particular step; default the newest readable checkpoint.
    best: take the checkpoint with the best value of the run's
      `checkpoint.best_metric` instead of the newest.

  Damaged steps are skipped with a warning; any other error reading one
  (out of memory, storage access) is a one-line `RestoreError`, never a
  silent fall-back to an older step.
  """
  directory = checkpoint_dir(workdir)
  if not fileio.isdir(directory):
    raise UserError(f"no checkpoints in '{workdir}' (looked for {directory})")
  mngr = _read_only_manager(directory)
  try:
    steps = sorted(mngr.all_steps())
    if not steps:
      raise UserError(f"no checkpoints in '{workdir}' (looked for {directory})")
    if step is not None:
      if step not in steps:
        raise UserError(f"no checkpoint at step {step} in '{workdir}'; "
                        f"available: {steps}")
      candidates = [step]
    else:
      candidates = list(reversed(steps))
    if best:
      candidates = _rank_by_best(mngr, candidates)
    for s in candidates:
      step_dir = fileio.join(directory, str(s))
      try:
        verdict = integrity.verify(step_dir)
        if not verdict:
          _warn_unreadable(directory, s, verdict.reason)
          continue
        meta = dict(mngr.restore(s, args=ocp.args.Composite(
            **{META: ocp.args.JsonRestore()}))[META])
        state = _restore_state_on_default_device(mngr, s)
      except UserError:
        raise
      except Exception as e:  # pylint: disable=broad-except
        if not is_damage(e, step_dir):
          raise RestoreError(restore_error_message(directory, s, e)) from None
        _warn_unreadable(directory, s, _describe(e))
        continue
      config = ml_collections.ConfigDict(meta.get("config", {}))
      return Checkpoint(config=config, state=state, meta=meta, step=s,
                        workdir=workdir)
    raise UserError(f"no readable checkpoint in '{workdir}'")
  finally:
    mngr.close()


def fingerprint(workdir: str, step: int) -> str:
  """The digest of the files of `workdir`'s step (`integrity.fingerprint`)."""
  return integrity.fingerprint(fileio.join(checkpoint_dir(workdir), str(step)))


def newest_meta(workdir: str) -> dict[str, Any]:
  """The meta of `workdir`'s newest step whose meta is intact ({} without
  one), read before the run restores anything (the frozen models it pins,
  `advjax.frozen_models`); an error other than damage is a RestoreError."""
  directory = checkpoint_dir(workdir)
  if not fileio.isdir(directory):
    return {}
  mngr = _read_only_manager(directory)
  try:
    for s in reversed(sorted(mngr.all_steps())):
      try:
        return dict(mngr.restore(s, args=ocp.args.Composite(
            **{META: ocp.args.JsonRestore()}))[META])
      except Exception as e:  # pylint: disable=broad-except
        if not is_damage(e, fileio.join(directory, str(s))):
          raise RestoreError(restore_error_message(directory, s, e)) from None
    return {}
  finally:
    mngr.close()


def _rank_by_best(mngr, steps: list[int]) -> list[int]:
  scored = []
  for s in steps:
    try:
      meta = mngr.restore(s, args=ocp.args.Composite(
          **{META: ocp.args.JsonRestore()}))[META]
    except Exception:  # pylint: disable=broad-except
      continue
    config = meta.get("config")
    saved = config.get("checkpoint") if isinstance(config, dict) else None
    known = {f.name for f in dataclasses.fields(Settings)}
    ck = settings_lib.from_block(  # the run's own, read as it was written
        Settings, {k: v for k, v in (saved or {}).items() if k in known},
        "checkpoint")
    score = (rank(meta.get("metrics") or {}, ck.best_metric, ck.best_mode)
             if ck.best_metric else -math.inf)
    if score > -math.inf:
      scored.append((score, s))
  if not scored:
    raise UserError("best=True, but no checkpoint carries the run's "
                    "checkpoint.best_metric")
  return [s for _, s in sorted(scored, reverse=True)]


def _restore_state_on_default_device(mngr, step: int) -> Any:
  """Restores the state whatever devices it was saved from."""
  metadata = mngr.item_metadata(step)[STATE]
  tree = metadata.tree if hasattr(metadata, "tree") else metadata
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

  def abstract(m):
    return jax.ShapeDtypeStruct(tuple(m.shape), m.dtype, sharding=device)

  target = jax.tree.map(abstract, tree,
                        is_leaf=lambda m: hasattr(m, "shape")
                        and hasattr(m, "dtype"))
  restored = mngr.restore(step, args=ocp.args.Composite(
      **{STATE: ocp.args.StandardRestore(target,
                                         fallback_sharding=device)}))
  return restored[STATE]


def config_to_json(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The config as plain JSON types (tuples become lists)."""
  return json.loads(config.to_json_best_effort())
