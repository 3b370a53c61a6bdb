"""Train-step throughput and compile time of each classifier config.

Synthetic batches of the configured shape (no dataset needed), the real train
step, data-parallel over all local devices. Prints one line per config:

  python experiments/benchmark.py                    # every classifier config
  python experiments/benchmark.py --configs=quickstart --steps=50
  python experiments/benchmark.py --batch_size=128   # override the configs'

Numbers are for the machine it runs on; nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import numpy as np
from jax.sharding import PartitionSpec as P

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from advjax import config_utils, input_pipeline, models, parallel  # pylint: disable=g-import-not-at-top
from advjax.trainers import classifier as train  # pylint: disable=g-import-not-at-top

CLASSIFIER_CONFIGS = ("quickstart", "densenet_cifar10", "densenet_cifar100")


def load_config(name: str):
  return config_utils.load(os.path.join(ROOT, "configs", name + ".py"))


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
  state = parallel.replicate(state, mesh)
  rng = parallel.replicate(jax.random.key(1), mesh)
  step = parallel.data_parallel(train.train_step, mesh,
                                in_specs=(P(), P(parallel.AXIS), P()),
                                out_specs=(P(), P()), donate_argnums=(0,))
  gen = np.random.default_rng(0)
  batch = parallel.shard_batch({
      "image": gen.uniform(-1, 1, (config.batch_size, *info.image_shape)
                           ).astype(np.float32),
      "label": gen.integers(0, info.num_classes, config.batch_size
                            ).astype(np.int32)}, mesh)
  t0 = time.perf_counter()
  compiled = step.lower(state, batch, rng).compile()
  return compiled, state, batch, rng, n_params, time.perf_counter() - t0


def benchmark(name: str, steps: int, batch_size: int | None,
              dtype: str | None) -> dict[str, float]:
  config = load_config(name)
  if batch_size:
    config.batch_size = batch_size
  if dtype:
    config.dtype = dtype
  compiled, state, batch, rng, n_params, compile_s = synthetic_step(config)
  state, metrics = compiled(state, batch, rng)  # warm-up
  jax.block_until_ready(metrics)
  t0 = time.perf_counter()
  for _ in range(steps):
    state, metrics = compiled(state, batch, rng)
  jax.block_until_ready(metrics)
  elapsed = time.perf_counter() - t0
  return {"params": n_params, "batch": config.batch_size,
          "compile_s": compile_s, "step_ms": 1000 * elapsed / steps,
          "images_per_s": steps * config.batch_size / elapsed}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--configs", default=",".join(CLASSIFIER_CONFIGS))
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--batch_size", type=int, default=None)
  parser.add_argument("--dtype", default=None, help="float32 or bfloat16")
  args = parser.parse_args()
  devices = jax.devices()
  print(f"backend {jax.default_backend()}, {len(devices)} device(s): "
        f"{devices[0].device_kind}")
  print(f"{'config':<20} {'params':>10} {'batch':>6} {'compile s':>10} "
        f"{'step ms':>9} {'images/s':>10}")
  for name in args.configs.split(","):
    r = benchmark(name.strip(), args.steps, args.batch_size, args.dtype)
    print(f"{name:<20} {r['params']:>10,} {r['batch']:>6} "
          f"{r['compile_s']:>10.1f} {r['step_ms']:>9.1f} "
          f"{r['images_per_s']:>10.0f}", flush=True)


if __name__ == "__main__":
  main()
