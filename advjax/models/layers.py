"""Layers for the improved GAN training tricks.

- `MinibatchDiscrimination` and `VirtualBatchNorm`: Salimans et al. 2016,
  "Improved Techniques for Training GANs".
- `ConditionalBatchNorm`: de Vries et al. 2017 ("Modulating early visual
  processing by language"), as used for class-conditional generators by
  Miyato & Koyama 2018 and the AC-WGAN-GP ResNets (Gulrajani et al. 2017).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


class MinibatchDiscrimination(nn.Module):
  """Appends per-example closeness to the rest of the minibatch (Sec. 3.2).

  With features x_i in R^F and a learnt tensor T in R^{F x (K*D)},
  M_i = x_i T reshaped to [K, D];
    c_b(i, j) = exp(-||M_{i,b} - M_{j,b}||_1),
    o(x_i)_b = sum_{j != i} c_b(i, j),
  and the output is concat([x_i, o(x_i)]) of shape [B, F + K]. A batch of K
  near-identical samples gets large o, which lets the discriminator detect a
  collapsed generator.

  The sum runs over the batch this module sees: under data parallelism
  (shard_map) that is the per-device batch, not the global one.
  """
  num_kernels: int = 50
  kernel_dim: int = 5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if x.ndim != 2:
      raise ValueError(f"MinibatchDiscrimination wants [B, F] features, got "
                       f"shape {x.shape}")
    k, d = self.num_kernels, self.kernel_dim
    t = self.param("T", nn.initializers.normal(0.05), (x.shape[-1], k * d),
                   jnp.float32)
    m = jnp.dot(x.astype(self.dtype), t.astype(self.dtype))
    m = m.astype(jnp.float32).reshape(x.shape[0], k, d)
    l1 = jnp.sum(jnp.abs(m[:, None] - m[None, :]), axis=-1)  # [B, B, K]
    # exp(-0) = 1 is the self term c_b(i, i).
    o = jnp.sum(jnp.exp(-l1), axis=1) - 1.0
    return jnp.concatenate([x, o.astype(x.dtype)], axis=-1)


class VirtualBatchNorm(nn.Module):
  """Normalises each example with a fixed reference batch plus itself (Sec. 3.4).

  The input carries the reference batch in its first `num_reference` rows
  (the caller propagates the same fixed reference examples through the
  network on every call, so their statistics follow the current weights, as
  in the paper). With reference statistics mu_R = E_R[x], s_R = E_R[x^2]
  (over the reference examples and spatial positions) and an example's own
  mu_x = E[x], s_x = E[x^2] (over its spatial positions), an example is
  normalised with the paper's combination
    mu = (R * mu_R + mu_x) / (R + 1),  s = (R * s_R + s_x) / (R + 1),
    y = gamma * (x - mu) / sqrt(s - mu^2 + eps) + beta,
  where R is the reference batch size. The reference rows themselves are
  normalised with (mu_R, s_R) alone. No example depends on another non-
  reference example, unlike BatchNorm in training mode.

  `axis_name` averages the reference statistics across devices; set it only
  when the reference rows are split across devices (the generators here keep
  the whole reference batch on every device and pass None).
  """
  axis_name: str | None = None
  epsilon: float = 1e-5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, num_reference: int) -> jax.Array:
    if not 0 < num_reference <= x.shape[0]:
      raise ValueError(f"VirtualBatchNorm needs 1..{x.shape[0]} reference "
                       f"rows, got num_reference={num_reference}")
    feat = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (feat,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (feat,), jnp.float32)
    xf = x.astype(jnp.float32)
    ref = xf[:num_reference]
    all_axes = tuple(range(x.ndim - 1))
    ref_mean = jnp.mean(ref, axis=all_axes)
    ref_sq = jnp.mean(jnp.square(ref), axis=all_axes)
    r = float(num_reference)
    if self.axis_name is not None:
      ref_mean, ref_sq = jax.lax.pmean((ref_mean, ref_sq), self.axis_name)
      r = r * jax.lax.psum(1, self.axis_name)
    # Per-example statistics over spatial positions (none for [B, F]).
    spatial = tuple(range(1, x.ndim - 1))
    ex_mean = jnp.mean(xf, axis=spatial, keepdims=True)
    ex_sq = jnp.mean(jnp.square(xf), axis=spatial, keepdims=True)
    mean = (r * ref_mean + ex_mean) / (r + 1.0)
    sq = (r * ref_sq + ex_sq) / (r + 1.0)
    is_ref = (jnp.arange(x.shape[0]) < num_reference).reshape(
        (-1,) + (1,) * (x.ndim - 1))
    mean = jnp.where(is_ref, ref_mean, mean)
    sq = jnp.where(is_ref, ref_sq, sq)
    var = jnp.maximum(sq - jnp.square(mean), 0.0)
    y = (xf - mean) * jax.lax.rsqrt(var + self.epsilon) * scale + bias
    return y.astype(self.dtype)


class ConditionalBatchNorm(nn.Module):
  """BatchNorm whose scale and shift are looked up by class label.

  y = gamma[label] * BN(x) + beta[label], with BN having no affine of its
  own; gamma starts at 1 and beta at 0 for every class (de Vries et al. 2017;
  Miyato & Koyama 2018). `axis_name` averages the batch statistics across
  devices (e.g. 'data' under shard_map).
  """
  num_classes: int
  axis_name: str | None = None
  momentum: float = 0.9
  epsilon: float = 1e-5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, labels: jax.Array,
               train: bool) -> jax.Array:
    feat = x.shape[-1]
    y = nn.BatchNorm(use_running_average=not train, momentum=self.momentum,
                     epsilon=self.epsilon, use_scale=False, use_bias=False,
                     axis_name=self.axis_name, dtype=self.dtype,
                     name="bn")(x)
    gamma = self.param("gamma", nn.initializers.ones,
                       (self.num_classes, feat), jnp.float32)
    beta = self.param("beta", nn.initializers.zeros,
                      (self.num_classes, feat), jnp.float32)
    shape = (x.shape[0],) + (1,) * (x.ndim - 2) + (feat,)
    g = jnp.take(gamma, labels, axis=0).reshape(shape)
    b = jnp.take(beta, labels, axis=0).reshape(shape)
    return (y * g.astype(self.dtype) + b.astype(self.dtype)).astype(
        self.dtype)
