"""advjax.models.conv: lax's convolution values, canonical derivatives."""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from advjax.models import conv

DN = ("NHWC", "HWIO", "NHWC")
# (input shape, kernel shape, strides, padding, input dilation, kernel
# dilation): strided, padded, dilated, uneven and transposed-conv cases.
CASES = [
    ((2, 9, 9, 3), (3, 3, 3, 4), (1, 1), "SAME", (1, 1), (1, 1)),
    ((2, 9, 9, 3), (4, 4, 3, 4), (2, 2), "SAME", (1, 1), (1, 1)),
    ((2, 9, 8, 3), (3, 3, 3, 4), (2, 2), ((1, 1), (1, 1)), (1, 1), (1, 1)),
    ((2, 7, 7, 3), (4, 4, 3, 4), (1, 1), ((2, 2), (2, 2)), (2, 2), (1, 1)),
    ((2, 10, 10, 3), (3, 3, 3, 4), (1, 1), "VALID", (1, 1), (2, 2)),
    ((2, 11, 11, 3), (3, 3, 3, 4), (3, 3), ((0, 1), (2, 0)), (2, 2), (1, 2)),
    ((2, 8, 8, 3), (1, 1, 3, 4), (2, 2), "VALID", (1, 1), (1, 1)),
    ((2, 6, 6, 3), (1, 1, 3, 4), (1, 1), "SAME", (1, 1), (1, 1)),
    ((20, 6, 6, 3), (3, 3, 3, 20), (1, 1), "SAME", (1, 1), (1, 1)),
    ((2, 2, 2, 3), (3, 3, 3, 4), (1, 1), "SAME", (1, 1), (1, 1)),
]


def _pair(case, seed=0):
  x_shape, w_shape, strides, padding, lhs_dil, rhs_dil = case
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.normal(size=x_shape), jnp.float32)
  w = jnp.asarray(rng.normal(size=w_shape), jnp.float32)
  args = (strides, padding, lhs_dil, rhs_dil, DN)
  ours = lambda x, w: conv.conv_general_dilated(x, w, *args,
                                                precision="highest")
  theirs = lambda x, w: lax.conv_general_dilated(x, w, *args,
                                                 precision="highest")
  return x, w, ours, theirs


@pytest.mark.parametrize("case", CASES)
def test_values_and_gradients_equal_lax(case):
  x, w, ours, theirs = _pair(case)
  np.testing.assert_allclose(ours(x, w), theirs(x, w), rtol=1e-5, atol=1e-5)
  cotangent = jnp.asarray(np.random.default_rng(1).normal(
      size=theirs(x, w).shape), jnp.float32)
  for got, want in zip(jax.vjp(ours, x, w)[1](cotangent),
                       jax.vjp(theirs, x, w)[1](cotangent)):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("case", CASES[:4] + CASES[-1:])
def test_second_derivatives_equal_lax(case):
  """grad_w ||grad_x <f(x, w), c>||^2, the shape of a gradient penalty."""
  x, w, ours, theirs = _pair(case)
  c = jnp.ones_like(theirs(x, w))

  def penalty_grad(f):
    input_grad = lambda w: jax.grad(lambda x: jnp.sum(f(x, w) * c))(x)
    return jax.grad(lambda w: jnp.sum(input_grad(w) ** 2))(w)
  want = penalty_grad(theirs)
  np.testing.assert_allclose(penalty_grad(ours), want, rtol=1e-4,
                             atol=1e-4 * float(jnp.max(jnp.abs(want))))


@pytest.mark.parametrize("case", [CASES[1], CASES[3], CASES[-1]])
def test_every_convolution_in_a_loop_of_updates_is_canonical(case):
  """The first and second derivatives inside a compiled loop stay in the
  layout XLA:CPU runs with its fast kernel (NHWC, HWIO), also where XLA
  would swap input and kernel (kernels larger than their inputs)."""
  x, w, ours, _ = _pair(case)

  def update(_, w):
    penalty = lambda w: jnp.sum(jax.grad(lambda x: jnp.sum(ours(x, w)))(x)
                                ** 2)
    return w - 0.1 * jax.grad(lambda w: jnp.sum(ours(x, w)) + penalty(w))(w)
  hlo = jax.jit(lambda w: lax.fori_loop(0, 2, update, w)).lower(
      w).compile().as_text()
  labels = re.findall(r"dim_labels=([^,\s]+)", hlo)
  assert labels and set(labels) == {"b01f_01io->b01f"}, set(labels)


def test_flax_conv_with_it_keeps_parameters_and_outputs():
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 8, 8, 3)),
                  jnp.float32)
  ours = conv.Conv(5, (3, 3), strides=(2, 2))
  theirs = nn.Conv(5, (3, 3), strides=(2, 2))
  variables = theirs.init(jax.random.key(0), x)
  assert (jax.tree.map(jnp.shape, ours.init(jax.random.key(0), x))
          == jax.tree.map(jnp.shape, variables))
  np.testing.assert_allclose(ours.apply(variables, x),
                             theirs.apply(variables, x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kernel,strides,padding", [
    ((4, 4), (2, 2), "SAME"), ((3, 3), (2, 2), "SAME"),
    ((3, 3), (2, 2), "VALID"), ((4, 4), (1, 1), ((1, 2), (2, 1)))])
def test_conv_transpose_matches_flax(kernel, strides, padding):
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 5, 5, 3)),
                  jnp.float32)
  ours = conv.ConvTranspose(4, kernel, strides=strides, padding=padding)
  theirs = nn.ConvTranspose(4, kernel, strides=strides, padding=padding)
  variables = theirs.init(jax.random.key(0), x)
  assert (jax.tree.map(jnp.shape, ours.init(jax.random.key(0), x))
          == jax.tree.map(jnp.shape, variables))
  np.testing.assert_allclose(ours.apply(variables, x),
                             theirs.apply(variables, x), rtol=1e-5, atol=1e-5)
