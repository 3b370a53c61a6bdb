"""Optimisers and learning-rate schedules, from a config block read once.

A config's `optimizer` block (`g_optimizer` / `d_optimizer` for two-player
trainers) becomes an `OptimizerSettings`; its fields and defaults are the
ones below, and `configs/common.py` builds config blocks from them:

  name: 'sgd' | 'adam' | 'adamw' | 'rmsprop'
  learning_rate: peak rate (> 0)
  momentum, nesterov (sgd); b1, b2, eps (adam, adamw); decay, eps (rmsprop)
  weight_decay: L2 penalty on kernels (sgd, adam, rmsprop: added to the
    gradient, as in the DenseNet recipe), decoupled for adamw
  schedule: 'constant' | 'piecewise' | 'cosine' | 'linear' |
    'constant_then_linear'
  boundaries, decay_factor ('piecewise'): the rate is multiplied by
    decay_factor at each boundary (fractions of training)
  decay_start ('constant_then_linear'): constant, then linear decay to 0 from
    this fraction of training (the CycleGAN recipe, 100 + 100 epochs)
  warmup_steps: linear warm-up from 0
  grad_clip_norm: clip the global gradient norm first (0: off)

`update` is the one optimiser step every trainer takes: average the
gradients over devices, transform, apply.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from advjax import settings as settings_lib
from advjax.parallel import AXIS

NAMES = ("sgd", "adam", "adamw", "rmsprop")
SCHEDULES = ("constant", "piecewise", "cosine", "linear",
             "constant_then_linear")


@settings_lib.register("optimizer")
@settings_lib.register("g_optimizer")
@settings_lib.register("d_optimizer")
@dataclasses.dataclass(frozen=True)
class OptimizerSettings:
  """One optimiser's settings (see the module docstring)."""
  name: str = "sgd"
  learning_rate: float = 0.1
  momentum: float = 0.9
  nesterov: bool = False
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-8
  decay: float = 0.9
  weight_decay: float = 0.0
  schedule: str = "constant"
  boundaries: tuple[float, ...] = (0.5, 0.75)
  decay_factor: float = 0.1
  decay_start: float = 0.5
  warmup_steps: int = 0
  grad_clip_norm: float = 0.0

  def __post_init__(self):
    settings_lib.check_choice(self, "name", NAMES)
    settings_lib.check_choice(self, "schedule", SCHEDULES)
    settings_lib.check_positive(self, "learning_rate")
    settings_lib.check_nonnegative(self, "momentum", "eps", "weight_decay",
                                   "decay_factor", "warmup_steps",
                                   "grad_clip_norm")
    settings_lib.check_in_unit_interval(self, "b1", "b2", "decay",
                                        "decay_start")


def read(block: Any, where: str = "optimizer") -> OptimizerSettings:
  """The settings of config block `where` (one-line errors on bad fields)."""
  return settings_lib.from_block(OptimizerSettings, block, where)


def create_schedule(opt: OptimizerSettings | Any,
                    num_train_steps: int) -> optax.Schedule:
  """The learning rate as a function of the step."""
  opt = opt if isinstance(opt, OptimizerSettings) else read(opt)
  lr = float(opt.learning_rate)
  warmup = int(opt.warmup_steps)
  decay_steps = max(num_train_steps - warmup, 1)
  if opt.schedule == "constant":
    main = optax.constant_schedule(lr)
  elif opt.schedule == "piecewise":
    boundaries = {
        int(round(float(b) * num_train_steps)) - warmup: opt.decay_factor
        for b in opt.boundaries
    }
    main = optax.piecewise_constant_schedule(lr, boundaries)
  elif opt.schedule == "cosine":
    main = optax.cosine_decay_schedule(lr, decay_steps)
  elif opt.schedule == "linear":
    main = optax.linear_schedule(lr, 0.0, decay_steps)
  else:  # constant_then_linear
    start = int(round(opt.decay_start * num_train_steps))
    main = optax.join_schedules(
        [optax.constant_schedule(lr),
         optax.linear_schedule(lr, 0.0, max(num_train_steps - start, 1))],
        [start])
  if warmup:
    return optax.join_schedules(
        [optax.linear_schedule(0.0, lr, warmup), main], [warmup])
  return main


def _kernel_mask(params):
  """True for weight matrices and conv kernels, False for biases and BN."""
  return jax.tree.map(lambda p: p.ndim > 1, params)


def create_optimizer(opt: OptimizerSettings | Any,
                     num_train_steps: int) -> optax.GradientTransformation:
  """An optax transformation for the settings (or a config block)."""
  opt = opt if isinstance(opt, OptimizerSettings) else read(opt)
  schedule = create_schedule(opt, num_train_steps)
  wd = float(opt.weight_decay)
  parts = []
  if wd and opt.name != "adamw":
    parts.append(optax.add_decayed_weights(wd, mask=_kernel_mask))
  if opt.name == "sgd":
    parts.append(optax.sgd(schedule, momentum=opt.momentum or None,
                           nesterov=opt.nesterov))
  elif opt.name == "adam":
    parts.append(optax.adam(schedule, b1=opt.b1, b2=opt.b2, eps=opt.eps))
  elif opt.name == "rmsprop":
    parts.append(optax.rmsprop(schedule, decay=opt.decay, eps=opt.eps))
  else:
    parts.append(optax.adamw(schedule, b1=opt.b1, b2=opt.b2, eps=opt.eps,
                             weight_decay=wd, mask=_kernel_mask))
  if opt.grad_clip_norm:
    parts.insert(0, optax.clip_by_global_norm(float(opt.grad_clip_norm)))
  return optax.chain(*parts)


def update(tx: optax.GradientTransformation, params: Any, opt_state: Any,
           grads: Any) -> tuple[Any, Any]:
  """One optimiser step of per-device code: the gradients are averaged over
  every device (`lax.pmean` over 'data'), transformed by `tx` and applied.

  Returns (new params, new optimiser state).
  """
  grads = jax.lax.pmean(grads, AXIS)
  updates, opt_state = tx.update(grads, opt_state, params)
  return optax.apply_updates(params, updates), opt_state


class ParamEMAState(NamedTuple):
  """`param_ema`'s state: steps taken and the moving average of the
  parameters."""
  count: jax.Array
  ema: Any


def param_ema(decay: float) -> optax.GradientTransformation:
  """Keeps an exponential moving average of the parameters after each
  update, passing the updates through unchanged: chain it last
  (`optax.chain(tx, param_ema(decay))`), where the updates are final. At
  step t the average moves with min(decay, (1 + t) / (10 + t)), TensorFlow's
  ExponentialMovingAverage warm-up."""

  def init(params):
    return ParamEMAState(count=jnp.zeros((), jnp.int32),
                         ema=jax.tree.map(jnp.copy, params))

  def update(updates, state, params=None):
    if params is None:
      raise ValueError("param_ema needs the parameters")
    t = state.count.astype(jnp.float32)
    d = jnp.minimum(decay, (1. + t) / (10. + t))
    new = optax.apply_updates(params, updates)
    ema = jax.tree.map(lambda e, p: d * e + (1. - d) * p, state.ema, new)
    return updates, ParamEMAState(count=state.count + 1, ema=ema)

  return optax.GradientTransformation(init, update)


def averaged_params(opt_state: Any) -> Any:
  """The moving average `param_ema` keeps in an optimiser state (as the
  train step holds it, or as a checkpoint restores it without a target:
  lists and dicts, where the state is {'count', 'ema'})."""
  found = []

  def visit(node):
    if isinstance(node, ParamEMAState):
      found.append(node.ema)
    elif isinstance(node, dict):
      if set(node) == {"count", "ema"}:
        found.append(node["ema"])
      else:
        for v in node.values():
          visit(v)
    elif isinstance(node, (list, tuple)):
      for v in node:
        visit(v)

  visit(opt_state)
  if not found:
    raise ValueError("this optimiser state keeps no parameter average "
                     "(config.ema.decay is 0)")
  return found[0]
