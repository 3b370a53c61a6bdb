"""Train-step throughput and compile time of each classifier config, and
its FLOPs per training epoch.

Synthetic batches of the configured shape (no dataset needed), the real train
step (with the config's adversarial training), data-parallel over all local
devices. Prints one line per config (configs separated by ';', so a config's
argument may hold commas):

  python experiments/benchmark.py                    # every classifier config
  python experiments/benchmark.py --configs=quickstart --steps=50
  python experiments/benchmark.py --batch_size=128   # override the configs'
  python experiments/benchmark.py --configs="robust_cifar10:trades;robust_cifar10:pgd,model=wrn28_10" \
      --peak_tflops=989                              # an H100's bf16 peak

FLOPs: XLA's cost analysis of one forward pass in inference mode, F per image
(loops inside a compiled step are counted once by XLA, so the step itself is
not analysed). A training example costs about 3 F per train-mode pass
(forward and backward; two passes for modes with their own loss, TRADES and
MART) plus 3 F per gradient step of the mode's attack (FGSM 1, PGD, TRADES
and MART their num_steps); an epoch is that times the training images.
With --peak_tflops, the epoch's time at --utilization (0.4) of that peak:
an estimate, not a measurement. Numbers are for the machine it runs on;
nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time

import jax
import numpy as np
from jax.sharding import PartitionSpec as P

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from advjax import (adversarial_training, config_utils, input_pipeline,  # pylint: disable=g-import-not-at-top
                    models, parallel)
from advjax.trainers import classifier as train  # pylint: disable=g-import-not-at-top

CLASSIFIER_CONFIGS = ("quickstart", "densenet_cifar10", "densenet_cifar100",
                      "robust_cifar10:trades",
                      "robust_cifar10:trades,model=wrn28_10")
# Training images of each dataset (an epoch's FLOPs).
TRAIN_IMAGES = {"cifar10": 50_000, "cifar100": 50_000, "mnist": 60_000,
                "fashion_mnist": 60_000}


def load_config(name: str):
  """A shipped config by name, with an argument after ':'."""
  return config_utils.load(name)


def forward_flops(model, image_shape) -> float:
  """XLA's FLOP count of one inference-mode forward pass, per image."""
  x = jax.ShapeDtypeStruct((1, *image_shape), np.float32)
  variables = jax.eval_shape(lambda: model.init(
      jax.random.key(0), np.zeros((1, *image_shape), np.float32),
      train=False))
  cost = jax.jit(lambda v, x: model.apply(v, x, train=False)).lower(
      variables, x).compile().cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0]
  return float(cost.get("flops", float("nan"))) if cost else float("nan")


def passes_per_example(plan) -> float | None:
  """Forward-backward passes per training example: train-mode passes plus
  the attack's gradient steps (None where the attack is not one of those,
  e.g. the latent search through a GAN)."""
  if plan is None or plan.num_crafted(1000) == 0:
    return 1.0
  name, s = plan.adversary.name, plan.adversary_settings
  steps = {"fgsm": 1, "fgsm_rs": 1, "pgd": getattr(s, "num_steps", 0),
           "trades": getattr(s, "num_steps", 0),
           "mart": getattr(s, "num_steps", 0), "gan": 0}.get(name)
  if steps is None or plan.settings.generated.source == "unrestricted":
    return None
  share = plan.settings.prop
  train_passes = 2 if plan.loss is not None else 1
  return train_passes + share * steps


def synthetic_step(config):
  """(compiled train step, replicated state, batch, rng, parameter count,
  compile seconds) for `config` on a synthetic batch of its shape."""
  info = input_pipeline.get_dataset_info(config.dataset.name)
  mesh = parallel.make_mesh()
  input_pipeline.validate_batch_size(config.batch_size, mesh.size)
  model = models.create_model(config.model, info.num_classes,
                              axis_name=parallel.AXIS,
                              dtype=np.dtype(config.get("dtype", "float32")))
  state = train.create_train_state(config, model, info.image_shape,
                                   jax.random.key(0), 1000)
  n_params = models.count_params(state.params)
  gen = np.random.default_rng(0)
  synthetic = [{"image": gen.integers(0, 256, info.image_shape, np.uint8),
                "label": int(k % info.num_classes)} for k in range(64)]
  plan, frozen = adversarial_training.read(
      config, info.num_classes, info.image_shape, train_source=synthetic)
  state = parallel.replicate(state, mesh)
  rng = parallel.replicate(jax.random.key(1), mesh)
  frozen = parallel.replicate({"gan": frozen} if frozen else {}, mesh)
  step = parallel.data_parallel(
      functools.partial(train.train_step,
                        settings=train.StepSettings(plan=plan)), mesh,
      in_specs=(P(), P(parallel.AXIS), P(), P()), out_specs=(P(), P()),
      donate_argnums=(0,))
  gen = np.random.default_rng(0)
  batch = parallel.shard_batch({
      "image": gen.uniform(-1, 1, (config.batch_size, *info.image_shape)
                           ).astype(np.float32),
      "label": gen.integers(0, info.num_classes, config.batch_size
                            ).astype(np.int32)}, mesh)
  t0 = time.perf_counter()
  compiled = step.lower(state, batch, rng, frozen).compile()
  run = lambda s, b, r, c=compiled: c(s, b, r, frozen)
  extra = {"flops_per_image": forward_flops(
               models.create_model(config.model, info.num_classes,
                                   dtype=np.dtype(config.get("dtype",
                                                             "float32"))),
               info.image_shape),
           "passes": passes_per_example(plan),
           "train_images": TRAIN_IMAGES.get(info.name, 0)}
  return run, state, batch, rng, n_params, time.perf_counter() - t0, extra


def benchmark(name: str, steps: int, batch_size: int | None,
              dtype: str | None) -> dict[str, float]:
  config = load_config(name)
  if batch_size:
    config.batch_size = batch_size
  if dtype:
    config.dtype = dtype
  compiled, state, batch, rng, n_params, compile_s, extra = synthetic_step(
      config)
  state, metrics = compiled(state, batch, rng)  # warm-up
  jax.block_until_ready(metrics)
  t0 = time.perf_counter()
  for _ in range(steps):
    state, metrics = compiled(state, batch, rng)
  jax.block_until_ready(metrics)
  elapsed = time.perf_counter() - t0
  passes = extra["passes"]
  epoch = (3 * extra["flops_per_image"] * passes * extra["train_images"]
           if passes is not None else float("nan"))
  return {"params": n_params, "batch": config.batch_size,
          "compile_s": compile_s, "step_ms": 1000 * elapsed / steps,
          "images_per_s": steps * config.batch_size / elapsed,
          "gflops_per_image": extra["flops_per_image"] / 1e9,
          "passes": float("nan") if passes is None else passes,
          "epoch_pflop": epoch / 1e15}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--configs", default=";".join(CLASSIFIER_CONFIGS),
                      help="config names separated by ';'")
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--batch_size", type=int, default=None)
  parser.add_argument("--dtype", default=None, help="float32 or bfloat16")
  parser.add_argument("--peak_tflops", type=float, default=0.,
                      help="an accelerator's peak, for the epoch estimate")
  parser.add_argument("--utilization", type=float, default=0.4,
                      help="share of --peak_tflops assumed reached")
  args = parser.parse_args()
  devices = jax.devices()
  print(f"backend {jax.default_backend()}, {len(devices)} device(s): "
        f"{devices[0].device_kind}")
  est = (f" {'epoch s':>9}" if args.peak_tflops else "")
  print(f"{'config':<38} {'params':>11} {'batch':>6} {'compile s':>10} "
        f"{'step ms':>9} {'images/s':>9} {'GFLOP/img':>9} {'passes':>6} "
        f"{'epoch PFLOP':>11}" + est)
  for name in filter(None, (n.strip() for n in args.configs.split(";"))):
    r = benchmark(name, args.steps, args.batch_size, args.dtype)
    line = (f"{name:<38} {r['params']:>11,} {r['batch']:>6} "
            f"{r['compile_s']:>10.1f} {r['step_ms']:>9.1f} "
            f"{r['images_per_s']:>9.0f} {r['gflops_per_image']:>9.3f} "
            f"{r['passes']:>6.1f} {r['epoch_pflop']:>11.2f}")
    if args.peak_tflops:
      seconds = (r["epoch_pflop"] * 1e15 / (
          args.peak_tflops * 1e12 * args.utilization))
      line += f" {seconds:>9.1f}"
    print(line, flush=True)


if __name__ == "__main__":
  main()
