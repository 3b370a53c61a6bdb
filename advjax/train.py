"""Classifier training: train state, train/eval steps, and the host loop.

The steps are pure per-device functions run data-parallel by
`advjax.parallel.data_parallel` (shard_map over every device of every host):

  train_step(state, batch, rng) -> (state, metrics)
  eval_step(state, batch) -> summed metrics

Gradients and metrics are averaged over devices with `lax.pmean`; BatchNorm
statistics are averaged by the model itself (axis_name='data'). The host loop
syncs with the devices only at logging, evaluation and checkpoint intervals.

`config.augment` (optional) turns on adversarially augmented training
(`advjax.augment`); `config.dtype` ('float32' or 'bfloat16') sets the compute
dtype while parameters and the loss stay float32. `config.eval.gan_workdir`
(optional) adds `eval/gan_sample_accuracy`: accuracy on a fixed set of
`config.eval.gan_samples` class-balanced samples of that AC-GAN run.
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

from advjax import augment, input_pipeline, loop, models, optimizers, parallel
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
  # Adversarial augmentation: the frozen GAN's variables ({} without one);
  # arrays the step reads but never updates.
  augment_vars: Any = None


COMPUTE_DTYPES = ("float32", "bfloat16")


def compute_dtype(config: ml_collections.ConfigDict) -> jnp.dtype:
  """`config.dtype`: the classifier's compute dtype (params stay float32)."""
  name = str(config.get("dtype", "float32"))
  if name not in COMPUTE_DTYPES:
    raise UserError(f"config.dtype {name!r} is not one of {COMPUTE_DTYPES}")
  return jnp.dtype(name)


def create_train_state(config: ml_collections.ConfigDict, model: Any,
                       image_shape: tuple[int, ...], rng: jax.Array,
                       num_train_steps: int, teacher: Any = None,
                       augment_vars: Any = None) -> TrainState:
  """Initialises the model and optimiser on the host's default device.

  `teacher` (an `advjax.checkpoints.Restored` classifier) makes this a
  distillation student trained on the teacher's soft labels;
  `augment_vars` are the frozen variables of an `advjax.augment.Augmenter`.
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
      teacher_apply_fn=teacher.model.apply if teacher is not None else None,
      augment_vars=augment_vars or {})
  return state.replace(step=jnp.asarray(0, jnp.int32))


def cross_entropy(logits: jax.Array, labels: jax.Array,
                  label_smoothing: float = 0.0) -> jax.Array:
  """Mean softmax cross-entropy with integer labels (optionally smoothed)."""
  return augment.per_example_ce(logits, labels, label_smoothing).mean()


def train_step(state: TrainState, batch: dict[str, jax.Array], rng: jax.Array,
               *, label_smoothing: float = 0.0, temperature: float = 1.0,
               augmenter: augment.Augmenter | None = None
               ) -> tuple[TrainState, dict[str, jax.Array]]:
  """One SGD step on this device's part of the batch (run under shard_map).

  The loss is the cross-entropy of softmax(logits / temperature): with the
  labels, or, for a distillation student, with the teacher's
  softmax(teacher_logits / temperature) (Papernot et al. 2016, "Distillation
  as a Defense to Adversarial Perturbations").

  With an `augmenter` (see `advjax.augment`), part of the batch is first
  replaced or joined by examples crafted against the current parameters
  (BatchNorm in inference mode), and the loss is Kurakin et al.'s weighted
  mean of the clean and augmented cross-entropies. The model then runs in
  train mode on the whole augmented batch.
  """
  rng = parallel.device_rng(rng, state.step)
  images, labels = batch["image"], batch["label"]
  active = (augmenter is not None
            and augmenter.num_augmented(images.shape[0]) > 0)
  extra: dict[str, jax.Array] = {}
  if active:
    eval_variables = {"params": state.params,
                      "batch_stats": state.batch_stats}
    logits_fn = lambda x: state.apply_fn(eval_variables, x, train=False)
    out = augment.augment_batch(augmenter, logits_fn, batch,
                                jax.random.fold_in(rng, 1),
                                state.augment_vars)
    images, labels = out["image"], out["label"]
    num_clean, num_aug = out["num_clean"], out["num_aug"]
    if "success" in out:
      extra["attack_success_rate"] = jnp.mean(
          out["success"].astype(jnp.float32))
  soft_targets = None
  if state.teacher_apply_fn is not None:
    teacher_logits = state.teacher_apply_fn(state.teacher, images,
                                            train=False)
    soft_targets = jax.nn.softmax(teacher_logits / temperature)

  def loss_fn(params):
    variables = {"params": params, "batch_stats": state.batch_stats}
    logits, updates = state.apply_fn(
        variables, images, train=True, mutable=["batch_stats"],
        rngs={"dropout": rng})
    if not active:
      if soft_targets is None:
        loss = cross_entropy(logits / temperature, labels, label_smoothing)
      else:
        loss = optax.softmax_cross_entropy(logits / temperature,
                                           soft_targets).mean()
      return loss, (logits, updates, {})
    if soft_targets is None:
      per_example = augment.per_example_ce(logits / temperature, labels,
                                           label_smoothing)
    else:
      per_example = optax.softmax_cross_entropy(logits / temperature,
                                                soft_targets)
    loss, parts = augment.split_losses(per_example, logits, labels,
                                       num_clean, num_aug,
                                       augmenter.adv_weight)
    return loss, (logits, updates, parts)

  (loss, (logits, updates, parts)), grads = jax.value_and_grad(
      loss_fn, has_aux=True)(state.params)
  grads = jax.lax.pmean(grads, AXIS)
  if active:
    accuracy = parts["clean_accuracy"]
  else:
    accuracy = jnp.mean(jnp.argmax(logits, -1) == labels)
  metrics = {"loss": loss, "accuracy": accuracy, **parts, **extra}
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


def gan_eval_samples(gan_workdir: str, num_classes: int,
                     image_shape: tuple[int, ...], num_samples: int,
                     seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Fixed class-balanced samples of an AC-GAN run, to follow how well the
  classifier does on generated images while it trains (the study's finding:
  it learns them early)."""
  from advjax import checkpoints  # pylint: disable=g-import-not-at-top
  gan = checkpoints.restore(gan_workdir)
  gan._require("gan")  # pylint: disable=protected-access
  if gan.num_classes != num_classes:
    raise UserError(f"eval.gan_workdir {gan_workdir} is a GAN with "
                    f"{gan.num_classes} classes (0 = unconditional); the "
                    f"classifier has {num_classes}")
  labels = (np.arange(num_samples) % num_classes).astype(np.int32)
  images = []
  for i in range(0, num_samples, 500):
    images.append(np.asarray(gan.sample(labels[i:i + 500],
                                        n=len(labels[i:i + 500]),
                                        seed=seed + i)))
  images = np.concatenate(images)
  if images.shape[1:] != tuple(image_shape):
    raise UserError(f"eval.gan_workdir {gan_workdir} makes images of shape "
                    f"{images.shape[1:]}, the classifier reads "
                    f"{tuple(image_shape)}")
  return images, labels


def array_eval_batches(images: np.ndarray, labels: np.ndarray,
                       global_batch_size: int
                       ) -> list[dict[str, np.ndarray]]:
  """This host's padded, masked batches of in-memory examples (the layout of
  `input_pipeline.eval_batches`: host p takes the p-th slice of each)."""
  p, count = jax.process_index(), jax.process_count()
  host = global_batch_size // count
  batches = []
  for lo in range(0, len(labels), global_batch_size):
    start = lo + p * host
    real = max(min(host, len(labels) - start), 0)
    batch = {"image": np.zeros((host, *images.shape[1:]), np.float32),
             "label": np.zeros((host,), np.int32),
             "mask": np.zeros((host,), np.float32)}
    batch["image"][:real] = images[start:start + real]
    batch["label"][:real] = labels[start:start + real]
    batch["mask"][:real] = 1.0
    batches.append(batch)
  return batches


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
                              dtype=compute_dtype(config))
  augmenter, augment_vars = augment.from_config(config, info.num_classes,
                                                info.image_shape)
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
                             teacher=teacher, augment_vars=augment_vars)
  if jax.process_index() == 0:
    print(f"advjax: {config.model.name} with "
          f"{models.count_params(state.params):,} parameters on "
          f"{info.name}; {mesh.size} device(s) on {jax.process_count()} "
          f"host(s); {total_steps} steps of batch {config.batch_size}",
          flush=True)
    if augmenter is not None:
      print(f"advjax: {augmenter.mode} augmentation of "
            f"{100 * augmenter.prop:g}% of each batch "
            f"({'replacing' if augmenter.replace else 'added to'} real "
            f"images), weight {augmenter.adv_weight:g}", flush=True)

  p_eval_step = parallel.data_parallel(eval_step, mesh,
                                       in_specs=(P(), P(AXIS)), out_specs=P())
  gan_batches = None
  gan_dir = config.get("eval", {}).get("gan_workdir", "")
  if gan_dir:
    images, labels = gan_eval_samples(
        gan_dir, info.num_classes, info.image_shape,
        int(config.eval.get("gan_samples", 1000)), seed=config.seed)
    gan_batches = array_eval_batches(images, labels, eval_batch_size)

  def evaluate_all(state, step):
    del step
    metrics = evaluate(p_eval_step, state, eval_source, eval_batch_size, mesh)
    if gan_batches is not None:
      sums = [p_eval_step(state, parallel.shard_batch(b, mesh))
              for b in gan_batches]
      total = jax.tree.map(lambda *xs: float(np.sum(xs)),
                           *jax.device_get(sums))
      metrics["eval/gan_sample_accuracy"] = (total["correct"]
                                             / max(total["count"], 1.0))
    return metrics

  task = loop.Task(
      trainer=TRAINER, state=state,
      step_fn=functools.partial(
          train_step, label_smoothing=config.get("label_smoothing", 0.0),
          temperature=float(config.get("temperature", 1.0)),
          augmenter=augmenter),
      batch_size=config.batch_size, train_source=train_source,
      evaluate=evaluate_all,
      summary=lambda m: (f"test accuracy {100 * m['eval/accuracy']:.2f}% on "
                         f"{int(m['eval/count'])} {info.name} "
                         f"{info.eval_split} images"))
  return loop.run(config, workdir, task, mesh, total_steps, steps_per_epoch,
                  t_start=t_start)
