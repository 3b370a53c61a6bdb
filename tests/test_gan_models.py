"""Tests for advjax.models.gans and advjax.models.layers (tiny widths)."""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from advjax import errors
from advjax.models import count_params, gans
from advjax.models.layers import (ConditionalBatchNorm,
                                  MinibatchDiscrimination, VirtualBatchNorm)

CIFAR = (32, 32, 3)
MNIST = (28, 28, 1)
B = 4
LATENT = 8
# Tiny players per family: (generator kwargs, discriminator kwargs).
TINY = {
    "mlp": (dict(hidden=(16,)), dict(hidden=(16,))),
    "dcgan": (dict(width=4), dict(width=4)),
    "resnet": (dict(width=8), dict(width=8, num_plain_blocks=1)),
}


def _config(name, conditional=False, gen=None, disc=None, **shared):
  g, d = TINY[name]
  return ml_collections.ConfigDict(dict(
      name=name, latent_dim=LATENT, conditional=conditional,
      generator={**g, **(gen or {})}, discriminator={**d, **(disc or {})},
      **shared))


def _players(name, image_shape, num_classes=0, **kwargs):
  cfg = _config(name, conditional=num_classes > 0, **kwargs)
  return (gans.create_generator(cfg, num_classes, image_shape),
          gans.create_discriminator(cfg, num_classes, image_shape))


@functools.lru_cache(maxsize=None)
def _gen_fns(gen):
  init = jax.jit(functools.partial(gen.init, train=False))
  train = jax.jit(lambda v, z, y: gen.apply(v, z, y, train=True,
                                            mutable=["batch_stats"]))
  evaluate = jax.jit(lambda v, z, y: gen.apply(v, z, y, train=False))
  return init, train, evaluate


def _z(n=B, seed=0, dim=LATENT):
  return jax.random.normal(jax.random.key(seed), (n, dim))


def _labels(n=B, num_classes=10):
  return jnp.arange(n, dtype=jnp.int32) % num_classes


@pytest.mark.parametrize("image_shape", [CIFAR, MNIST], ids=["32x32x3",
                                                              "28x28x1"])
@pytest.mark.parametrize("num_classes", [0, 10], ids=["uncond", "cond"])
@pytest.mark.parametrize("name", ["mlp", "dcgan", "resnet"])
def test_shapes_and_ranges(name, num_classes, image_shape):
  gen, disc = _players(name, image_shape, num_classes)
  z = _z()
  y = _labels() if num_classes else None

  @jax.jit  # one compile for everything (CPU time is scarce)
  def run(z, y):
    g_vars = gen.init(jax.random.key(0), z, y, train=False)
    images, updates = gen.apply(g_vars, z, y, train=True,
                                mutable=["batch_stats"])
    eval_images = gen.apply(g_vars, z, y, train=False)
    d_vars = disc.init(jax.random.key(1), images, y, train=False)
    out, _ = disc.apply(d_vars, images, y, train=True,
                        mutable=["batch_stats"])
    return g_vars, images, updates, eval_images, out

  g_vars, images, updates, eval_images, out = run(z, y)
  assert images.shape == (B, *image_shape)
  assert images.dtype == jnp.float32
  assert np.all(np.abs(np.asarray(images)) <= 1.0)
  assert np.std(np.asarray(images)) > 0  # not a constant image
  if "batch_stats" in g_vars:
    assert set(updates) == {"batch_stats"}
  assert eval_images.shape == (B, *image_shape)
  assert out["score"].shape == (B,)
  assert out["features"].ndim == 2 and out["features"].shape[0] == B
  assert np.all(np.isfinite(np.asarray(out["score"])))
  if name == "resnet" and num_classes:
    assert out["logits"].shape == (B, num_classes)
  else:
    assert "logits" not in out


def test_dcgan_and_mlp_class_heads():
  for name in ("dcgan", "mlp"):
    _, disc = _players(name, MNIST, 10, disc=dict(aux_classifier=True))
    x = jnp.zeros((B, *MNIST))
    out, _ = jax.eval_shape(
        functools.partial(disc.init_with_output, train=False),
        jax.random.key(0), x, _labels())
    assert out["logits"].shape == (B, 10)
    assert out["score"].shape == (B,)


def test_resnet_parameter_counts_of_the_study():
  """CIFAR-100 AC-WGAN-GP at width 256, latent 128 (Song et al. 2018)."""
  cfg = ml_collections.ConfigDict(dict(
      name="resnet", latent_dim=128, conditional=True,
      generator=dict(width=256), discriminator=dict(width=256)))
  gen = gans.create_generator(cfg, 100, CIFAR)
  critic = gans.create_discriminator(cfg, 100, CIFAR)
  g_shapes = jax.eval_shape(
      functools.partial(gen.init, train=False), jax.random.key(0),
      jax.ShapeDtypeStruct((2, 128), jnp.float32),
      jax.ShapeDtypeStruct((2,), jnp.int32))
  d_shapes = jax.eval_shape(
      functools.partial(critic.init, train=False), jax.random.key(0),
      jax.ShapeDtypeStruct((2, *CIFAR), jnp.float32),
      jax.ShapeDtypeStruct((2,), jnp.int32))
  n_g = count_params(g_shapes["params"])
  n_d = count_params(d_shapes["params"])
  print(f"ResNet AC-WGAN-GP width 256, CIFAR-100: generator {n_g:,} "
        f"parameters, critic {n_d:,}")
  assert 3_500_000 <= n_g <= 6_500_000, n_g
  assert 3_000_000 <= n_d <= 5_500_000, n_d
  assert set(d_shapes) == {"params"}  # no normalisation in the critic
  assert d_shapes["params"]["logits"]["kernel"].shape == (256, 100)


@pytest.mark.parametrize("name", ["mlp", "dcgan", "resnet"])
def test_conditional_output_depends_on_label(name):
  gen, _ = _players(name, MNIST, 10)
  z = jnp.tile(_z(1), (2, 1))
  y = jnp.asarray([0, 1], jnp.int32)
  init, _, evaluate = _gen_fns(gen)
  g_vars = init(jax.random.key(0), z, y)
  if name == "resnet":
    # Conditional BN starts class-independent (gamma 1, beta 0) ...
    images = evaluate(g_vars, z, y)
    np.testing.assert_allclose(images[0], images[1], atol=1e-6)
    # ... and trained per-class gammas/betas make the classes differ.
    key = iter(jax.random.split(jax.random.key(5), 100))
    g_vars = {**g_vars, "params": jax.tree_util.tree_map_with_path(
        lambda path, p: (p + 0.5 * jax.random.normal(next(key), p.shape)
                         if path[-1].key in ("gamma", "beta") else p),
        g_vars["params"])}
  images = np.asarray(evaluate(g_vars, z, y))
  # (DCGAN's 0.02-std init gives small outputs at init: compare relatively.)
  assert np.max(np.abs(images[0] - images[1])) > 0.05 * np.max(
      np.abs(images))


def test_unconditional_generator_takes_no_labels():
  gen, _ = _players("resnet", MNIST, 0)
  init, _, evaluate = _gen_fns(gen)
  g_vars = init(jax.random.key(0), _z(), None)
  assert evaluate(g_vars, _z(), None).shape == (B, *MNIST)
  cond, _ = _players("dcgan", MNIST, 10)
  with pytest.raises(errors.UserError, match="pass labels"):
    cond.init(jax.random.key(0), _z(), None, train=False)


def test_minibatch_discrimination_depends_on_the_batch():
  mbd = MinibatchDiscrimination(num_kernels=3, kernel_dim=2)
  x = jax.random.normal(jax.random.key(0), (4, 6))
  params = mbd.init(jax.random.key(1), x)
  out = mbd.apply(params, x)
  assert out.shape == (4, 6 + 3)
  np.testing.assert_array_equal(out[:, :6], x)
  # Changing sample 3 changes the minibatch features of sample 0.
  out2 = mbd.apply(params, x.at[3].add(0.5))
  assert np.max(np.abs(out2[0, 6:] - out[0, 6:])) > 1e-4
  np.testing.assert_array_equal(out2[0, :6], out[0, :6])
  # Identical samples: c_b(i, j) = 1 for all j != i, so o = B - 1.
  same = jnp.tile(x[:1], (5, 1))
  np.testing.assert_allclose(mbd.apply(params, same)[:, 6:], 4.0, atol=1e-6)
  # By hand for one example and kernel.
  m = np.asarray(x @ params["params"]["T"]).reshape(4, 3, 2)
  want = sum(np.exp(-np.abs(m[0, 1] - m[j, 1]).sum()) for j in (1, 2, 3))
  np.testing.assert_allclose(out[0, 6 + 1], want, rtol=1e-5)


def test_conditional_batchnorm_uses_the_class_gamma_beta():
  cbn = ConditionalBatchNorm(num_classes=3)
  x = jax.random.normal(jax.random.key(0), (6, 2, 2, 4)) * 3 + 1
  y = jnp.asarray([0, 1, 2, 2, 1, 0], jnp.int32)
  variables = cbn.init(jax.random.key(1), x, y, train=False)
  gamma = jnp.arange(12.0).reshape(3, 4) + 1
  beta = -jnp.arange(12.0).reshape(3, 4)
  variables = {**variables, "params": {"gamma": gamma, "beta": beta}}
  out, _ = cbn.apply(variables, x, y, train=True, mutable=["batch_stats"])
  xn = np.asarray(x)
  normed = (xn - xn.mean((0, 1, 2))) / np.sqrt(xn.var((0, 1, 2)) + 1e-5)
  want = normed * np.asarray(gamma)[y][:, None, None] + np.asarray(
      beta)[y][:, None, None]
  np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-4)
  assert "scale" not in str(jax.tree_util.tree_structure(variables["params"]))


def test_virtual_batchnorm_examples_are_independent():
  vbn = VirtualBatchNorm()
  ref = jax.random.normal(jax.random.key(0), (5, 3, 3, 2)) * 2 + 1
  x = jax.random.normal(jax.random.key(1), (3, 3, 3, 2))
  params = vbn.init(jax.random.key(2), jnp.concatenate([ref, x]), 5)
  f = jax.jit(
      lambda batch: vbn.apply(params, jnp.concatenate([ref, batch]), 5)[5:])
  out = f(x)
  out_other = f(x.at[1:].set(x[1:] * 10 - 3))
  np.testing.assert_allclose(out[0], out_other[0], rtol=1e-6, atol=1e-6)
  # The paper's combination of reference and example statistics.
  r, e = np.asarray(ref), np.asarray(x[0])
  mean = (5 * r.mean((0, 1, 2)) + e.mean((0, 1))) / 6
  sq = (5 * (r ** 2).mean((0, 1, 2)) + (e ** 2).mean((0, 1))) / 6
  want = (e - mean) / np.sqrt(sq - mean ** 2 + 1e-5)
  np.testing.assert_allclose(out[0], want, rtol=1e-4, atol=1e-4)
  # BatchNorm in train mode, by contrast, mixes the examples.
  gen, _ = _players("dcgan", MNIST)
  init, train, _ = _gen_fns(gen)
  z = _z()
  g_vars = init(jax.random.key(0), z, None)
  a, _ = train(g_vars, z, None)
  b, _ = train(g_vars, z.at[1:].multiply(3.0), None)
  assert np.max(np.abs(a[0] - b[0])) > 1e-4


def test_dcgan_generator_with_virtual_batchnorm():
  gen, _ = _players("dcgan", MNIST, 10, gen=dict(virtual_batchnorm=True))
  ref_z, ref_y = _z(6, seed=3), _labels(6)
  init, train, evaluate = _gen_fns(gen)
  g_vars = init(jax.random.key(0), ref_z, ref_y)
  assert set(g_vars) == {"params", "vbn_ref"}  # no batch_stats
  z, y = _z(), _labels()
  a, updates = train(g_vars, z, y)
  assert a.shape == (B, *MNIST) and not updates
  b = evaluate(g_vars, z.at[1:].multiply(3.0), y)
  np.testing.assert_allclose(a[0], b[0], atol=1e-5)
  # A different reference batch changes the outputs.
  other = gans.init_reference(gen, g_vars, _z(6, seed=4), ref_y)
  assert np.max(np.abs(evaluate(other, z, y) - a)) > 1e-4
  with pytest.raises(errors.UserError, match="reference batch"):
    gen.apply({"params": g_vars["params"]}, z, y, train=False)


def test_resnet_critic_has_no_normalisation():
  _, critic = _players("resnet", CIFAR, 10)
  variables = jax.eval_shape(  # shapes only: no compile
      functools.partial(critic.init, train=False), jax.random.key(0),
      jnp.zeros((2, *CIFAR)), None)
  assert set(variables) == {"params"}
  names = " ".join(jax.tree_util.keystr(p) for p, _ in
                   jax.tree_util.tree_leaves_with_path(variables))
  assert "norm" not in names.lower() and "scale" not in names


def test_batchnorm_statistics_across_devices():
  """shard_map over 4 devices with axis 'data' == one device, whole batch."""
  assert jax.device_count() == 4
  cfg = _config("dcgan", conditional=True)
  gen_dp = gans.create_generator(cfg, 10, CIFAR, axis_name="data")
  gen_1 = gans.create_generator(cfg, 10, CIFAR)
  z, y = _z(8), _labels(8)
  g_vars = gen_1.init(jax.random.key(0), z, y, train=False)

  def run(gen, variables, z, y):
    return gen.apply(variables, z, y, train=True, mutable=["batch_stats"])

  want, want_stats = jax.jit(functools.partial(run, gen_1))(g_vars, z, y)
  mesh = Mesh(np.asarray(jax.devices()), ("data",))
  sharded = jax.jit(jax.shard_map(
      functools.partial(run, gen_dp), mesh=mesh,
      in_specs=(P(), P("data"), P("data")),
      out_specs=(P("data"), P())))
  got, got_stats = sharded(g_vars, z, y)
  np.testing.assert_allclose(got, want, atol=1e-5)
  jax.tree.map(functools.partial(np.testing.assert_allclose, atol=1e-5),
               got_stats, want_stats)
  # Without the cross-device mean the per-device statistics differ.
  local = jax.jit(jax.shard_map(
      functools.partial(run, gen_1), mesh=mesh,
      in_specs=(P(), P("data"), P("data")),
      out_specs=(P("data"), P("data"))))
  assert np.max(np.abs(local(g_vars, z, y)[0] - want)) > 1e-4


def test_create_from_the_repository_configs():
  from tests import helpers  # pylint: disable=g-import-not-at-top
  for name, classes, shape, g_cls, d_cls in [
      ("acgan_cifar100", 100, CIFAR, gans.ResNetGenerator, gans.ResNetCritic),
      ("dcgan_cifar10", 0, CIFAR, gans.DCGANGenerator,
       gans.DCGANDiscriminator),
      ("cgan_fashion_mnist", 10, MNIST, gans.DCGANGenerator,
       gans.DCGANDiscriminator),
      ("gan_mlp_cifar10", 0, CIFAR, gans.MLPGenerator, gans.MLPDiscriminator),
  ]:
    model = helpers.load_config(name).model
    gen = gans.create_generator(model, classes, shape, axis_name="data")
    disc = gans.create_discriminator(model, classes, shape)
    assert isinstance(gen, g_cls) and isinstance(disc, d_cls), name
    assert gen.num_classes == classes and gen.axis_name == "data"
    assert gen.image_shape == shape


def test_config_errors():
  with pytest.raises(errors.UserError, match="unknown generator model 'bigan'"):
    gans.create_generator(dict(name="bigan"), 0, CIFAR)
  with pytest.raises(errors.UserError, match="has no option 'depth'"):
    gans.create_discriminator(_config("dcgan", disc=dict(depth=3)), 0, CIFAR)
  bad = _config("mlp").to_dict()
  bad["widht"] = 3
  with pytest.raises(errors.UserError, match="unknown model option"):
    gans.create_generator(bad, 0, CIFAR)
  with pytest.raises(errors.UserError, match="needs a dataset with classes"):
    gans.create_generator(_config("resnet", conditional=True), 0, CIFAR)
  disc = gans.create_discriminator(_config("resnet", conditional=True), 10,
                                   CIFAR)
  assert disc.has_class_head  # the AC-GAN check asks the model
  assert not gans.create_discriminator(_config("dcgan"), 0,
                                       CIFAR).has_class_head
  gen = gans.create_generator(_config("dcgan"), 0, (30, 30, 3))
  with pytest.raises(errors.UserError, match="cannot build 30x30"):
    gen.init(jax.random.key(0), _z(), None, train=False)
