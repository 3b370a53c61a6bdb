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
import itertools
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import PartitionSpec as P

from advjax import (adversarial_training, attacks, checkpoints, evaluators,
                    example_rng, frozen_models, inference, input_pipeline,
                    loop, losses, models, optimizers, parallel, run_settings)
from advjax.evaluators import gan_samples
from advjax import settings as settings_lib
from advjax.errors import UserError
from advjax.parallel import AXIS

SECTIONS = ("dataset", "model", "optimizer")
EXAMPLE_CONFIG = "configs/quickstart.py"
TRAINER = "classifier"


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


# The classifier's own top-level fields (label_smoothing, temperature,
# dtype, eval_batch_size) are fields of the root's one reader.
read_settings = run_settings.read


@settings_lib.register("eval")
@dataclasses.dataclass(frozen=True)
class EvalSettings:
  """`config.eval` of a classifier: gan_workdir ('' = off) adds
  `eval/gan_sample_accuracy`, the accuracy on `gan_samples` fixed
  class-balanced samples of that AC-GAN run."""
  gan_workdir: str = settings_lib.extends_run("", "evaluation only")
  gan_samples: int = settings_lib.extends_run(1000, "evaluation only")
  # {name: {field: value}} of more evaluators (`advjax.evaluators`) run at
  # every evaluation, logged as eval/<name>/<key>.
  evaluators: dict = dataclasses.field(
      default_factory=dict, metadata={settings_lib.EXTENDS_RUN:
                                      "evaluation only"})

  def __post_init__(self):
    settings_lib.check_positive(self, "gan_samples")


@settings_lib.register("distill")
@dataclasses.dataclass(frozen=True)
class DistillSettings:
  """`config.distill` (defensive distillation, `advjax.trainers.distillation`):
  teacher_workdir ('' = train on the labels) of the teacher whose soft labels
  a student learns; the comparison's FGSM `eval_eps` and `eval_examples`."""
  teacher_workdir: str = ""
  eval_eps: tuple[float, ...] = settings_lib.extends_run(
      (0.05, 0.1, 0.2), "evaluation only")
  eval_examples: int = settings_lib.extends_run(2000, "evaluation only")

  def __post_init__(self):
    settings_lib.check_positive(self, "eval_examples")


@settings_lib.register("ema")
@dataclasses.dataclass(frozen=True)
class EMASettings:
  """`config.ema`: an exponential moving average of the classifier's
  weights, as the adversarial-training papers on generated data evaluate
  (Gowal et al. 2020, 2021; Rebuffi et al. 2021), logged beside the raw
  weights at each evaluation (`eval/ema_accuracy`, with the current
  BatchNorm statistics). decay 0 = off; at step t the average moves with
  min(decay, (1 + t) / (10 + t)), TensorFlow's ExponentialMovingAverage
  warm-up (num_updates), so the early average is not stuck at the
  initialisation. The average lives in the optimiser state
  (`optimizers.param_ema`; read it with `optimizers.averaged_params`), so
  a run without it saves the state it always did."""
  decay: float = 0.0

  def __post_init__(self):
    if not 0. <= self.decay < 1.:
      raise UserError(f"decay must be in [0, 1), got {self.decay}")


@dataclasses.dataclass(frozen=True)
class StepSettings:
  """What the traced step reads (static: part of the compiled program).

  teacher: the distillation teacher's flax module (its variables are
  `frozen['teacher']`); plan: the adversarial-training plan (the GAN's
  variables are `frozen['gan']`).
  """
  label_smoothing: float = run_settings.RunSettings.label_smoothing
  temperature: float = run_settings.RunSettings.temperature
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
  ema = settings_lib.read(EMASettings, config, "ema")
  if ema.decay > 0:
    tx = optax.chain(tx, optimizers.param_ema(ema.decay))
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
  whole batch. For modes with their own loss (TRADES, MART) it runs twice in
  train mode, on the real images and then on the crafted ones, and the
  crafted examples' cross-entropy is replaced by the mode's loss
  (`adversarial_training.mode_losses`).
  """
  frozen = frozen or {}
  # Dropout draws each example's mask from its global index (the same run on
  # any number of devices); the adversaries draw per device.
  step_rng = example_rng.step_key(rng, state.step)
  rng = parallel.device_rng(rng, state.step)
  plan = settings.plan
  eval_variables = {"params": state.params, "batch_stats": state.batch_stats}
  logits_fn = lambda x: state.apply_fn(eval_variables, x, train=False)
  generating = plan is not None and plan.num_generated(
      batch["image"].shape[0]) > 0
  if generating:
    # Generated examples first replace the last part of the batch; the mode
    # then treats them as it treats real ones.
    batch = adversarial_training.mix_generated(
        plan, plan.target(logits_fn, frozen.get("gan"), axis_name=AXIS),
        frozen.get("gan"), batch, jax.random.fold_in(rng, 2))
  images, labels = batch["image"], batch["label"]
  generated = batch.get("generated")
  active = plan is not None and plan.num_crafted(images.shape[0]) > 0
  extra: dict[str, jax.Array] = {}
  if active:
    out = adversarial_training.craft_batch(
        plan, plan.target(logits_fn, frozen.get("gan"), axis_name=AXIS),
        batch, jax.random.fold_in(rng, 1))
    images, labels = out["image"], out["label"]
    generated = out.get("generated")
    num_clean, num_aug = out["num_clean"], out["num_aug"]
    if "success" in out:
      extra["attack_success_rate"] = jnp.mean(
          out["success"].astype(jnp.float32))
  mode_loss = active and plan.loss is not None
  targets = batch["label"] if mode_loss else labels
  label_smoothing = settings.label_smoothing
  if generating:
    extra["generated_fraction"] = jnp.mean(
        batch["generated"].astype(jnp.float32))
    if plan.settings.generated.label_smoothing:
      # Soft targets: the generated examples' smoothing on their rows.
      targets = adversarial_training.generated_targets(
          plan, targets, batch["generated"] if mode_loss else generated,
          settings.label_smoothing)
      label_smoothing = 0.
  if settings.teacher is not None:
    # A mode with its own loss reads the targets of the real images.
    teacher_logits = settings.teacher.apply(
        frozen["teacher"], batch["image"] if mode_loss else images,
        train=False)
    targets = jax.nn.softmax(teacher_logits / settings.temperature)

  def loss_fn(params):
    variables = {"params": params, "batch_stats": state.batch_stats}
    if mode_loss:
      return _mode_loss(state, params, batch, out["image"][num_clean:],
                        labels, targets, settings, step_rng)
    logits, updates = state.apply_fn(
        variables, images, train=True, mutable=["batch_stats"],
        rngs={"dropout": step_rng})
    per_example = losses.cross_entropy(logits / settings.temperature,
                                       targets, label_smoothing)
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


def _mode_loss(state: TrainState, params: Any, batch: dict[str, jax.Array],
               adv_images: jax.Array, crafted_labels: jax.Array,
               targets: jax.Array, settings: StepSettings,
               dropout_rng: jax.Array):
  """loss_fn of a mode with its own loss: the real images, then the crafted
  ones, in train mode (the second pass starts from the first's BatchNorm
  averages), and `adversarial_training.mode_losses`."""
  plan, t = settings.plan, settings.temperature

  def forward(stats, x, rng):
    return state.apply_fn({"params": params, "batch_stats": stats}, x,
                          train=True, mutable=["batch_stats"],
                          rngs={"dropout": rng})

  real_logits, updates = forward(state.batch_stats, batch["image"],
                                 dropout_rng)
  # The same dropout keys: a crafted example and its source (the same row)
  # share their mask, so the KL terms measure the perturbation, not dropout.
  adv_logits, updates = forward(
      updates.get("batch_stats", state.batch_stats), adv_images, dropout_rng)
  real_logits, adv_logits = real_logits / t, adv_logits / t
  if targets.ndim == 1:  # labels: smoothed one-hot distributions
    k = real_logits.shape[-1]
    targets = (jax.nn.one_hot(targets, k) * (1. - settings.label_smoothing)
               + settings.label_smoothing / k)
  per_example, logits = adversarial_training.mode_losses(
      plan, real_logits, adv_logits, batch["label"], targets)
  num_aug = adv_images.shape[0]
  loss, parts = adversarial_training.split_losses(
      per_example, logits, crafted_labels, per_example.shape[0] - num_aug,
      num_aug, plan.settings.adv_weight)
  return loss, (logits, updates, parts)


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


def pgd_check_step(state: TrainState, batch: dict[str, jax.Array],
                   rng: jax.Array, *, eps: float) -> dict[str, jax.Array]:
  """Sums of correct predictions under PGD-5 (random start, steps eps / 4:
  Wong et al. 2020's catastrophic-overfitting check) and of real examples,
  over all devices."""
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  logits_fn = lambda x: state.apply_fn(variables, x, train=False)
  rng = jax.random.fold_in(rng, jax.lax.axis_index(AXIS))
  x_adv = attacks.pgd(logits_fn, batch["image"], batch["label"], rng,
                      eps=eps, step_size=eps / 4, num_steps=5)
  mask = batch["mask"].astype(jnp.float32)
  correct = (jnp.argmax(logits_fn(x_adv), -1) == batch["label"])
  return jax.lax.psum({"correct": jnp.sum(correct * mask),
                       "count": jnp.sum(mask)}, AXIS)


def overfitting_check(plan: adversarial_training.Plan, eval_source: Any,
                      eval_batch_size: int, mesh: jax.sharding.Mesh,
                      seed: int):
  """`check(state) -> {'eval/pgd_check_accuracy': acc}` on the first
  `overfit_check_examples` test images (whole evaluation batches), warning
  when the accuracy falls below `overfit_warn_fraction` of its best so far
  in this process (see `advjax.adversarial_training`)."""
  s = plan.settings
  num_batches = -(-s.overfit_check_examples // eval_batch_size)
  it = input_pipeline.eval_batches(eval_source,
                                   global_batch_size=eval_batch_size)
  batches = list(itertools.islice(it, num_batches))
  if hasattr(it, "close"):
    it.close()
  step = parallel.data_parallel(
      functools.partial(pgd_check_step, eps=plan.adversary_settings.eps),
      mesh, in_specs=(P(), P(AXIS), P()), out_specs=P())
  rng = parallel.replicate(jax.random.key(seed), mesh)
  best = [0.0]

  def check(state: TrainState) -> dict[str, float]:
    sums = [step(state, parallel.shard_batch(b, mesh), rng) for b in batches]
    total = jax.tree.map(lambda *xs: float(np.sum(xs)), *jax.device_get(sums))
    accuracy = total["correct"] / max(total["count"], 1.0)
    warning = overfitting_warning(accuracy, best[0], s.overfit_warn_fraction,
                                  int(total["count"]), plan.adversary.label)
    if warning:
      loop.announce(warning)
    best[0] = max(best[0], accuracy)
    return {"eval/pgd_check_accuracy": accuracy}
  return check


def overfitting_warning(accuracy: float, best: float, fraction: float,
                        count: int, label: str) -> str | None:
  """The warning of a collapsed PGD accuracy (below `fraction` of `best`),
  or None."""
  if accuracy >= fraction * best:
    return None
  return (f"warning: PGD accuracy on {count} test images fell to "
          f"{100 * accuracy:.1f}% from {100 * best:.1f}%: catastrophic "
          f"overfitting of {label} training (Wong et al. 2020); a smaller "
          f"step or the checkpoint of the best PGD accuracy avoids it")


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
                     seed: int = 0, pins: frozen_models.Pins | None = None
                     ) -> tuple[inference.GAN, np.ndarray, np.ndarray]:
  """(gan, images, labels): fixed class-balanced samples of an AC-GAN run, to
  follow how well the classifier does on generated images while it trains
  (the study's finding: it learns them early)."""
  gan = (pins or frozen_models.Pins()).restore(
      "eval_gan", gan_workdir, kind="gan", training=False)
  gan_samples.check_fits(gan, num_classes, image_shape, "eval.gan_workdir")
  images, labels = gan_samples.balanced_samples(gan, num_samples, seed=seed)
  return gan, images, labels


def read_evaluators(config: ml_collections.ConfigDict
                    ) -> list[tuple[evaluators.Evaluator, Any]]:
  """(entry, settings) of each evaluator `config.eval.evaluators` names
  ({name: {field: value}}), run at every evaluation: their numbers are
  logged as `eval/<name>/<key>`."""
  return evaluators.common.from_block(
      settings_lib.read(EvalSettings, config, "eval").evaluators)


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


def _teacher(config: ml_collections.ConfigDict, dataset: str,
             pins: frozen_models.Pins) -> inference.Classifier | None:
  teacher_dir = settings_lib.read(DistillSettings, config,
                                  "distill").teacher_workdir
  if not teacher_dir:
    return None
  teacher = pins.restore("teacher", teacher_dir, kind="classifier")
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
  data_dir = s.data_dir
  train_source = input_pipeline.get_source(info.name, info.train_split,
                                           data_dir)
  eval_source = input_pipeline.get_source(info.name, info.eval_split, data_dir)
  steps_per_epoch = max(len(train_source) // config.batch_size, 1)
  total_steps = loop.num_train_steps(config, steps_per_epoch)

  model = models.create_model(config.model, info.num_classes, axis_name=AXIS,
                              dtype=jnp.dtype(s.dtype))
  # Frozen models: the steps this run started with when it resumes.
  pins = frozen_models.Pins(workdir, options.allow_config_change)
  plan, gan_variables = adversarial_training.read(
      config, info.num_classes, info.image_shape, pins=pins,
      train_source=train_source)
  teacher = _teacher(config, info.name, pins)
  frozen: dict[str, Any] = {}
  if teacher is not None:
    frozen["teacher"] = teacher.variables
  if gan_variables:
    frozen["gan"] = gan_variables
  ema = settings_lib.read(EMASettings, config, "ema")
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
                  f"images), weight {a.adv_weight:g}"
                  + (f", {plan.adversary.label}'s own loss"
                     if plan.loss is not None else ""))
    g = plan.settings.generated
    if g.source:
      loop.announce(f"generated data: {100 * g.fraction:g}% of each batch "
                    f"from {g.source} ({g.labels} labels"
                    + (f", label smoothing {g.label_smoothing:g}"
                       if g.label_smoothing else "") + ")")

  p_eval_step = parallel.data_parallel(eval_step, mesh,
                                       in_specs=(P(), P(AXIS)), out_specs=P())
  gan_batches = gan = None
  e = settings_lib.read(EvalSettings, config, "eval")
  if e.gan_workdir:
    gan, images, labels = gan_eval_samples(
        e.gan_workdir, info.num_classes, info.image_shape, e.gan_samples,
        seed=s.seed, pins=pins)
    gan_batches = array_eval_batches(images, labels, eval_batch_size)

  check = None
  if plan is not None and plan.checks_overfitting:
    check = overfitting_check(plan, eval_source, eval_batch_size, mesh,
                              config.seed)
  chosen = read_evaluators(config)

  def evaluate_all(state, step, writer):
    del writer  # scalars only: the loop writes them
    test = evaluate(p_eval_step, state, input_pipeline.eval_batches(
        eval_source, global_batch_size=eval_batch_size), mesh)
    metrics = {f"eval/{k}": v for k, v in test.items()}
    if ema.decay > 0:  # the moving average, with the current BatchNorm stats
      averaged = evaluate(p_eval_step, state.replace(
                              params=optimizers.averaged_params(
                                  state.opt_state)),
                          input_pipeline.eval_batches(
                              eval_source, global_batch_size=eval_batch_size),
                          mesh)
      metrics.update({f"eval/ema_{k}": v for k, v in averaged.items()
                      if k != "count"})
    if check is not None:
      metrics.update(check(state))
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
      evaluate=evaluate_all, frozen=frozen, frozen_pins=pins.records,
      summary=lambda m: (f"test accuracy {100 * m['eval/accuracy']:.2f}% on "
                         f"{int(m['eval/count'])} {info.name} "
                         f"{info.eval_split} images"))
  return loop.run(config, workdir, task, mesh, total_steps, steps_per_epoch,
                  t_start=t_start, options=options)
