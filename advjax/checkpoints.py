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
evaluation metric. A checkpoint that cannot be read (corrupt, or cut short by a
crash) is skipped with a warning in favour of the one before it.

This module only reads and writes: `load(workdir)` gives the raw
`Checkpoint` (config, state as nested dicts, meta). The typed handles a
notebook uses (`predict`, `sample`, `translate`, ...) are in
`advjax.inference`, whose `restore(workdir)` builds the right one.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
import warnings
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp

from advjax import fileio
from advjax import settings as settings_lib
from advjax.errors import UserError

STATE = "state"
META = "meta"
CHECKPOINT_DIR = "checkpoints"


def checkpoint_dir(workdir: str) -> str:
  """`<workdir>/checkpoints`; `workdir` local or `gs://...` (orbax writes
  arrays there with tensorstore and commits with a marker file, no rename)."""
  return fileio.join(fileio.resolve(workdir), CHECKPOINT_DIR)


@dataclasses.dataclass(frozen=True)
class Settings:
  """`config.checkpoint`, read once: a checkpoint every `every_steps` (<= 0:
  once per epoch) and at the end; the last `keep` kept plus the best by the
  evaluation metric `best_metric` ('' = none), `best_mode` 'max' or 'min';
  `async_save` writes while training goes on."""
  every_steps: int = -1
  keep: int = 3
  best_metric: str = ""
  best_mode: str = "max"
  async_save: bool = True

  def __post_init__(self):
    settings_lib.check_positive(self, "keep")
    settings_lib.check_choice(self, "best_mode", ("max", "min"))


def read_settings(config: ml_collections.ConfigDict) -> Settings:
  return settings_lib.from_block(Settings, config.get("checkpoint"),
                                 "checkpoint")


def _options(s: Settings, read_only: bool = False):
  cm = ocp.checkpoint_managers
  policies = [cm.LatestN(n=s.keep)]
  if s.best_metric:
    policies.append(cm.BestN(get_metric_fn=lambda m: m[s.best_metric],
                             reverse=(s.best_mode == "min"), n=1,
                             keep_checkpoints_without_metrics=False))
  return ocp.CheckpointManagerOptions(
      preservation_policy=cm.AnyPreservationPolicy(policies),
      enable_async_checkpointing=s.async_save,
      cleanup_tmp_directories=not read_only,
      create=not read_only,
      read_only=read_only)


class Checkpointer:
  """Saves and resumes one run's train state (thin wrapper over orbax)."""

  def __init__(self, workdir: str, settings: Settings = Settings()):
    self.directory = checkpoint_dir(workdir)
    self.best_metric = settings.best_metric
    self._manager = ocp.CheckpointManager(
        self.directory, options=_options(settings),
        item_names=(STATE, META))

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

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
    self._manager.save(
        int(step),
        args=ocp.args.Composite(**{STATE: ocp.args.StandardSave(state),
                                   META: ocp.args.JsonSave(meta)}),
        metrics=meta.get("metrics") if self.best_metric else None,
        force=True)

  def restore_latest(self, target: Any) -> tuple[Any, dict] | None:
    """Restores the newest readable checkpoint into the structure of `target`.

    Returns (state, meta), or None when there is no checkpoint. Unreadable
    checkpoints are skipped, newest first, with a warning.
    """
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    for step in reversed(self.all_steps()):
      try:
        restored = self._manager.restore(
            step, args=ocp.args.Composite(
                **{STATE: ocp.args.StandardRestore(abstract),
                   META: ocp.args.JsonRestore()}))
      except Exception as e:  # pylint: disable=broad-except
        _warn_unreadable(self.directory, step, e)
        continue
      return restored[STATE], dict(restored[META])
    return None

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def _warn_unreadable(directory: str, step: int, error: Exception) -> None:
  msg = (f"advjax: checkpoint {directory}/{step} cannot be read "
         f"({type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ''}); "
         f"falling back to an earlier one")
  warnings.warn(msg, RuntimeWarning, stacklevel=3)
  logging.warning(msg)


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


def _read_only_manager(directory: str,
                       attempts: int = 5) -> ocp.CheckpointManager:
  """A manager that only reads. A run that is still training may delete an
  old step while orbax lists the folder (FileNotFoundError): list again."""
  for attempt in range(attempts):
    try:
      return ocp.CheckpointManager(
          directory, options=_options(Settings(keep=1, async_save=False),
                                      read_only=True),
          item_handlers={STATE: ocp.StandardCheckpointHandler(),
                         META: ocp.JsonCheckpointHandler()})
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
      try:
        meta = dict(mngr.restore(s, args=ocp.args.Composite(
            **{META: ocp.args.JsonRestore()}))[META])
        state = _restore_state_on_default_device(mngr, s)
      except UserError:
        raise
      except Exception as e:  # pylint: disable=broad-except
        _warn_unreadable(directory, s, e)
        continue
      config = ml_collections.ConfigDict(meta.get("config", {}))
      return Checkpoint(config=config, state=state, meta=meta, step=s,
                        workdir=workdir)
    raise UserError(f"no readable checkpoint in '{workdir}'")
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
    config = meta.get("config", {})
    ck = config.get("checkpoint", {}) if isinstance(config, dict) else {}
    name = ck.get("best_metric")
    value = (meta.get("metrics") or {}).get(name) if name else None
    if value is not None:
      sign = -1.0 if ck.get("best_mode", "max") == "min" else 1.0
      scored.append((sign * value, s))
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
