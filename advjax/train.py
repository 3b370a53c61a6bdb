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
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax.training import train_state
from jax.sharding import PartitionSpec as P

from advjax import input_pipeline, loop, models, optimizers, parallel
from advjax.errors import UserError
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
  # Defensive distillation: the frozen teacher's variables ({} without one).
  teacher: Any = None
  teacher_apply_fn: Any = flax.struct.field(pytree_node=False, default=None)


def create_train_state(config: ml_collections.ConfigDict, model: Any,
                       image_shape: tuple[int, ...], rng: jax.Array,
                       num_train_steps: int, teacher: Any = None
                       ) -> TrainState:
  """Initialises the model and optimiser on the host's default device.

  `teacher` (an `advjax.checkpoints.Restored` classifier) makes this a
  distillation student trained on the teacher's soft labels.
  """
  dummy = jnp.zeros((1, *image_shape), jnp.float32)
  variables = jax.jit(functools.partial(model.init, train=False))(
      {"params": rng, "dropout": rng}, dummy)
  tx = optimizers.create_optimizer(config.optimizer, num_train_steps)
  state = TrainState.create(
      apply_fn=model.apply, params=variables["params"],
      batch_stats=variables.get("batch_stats", {}), tx=tx,
      bad_step=jnp.asarray(-1, jnp.int32),
      teacher=teacher.variables if teacher is not None else {},
      teacher_apply_fn=teacher.model.apply if teacher is not None else None)
  return state.replace(step=jnp.asarray(0, jnp.int32))


def cross_entropy(logits: jax.Array, labels: jax.Array,
                  label_smoothing: float = 0.0) -> jax.Array:
  """Mean softmax cross-entropy with integer labels (optionally smoothed)."""
  num_classes = logits.shape[-1]
  targets = jax.nn.one_hot(labels, num_classes)
  if label_smoothing:
    targets = targets * (1 - label_smoothing) + label_smoothing / num_classes
  return optax.softmax_cross_entropy(logits, targets).mean()


def train_step(state: TrainState, batch: dict[str, jax.Array], rng: jax.Array,
               *, label_smoothing: float = 0.0, temperature: float = 1.0
               ) -> tuple[TrainState, dict[str, jax.Array]]:
  """One SGD step on this device's part of the batch (run under shard_map).

  The loss is the cross-entropy of softmax(logits / temperature): with the
  labels, or, for a distillation student, with the teacher's
  softmax(teacher_logits / temperature) (Papernot et al. 2016, "Distillation
  as a Defense to Adversarial Perturbations").
  """
  rng = parallel.device_rng(rng, state.step)
  soft_targets = None
  if state.teacher_apply_fn is not None:
    teacher_logits = state.teacher_apply_fn(state.teacher, batch["image"],
                                            train=False)
    soft_targets = jax.nn.softmax(teacher_logits / temperature)

  def loss_fn(params):
    variables = {"params": params, "batch_stats": state.batch_stats}
    logits, updates = state.apply_fn(
        variables, batch["image"], train=True, mutable=["batch_stats"],
        rngs={"dropout": rng})
    if soft_targets is None:
      loss = cross_entropy(logits / temperature, batch["label"],
                           label_smoothing)
    else:
      loss = optax.softmax_cross_entropy(logits / temperature,
                                         soft_targets).mean()
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
  return loop.guard_nonfinite(state, new_state, metrics["loss"]), metrics


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
# Evaluation and the training job.


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
  total_steps = loop.num_train_steps(config, steps_per_epoch)

  model = models.create_model(config.model, info.num_classes, axis_name=AXIS,
                              dtype=jnp.dtype(config.get("dtype", "float32")))
  teacher = None
  teacher_dir = config.get("distill", {}).get("teacher_workdir", "")
  if teacher_dir:
    from advjax import checkpoints  # pylint: disable=g-import-not-at-top
    teacher = checkpoints.restore(teacher_dir)
    teacher._require(TRAINER)  # pylint: disable=protected-access
    if teacher.config.dataset.name != info.name:
      raise UserError(f"the teacher in {teacher_dir} was trained on "
                      f"{teacher.config.dataset.name}, not {info.name}")
  state = create_train_state(config, model, info.image_shape,
                             jax.random.key(config.seed), total_steps,
                             teacher=teacher)
  if jax.process_index() == 0:
    print(f"advjax: {config.model.name} with "
          f"{models.count_params(state.params):,} parameters on "
          f"{info.name}; {mesh.size} device(s) on {jax.process_count()} "
          f"host(s); {total_steps} steps of batch {config.batch_size}",
          flush=True)

  p_eval_step = parallel.data_parallel(eval_step, mesh,
                                       in_specs=(P(), P(AXIS)), out_specs=P())
  task = loop.Task(
      trainer=TRAINER, state=state,
      step_fn=functools.partial(
          train_step, label_smoothing=config.get("label_smoothing", 0.0),
          temperature=float(config.get("temperature", 1.0))),
      batch_size=config.batch_size, train_source=train_source,
      evaluate=lambda s, step: evaluate(p_eval_step, s, eval_source,
                                        eval_batch_size, mesh),
      summary=lambda m: (f"test accuracy {100 * m['eval/accuracy']:.2f}% on "
                         f"{int(m['eval/count'])} {info.name} "
                         f"{info.eval_split} images"))
  return loop.run(config, workdir, task, mesh, total_steps, steps_per_epoch,
                  t_start=t_start)
