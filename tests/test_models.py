"""Tests for advjax.models: shapes, parameter counts, BatchNorm and dropout."""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from advjax import errors, models
from advjax.models.cnn import SmallCNN
from advjax.models.densenet import DenseNet, layers_per_block

TINY_DENSENET = dict(name="densenet", depth=10, growth_rate=4,
                     compression=0.5, bottleneck=True)
TINY_CNN = dict(name="cnn", widths=(4, 8), hidden=16)
# Small images for behaviour tests (both models pool twice: 8 -> 4 -> 2).
SMALL = (4, 8, 8, 3)
# XLA:CPU's optimising backend dominates test time; these nets are tiny, so
# compile without it (about 7x faster to compile).
_jit = functools.partial(
    jax.jit, compiler_options={"xla_backend_optimization_level": 0})


def _model(cfg, num_classes=10, **kwargs):
  return models.create_model(ml_collections.ConfigDict(cfg), num_classes,
                             **kwargs)


def _init(model, shape, seed=0):
  return _init_fn(model)(jax.random.key(seed), jnp.zeros(shape))


def _shape_init(model, shape):
  """Variables' shapes only (no compile, no compute): for parameter counts."""
  return jax.eval_shape(
      functools.partial(model.init, train=False), jax.random.key(0),
      jax.ShapeDtypeStruct(shape, jnp.float32))


@functools.lru_cache(maxsize=None)
def _init_fn(model):
  return _jit(functools.partial(model.init, train=False))


@functools.lru_cache(maxsize=None)
def _eval_fn(model, return_features=False):
  return _jit(functools.partial(model.apply, train=False,
                                return_features=return_features))


@functools.lru_cache(maxsize=None)
def _train_fn(model):
  def f(variables, x, rng):
    rngs = {} if rng is None else {"dropout": rng}
    logits, updates = model.apply(variables, x, train=True,
                                  mutable=["batch_stats"], rngs=rngs)
    return logits, updates["batch_stats"]
  return _jit(f)


def _eval(model, variables, x, return_features=False):
  """Jitted eval-mode apply (one compile per model, not many eager ops)."""
  return _eval_fn(model, return_features)(variables, x)


def _train(model, variables, x, rng=None):
  """Jitted train-mode apply; returns (logits, updated batch_stats)."""
  return _train_fn(model)(variables, x, rng)


def _images(shape, seed=1):
  return jax.random.uniform(jax.random.key(seed), shape, minval=-1.0,
                            maxval=1.0)


def test_densenet_bc_100_has_about_0p8m_params():
  model = _model(dict(name="densenet", depth=100, growth_rate=12,
                      compression=0.5, bottleneck=True, dropout_rate=0.0),
                 num_classes=100)
  variables = _shape_init(model, (1, 32, 32, 3))
  n = models.count_params(variables["params"])
  print(f"DenseNet-BC-100 (k=12, 100 classes): {n:,} parameters")
  assert 750_000 <= n <= 850_000
  # 3 blocks x 16 layers x (1x1 + 3x3 conv).
  convs = [k for k in variables["params"] if k.endswith(("_conv1", "_conv2"))]
  assert len(convs) == 96


def test_densenet_without_bottleneck_structure():
  model = DenseNet(num_classes=10, depth=40, growth_rate=12, compression=1.0,
                   bottleneck=False)
  variables = _shape_init(model, (1, 32, 32, 3))
  params = variables["params"]
  assert params["stem"]["kernel"].shape == (3, 3, 3, 16)
  # 16 + 3 * 12 * 12 = 448 channels reach the classifier (theta = 1).
  assert params["logits"]["kernel"].shape == (16 + 3 * 12 * 12, 10)
  assert not any(k.endswith("_conv1") for k in params)


def test_densenet_transition_compresses_channels():
  model = DenseNet(num_classes=10, depth=10, growth_rate=4, compression=0.5)
  params = _shape_init(model, (1, 32, 32, 3))["params"]
  # Stem 2k = 8 channels, one layer adds 4 -> 12, theta = 0.5 -> 6.
  assert params["stem"]["kernel"].shape[-1] == 8
  assert params["transition0_conv"]["kernel"].shape == (1, 1, 12, 6)
  assert params["block0_layer0_conv1"]["kernel"].shape[-1] == 16  # 4k


@pytest.mark.parametrize("cfg", [TINY_DENSENET, dict(name="cnn")],
                         ids=["densenet", "cnn"])
@pytest.mark.parametrize("shape", [(2, 32, 32, 3), (2, 28, 28, 1)],
                         ids=["32x32x3", "28x28x1"])
def test_logits_and_features_shapes(cfg, shape):
  model = _model(cfg, num_classes=7)
  variables = _init(model, shape)
  x = _images(shape)
  logits = _eval(model, variables, x)
  assert logits.shape == (2, 7) and logits.dtype == jnp.float32
  assert np.all(np.isfinite(logits))
  logits2, features = _eval(model, variables, x, return_features=True)
  np.testing.assert_allclose(logits2, logits, rtol=1e-6, atol=1e-6)
  assert features.ndim == 2 and features.shape[0] == 2
  expected_dim = (variables["params"]["logits"]["kernel"].shape[0])
  assert features.shape[1] == expected_dim


def test_params_stay_float32_with_bfloat16_compute():
  model = _model(TINY_DENSENET, dtype=jnp.bfloat16)
  variables = _init(model, SMALL)
  dtypes = {p.dtype for p in jax.tree.leaves(variables)}
  assert dtypes == {jnp.dtype(jnp.float32)}
  logits = _eval(model, variables, _images(SMALL))
  assert logits.dtype == jnp.float32


@pytest.mark.parametrize("cfg", [TINY_DENSENET, TINY_CNN],
                         ids=["densenet", "cnn"])
def test_batch_stats_train_and_eval(cfg):
  model = _model(cfg)
  variables = _init(model, SMALL)
  x = _images(SMALL)
  t, new_stats = _train(model, variables, x)
  old = jax.tree.leaves(variables["batch_stats"])
  new = jax.tree.leaves(new_stats)
  assert len(old) == len(new) > 0
  assert any(not np.allclose(a, b) for a, b in zip(old, new))
  # Eval needs no mutable collection and is deterministic.
  a = _eval(model, variables, x)  # applies with no `mutable` argument
  np.testing.assert_array_equal(a, _eval(model, variables, x))
  # Eval uses the running statistics, so it differs from the train pass.
  assert not np.allclose(a, t, atol=1e-4)


@pytest.mark.parametrize("cfg", [dict(TINY_DENSENET, dropout_rate=0.5),
                                 dict(TINY_CNN, dropout_rate=0.5)],
                         ids=["densenet", "cnn"])
def test_dropout(cfg):
  model = _model(cfg)
  variables = _init(model, SMALL)
  x = _images(SMALL)

  def train_logits(seed):
    return _train(model, variables, x, jax.random.key(seed))[0]

  np.testing.assert_array_equal(train_logits(0), train_logits(0))
  assert not np.allclose(train_logits(0), train_logits(1))
  # Off in eval: no rng needed, and same as a model without dropout.
  no_dropout = _model(dict(cfg, dropout_rate=0.0))
  np.testing.assert_allclose(_eval(model, variables, x),
                             _eval(no_dropout, variables, x),
                             rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("cfg", [TINY_DENSENET, TINY_CNN],
                         ids=["densenet", "cnn"])
def test_cross_device_batchnorm_matches_single_device(cfg):
  devices = jax.devices()
  assert len(devices) == 4, "tests/conftest.py should give 4 CPU devices"
  mesh = jax.sharding.Mesh(np.array(devices), ("data",))
  shape = (8, 8, 8, 3)
  single = _model(cfg)
  sharded = _model(cfg, axis_name="data")
  variables = _init(single, shape)
  # Non-trivial running statistics so the momentum update is exercised.
  variables = {
      "params": variables["params"],
      "batch_stats": jax.tree.map(lambda v: v + 0.3, variables["batch_stats"]),
  }
  x = _images(shape)

  def forward(module, variables, x):
    logits, updates = module.apply(variables, x, train=True,
                                   mutable=["batch_stats"])
    return logits, updates["batch_stats"]

  ref_logits, ref_stats = _jit(functools.partial(forward, single))(
      variables, x)
  f = jax.shard_map(functools.partial(forward, sharded), mesh=mesh,
                    in_specs=(P(), P("data")), out_specs=(P("data"), P()))
  logits, stats = _jit(f)(variables, x)
  np.testing.assert_allclose(logits, ref_logits, rtol=1e-5, atol=1e-5)
  jax.tree.map(
      functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-5),
      stats, ref_stats)
  # Without the cross-device mean, per-device statistics would differ.
  f_local = jax.shard_map(functools.partial(forward, single), mesh=mesh,
                          in_specs=(P(), P("data")),
                          out_specs=(P("data"), P("data")))
  local_logits, _ = _jit(f_local)(variables, x)
  assert not np.allclose(local_logits, ref_logits, atol=1e-4)


@pytest.mark.parametrize("depth,bottleneck", [(99, True), (4, True),
                                              (13, True), (41, False),
                                              (0, False)])
def test_invalid_depth_raises_user_error(depth, bottleneck):
  with pytest.raises(errors.UserError, match="depth") as info:
    _model(dict(name="densenet", depth=depth, bottleneck=bottleneck))
  assert "\n" not in str(info.value)


@pytest.mark.parametrize("depth,bottleneck,n",
                         [(100, True, 16), (40, False, 12), (10, True, 1),
                          (190, True, 31)])
def test_layers_per_block(depth, bottleneck, n):
  assert layers_per_block(depth, bottleneck) == n


def test_unknown_model_name_raises_user_error():
  with pytest.raises(errors.UserError, match="densenet"):
    _model(dict(name="resnet"))


def test_unknown_model_option_raises_user_error():
  with pytest.raises(errors.UserError, match="growth_rat") as info:
    _model(dict(name="densenet", growth_rat=12))
  assert "growth_rate" in str(info.value)  # lists the valid options
  with pytest.raises(errors.UserError, match="num_classes"):
    _model(dict(name="cnn", num_classes=3))


def test_create_model_fills_managed_fields_and_tuples():
  model = _model(dict(name="cnn", widths=[8, 16], hidden=32), num_classes=3,
                 axis_name="data", dtype=jnp.bfloat16)
  assert isinstance(model, SmallCNN)
  assert model.widths == (8, 16) and model.hidden == 32
  assert model.num_classes == 3 and model.axis_name == "data"
  assert model.dtype == jnp.bfloat16


def test_count_params():
  params = {"a": jnp.zeros((3, 4)), "b": {"c": jnp.zeros((5,))}}
  assert models.count_params(params) == 17


def test_register_model():
  from advjax.models import registry

  class Toy(SmallCNN):
    pass

  registry.register("classifier", "toy_cnn_for_test")(Toy)
  try:
    assert isinstance(_model(dict(name="toy_cnn_for_test")), Toy)
    with pytest.raises(ValueError):
      registry.register("classifier", "cnn")(Toy)
    with pytest.raises(ValueError):
      registry.register("critic", "toy")(Toy)
  finally:
    del models.MODELS[("classifier", "toy_cnn_for_test")]
