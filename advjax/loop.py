"""The host-side training loop shared by every trainer.

A trainer describes its job as a `Task` (initial state, per-device step,
evaluation) and `run` does the rest: replicate the state over the device
mesh, resume from the newest readable checkpoint, feed batches, and at
intervals log, evaluate and checkpoint. The loop never waits for the devices
between those intervals: per-step metrics stay on the devices until a log
step averages them.

Non-finite values: trainers wrap their update in `guard_nonfinite`, which
keeps the old state once a loss, or any updated parameter or optimiser
statistic, is not finite, and records the step in `state.bad_step`; the loop
checks it at log and checkpoint steps and stops with `TrainingDiverged`
naming that step, so no saved state is ever poisoned.

Frozen models (a distillation teacher, the GAN that adversarial training
samples from) are not part of the train state: a trainer hands their
variables to the loop as `Task.frozen`, which replicates them once and passes
them to every step as its fourth argument, `step(state, batch, rng, frozen)`.
Checkpoints therefore hold only what training changes.
"""

from __future__ import annotations

import dataclasses
import errno
import math
import signal
import threading
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import PartitionSpec as P

from advjax import (checkpoints, config_changes, input_pipeline, parallel,
                    run_lock)
from advjax import settings as settings_lib
from advjax.errors import TrainingDiverged, UserError
from advjax.metric_writers import MetricWriter
from advjax.parallel import AXIS


def all_finite(tree: Any) -> jax.Array:
  """Whether every floating-point leaf of `tree` is finite (a bool array).

  One reduction over all leaves at once: sum(x * 0) is 0 when every x is
  finite and NaN once an element is +-inf or NaN, so a single `isfinite` of
  the total decides. The leaves are concatenated first because XLA:CPU
  compiles each reduction as its own kernel: one reduction per leaf made the
  DenseNet-BC-100 train step (796 floating-point leaves in its state) take
  307 s to compile instead of 21 s, and 4.0 s per step instead of 3.3 s; the
  copy costs one pass over the state (anything done to each leaf before the
  concatenation, even x * 0, brings the slow compile back). Complex leaves
  count with their real and imaginary parts; integer, boolean and PRNG-key
  leaves are skipped. Nothing is narrowed: the concatenation promotes to the
  widest floating dtype, so a finite float64 leaf beyond float32's range
  (under jax_enable_x64) counts as finite. Usable under jit.
  """
  parts = []
  for x in jax.tree.leaves(tree):
    if jnp.issubdtype(jnp.result_type(x), jnp.complexfloating):
      parts += [jnp.ravel(jnp.real(x)), jnp.ravel(jnp.imag(x))]
    elif jnp.issubdtype(jnp.result_type(x), jnp.floating):
      parts.append(jnp.ravel(x))
  if not parts:
    return jnp.asarray(True)
  flat = jnp.concatenate(parts)  # promotes to the widest floating dtype
  return jnp.isfinite(jnp.sum(flat * 0))


def guard_nonfinite(old: Any, new: Any, loss: jax.Array) -> Any:
  """`new`, unless `loss` or any floating leaf of `new` is not finite (or
  was before): then `old`.

  Works for any flax struct with `step` and `bad_step` fields. Checking the
  new state too catches an update that overflows while its loss was still
  finite (a learning rate of 1e39, say). The step counter always advances;
  `bad_step` keeps the first bad step.
  """
  ok = jnp.isfinite(loss) & all_finite(new) & (old.bad_step < 0)
  kept = jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)
  bad_step = jnp.where(ok | (old.bad_step >= 0), old.bad_step, old.step)
  return kept.replace(step=old.step + 1, bad_step=bad_step.astype(jnp.int32))


class MetricBuffer:
  """Collects per-step metric arrays without syncing; averages on demand."""

  def __init__(self):
    self._items: list[dict[str, jax.Array]] = []

  def append(self, metrics: dict[str, jax.Array]) -> None:
    self._items.append(metrics)

  def mean(self) -> dict[str, float]:
    if not self._items:
      return {}
    host = jax.device_get(self._items)
    self._items = []
    return {k: float(np.mean([m[k] for m in host])) for k in host[0]}


class Progress:
  """A tqdm bar on process 0: steps, images/s, loss, ETA."""

  def __init__(self, total: int, initial: int, batch_size: int,
               enabled: bool, desc: str = "train"):
    self.batch_size = batch_size
    self._last_time = time.time()
    self._last_step = initial
    self._bar = None
    if enabled:
      from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top
      self._bar = tqdm(total=total, initial=initial, desc=desc, unit="step",
                       dynamic_ncols=True, mininterval=1.0, smoothing=0.1)

  def update(self, step: int) -> None:
    if self._bar is not None:
      self._bar.update(step - self._bar.n)

  def images_per_sec(self, step: int) -> float:
    """Throughput since the previous call."""
    now = time.time()
    rate = float("nan")
    if step > self._last_step and now > self._last_time:
      rate = (step - self._last_step) * self.batch_size / (
          now - self._last_time)
    self._last_time, self._last_step = now, step
    return rate

  def restart_clock(self, step: int) -> None:
    """Excludes time spent since the last measurement (evaluation, saving)."""
    self._last_time, self._last_step = time.time(), step

  def set_postfix(self, **values) -> None:
    if self._bar is not None:
      self._bar.set_postfix(
          {k: (f"{v:.4g}" if isinstance(v, float) else v)
           for k, v in values.items()}, refresh=False)

  def write(self, line: str) -> None:
    if self._bar is not None:
      self._bar.write(line)
    elif jax.process_index() == 0:
      print(line, flush=True)

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()


def check_finite(state: Any, last_saved_step: int | None,
                 workdir: str) -> None:
  """Raises TrainingDiverged naming the first step with a non-finite loss."""
  bad = int(jax.device_get(state.bad_step))
  if bad >= 0:
    kept = (f"the last good checkpoint (step {last_saved_step}) is kept in "
            f"{checkpoints.checkpoint_dir(workdir)}"
            if last_saved_step is not None else "no checkpoint had been saved")
    raise TrainingDiverged(f"loss became non-finite at step {bad}; training "
                           f"stopped and {kept}")


def announce(line: str) -> None:
  """Prints `advjax: <line>` once, on process 0."""
  if jax.process_index() == 0:
    print(f"advjax: {line}", flush=True)


def describe_run(mesh: jax.sharding.Mesh, total_steps: int,
                 batch_size: int) -> str:
  """'<devices> device(s) on <hosts> host(s); <steps> steps of batch <b>'."""
  return (f"{mesh.size} device(s) on {jax.process_count()} host(s); "
          f"{total_steps} steps of batch {batch_size}")


def format_duration(seconds: float) -> str:
  seconds = int(round(seconds))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


@dataclasses.dataclass(frozen=True)
class Settings:
  """The loop's top-level config fields, read once.

  num_train_steps: > 0 overrides num_epochs; log_every_steps;
  eval_every_steps (<= 0: once per epoch); progress_bar.
  """
  seed: int = 0
  num_epochs: float = -1.0
  num_train_steps: int = -1
  log_every_steps: int = 100
  eval_every_steps: int = -1
  progress_bar: bool = True

  def __post_init__(self):
    if self.num_train_steps <= 0 and not self.num_epochs > 0:
      raise UserError("num_train_steps or num_epochs must be > 0, got "
                      f"{self.num_train_steps} and {self.num_epochs}")
    settings_lib.check_positive(self, "log_every_steps")

  def total_steps(self, steps_per_epoch: int) -> int:
    """`num_train_steps` if positive, else `num_epochs` epochs."""
    if self.num_train_steps > 0:
      return self.num_train_steps
    return max(int(math.ceil(self.num_epochs * steps_per_epoch)), 1)


def read_settings(config: ml_collections.ConfigDict) -> Settings:
  names = [f.name for f in dataclasses.fields(Settings)]
  return settings_lib.from_block(
      Settings, {k: config[k] for k in names if k in config}, "")


def num_train_steps(config: ml_collections.ConfigDict,
                    steps_per_epoch: int) -> int:
  """`config.num_train_steps` if positive, else `num_epochs` epochs."""
  return read_settings(config).total_steps(steps_per_epoch)


@dataclasses.dataclass
class Task:
  """What a trainer hands to `run`.

  Attributes:
    trainer: the trainer's name, saved in checkpoints (`restore` reads it).
    state: the initial train state on the host (a flax struct with `step`
      and `bad_step`).
    step_fn: per-device `step(state, batch, rng, frozen) -> (state,
      metrics)`.
    batch_size: global examples consumed per step.
    train_source: the training data source.
    evaluate: host-side `evaluate(state, step, writer) -> metrics`; may
      write images with the run's `MetricWriter`.
    summary: `summary(eval_metrics) -> str`, the end of the final line.
    loss_key: the metric shown in the progress bar.
    frozen: variables of frozen models the step reads but never updates
      (host arrays; replicated once, passed to every step, never saved).
  """
  trainer: str
  state: Any
  step_fn: Callable[..., Any]
  batch_size: int
  train_source: Any
  evaluate: Callable[[Any, int, MetricWriter], dict[str, float]]
  summary: Callable[[dict[str, float]], str]
  loss_key: str = "loss"
  frozen: Any = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class RunOptions:
  """How to treat an existing run in the work directory (command-line
  choices, not part of the run's config).

  allow_config_change: resume although the saved config differs in fields
    other than the run's length and intervals (`advjax.config_changes`).
  """
  allow_config_change: bool = False


class Stopped(Exception):
  """SIGINT or SIGTERM stopped the run at a step boundary; the message says
  where it was saved and how to resume."""

  def __init__(self, message: str, signum: int):
    super().__init__(message)
    self.signum = signum


class _StopSignals:
  """While active, SIGINT/SIGTERM ask the loop to stop after the step in
  flight (and save it); a second SIGINT interrupts at once."""

  def __init__(self):
    self.signum: int | None = None
    self._previous = {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGINT, signal.SIGTERM):
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    del frame
    if self.signum is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.signum = signum

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


def _out_of_space(error: BaseException) -> str | None:
  """The path of a 'No space left on device' error in `error`'s chain."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
      return error.filename or "the work directory"
    if "No space left on device" in str(error):
      return "the work directory"
    error = error.__cause__ or error.__context__
  return None


def _check_config(saved: dict[str, Any], config: ml_collections.ConfigDict,
                  workdir: str, options: RunOptions) -> None:
  """Refuses to resume a run under a changed config (one line naming the
  fields and both ways forward) unless the change only extends or observes
  the run, or `options.allow_config_change`."""
  accepted, refused = config_changes.compare_configs(
      saved.get("config", {}), checkpoints.config_to_json(config))
  if refused and not options.allow_config_change:
    raise UserError(config_changes.refused_message(refused, workdir))
  if (accepted or refused) and jax.process_index() == 0:
    print(config_changes.accepted_message(accepted + refused), flush=True)


def _take_lock(workdir: str) -> run_lock.RunLock | None:
  """Process 0 holds the work directory's lock; the others learn whether it
  could (so that every process stops with the same error)."""
  lock, error = None, None
  if jax.process_index() == 0:
    try:
      lock = run_lock.RunLock(workdir).acquire()
    except UserError as e:
      error = e
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    ok = multihost_utils.broadcast_one_to_all(np.int32(error is None))
    if not ok and error is None:
      error = UserError(f"process 0 could not take the lock of {workdir}; "
                        f"see its message")
  if error is not None:
    raise error
  return lock


def run(config: ml_collections.ConfigDict, workdir: str, task: Task,
        mesh: jax.sharding.Mesh, total_steps: int, steps_per_epoch: int,
        t_start: float | None = None,
        options: RunOptions = RunOptions()) -> dict[str, float]:
  """Trains `task` to `total_steps`, resuming from `workdir`; returns the
  final evaluation metrics.

  The work directory belongs to this run while it trains (`run_lock`); a
  saved config is compared with `config` before anything is restored;
  unreadable checkpoints are moved aside, never deleted; SIGINT/SIGTERM stop
  at the next step boundary with a checkpoint there (`Stopped`); a full disk
  is one line naming the path.
  """
  t_start = time.time() if t_start is None else t_start
  s = read_settings(config)
  ck = checkpoints.read_settings(config)
  lock = _take_lock(workdir)
  try:
    return _run(config, workdir, task, mesh, total_steps, steps_per_epoch,
                t_start, options, s, ck, lock)
  except Exception as e:  # pylint: disable=broad-except
    path = _out_of_space(e)
    if path is None:
      raise
    raise UserError(f"no space left on device writing {path}; free some "
                    f"space and rerun the same command to resume from the "
                    f"last checkpoint in {checkpoints.checkpoint_dir(workdir)}"
                    ) from None
  finally:
    if lock is not None:
      lock.release()


def _run(config, workdir, task, mesh, total_steps, steps_per_epoch, t_start,
         options, s, ck, lock) -> dict[str, float]:
  is_main = jax.process_index() == 0
  state = parallel.replicate(task.state, mesh)
  rng = parallel.replicate(jax.random.fold_in(jax.random.key(s.seed), 1),
                           mesh)
  ckpt = checkpoints.Checkpointer(workdir, ck, writer=is_main)
  start_step, last_saved = 0, None
  try:
    restored = ckpt.restore_latest(
        state, check_meta=lambda meta: _check_config(meta, config, workdir,
                                                     options))
  except BaseException:
    ckpt.close()
    raise
  if restored is not None:
    state, meta = restored
    start_step = int(meta["data_position"]["step"])
    last_saved = int(meta["step"])
    if start_step > total_steps:
      ckpt.close()
      raise UserError(
          f"the run in {workdir} is already at step {start_step}, beyond the "
          f"{total_steps} steps this config asks for; ask for more steps to "
          f"continue it, or pass another --workdir")
    announce(f"resumed from step {start_step} ({ckpt.directory}/"
             f"{last_saved})")

  frozen = parallel.replicate(task.frozen, mesh)
  p_step = parallel.data_parallel(task.step_fn, mesh,
                                  in_specs=(P(), P(AXIS), P(), P()),
                                  out_specs=(P(), P()), donate_argnums=(0,))
  meta_base = {"trainer": task.trainer,
               "config": checkpoints.config_to_json(config)}
  writer = MetricWriter(workdir, enabled=is_main, resume_step=start_step)
  train_iter = input_pipeline.TrainIterator(
      task.train_source, global_batch_size=task.batch_size, seed=s.seed,
      crop_flip=config.dataset.get("crop_flip", False),
      start_step=start_step)
  progress = Progress(total_steps, start_step, task.batch_size,
                      enabled=is_main and s.progress_bar)
  buffer = MetricBuffer()
  log_every = s.log_every_steps
  eval_every = s.eval_every_steps if s.eval_every_steps > 0 else (
      steps_per_epoch)
  ckpt_every = ck.every_steps if ck.every_steps > 0 else steps_per_epoch
  eval_metrics: dict[str, float] = {}
  step = start_step

  def save(step: int, did_eval: bool) -> None:
    check_finite(state, last_saved, workdir)
    if lock is not None:
      lock.check()
    writer.flush()  # The log reaches every checkpoint a resume can use.
    ckpt.save(step, state, dict(meta_base, data_position={"step": step}),
              metrics=eval_metrics if did_eval else None)

  try:
    with _StopSignals() as stop:
      while step < total_steps:
        batch = parallel.shard_batch(next(train_iter), mesh)
        state, metrics = p_step(state, batch, rng, frozen)
        buffer.append(metrics)
        step += 1
        progress.update(step)
        is_last = step == total_steps
        if step % log_every == 0 or is_last:
          if lock is not None:
            lock.check()  # Never write on without the lock.
          check_finite(state, last_saved, workdir)
          scalars = {f"train/{k}": v for k, v in buffer.mean().items()}
          scalars["train/images_per_sec"] = progress.images_per_sec(step)
          scalars["train/epoch"] = step / steps_per_epoch
          writer.write_scalars(step, scalars)
          progress.set_postfix(
              loss=scalars.get(f"train/{task.loss_key}", float("nan")),
              img_s=round(scalars["train/images_per_sec"])
              if math.isfinite(scalars["train/images_per_sec"]) else "-")
        did_eval = False
        if step % eval_every == 0 or is_last:
          eval_metrics = task.evaluate(state, step, writer)
          if eval_metrics:
            writer.write_scalars(step, eval_metrics)
            progress.write(f"step {step}: " + ", ".join(
                f"{k} {v:.4g}" for k, v in eval_metrics.items()))
          did_eval = True
        if step % ckpt_every == 0 or is_last or stop.signum is not None:
          save(step, did_eval)
          last_saved = step
        if stop.signum is not None:
          name = signal.Signals(stop.signum).name
          raise Stopped(f"stopped by {name} at step {step}; checkpoint "
                        f"{ckpt.directory}/{step}; rerun the same command to "
                        f"resume", stop.signum)
        if did_eval or step % ckpt_every == 0:
          progress.restart_clock(step)
  except KeyboardInterrupt:
    raise Stopped(f"interrupted at step {step}; rerun the same command to "
                  f"resume from the last checkpoint"
                  + (f" (step {last_saved})" if last_saved is not None
                     else " (none was saved)"), signal.SIGINT) from None
  finally:
    progress.close()
    train_iter.close()
    ckpt.close()
    writer.close()

  if not eval_metrics:  # resumed a finished run: evaluate what is there
    eval_metrics = task.evaluate(state, step, writer)
  if is_main:
    print(f"advjax: finished {total_steps} steps in "
          f"{format_duration(time.time() - t_start)}: "
          f"{task.summary(eval_metrics)}; checkpoint "
          f"{ckpt.directory}/{step}", flush=True)
  return eval_metrics
