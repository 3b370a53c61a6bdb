"""Classifier training: train state, train/eval steps, and the host loop.

The steps are pure per-device functions run data-parallel by
`advjax.parallel.data_parallel` (shard_map over every device of every host):

  train_step(state, batch, rng) -> (state, metrics)
  eval_step(state, batch) -> summed metrics

Gradients and metrics are averaged over devices with `lax.pmean`; BatchNorm
statistics are averaged by the model itself (axis_name='data'). The host loop
syncs with the devices only at logging, evaluation and checkpoint intervals.
"""

from __future__ import annotations

import functools
import math
import time
from typing import Any, Iterator

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax.training import train_state
from jax.sharding import PartitionSpec as P

from advjax import checkpoints, input_pipeline, models, optimizers, parallel
from advjax.errors import TrainingDiverged, UserError
from advjax.metric_writers import MetricWriter
from advjax.parallel import AXIS

TRAINER = "classifier"


class TrainState(train_state.TrainState):
  """Params, BatchNorm statistics, optimiser state and step.

  `bad_step` is -1 while every loss has been finite; otherwise the first step
  whose loss was not, after which updates are no longer applied (so the state
  stays the last good one).
  """
  batch_stats: Any = None
  bad_step: jax.Array = None


def create_train_state(config: ml_collections.ConfigDict, model: Any,
                       image_shape: tuple[int, ...], rng: jax.Array,
                       num_train_steps: int) -> TrainState:
  """Initialises the model and optimiser on the host's default device."""
  dummy = jnp.zeros((1, *image_shape), jnp.float32)
  variables = jax.jit(functools.partial(model.init, train=False))(
      {"params": rng, "dropout": rng}, dummy)
  tx = optimizers.create_optimizer(config.optimizer, num_train_steps)
  state = TrainState.create(
      apply_fn=model.apply, params=variables["params"],
      batch_stats=variables.get("batch_stats", {}), tx=tx,
      bad_step=jnp.asarray(-1, jnp.int32))
  return state.replace(step=jnp.asarray(0, jnp.int32))


def cross_entropy(logits: jax.Array, labels: jax.Array,
                  label_smoothing: float = 0.0) -> jax.Array:
  """Mean softmax cross-entropy with integer labels (optionally smoothed)."""
  num_classes = logits.shape[-1]
  targets = jax.nn.one_hot(labels, num_classes)
  if label_smoothing:
    targets = targets * (1 - label_smoothing) + label_smoothing / num_classes
  return optax.softmax_cross_entropy(logits, targets).mean()


def guard_nonfinite(old: Any, new: Any, loss: jax.Array) -> Any:
  """Keeps `old` (and records the step) once the loss is not finite.

  Works for any flax struct with `step` and `bad_step` fields, so every
  trainer shares it. The step counter always advances.
  """
  ok = jnp.isfinite(loss) & (old.bad_step < 0)
  kept = jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)
  bad_step = jnp.where(ok | (old.bad_step >= 0), old.bad_step, old.step)
  return kept.replace(step=old.step + 1, bad_step=bad_step.astype(jnp.int32))


def train_step(state: TrainState, batch: dict[str, jax.Array], rng: jax.Array,
               *, label_smoothing: float = 0.0
               ) -> tuple[TrainState, dict[str, jax.Array]]:
  """One SGD step on this device's part of the batch (run under shard_map)."""
  rng = parallel.device_rng(rng, state.step)

  def loss_fn(params):
    variables = {"params": params, "batch_stats": state.batch_stats}
    logits, updates = state.apply_fn(
        variables, batch["image"], train=True, mutable=["batch_stats"],
        rngs={"dropout": rng})
    loss = cross_entropy(logits, batch["label"], label_smoothing)
    return loss, (logits, updates)

  (loss, (logits, updates)), grads = jax.value_and_grad(
      loss_fn, has_aux=True)(state.params)
  grads = jax.lax.pmean(grads, AXIS)
  metrics = {
      "loss": loss,
      "accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["label"]),
  }
  metrics = jax.lax.pmean(metrics, AXIS)
  new_state = state.apply_gradients(
      grads=grads, batch_stats=updates.get("batch_stats", state.batch_stats))
  return guard_nonfinite(state, new_state, metrics["loss"]), metrics


def eval_step(state: TrainState, batch: dict[str, jax.Array]
              ) -> dict[str, jax.Array]:
  """Sums of loss, correct predictions and real examples over all devices.

  `batch['mask']` is 0 for padding, so the last, padded batch counts each real
  example exactly once.
  """
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  logits = state.apply_fn(variables, batch["image"], train=False)
  mask = batch["mask"].astype(jnp.float32)
  losses = optax.softmax_cross_entropy_with_integer_labels(logits,
                                                          batch["label"])
  correct = (jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32)
  sums = {
      "loss": jnp.sum(losses * mask),
      "correct": jnp.sum(correct * mask),
      "count": jnp.sum(mask),
  }
  return jax.lax.psum(sums, AXIS)


# ---------------------------------------------------------------------------
# Host-side helpers shared by the trainers.


class MetricBuffer:
  """Collects per-step metric arrays without syncing; averages on demand."""

  def __init__(self):
    self._items: list[dict[str, jax.Array]] = []

  def append(self, metrics: dict[str, jax.Array]) -> None:
    self._items.append(metrics)

  def __len__(self) -> int:
    return len(self._items)

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
    self.images_per_sec = float("nan")
    self._bar = None
    if enabled:
      from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top
      self._bar = tqdm(total=total, initial=initial, desc=desc, unit="step",
                       dynamic_ncols=True, mininterval=1.0, smoothing=0.1)

  def update(self, step: int) -> None:
    if self._bar is not None:
      self._bar.update(step - self._bar.n)

  def measure(self, step: int) -> float:
    now = time.time()
    steps = step - self._last_step
    if steps > 0 and now > self._last_time:
      self.images_per_sec = steps * self.batch_size / (now - self._last_time)
    self._last_time, self._last_step = now, step
    return self.images_per_sec

  def set_postfix(self, **values) -> None:
    if self._bar is not None:
      self._bar.set_postfix(
          {k: (f"{v:.4g}" if isinstance(v, float) else v)
           for k, v in values.items()}, refresh=False)

  def write(self, line: str) -> None:
    if self._bar is not None:
      self._bar.write(line)

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


def format_duration(seconds: float) -> str:
  seconds = int(round(seconds))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def num_train_steps(config: ml_collections.ConfigDict,
                    steps_per_epoch: int) -> int:
  if config.get("num_train_steps", -1) and config.num_train_steps > 0:
    return int(config.num_train_steps)
  return max(int(math.ceil(config.num_epochs * steps_per_epoch)), 1)


# ---------------------------------------------------------------------------
# Evaluation and the training loop.


def evaluate(p_eval_step, state: TrainState, source: Any, batch_size: int,
             mesh: jax.sharding.Mesh) -> dict[str, float]:
  """Accuracy and loss over every example of `source`, each counted once."""
  sums = []
  for host_batch in input_pipeline.eval_batches(
      source, global_batch_size=batch_size):
    sums.append(p_eval_step(state, parallel.shard_batch(host_batch, mesh)))
  total = jax.tree.map(lambda *xs: float(np.sum(xs)), *jax.device_get(sums))
  count = max(total["count"], 1.0)
  return {"eval/accuracy": total["correct"] / count,
          "eval/loss": total["loss"] / count,
          "eval/count": total["count"]}


def _meta(config: ml_collections.ConfigDict, step: int) -> dict[str, Any]:
  return {"trainer": TRAINER, "config": checkpoints.config_to_json(config),
          "data_position": {"step": int(step)}}


def train_and_evaluate(config: ml_collections.ConfigDict,
                       workdir: str) -> dict[str, float]:
  """Trains a classifier, resuming from `workdir` if it holds a checkpoint.

  Returns the final evaluation metrics.
  """
  t_start = time.time()
  info = input_pipeline.get_dataset_info(config.dataset.name)
  mesh = parallel.make_mesh()
  input_pipeline.validate_batch_size(config.batch_size, mesh.size,
                                     jax.process_count())
  eval_batch_size = config.get("eval_batch_size", 0) or config.batch_size
  input_pipeline.validate_batch_size(eval_batch_size, mesh.size,
                                     jax.process_count())
  data_dir = config.dataset.get("data_dir") or None
  train_source = input_pipeline.get_source(info.name, info.train_split,
                                           data_dir)
  eval_source = input_pipeline.get_source(info.name, info.eval_split, data_dir)
  steps_per_epoch = max(len(train_source) // config.batch_size, 1)
  total_steps = num_train_steps(config, steps_per_epoch)

  model = models.create_model(config.model, info.num_classes, axis_name=AXIS,
                              dtype=jnp.dtype(config.get("dtype", "float32")))
  init_rng, train_rng = jax.random.split(jax.random.key(config.seed))
  state = create_train_state(config, model, info.image_shape, init_rng,
                             total_steps)
  is_main = jax.process_index() == 0
  if is_main:
    print(f"advjax: {config.model.name} with "
          f"{models.count_params(state.params):,} parameters on "
          f"{info.name}; {mesh.size} device(s) on {jax.process_count()} "
          f"host(s); {total_steps} steps of batch {config.batch_size}",
          flush=True)
  state = parallel.replicate(state, mesh)
  train_rng = parallel.replicate(train_rng, mesh)

  ck = config.checkpoint
  ckpt = checkpoints.Checkpointer(
      workdir, keep=ck.get("keep", 3), best_metric=ck.get("best_metric"),
      best_mode=ck.get("best_mode", "max"), async_save=ck.get("async_save", True))
  start_step, last_saved = 0, None
  restored = ckpt.restore_latest(state)
  if restored is not None:
    state, meta = restored
    start_step = int(meta["data_position"]["step"])
    last_saved = int(meta["step"])
    if is_main:
      print(f"advjax: resumed from step {start_step} "
            f"({ckpt.directory}/{last_saved})", flush=True)

  p_train_step = parallel.data_parallel(
      functools.partial(train_step,
                        label_smoothing=config.get("label_smoothing", 0.0)),
      mesh, in_specs=(P(), P(AXIS), P()), out_specs=(P(), P()),
      donate_argnums=(0,))
  p_eval_step = parallel.data_parallel(eval_step, mesh,
                                       in_specs=(P(), P(AXIS)), out_specs=P())

  schedule = optimizers.create_schedule(config.optimizer, total_steps)
  writer = MetricWriter(workdir, enabled=is_main)
  train_iter = input_pipeline.TrainIterator(
      train_source, global_batch_size=config.batch_size, seed=config.seed,
      augment=config.dataset.get("augment", False), start_step=start_step)
  progress = Progress(total_steps, start_step, config.batch_size,
                      enabled=is_main and config.get("progress_bar", True))
  buffer = MetricBuffer()
  log_every = max(int(config.log_every_steps), 1)
  eval_every = int(config.get("eval_every_steps", 0)) or steps_per_epoch
  ckpt_every = int(ck.get("every_steps", 0)) or steps_per_epoch
  eval_metrics: dict[str, float] = {}
  step = start_step
  try:
    while step < total_steps:
      batch = parallel.shard_batch(next(train_iter), mesh)
      state, metrics = p_train_step(state, batch, train_rng)
      buffer.append(metrics)
      step += 1
      progress.update(step)
      is_last = step == total_steps
      if step % log_every == 0 or is_last:
        check_finite(state, last_saved, workdir)
        train_metrics = {f"train/{k}": v for k, v in buffer.mean().items()}
        train_metrics["train/learning_rate"] = float(schedule(step - 1))
        train_metrics["train/images_per_sec"] = progress.measure(step)
        train_metrics["train/epoch"] = step / steps_per_epoch
        writer.write_scalars(step, train_metrics)
        progress.set_postfix(loss=train_metrics["train/loss"],
                             img_s=round(train_metrics[
                                 "train/images_per_sec"]))
      did_eval = False
      if step % eval_every == 0 or is_last:
        eval_metrics = evaluate(p_eval_step, state, eval_source,
                                eval_batch_size, mesh)
        writer.write_scalars(step, eval_metrics)
        progress.write(f"step {step}: eval accuracy "
                       f"{eval_metrics['eval/accuracy']:.4f}, "
                       f"loss {eval_metrics['eval/loss']:.4f}")
        did_eval = True
      if step % ckpt_every == 0 or is_last:
        check_finite(state, last_saved, workdir)
        ckpt.save(step, state, _meta(config, step),
                  metrics=eval_metrics if did_eval else None)
        last_saved = step
  finally:
    progress.close()
    train_iter.close()
    ckpt.close()
    writer.close()

  if restored is not None and start_step >= total_steps and not eval_metrics:
    eval_metrics = evaluate(p_eval_step, state, eval_source, eval_batch_size,
                            mesh)
  if is_main:
    elapsed = time.time() - t_start
    print(f"advjax: finished {total_steps} steps in "
          f"{format_duration(elapsed)}: test accuracy "
          f"{100 * eval_metrics['eval/accuracy']:.2f}% on "
          f"{int(eval_metrics['eval/count'])} {info.name} "
          f"{info.eval_split} images; checkpoint {ckpt.directory}/{step}",
          flush=True)
  return eval_metrics
