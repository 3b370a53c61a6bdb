"""JAX side of tests/test_autoattack_reference.py, run in its own process.

  python tests/autoattack_reference_worker.py train DIR
  python tests/autoattack_reference_worker.py attack DIR

Both read DIR/settings.json. `train` trains the small Fashion-MNIST
classifier and writes DIR/weights.npz (flax variables, "/"-joined keys) and
DIR/data.npz (the test images and labels that every attack uses). `attack`
runs advjax.attacks.autoattack's attacks, AutoAttack, FGSM and PGD on them
with the same settings as the torchattacks script and writes DIR/advjax.npz
(robust_<name> bool [N], seconds_<name>, logits [N, K], and the range of
every adversarial image, in_bounds_<name>).

The attacks see the model as torchattacks does: on [0, 1] images
(x01 -> model(2 x01 - 1)), with bounds=(0, 1) and eps in [0, 1] units
(settings' eps / 2), so the comparison also checks `bounds`.

It runs in a subprocess so that XLA compiles with its normal optimisations:
tests/conftest.py turns them off for the test process, which makes the
attacks' long loops about ten times slower.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

from advjax import attacks
from advjax.attacks import autoattack
from advjax import input_pipeline
from advjax.models.cnn import SmallCNN


def load(split: str, count: int):
  """The first `count` examples of a Fashion-MNIST split, images in [-1, 1]."""
  source = input_pipeline.get_source("fashion_mnist", split)
  examples = source.__getitems__(list(range(count)))
  x = np.stack([e["image"] for e in examples]).astype(np.float32) / 127.5 - 1.
  return x, np.asarray([e["label"] for e in examples], np.int32)


def train(model, x, y, steps: int, batch_size: int, seed: int):
  """Adam on the cross-entropy, sequential minibatches; returns variables."""
  variables = model.init(jax.random.key(seed), x[:1], train=False)
  params, stats = variables["params"], variables["batch_stats"]
  opt = optax.adam(3e-3)
  opt_state = opt.init(params)

  @jax.jit
  def step(params, stats, opt_state, xb, yb):
    def loss_fn(p):
      logits, updates = model.apply({"params": p, "batch_stats": stats}, xb,
                                    train=True, mutable=["batch_stats"])
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, yb)
      return loss.mean(), updates["batch_stats"]

    (_, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = opt.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), stats, opt_state

  for i in range(steps):
    lo = (i * batch_size) % (len(x) - batch_size + 1)
    params, stats, opt_state = step(params, stats, opt_state,
                                    x[lo:lo + batch_size],
                                    y[lo:lo + batch_size])
  return {"params": params, "batch_stats": stats}


def make_model(s) -> SmallCNN:
  return SmallCNN(num_classes=s["num_classes"], widths=tuple(s["widths"]),
                  convs_per_stage=1, hidden=s["hidden"])


def train_and_save(folder: str, s) -> None:
  start = time.time()
  x_train, y_train = load("train", s["train_steps"] * s["train_batch"])
  x, y = load("test", s["num_images"])
  variables = train(make_model(s), x_train, y_train, s["train_steps"],
                    s["train_batch"], s["seed"])
  np.savez(os.path.join(folder, "weights.npz"), **{
      k: np.asarray(v) for k, v in
      traverse_util.flatten_dict(jax.device_get(variables), sep="/").items()})
  np.savez(os.path.join(folder, "data.npz"), x=x, y=y)
  print(f"trained in {time.time() - start:.1f}s", flush=True)


class _On01:
  """The [-1, 1] model on [0, 1] images; hashable by the model's apply, so
  AutoAttack's compiled programs are reused across chunks."""

  def __init__(self, apply):
    self.apply = apply

  def __call__(self, x01):
    return self.apply(2. * x01 - 1.)

  def __hash__(self):
    return hash(self.apply)

  def __eq__(self, other):
    return isinstance(other, _On01) and other.apply is self.apply


def attack_and_save(folder: str, s) -> None:
  weights = dict(np.load(os.path.join(folder, "weights.npz")))
  variables = traverse_util.unflatten_dict(weights, sep="/")
  data = np.load(os.path.join(folder, "data.npz"))
  x, y = data["x"], data["y"]
  apply = functools.partial(make_model(s).apply, variables, train=False)
  out = {"logits": np.asarray(jax.jit(apply)(x))}
  logits_fn = _On01(apply)
  x = (x + 1.) / 2.  # torchattacks' [0, 1]
  bounds = (0., 1.)
  eps, norm = s["eps"] / 2., s["norm"]
  # torchattacks' settings: its AutoAttack builds APGD, APGD-T and FAB with
  # their default `steps` and Square with the rescaled p schedule.
  options = {"apgd-ce": {"num_steps": s["steps"]},
             "apgd-t": {"num_steps": s["steps"]},
             "fab-t": {"num_steps": s["steps"]},
             "square": {"rescale_schedule": True,
                        "num_queries": s["square_queries"]}}
  runs = {name: {"attacks": (name,), "options": {name: options[name]}}
          for name in autoattack.VERSIONS["standard"]}
  runs["autoattack"] = {"version": "standard", "options": options}
  for name, kwargs in runs.items():
    begin = time.time()
    result = autoattack.autoattack(logits_fn, x, y, eps, norm=norm,
                                   rng=s["seed"], batch_size=s["num_images"],
                                   bounds=bounds, **kwargs)
    out[f"in_bounds_{name}"] = bool(
        result.images.min() >= 0. and result.images.max() <= 1.)
    out[f"seconds_{name}"] = time.time() - begin
    out[f"robust_{name}"] = result.robust
    print(f"advjax {name}: robust {result.robust.mean():.2%} in "
          f"{out[f'seconds_{name}']:.1f}s", flush=True)
  print(result.summary(), flush=True)

  predict = jax.jit(lambda z: jnp.argmax(logits_fn(z), axis=-1))
  x_fgsm = attacks.fgsm(logits_fn, x, y, eps, bounds=bounds)
  out["robust_fgsm"] = np.asarray(predict(x_fgsm) == y)
  # PGD with as many steps as each APGD run above.
  pgd = attacks.pgd(logits_fn, x, y, jax.random.key(s["seed"]), eps=eps,
                    step_size=2.5 * eps / s["steps"], num_steps=s["steps"],
                    norm=norm, bounds=bounds)
  out["robust_pgd"] = np.asarray(predict(pgd) == y)
  for name, adv in (("fgsm", x_fgsm), ("pgd", pgd)):
    out[f"in_bounds_{name}"] = bool(jnp.min(adv) >= 0. and jnp.max(adv) <= 1.)
  np.savez(os.path.join(folder, "advjax.npz"), **out)


if __name__ == "__main__":
  mode, folder = sys.argv[1:]
  with open(os.path.join(folder, "settings.json")) as f:
    settings = json.load(f)
  {"train": train_and_save, "attack": attack_and_save}[mode](folder, settings)
