"""The classifier train step: data parallelism, the non-finite guard."""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from advjax import errors, loop, losses, models, parallel
from advjax.trainers import classifier as train


def _config():
  config = ml_collections.ConfigDict()
  config.model = ml_collections.ConfigDict(
      dict(name="cnn", widths=(4, 8), hidden=16, dropout_rate=0.0))
  config.optimizer = ml_collections.ConfigDict(
      dict(name="sgd", learning_rate=0.1, momentum=0.9, nesterov=True,
           weight_decay=1e-4, schedule="constant"))
  return config


def _batches(n, batch_size=8, shape=(8, 8, 3), seed=0):
  rng = np.random.default_rng(seed)
  return [{"image": rng.uniform(-1, 1, (batch_size, *shape)).astype(np.float32),
           "label": rng.integers(0, 10, batch_size).astype(np.int32)}
          for _ in range(n)]


def _train(devices, batches, config=None):
  config = config or _config()
  mesh = parallel.make_mesh(devices)
  model = models.create_model(config.model, 10, axis_name=parallel.AXIS)
  state = train.create_train_state(config, model, (8, 8, 3),
                                   jax.random.key(0), 100)
  state = parallel.replicate(state, mesh)
  step = parallel.data_parallel(
      train.train_step, mesh, in_specs=(P(), P(parallel.AXIS), P()),
      out_specs=(P(), P()))
  rng = parallel.replicate(jax.random.key(1), mesh)
  curve, snapshots = [], []
  for b in batches:
    state, metrics = step(state, parallel.shard_batch(b, mesh), rng)
    curve.append(float(metrics["loss"]))
    snapshots.append(jax.device_get(state.params))
  return curve, state, snapshots


def test_one_and_four_devices_give_the_same_loss_curve():
  assert len(jax.devices()) == 4
  batches = _batches(6)
  losses1, state1, _ = _train(jax.devices()[:1], batches)
  losses4, state4, _ = _train(jax.devices(), batches)
  np.testing.assert_allclose(losses1, losses4, rtol=1e-5, atol=1e-6)
  # Training moved the loss, so the curves compared are not flat.
  assert abs(losses1[-1] - losses1[0]) > 1e-3
  for a, b in zip(jax.tree.leaves(state1.params), jax.tree.leaves(state4.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4,
                               atol=1e-5)
  for a, b in zip(jax.tree.leaves(state1.batch_stats),
                  jax.tree.leaves(state4.batch_stats)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4,
                               atol=1e-5)


def test_one_and_four_devices_give_the_same_run_with_dropout_on():
  # Each example's dropout mask comes from its global row, not its device.
  config = _config()
  config.model.dropout_rate = 0.5
  batches = _batches(4)
  losses1, state1, _ = _train(jax.devices()[:1], batches, config)
  losses4, state4, _ = _train(jax.devices(), batches, config)
  np.testing.assert_allclose(losses1, losses4, rtol=1e-5, atol=1e-6)
  for a, b in zip(jax.tree.leaves(state1.params),
                  jax.tree.leaves(state4.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4,
                               atol=1e-5)


def test_non_finite_loss_freezes_state_and_names_the_step():
  batches = _batches(5)
  batches[2]["image"][0, 0, 0, 0] = np.nan
  curve, state, snapshots = _train(jax.devices()[:2], batches)
  assert np.isfinite(curve[:2]).all() and not np.isfinite(curve[2])
  assert int(state.bad_step) == 2
  assert int(state.step) == 5
  # Parameters stay those after the last good step (step 1), even though the
  # batches after the bad one are finite again.
  for later in snapshots[2:]:
    for a, b in zip(jax.tree.leaves(snapshots[1]), jax.tree.leaves(later)):
      np.testing.assert_array_equal(a, b)
  with pytest.raises(errors.TrainingDiverged, match="at step 2"):
    loop.check_finite(state, last_saved_step=None, workdir="/tmp/x")


def test_all_finite_looks_at_every_floating_leaf_only():
  tree = {"w": jnp.ones((3, 2)), "h": jnp.ones(2, jnp.bfloat16),
          "s": jnp.float32(2.0), "none": jnp.zeros((0, 3)),
          "step": jnp.asarray(7), "key": jax.random.key(0), "empty": {}}
  assert bool(jax.jit(loop.all_finite)(tree))
  for bad in (jnp.inf, -jnp.inf, jnp.nan):
    assert not bool(jax.jit(loop.all_finite)(
        dict(tree, h=tree["h"].at[1].set(bad))))
    assert not bool(jax.jit(loop.all_finite)(dict(tree, s=jnp.float32(bad))))
    assert not bool(loop.all_finite(
        {"c": jnp.array([1 + 1j, complex(1, float(bad))], jnp.complex64)}))
  # Huge but finite values do not overflow the check.
  assert bool(loop.all_finite({"w": jnp.full((1000,), 3e38)}))
  assert bool(loop.all_finite({"n": jnp.arange(3)}))


def test_all_finite_keeps_float64_range_under_x64():
  # A float32 cast before the reduction would turn 1e300 into inf.
  with jax.enable_x64(True):
    tree = {"w": jnp.full((4,), 1e300, jnp.float64), "s": jnp.float32(1.0)}
    assert bool(jax.jit(loop.all_finite)(tree))
    assert not bool(loop.all_finite(
        dict(tree, w=tree["w"].at[0].set(jnp.inf))))


def test_finite_training_never_trips_the_guard():
  _, state, snapshots = _train(jax.devices()[:1], _batches(3))
  assert int(state.bad_step) == -1
  loop.check_finite(state, last_saved_step=None, workdir="/tmp/x")
  first, last = jax.tree.leaves(snapshots[0]), jax.tree.leaves(snapshots[-1])
  assert any(not np.array_equal(a, b) for a, b in zip(first, last))


def test_eval_step_counts_only_unmasked_examples():
  config = _config()
  mesh = parallel.make_mesh()
  model = models.create_model(config.model, 10, axis_name=parallel.AXIS)
  state = parallel.replicate(train.create_train_state(
      config, model, (8, 8, 3), jax.random.key(0), 10), mesh)
  batch = _batches(1)[0]
  batch["mask"] = np.array([1, 1, 1, 0, 1, 0, 0, 0], np.float32)
  p_eval = parallel.data_parallel(train.eval_step, mesh,
                                  in_specs=(P(), P(parallel.AXIS)),
                                  out_specs=P())
  sums = jax.device_get(p_eval(state, parallel.shard_batch(batch, mesh)))
  assert float(sums["count"]) == 4.0
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  logits = model.apply(jax.device_get(variables), jnp.asarray(batch["image"]),
                       train=False)
  keep = batch["mask"] == 1
  correct = (np.argmax(logits, -1) == batch["label"])[keep].sum()
  assert float(sums["correct"]) == pytest.approx(float(correct))


def test_piecewise_schedule_divides_by_ten_at_half_and_three_quarters():
  from advjax import optimizers
  opt = ml_collections.ConfigDict(dict(
      name="sgd", learning_rate=0.1, schedule="piecewise",
      boundaries=(0.5, 0.75), decay_factor=0.1))
  schedule = optimizers.create_schedule(opt, 1000)
  assert float(schedule(0)) == pytest.approx(0.1)
  assert float(schedule(499)) == pytest.approx(0.1)
  assert float(schedule(500)) == pytest.approx(0.01)
  assert float(schedule(749)) == pytest.approx(0.01)
  assert float(schedule(750)) == pytest.approx(0.001)


def test_weight_decay_skips_biases_and_batchnorm():
  from advjax import optimizers
  opt = ml_collections.ConfigDict(dict(
      name="sgd", learning_rate=1.0, momentum=0.0, weight_decay=0.5,
      schedule="constant"))
  tx = optimizers.create_optimizer(opt, 10)
  params = {"kernel": jnp.ones((2, 2)), "bias": jnp.ones((2,))}
  zero = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zero, tx.init(params), params)
  np.testing.assert_allclose(updates["kernel"], -0.5 * np.ones((2, 2)))
  np.testing.assert_allclose(updates["bias"], np.zeros(2))


def test_distillation_student_learns_the_teachers_soft_labels_at_temperature():
  config = _config()
  model = models.create_model(config.model, 10)
  teacher_model = models.create_model(config.model, 10)
  teacher_vars = teacher_model.init(jax.random.key(5), jnp.zeros((1, 8, 8, 3)),
                                    train=False)
  state = train.create_train_state(config, model, (8, 8, 3),
                                   jax.random.key(0), 10)
  batch = _batches(1)[0]
  mesh = parallel.make_mesh(jax.devices()[:1])
  temperature = 4.0
  settings = train.StepSettings(temperature=temperature,
                                teacher=teacher_model)
  step = parallel.data_parallel(
      functools.partial(train.train_step, settings=settings), mesh,
      in_specs=(P(), P(parallel.AXIS), P(), P()), out_specs=(P(), P()))
  _, metrics = step(parallel.replicate(state, mesh),
                    parallel.shard_batch(batch, mesh),
                    parallel.replicate(jax.random.key(1), mesh),
                    parallel.replicate({"teacher": teacher_vars}, mesh))
  logits, _ = model.apply({"params": state.params,
                           "batch_stats": state.batch_stats},
                          batch["image"], train=True, mutable=["batch_stats"])
  soft = jax.nn.softmax(teacher_model.apply(teacher_vars, batch["image"],
                                            train=False) / temperature)
  expected = -jnp.mean(jnp.sum(soft * jax.nn.log_softmax(logits / temperature),
                               -1))
  assert float(metrics["loss"]) == pytest.approx(float(expected), rel=1e-5)
  hard = losses.cross_entropy(logits / temperature, batch["label"]).mean()
  assert abs(float(hard) - float(expected)) > 1e-3


def test_teacher_is_a_step_input_and_not_part_of_the_state():
  config = _config()
  model = models.create_model(config.model, 10)
  state = train.create_train_state(config, model, (8, 8, 3),
                                   jax.random.key(0), 10)
  assert set(state.__dataclass_fields__) - {"apply_fn", "tx"} == {
      "step", "params", "batch_stats", "opt_state", "bad_step"}


@pytest.mark.filterwarnings("ignore:overflow encountered in cast")
def test_update_that_makes_parameters_infinite_is_never_applied():
  # A learning rate of 1e39 overflows every parameter in the first update
  # while that step's loss is still finite: the guard must catch the state.
  config = _config()
  config.optimizer.learning_rate = 1e39
  config.optimizer.momentum = 0.0
  batches = _batches(2)
  losses_, state, snapshots = _train(jax.devices()[:1], batches, config)
  assert np.isfinite(losses_[0])
  assert int(state.bad_step) == 0
  initial = train.create_train_state(
      config, models.create_model(config.model, 10, axis_name=parallel.AXIS),
      (8, 8, 3), jax.random.key(0), 100)
  for a, b in zip(jax.tree.leaves(initial.params),
                  jax.tree.leaves(snapshots[-1])):
    np.testing.assert_array_equal(np.asarray(a), b)
  with pytest.raises(errors.TrainingDiverged, match="at step 0"):
    loop.check_finite(state, last_saved_step=None, workdir="/tmp/x")
