"""Optimisers and learning-rate schedules built from a config.

`config.optimizer` holds:
  name: 'sgd' | 'adam' | 'adamw' | 'rmsprop'
  learning_rate: peak rate
  momentum, nesterov (sgd); b1, b2, eps (adam/adamw)
  weight_decay: L2 penalty on kernels (sgd/adam: added to the gradient as in
    the DenseNet recipe), decoupled for adamw
  schedule: 'constant' | 'piecewise' | 'cosine' | 'linear'
  boundaries: fractions of training for 'piecewise' (e.g. [0.5, 0.75])
  decay_factor: multiplier at each boundary (e.g. 0.1)
  warmup_steps: linear warm-up from 0
"""

from __future__ import annotations

import jax
import ml_collections
import optax

from advjax.errors import UserError

_OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop")
_SCHEDULES = ("constant", "piecewise", "cosine", "linear")


def create_schedule(opt: ml_collections.ConfigDict,
                    num_train_steps: int) -> optax.Schedule:
  """The learning rate as a function of the step."""
  lr = float(opt.learning_rate)
  kind = opt.get("schedule", "constant")
  warmup = int(opt.get("warmup_steps", 0))
  decay_steps = max(num_train_steps - warmup, 1)
  if kind == "constant":
    main = optax.constant_schedule(lr)
  elif kind == "piecewise":
    factor = float(opt.get("decay_factor", 0.1))
    boundaries = {
        int(round(float(b) * num_train_steps)) - warmup: factor
        for b in opt.get("boundaries", (0.5, 0.75))
    }
    main = optax.piecewise_constant_schedule(lr, boundaries)
  elif kind == "cosine":
    main = optax.cosine_decay_schedule(lr, decay_steps)
  elif kind == "linear":
    main = optax.linear_schedule(lr, 0.0, decay_steps)
  else:
    raise UserError(f"optimizer.schedule '{kind}' is not one of {_SCHEDULES}")
  if warmup:
    return optax.join_schedules(
        [optax.linear_schedule(0.0, lr, warmup), main], [warmup])
  return main


def _kernel_mask(params):
  """True for weight matrices and conv kernels, False for biases and BN."""
  return jax.tree.map(lambda p: p.ndim > 1, params)


def create_optimizer(opt: ml_collections.ConfigDict,
                     num_train_steps: int) -> optax.GradientTransformation:
  """An optax transformation for `config.optimizer`."""
  name = opt.get("name", "sgd")
  if name not in _OPTIMIZERS:
    raise UserError(f"optimizer.name '{name}' is not one of {_OPTIMIZERS}")
  schedule = create_schedule(opt, num_train_steps)
  wd = float(opt.get("weight_decay", 0.0))
  parts = []
  if name == "sgd":
    if wd:
      parts.append(optax.add_decayed_weights(wd, mask=_kernel_mask))
    parts.append(optax.sgd(schedule, momentum=opt.get("momentum", 0.9) or None,
                           nesterov=bool(opt.get("nesterov", False))))
  elif name == "adam":
    if wd:
      parts.append(optax.add_decayed_weights(wd, mask=_kernel_mask))
    parts.append(optax.adam(schedule, b1=opt.get("b1", 0.9),
                            b2=opt.get("b2", 0.999), eps=opt.get("eps", 1e-8)))
  elif name == "rmsprop":
    if wd:
      parts.append(optax.add_decayed_weights(wd, mask=_kernel_mask))
    parts.append(optax.rmsprop(schedule, decay=opt.get("decay", 0.9),
                               eps=opt.get("eps", 1e-8)))
  else:
    parts.append(optax.adamw(schedule, b1=opt.get("b1", 0.9),
                             b2=opt.get("b2", 0.999), eps=opt.get("eps", 1e-8),
                             weight_decay=wd, mask=_kernel_mask))
  grad_clip = opt.get("grad_clip_norm", None)
  if grad_clip:
    parts.insert(0, optax.clip_by_global_norm(float(grad_clip)))
  return optax.chain(*parts)
