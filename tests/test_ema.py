"""The moving average of a classifier's weights (`config.ema`)."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import tensorflow_datasets as tfds

from advjax import optimizers, trainers
from advjax.errors import UserError
from tests.helpers import load_config


def test_param_ema_is_the_warmed_up_average_of_the_updated_params():
  decay = 0.9
  tx = optax.chain(optax.sgd(0.5), optimizers.param_ema(decay))
  params = {"w": jnp.asarray([1.0, -2.0])}
  state = tx.init(params)
  expected = np.asarray(params["w"])
  for t, g in enumerate(([1., 1.], [0.5, -1.], [-2., 0.])):
    updates, state = tx.update({"w": jnp.asarray(g)}, state, params)
    params = optax.apply_updates(params, updates)
    d = min(decay, (1 + t) / (10 + t))
    expected = d * expected + (1 - d) * np.asarray(params["w"])
    np.testing.assert_allclose(optimizers.averaged_params(state)["w"],
                               expected, rtol=1e-6)
  # The updates themselves are plain SGD's.
  np.testing.assert_allclose(params["w"], [1. - .5 * (1 + .5 - 2),
                                           -2. - .5 * (1 - 1 + 0)])


def test_a_state_without_average_says_so():
  with pytest.raises(ValueError, match="config.ema.decay"):
    optimizers.averaged_params(optax.sgd(1.).init({"w": jnp.zeros(2)}))


def _config(decay):
  c = load_config("quickstart")
  c.model.widths, c.model.hidden = (4,), 8
  c.batch_size = c.eval_batch_size = 8
  c.num_train_steps = 4
  c.eval_every_steps = c.checkpoint.every_steps = 2
  c.log_every_steps = 2
  c.progress_bar = False
  if decay is not None:
    c.ema = {"decay": decay}
  return c


def test_training_logs_the_average_beside_the_raw_weights_and_resumes(
    tmp_path):
  """Two steps, stop, two more: the same numbers as four steps at once (the
  average is saved with the optimiser state)."""
  resumed, straight = str(tmp_path / "resumed"), str(tmp_path / "straight")
  with tfds.testing.mock_data(num_examples=32):
    config = _config(0.5)
    config.num_train_steps = 2
    trainers.run(config, resumed)
    final = trainers.run(_config(0.5), resumed)
    once = trainers.run(_config(0.5), straight)
  assert {"eval/ema_accuracy", "eval/ema_loss"} <= set(final)
  assert final["eval/ema_loss"] == pytest.approx(once["eval/ema_loss"],
                                                 rel=1e-6)
  with open(os.path.join(resumed, "metrics.jsonl")) as f:
    evals = [json.loads(l) for l in f if "eval/ema_loss" in l]
  assert [r["step"] for r in evals] == [2, 4]
  # The average lags the raw weights.
  assert final["eval/ema_loss"] != final["eval/loss"]
  # A notebook reads it from the checkpoint: the same loss as logged.
  from advjax import evaluators, inference  # pylint: disable=g-import-not-at-top
  run = inference.restore(resumed)
  avg = run.averaged()
  assert not np.allclose(jax.tree.leaves(avg.params)[0],
                         jax.tree.leaves(run.params)[0])
  record = evaluators.common.run_record(avg)
  assert record["weights"] == "moving average"
  assert "weights" not in evaluators.common.run_record(run)
  with tfds.testing.mock_data(num_examples=32):
    x, y = next(evaluators.eval_data(avg, 32, 32))
  logits = avg.logits(x)
  loss = float(np.mean(-np.take_along_axis(
      jax.nn.log_softmax(logits), y[:, None], 1)))
  assert loss == pytest.approx(final["eval/ema_loss"], rel=1e-4)


def test_decay_out_of_range_is_one_line(tmp_path):
  with pytest.raises(UserError, match="config.ema.decay must be in"):
    with tfds.testing.mock_data(num_examples=32):
      trainers.run(_config(1.0), str(tmp_path / "bad"))
