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
import sys
import threading
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import PartitionSpec as P

from advjax import (checkpoints, config_changes, frozen_models, input_pipeline,
                    metric_writers, parallel, run_lock, run_settings)
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


# The root config's one reader (the seed, length, intervals and progress bar
# the loop reads are fields of it).
Settings = run_settings.RunSettings
read_settings = run_settings.read


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
    frozen_pins: the step and digest of every frozen model the run read
      (`frozen_models.Pins.records`), saved in each checkpoint's meta and
      compared on resume.

  The loop owns `state`: when the work directory has checkpoints, its
  device buffers are freed before the restore (a host copy is kept), so
  memory peaks at one state.
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
  frozen_pins: dict[str, Any] = dataclasses.field(default_factory=dict)


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


def _preemption_service() -> bool:
  """Whether JAX's preemption service runs (started by
  `jax.distributed.initialize`): it then owns SIGTERM, and every process
  learns of a notice to any of them through
  `multihost_utils.reached_preemption_sync_point`."""
  try:
    from jax._src import distributed  # pylint: disable=g-import-not-at-top
    state = distributed.global_state
    return (state.client is not None
            and state.preemption_sync_manager is not None)
  except Exception:  # pylint: disable=broad-except
    return False


def _c_action(signum: int, new: Any = None) -> Any:
  """The C-level action of `signum` as an opaque buffer (after installing
  `new`, a buffer from an earlier call, if given), or None where libc's
  sigaction cannot be called. `signal.signal` reports only handlers Python
  installed: one installed in C (JAX's preemption notifier) reads as SIG_DFL
  and would be lost when that is restored."""
  try:
    import ctypes  # pylint: disable=g-import-not-at-top
    libc = ctypes.CDLL(None, use_errno=True)
    old = ctypes.create_string_buffer(1024)  # > sizeof(struct sigaction)
    if libc.sigaction(int(signum), new, old) != 0:
      return None
    return old
  except Exception:  # pylint: disable=broad-except
    return None


class _StopSignals:
  """Stop requests, agreed by every process at a step boundary.

  While active, SIGINT and SIGTERM ask the loop to stop after the step in
  flight and save it; a second SIGINT interrupts at once, except while that
  final checkpoint is written (`protect`), when further signals are noted
  and ignored. On exit the previous handlers come back, including one
  installed in C (JAX's).

  `pending(step, sync, lock)` is called by every process at every step and
  answers the same on all of them:
  - one process: a signal is seen at the next step boundary, with no device
    synchronisation;
  - where JAX's preemption service runs (`jax.distributed`), SIGTERM is left
    to it and `reached_preemption_sync_point(step)` names the same step on
    every process, whichever one got the notice;
  - with several processes, SIGINT (and SIGTERM without the service) and a
    lock lost by process 0 are exchanged at the steps that synchronise
    anyway (`sync`: log, evaluation and checkpoint steps) and before any
    save, so every process stops, or fails, at the same step.
  """

  def __init__(self):
    self.signum: int | None = None   # the agreed stop signal
    self.received: int | None = None  # a signal this process received
    self.preempted = False  # the stop came from JAX's preemption service
    self.multi = jax.process_count() > 1
    self._preemption = _preemption_service()
    self._protected = False
    self._previous = {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      sigs = [signal.SIGINT] + ([] if self._preemption else [signal.SIGTERM])
      for sig in sigs:
        c_action = _c_action(sig)
        self._previous[sig] = (signal.signal(sig, self._handle), c_action)
    return self

  def _handle(self, signum, frame):
    del frame
    if self._protected:
      print(f"advjax: {signal.Signals(signum).name} ignored while the last "
            f"checkpoint is written", file=sys.stderr, flush=True)
      return
    if self.received is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.received = signum
    if not self.multi:
      self.signum = signum

  def protect(self) -> None:
    """From now on signals no longer interrupt (the final save and close)."""
    self._protected = True

  def pending(self, step: int, sync: bool,
              lock: run_lock.RunLock | None) -> bool:
    """Whether every process stops after `step` (raises the lock's error, on
    every process, when process 0 lost it)."""
    preempted = False
    if self._preemption:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      preempted = multihost_utils.reached_preemption_sync_point(step)
      if preempted and self.signum is None:
        self.signum, self.preempted = signal.SIGTERM, True
    if not self.multi:
      if lock is not None and (sync or self.signum is not None):
        lock.check()
    elif sync or preempted:
      self._agree(lock)
    return self.signum is not None

  def _agree(self, lock: run_lock.RunLock | None) -> None:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    lost = None
    if lock is not None:
      try:
        lock.check()
      except Exception as e:  # pylint: disable=broad-except
        lost = e  # (raised below, once every process knows)
    mine = np.asarray([self.received or 0, lost is not None], np.int32)
    every = np.asarray(multihost_utils.process_allgather(mine)).reshape(-1, 2)
    if lost is not None:
      raise lost
    if every[:, 1].any():
      raise UserError("process 0 lost the work directory's lock (see its "
                      "message); every process stopped without saving")
    if self.signum is None and every[:, 0].any():
      self.signum = int(every[:, 0].max())

  def __exit__(self, *exc):
    for sig, (handler, c_action) in self._previous.items():
      signal.signal(sig, handler)
      if c_action is not None:
        _c_action(sig, c_action)


def _close_all(*closers: Callable[[], Any]) -> None:
  """Calls every closer, even after one raised; re-raises the first error."""
  error = None
  for close in closers:
    try:
      close()
    except BaseException as e:  # pylint: disable=broad-except
      error = error or e
  if error is not None:
    raise error


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


def _abstract(tree: Any, mesh: jax.sharding.Mesh) -> Any:
  """The replicated state's `jax.ShapeDtypeStruct`s: what a restore needs,
  without a second state on the devices."""
  sharding = parallel.replicated(mesh)
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=sharding),
      tree)


def _off_devices(tree: Any) -> Any:
  """A host copy of `tree`, whose device buffers are then freed (PRNG keys,
  a few bytes, stay): restoring into the abstract state then peaks at one
  state on the devices, not two (review #1). The copy seeds the run if no
  checkpoint can be restored after all."""
  host = jax.device_get(tree)
  for x in jax.tree.leaves(tree):
    if (isinstance(x, jax.Array) and not x.is_deleted()
        and not jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)):
      x.delete()
  return host


def _check_frozen(saved: dict[str, Any], pins: dict[str, Any], workdir: str,
                  options: RunOptions) -> None:
  """Refuses to resume against other frozen models than the run started
  with (`frozen_models.compare`), like a refused config change."""
  refused = frozen_models.compare(saved.get("frozen"), pins)
  if refused and not options.allow_config_change:
    raise UserError(frozen_models.refused_message(refused, workdir))


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
  saved config, and the frozen models the run read (`frozen_models`), are
  compared before any array is restored; damaged checkpoints are moved
  aside, never deleted, and any other restore error stops the run with one
  line (`checkpoints.RestoreError`); with no checkpoint to resume from, an
  earlier run's logs are moved aside, never erased; SIGINT/SIGTERM stop
  every process at the same step boundary with a checkpoint there
  (`Stopped`, `_StopSignals`); a full disk is one line naming the path.
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
  rng = parallel.replicate(jax.random.fold_in(jax.random.key(s.seed), 1),
                           mesh)
  ckpt = checkpoints.Checkpointer(workdir, ck, writer=is_main)
  start_step, last_saved = 0, None
  initial = task.state
  try:
    if ckpt.all_steps():
      initial = _off_devices(task.state)
    restored = ckpt.restore_latest(
        _abstract(task.state, mesh),
        check_meta=lambda meta: (
            _check_config(meta, config, workdir, options),
            _check_frozen(meta, task.frozen_pins, workdir, options)))
  except BaseException:
    ckpt.close()
    raise
  if restored is None:
    state = parallel.replicate(initial, mesh)
    if is_main:
      aside = metric_writers.set_aside_logs(workdir)
      if aside is not None:
        announce(f"no checkpoint to resume from, so this run starts at step "
                 f"0; the logs of an earlier one were moved to {aside}")
  else:
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

  writer = train_iter = progress = None
  stop = _StopSignals()

  def close() -> None:
    # The checkpoint's async commit is awaited with the signal handlers still
    # installed (a second signal cannot cut it short); whatever fails, every
    # resource is released.
    stop.protect()
    _close_all(*[c.close for c in (progress, train_iter) if c is not None],
               ckpt.close, *([writer.close] if writer is not None else []))

  try:
    frozen = parallel.replicate(task.frozen, mesh)
    p_step = parallel.data_parallel(task.step_fn, mesh,
                                    in_specs=(P(), P(AXIS), P(), P()),
                                    out_specs=(P(), P()), donate_argnums=(0,))
    meta_base = {"trainer": task.trainer,
                 "config": checkpoints.config_to_json(config),
                 "frozen": task.frozen_pins}
    writer = MetricWriter(workdir, enabled=is_main, resume_step=start_step)
    train_iter = input_pipeline.TrainIterator(
        task.train_source, global_batch_size=task.batch_size, seed=s.seed,
        crop_flip=s.dataset.crop_flip,
        start_step=start_step)
    progress = Progress(total_steps, start_step, task.batch_size,
                        enabled=is_main and s.progress_bar)
  except BaseException:
    close()
    raise
  buffer = MetricBuffer()
  log_every = s.log_every_steps
  eval_every = s.eval_every_steps if s.eval_every_steps > 0 else (
      steps_per_epoch)
  ckpt_every = ck.every_steps if ck.every_steps > 0 else steps_per_epoch
  eval_metrics: dict[str, float] = {}
  step = start_step

  def save(step: int, did_eval: bool) -> None:
    check_finite(state, last_saved, workdir)
    if lock is not None and not stop.multi:
      lock.check()  # (several processes agreed on it in stop.pending)
    writer.flush()  # The log reaches every checkpoint a resume can use.
    ckpt.save(step, state, dict(meta_base, data_position={"step": step}),
              metrics=eval_metrics if did_eval else None)

  with stop:
    try:
      while step < total_steps:
        batch = parallel.shard_batch(next(train_iter), mesh)
        state, metrics = p_step(state, batch, rng, frozen)
        buffer.append(metrics)
        step += 1
        progress.update(step)
        is_last = step == total_steps
        is_log = step % log_every == 0 or is_last
        is_eval = step % eval_every == 0 or is_last
        is_ckpt = step % ckpt_every == 0 or is_last
        # Every process gets the same answer here (see _StopSignals).
        stopping = stop.pending(step, is_log or is_eval or is_ckpt, lock)
        if is_log:
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
        if is_eval and not stopping:  # a stop saves first, evaluates never
          eval_metrics = task.evaluate(state, step, writer)
          if eval_metrics:
            writer.write_scalars(step, eval_metrics)
            progress.write(f"step {step}: " + ", ".join(
                f"{k} {v:.4g}" for k, v in eval_metrics.items()))
          did_eval = True
          if not stop.multi:  # a signal that came during the evaluation
            stopping = stop.signum is not None
        if is_ckpt or stopping:
          if stopping:
            stop.protect()
          save(step, did_eval)
          last_saved = step
        if stopping:
          raise Stopped(_stopped_message(stop, step, ckpt.directory),
                        stop.signum)
        if did_eval or step % ckpt_every == 0:
          progress.restart_clock(step)
    except KeyboardInterrupt:
      raise Stopped(f"interrupted at step {step}; rerun the same command to "
                    f"resume from the last checkpoint"
                    + (f" (step {last_saved})" if last_saved is not None
                       else " (none was saved)"), signal.SIGINT) from None
    finally:
      close()

  if not eval_metrics:  # resumed a finished run: evaluate what is there
    eval_metrics = task.evaluate(state, step, writer)
  if is_main:
    print(f"advjax: finished {total_steps} steps in "
          f"{format_duration(time.time() - t_start)}: "
          f"{task.summary(eval_metrics)}; checkpoint "
          f"{ckpt.directory}/{step}", flush=True)
  return eval_metrics


def _stopped_message(stop: _StopSignals, step: int, directory: str) -> str:
  name = signal.Signals(stop.signum).name
  where = ""
  if stop.preempted:
    where = (f" (a preemption notice; all {jax.process_count()} process(es) "
             f"stopped at this step)")
  elif stop.received != stop.signum:
    where = (f" (sent to another of the {jax.process_count()} processes; "
             f"all stopped at this step)")
  return (f"stopped by {name}{where} at step {step}; checkpoint "
          f"{directory}/{step}; rerun the same command to resume")
