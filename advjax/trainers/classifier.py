"""Classifier training: train state, train/eval steps, and the job.

The steps are pure per-device functions run data-parallel by
`advjax.parallel.data_parallel` (shard_map over every device of every host):

  train_step(state, batch, rng, frozen, *, settings) -> (state, metrics)
  eval_step(state, batch) -> summed metrics

Gradients and metrics are averaged over devices with `lax.pmean`; BatchNorm
statistics are averaged by the model itself (axis_name='data'). The host loop
syncs with the devices only at logging, evaluation and checkpoint intervals.

The same step trains plain classifiers, defensive-distillation students (the
loss is the cross-entropy with a frozen teacher's soft labels) and
adversarially trained ones (`advjax.adversarial_training`); the teacher's
and the GAN's variables are the step's `frozen` input, never its state.
`config.dtype` ('float32' or 'bfloat16') sets the compute dtype while
parameters and the loss stay float32. `config.eval.gan_workdir` (optional)
adds `eval/gan_sample_accuracy`: accuracy on a fixed set of
`config.eval.gan_samples` class-balanced samples of that AC-GAN run.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import PartitionSpec as P

from advjax import (adversarial_training, checkpoints, evaluators, example_rng,
                    inference, input_pipeline, loop, losses, models,
                    optimizers, parallel)
from advjax.evaluators import gan_samples
from advjax import settings as settings_lib
from advjax.errors import UserError
from advjax.parallel import AXIS

SECTIONS = ("dataset", "model", "optimizer")
EXAMPLE_CONFIG = "configs/quickstart.py"
TRAINER = "classifier"
COMPUTE_DTYPES = ("float32", "bfloat16")


class TrainState(flax.struct.PyTreeNode):
  """Params, BatchNorm statistics, optimiser state and step.

  `bad_step` is -1 while every loss and update has been finite; otherwise the
  first step where one was not, after which updates are no longer applied (so
  the state stays the last good one).
  """
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  bad_step: jax.Array
  apply_fn: Any = flax.struct.field(pytree_node=False, default=None)
  tx: Any = flax.struct.field(pytree_node=False, default=None)


@dataclasses.dataclass(frozen=True)
class Settings:
  """The classifier trainer's own top-level config fields, read once.

  label_smoothing: of the cross-entropy with hard labels (Szegedy et al.
    2016); temperature: softmax temperature T of the loss (defensive
    distillation trains teacher and student at T > 1); dtype: compute dtype;
  eval_batch_size: 0 = batch_size.
  """
  label_smoothing: float = 0.0
  temperature: float = 1.0
  dtype: str = "float32"
  eval_batch_size: int = 0

  def __post_init__(self):
    settings_lib.check_in_unit_interval(self, "label_smoothing")
    settings_lib.check_positive(self, "temperature")
    settings_lib.check_choice(self, "dtype", COMPUTE_DTYPES)
    settings_lib.check_nonnegative(self, "eval_batch_size")


def read_settings(config: ml_collections.ConfigDict) -> Settings:
  """The trainer's `Settings` from the config's top-level fields."""
  names = [f.name for f in dataclasses.fields(Settings)]
  return settings_lib.from_block(
      Settings, {k: config[k] for k in names if k in config}, "")


@dataclasses.dataclass(frozen=True)
class StepSettings:
  """What the traced step reads (static: part of the compiled program).

  teacher: the distillation teacher's flax module (its variables are
  `frozen['teacher']`); plan: the adversarial-training plan (the GAN's
  variables are `frozen['gan']`).
  """
  label_smoothing: float = 0.0
  temperature: float = 1.0
  teacher: Any = None
  plan: adversarial_training.Plan | None = None


def create_train_state(config: ml_collections.ConfigDict, model: Any,
                       image_shape: tuple[int, ...], rng: jax.Array,
                       num_train_steps: int) -> TrainState:
  """Initialises the model and optimiser on the host's default device."""
  dummy = jnp.zeros((1, *image_shape), jnp.float32)
  variables = jax.jit(functools.partial(model.init, train=False))(
      {"params": rng, "dropout": rng}, dummy)
  tx = optimizers.create_optimizer(config.optimizer, num_train_steps)
  params = variables["params"]
  return TrainState(step=jnp.asarray(0, jnp.int32), params=params,
                    batch_stats=variables.get("batch_stats", {}),
                    opt_state=tx.init(params),
                    bad_step=jnp.asarray(-1, jnp.int32),
                    apply_fn=model.apply, tx=tx)


def train_step(state: TrainState, batch: dict[str, jax.Array], rng: jax.Array,
               frozen: Any = None, *, settings: StepSettings = StepSettings()
               ) -> tuple[TrainState, dict[str, jax.Array]]:
  """One SGD step on this device's part of the batch (run under shard_map).

  The loss is the cross-entropy of softmax(logits / T): with the labels, or,
  for a distillation student, with the teacher's softmax(teacher_logits / T)
  (Papernot et al. 2016, "Distillation as a Defense to Adversarial
  Perturbations").

  With an adversarial-training plan, part of the batch is first replaced or
  joined by examples crafted against the current parameters (BatchNorm in
  inference mode), and the loss is Kurakin et al.'s weighted mean of the
  clean and crafted cross-entropies. The model then runs in train mode on the
  whole batch.
  """
  frozen = frozen or {}
  # Dropout draws each example's mask from its global index (the same run on
  # any number of devices); the adversaries draw per device.
  step_rng = example_rng.step_key(rng, state.step)
  rng = parallel.device_rng(rng, state.step)
  images, labels = batch["image"], batch["label"]
  plan = settings.plan
  active = plan is not None and plan.num_crafted(images.shape[0]) > 0
  extra: dict[str, jax.Array] = {}
  if active:
    eval_variables = {"params": state.params,
                      "batch_stats": state.batch_stats}
    logits_fn = lambda x: state.apply_fn(eval_variables, x, train=False)
    out = adversarial_training.craft_batch(
        plan, plan.target(logits_fn, frozen.get("gan"), axis_name=AXIS),
        batch, jax.random.fold_in(rng, 1))
    images, labels = out["image"], out["label"]
    num_clean, num_aug = out["num_clean"], out["num_aug"]
    if "success" in out:
      extra["attack_success_rate"] = jnp.mean(
          out["success"].astype(jnp.float32))
  targets = labels
  if settings.teacher is not None:
    teacher_logits = settings.teacher.apply(frozen["teacher"], images,
                                            train=False)
    targets = jax.nn.softmax(teacher_logits / settings.temperature)

  def loss_fn(params):
    variables = {"params": params, "batch_stats": state.batch_stats}
    logits, updates = state.apply_fn(
        variables, images, train=True, mutable=["batch_stats"],
        rngs={"dropout": step_rng})
    per_example = losses.cross_entropy(logits / settings.temperature,
                                       targets, settings.label_smoothing)
    if not active:
      return per_example.mean(), (logits, updates, {})
    loss, parts = adversarial_training.split_losses(
        per_example, logits, labels, num_clean, num_aug,
        plan.settings.adv_weight)
    return loss, (logits, updates, parts)

  (loss, (logits, updates, parts)), grads = jax.value_and_grad(
      loss_fn, has_aux=True)(state.params)
  if active:
    if num_clean == 0:
      # Every real image was replaced: the current model's accuracy on them.
      parts["clean_accuracy"] = jnp.mean(
          jnp.argmax(logits_fn(out["source_image"]), -1)
          == batch["label"][:num_aug])
    accuracy = parts["clean_accuracy"]
  else:
    accuracy = jnp.mean(jnp.argmax(logits, -1) == labels)
  metrics = {"loss": loss, "accuracy": accuracy, **parts, **extra}
  metrics = jax.lax.pmean(metrics, AXIS)
  params, opt_state = optimizers.update(state.tx, state.params,
                                        state.opt_state, grads)
  new_state = state.replace(
      params=params, opt_state=opt_state,
      batch_stats=updates.get("batch_stats", state.batch_stats))
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
  correct = (jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32)
  sums = {
      "loss": jnp.sum(losses.cross_entropy(logits, batch["label"]) * mask),
      "correct": jnp.sum(correct * mask),
      "count": jnp.sum(mask),
  }
  return jax.lax.psum(sums, AXIS)


# ---------------------------------------------------------------------------
# Evaluation and the training job.


def evaluate(p_eval_step, state: TrainState, batches: Any,
             mesh: jax.sharding.Mesh) -> dict[str, float]:
  """Accuracy, loss and count over host `batches` (padded, masked)."""
  sums = [p_eval_step(state, parallel.shard_batch(b, mesh)) for b in batches]
  total = jax.tree.map(lambda *xs: float(np.sum(xs)), *jax.device_get(sums))
  count = max(total["count"], 1.0)
  return {"accuracy": total["correct"] / count,
          "loss": total["loss"] / count, "count": total["count"]}


def gan_eval_samples(gan_workdir: str, num_classes: int,
                     image_shape: tuple[int, ...], num_samples: int,
                     seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Fixed class-balanced samples of an AC-GAN run, to follow how well the
  classifier does on generated images while it trains (the study's finding:
  it learns them early)."""
  gan = inference.restore(gan_workdir, kind="gan")
  gan_samples.check_fits(gan, num_classes, image_shape, "eval.gan_workdir")
  return gan_samples.balanced_samples(gan, num_samples, seed=seed)


def read_evaluators(config: ml_collections.ConfigDict
                    ) -> list[tuple[evaluators.Evaluator, Any]]:
  """(entry, settings) of each evaluator `config.eval.evaluators` names
  ({name: {field: value}}), run at every evaluation: their numbers are
  logged as `eval/<name>/<key>`."""
  return evaluators.common.from_block(
      config.eval.evaluators if ("eval" in config
                                 and "evaluators" in config.eval) else {})


def _handle(config: ml_collections.ConfigDict, state: TrainState, step: int,
            workdir: str) -> inference.Classifier:
  """The state being trained as the handle evaluators read."""
  host = jax.device_get({"params": state.params,
                         "batch_stats": state.batch_stats})
  return inference.Classifier(checkpoints.Checkpoint(
      config=config, state=host, meta={"trainer": TRAINER}, step=int(step),
      workdir=workdir))


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


def _teacher(config: ml_collections.ConfigDict, dataset: str
             ) -> inference.Classifier | None:
  teacher_dir = config.get("distill", {}).get("teacher_workdir", "")
  if not teacher_dir:
    return None
  teacher = inference.restore(teacher_dir, kind="classifier")
  if teacher.config.dataset.name != dataset:
    raise UserError(f"the teacher in {teacher_dir} was trained on "
                    f"{teacher.config.dataset.name}, not {dataset}")
  return teacher


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       options: loop.RunOptions = loop.RunOptions()
                       ) -> dict[str, float]:
  """Trains a classifier, resuming from `workdir` if it holds a checkpoint.

  Returns the final evaluation metrics.
  """
  t_start = time.time()
  s = read_settings(config)
  info = input_pipeline.get_dataset_info(config.dataset.name)
  mesh = parallel.make_mesh()
  input_pipeline.validate_batch_size(config.batch_size, mesh.size,
                                     jax.process_count())
  eval_batch_size = s.eval_batch_size or config.batch_size
  input_pipeline.validate_batch_size(eval_batch_size, mesh.size,
                                     jax.process_count())
  data_dir = config.dataset.get("data_dir") or None
  train_source = input_pipeline.get_source(info.name, info.train_split,
                                           data_dir)
  eval_source = input_pipeline.get_source(info.name, info.eval_split, data_dir)
  steps_per_epoch = max(len(train_source) // config.batch_size, 1)
  total_steps = loop.num_train_steps(config, steps_per_epoch)

  model = models.create_model(config.model, info.num_classes, axis_name=AXIS,
                              dtype=jnp.dtype(s.dtype))
  plan, gan_variables = adversarial_training.read(config, info.num_classes,
                                                  info.image_shape)
  teacher = _teacher(config, info.name)
  frozen: dict[str, Any] = {}
  if teacher is not None:
    frozen["teacher"] = teacher.variables
  if gan_variables:
    frozen["gan"] = gan_variables
  step_settings = StepSettings(
      label_smoothing=s.label_smoothing, temperature=s.temperature,
      teacher=None if teacher is None else teacher.model, plan=plan)
  state = create_train_state(config, model, info.image_shape,
                             jax.random.key(config.seed), total_steps)
  loop.announce(f"{config.model.name} with "
                f"{models.count_params(state.params):,} parameters on "
                f"{info.name}; "
                + loop.describe_run(mesh, total_steps, config.batch_size))
  if plan is not None:
    a = plan.settings
    loop.announce(f"adversarial training with {plan.adversary.label} on "
                  f"{100 * a.prop:g}% of each batch "
                  f"({'replacing' if a.replace else 'added to'} real "
                  f"images), weight {a.adv_weight:g}")

  p_eval_step = parallel.data_parallel(eval_step, mesh,
                                       in_specs=(P(), P(AXIS)), out_specs=P())
  gan_batches = None
  gan_dir = config.get("eval", {}).get("gan_workdir", "")
  if gan_dir:
    images, labels = gan_eval_samples(
        gan_dir, info.num_classes, info.image_shape,
        int(config.eval.get("gan_samples", 1000)), seed=config.seed)
    gan_batches = array_eval_batches(images, labels, eval_batch_size)

  chosen = read_evaluators(config)
  gan = inference.restore(gan_dir, kind="gan") if gan_dir and chosen else None

  def evaluate_all(state, step, writer):
    del writer  # scalars only: the loop writes them
    test = evaluate(p_eval_step, state, input_pipeline.eval_batches(
        eval_source, global_batch_size=eval_batch_size), mesh)
    metrics = {f"eval/{k}": v for k, v in test.items()}
    if gan_batches is not None:
      metrics["eval/gan_sample_accuracy"] = evaluate(
          p_eval_step, state, gan_batches, mesh)["accuracy"]
    if chosen:
      metrics.update(evaluators.common.numbers(chosen, evaluators.Inputs(
          classifier=_handle(config, state, step, workdir), gan=gan)))
    return metrics

  task = loop.Task(
      trainer=TRAINER, state=state,
      step_fn=functools.partial(train_step, settings=step_settings),
      batch_size=config.batch_size, train_source=train_source,
      evaluate=evaluate_all, frozen=frozen,
      summary=lambda m: (f"test accuracy {100 * m['eval/accuracy']:.2f}% on "
                         f"{int(m['eval/count'])} {info.name} "
                         f"{info.eval_split} images"))
  return loop.run(config, workdir, task, mesh, total_steps, steps_per_epoch,
                  t_start=t_start, options=options)
