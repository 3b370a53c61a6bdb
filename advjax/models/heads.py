"""The classifier head the pre-activation networks share (DenseNet, the
pre-activation ResNets): BN-ReLU, global average pool, Dense."""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp


def pooled_logits(x, norm: Callable[..., nn.Module], num_classes: int,
                  dtype: Any, return_features: bool):
  """Logits [B, K] (float32) of feature maps x [B, H, W, C], and the pooled
  features [B, C] with `return_features`. Call inside a compact module:
  its layers are named 'final_bn' and 'logits'."""
  x = nn.relu(norm(name="final_bn")(x))
  features = jnp.mean(x, axis=(1, 2))
  logits = nn.Dense(num_classes, dtype=dtype, param_dtype=jnp.float32,
                    name="logits")(features).astype(jnp.float32)
  if return_features:
    return logits, features.astype(jnp.float32)
  return logits
