"""Black-box transfer attacks (Papernot et al. 2016, 2017).

`transfer_attack` crafts adversarial examples on a substitute model with any
attack of `advjax.attacks` and measures them on a target that is only ever
asked for predictions.
"""

from __future__ import annotations

import inspect
import warnings
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from advjax.attacks import _common
from advjax.attacks._common import LogitsFn
from advjax.errors import UserError


def _takes_labels(attack_fn) -> bool:
  """Whether attack_fn(logits_fn, x, y, ...) takes labels (fgsm_least_likely
  does not)."""
  try:
    params = inspect.signature(attack_fn).parameters
  except (TypeError, ValueError):
    return True
  if "y" in params:
    return True
  positional = [name for name, p in params.items()
                if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
  return len(positional) >= 3 and positional[2] != "eps"


def _black_box_predict(target_predict_fn, x):
  """Target labels [B] for x, computed on the host from numpy inputs.

  The target sees only numpy arrays and its output never carries gradients:
  eagerly it is called directly; under tracing (jit) through
  `jax.pure_callback`, which is not differentiable.
  """
  batch = jnp.shape(x)[0]

  def host_predict(x_np):
    out = np.asarray(target_predict_fn(np.asarray(x_np)))
    if out.ndim == 2:
      out = out.argmax(axis=-1)
    if out.shape != (batch,):
      raise UserError(
          f"target_predict_fn must return labels [B] or scores [B, K] for B = "
          f"{batch}, got shape {out.shape}.")
    return out.astype(np.int32)

  if _common.is_concrete(x):
    return jnp.asarray(host_predict(np.asarray(x)))
  return jax.pure_callback(host_predict,
                           jax.ShapeDtypeStruct((batch,), jnp.int32),
                           jax.lax.stop_gradient(x))


def transfer_attack(attack_fn: Callable[..., jax.Array],
                    substitute_logits_fn: LogitsFn,
                    target_predict_fn: Callable[[np.ndarray], Any], x, y,
                    **attack_kwargs) -> dict[str, jax.Array]:
  """Black-box transfer attack (Papernot et al. 2016, 2017).

  Crafts x_adv = attack_fn(substitute_logits_fn, x, y, **attack_kwargs) (any
  attack of this module, e.g. fgsm or pgd; attacks without labels, like
  fgsm_least_likely, are called without y) by differentiating the substitute
  only, then measures the target on clean and adversarial inputs.

  The target is a black box used only for predictions: `target_predict_fn`
  receives numpy arrays [B, H, W, C] and returns labels [B] or scores [B, K];
  it is never traced or differentiated (under jit it runs through
  `jax.pure_callback`).

  The valid input range travels to the attack in attack_kwargs as
  `bounds=(low, high)` (default the library's (-1, 1); e.g. bounds=(0, 1) for
  models on [0, 1] images, with eps in those units); x is checked against it.

  Errors are fractions of examples whose prediction != y. For a targeted
  attack (targeted=True, y = target labels) 1 - error is the targeted success
  rate.

  Returns:
    dict with 'images' (x_adv), 'target_error_clean', 'target_error_adv',
    'substitute_error_adv'.
  """
  _common.check_attack_inputs(x, y)
  _common.check_images_in_range(
      x, attack_kwargs.get("bounds", _common.DEFAULT_BOUNDS))
  with warnings.catch_warnings():  # The [0, 1] hint was given above.
    warnings.simplefilter("ignore")
    if _takes_labels(attack_fn):
      x_adv = attack_fn(substitute_logits_fn, x, y, **attack_kwargs)
    else:
      x_adv = attack_fn(substitute_logits_fn, x, **attack_kwargs)
  y = jnp.asarray(y)

  def error(pred):
    return jnp.mean((pred != y).astype(jnp.float32))

  sub_pred = jnp.argmax(substitute_logits_fn(x_adv), axis=-1)
  return {
      "images": x_adv,
      "target_error_clean": error(_black_box_predict(target_predict_fn, x)),
      "target_error_adv": error(_black_box_predict(target_predict_fn, x_adv)),
      "substitute_error_adv": error(sub_pred),
  }
