"""What keeping runs safe costs: checkpoint digests, the whole-state finite
guard, and per-example dropout keys.

  python experiments/benchmark_runs.py                 # all three
  python experiments/benchmark_runs.py --only=digest --repeats=9

digest:  size of a DenseNet-BC-100 (k=12) CIFAR-100 train-state checkpoint
         (~0.8M parameters plus momentum, random values as after training),
         the time orbax takes to save it
         (synchronously), and the time to write and to verify its digest.
guard:   the quickstart train step with `loop.guard_nonfinite` (loss and
         updated state checked) against a guard that checks only the loss
         (what it did before), alternating.
dropout: the quickstart step (dropout 0.3 after the hidden layer) and a
         DenseNet-BC-40 step (dropout 0.2 after every conv) with flax's
         Dropout against `example_rng.ExampleDropout`, alternating.

Steps run on synthetic batches, data-parallel over all local devices. Each
figure is the median over `--repeats` rounds; nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import tempfile
import time
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import benchmark  # pylint: disable=g-import-not-at-top
from benchmark import load_config  # pylint: disable=g-import-not-at-top
from advjax import example_rng, input_pipeline, integrity, loop, models, parallel  # pylint: disable=g-import-not-at-top
from advjax.trainers import classifier as train  # pylint: disable=g-import-not-at-top


def _train_step_runner(config) -> Callable[[], None]:
  """A function running one jitted train step of `config` on a fixed
  synthetic batch (the state carried from call to call)."""
  compiled, state, batch, rng, _, _ = benchmark.synthetic_step(config)
  box = [state]

  def run():
    box[0], metrics = compiled(box[0], batch, rng)
    jax.block_until_ready(metrics)
  run()
  return run


def _alternate(runners: dict[str, Callable[[], None]], steps: int,
               repeats: int) -> dict[str, float]:
  """Median milliseconds per step of each runner, timed in turn."""
  times = {name: [] for name in runners}
  for _ in range(repeats):
    for name, run in runners.items():
      t0 = time.perf_counter()
      for _ in range(steps):
        run()
      times[name].append(1000 * (time.perf_counter() - t0) / steps)
  return {name: statistics.median(t) for name, t in times.items()}


def _loss_only_guard(old, new, loss):
  """The guard before this change: only the loss decides."""
  ok = jnp.isfinite(loss) & (old.bad_step < 0)
  kept = jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)
  bad_step = jnp.where(ok | (old.bad_step >= 0), old.bad_step, old.step)
  return kept.replace(step=old.step + 1, bad_step=bad_step.astype(jnp.int32))


def bench_digest(repeats: int) -> None:
  config = load_config("densenet_cifar100")
  info = input_pipeline.get_dataset_info(config.dataset.name)
  model = models.create_model(config.model, info.num_classes)
  state = train.create_train_state(config, model, info.image_shape,
                                   jax.random.key(0), 1000)
  tree = {"params": state.params, "batch_stats": state.batch_stats,
          "opt_state": state.opt_state, "step": state.step}
  # Random values as in a trained state (a fresh momentum of zeros would
  # compress to nothing).
  gen = np.random.default_rng(0)
  tree = jax.tree.map(
      lambda x: gen.normal(size=x.shape).astype(x.dtype)
      if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)
  n = models.count_params(state.params)
  with tempfile.TemporaryDirectory() as tmp:
    saves, writes, verifies = [], [], []
    for r in range(repeats):
      mngr = ocp.CheckpointManager(
          tmp, options=ocp.CheckpointManagerOptions(
              max_to_keep=2, enable_async_checkpointing=False),
          item_names=("state",))
      t0 = time.perf_counter()
      mngr.save(r, args=ocp.args.Composite(state=ocp.args.StandardSave(tree)))
      mngr.wait_until_finished()
      saves.append(time.perf_counter() - t0)
      mngr.close()
      step_dir = os.path.join(tmp, str(r))
      t0 = time.perf_counter()
      integrity.write_digest(step_dir)
      writes.append(time.perf_counter() - t0)
      t0 = time.perf_counter()
      assert integrity.verify(step_dir).status == "verified"
      verifies.append(time.perf_counter() - t0)
    size = sum(os.path.getsize(os.path.join(root, f))
               for root, _, files in os.walk(step_dir) for f in files)
    count = sum(len(files) for _, _, files in os.walk(step_dir))
  print(f"digest: DenseNet-BC-100 CIFAR-100 state, {n:,} params, checkpoint "
        f"{size / 2**20:.1f} MiB in {count} files; orbax save "
        f"{1000 * statistics.median(saves):.0f} ms, write digest "
        f"{1000 * statistics.median(writes):.1f} ms, verify "
        f"{1000 * statistics.median(verifies):.1f} ms (medians of {repeats})",
        flush=True)


def bench_guard(steps: int, repeats: int) -> None:
  config = load_config("quickstart")
  runners = {"state+loss guard": _train_step_runner(config)}
  new_guard = loop.guard_nonfinite
  loop.guard_nonfinite = _loss_only_guard
  try:
    runners["loss-only guard"] = _train_step_runner(config)
  finally:
    loop.guard_nonfinite = new_guard
  result = _alternate(runners, steps, repeats)
  base = result["loss-only guard"]
  print(f"guard: quickstart step (batch {config.batch_size}): " + ", ".join(
      f"{k} {v:.2f} ms" for k, v in result.items())
        + f"; ratio {result['state+loss guard'] / base:.3f}", flush=True)


def _dropout_configs():
  dense = load_config("densenet_cifar10")
  dense.model.depth = 40
  dense.model.dropout_rate = 0.2
  dense.batch_size = 32
  return {"quickstart": load_config("quickstart"), "densenet-40": dense}


def bench_dropout(names: list[str], steps: int, repeats: int) -> None:
  configs = _dropout_configs()
  flax_dropout = nn.Dropout
  for name in names:
    config = configs[name]
    runners = {"flax Dropout": _train_step_runner(config)}
    nn.Dropout = functools.partial(example_rng.ExampleDropout,
                                   axis_name=parallel.AXIS)
    try:
      runners["ExampleDropout"] = _train_step_runner(config)
    finally:
      nn.Dropout = flax_dropout
    result = _alternate(runners, steps, repeats)
    ratio = result["ExampleDropout"] / result["flax Dropout"]
    print(f"dropout: {name} step (batch {config.batch_size}, dropout "
          f"{config.model.dropout_rate}): " + ", ".join(
              f"{k} {v:.2f} ms" for k, v in result.items())
          + f"; ratio {ratio:.3f}", flush=True)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--only", default="digest,guard,dropout")
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--repeats", type=int, default=7)
  parser.add_argument("--dropout_models", default="quickstart,densenet-40")
  args = parser.parse_args()
  devices = jax.devices()
  print(f"backend {jax.default_backend()}, {len(devices)} device(s): "
        f"{devices[0].device_kind}; load average "
        f"{', '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
  parts = args.only.split(",")
  if "digest" in parts:
    bench_digest(args.repeats)
  if "guard" in parts:
    bench_guard(args.steps, args.repeats)
  if "dropout" in parts:
    bench_dropout(args.dropout_models.split(","), args.steps, args.repeats)


if __name__ == "__main__":
  main()
