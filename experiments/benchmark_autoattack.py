"""AutoAttack throughput: advjax.attacks.autoattack beside torchattacks, same weights.

The quickstart classifier (configs/quickstart.py: SmallCNN widths (32, 64),
one conv per stage, hidden 128) with random weights, on Fashion-MNIST test
images labelled with the model's own predictions. With eps = 0 (the default)
no point can be broken, so every attack of AutoAttack "standard" runs in
full on every point: the per-point worst case, the same work on both sides
(APGD-CE 100 steps, APGD-T 9 x 100, FAB-T 9 x 100, Square 5000 queries in
advjax; torchattacks' AutoAttack builds APGD, APGD-T and FAB with 10 steps,
so by default its APGD/FAB steps are raised to 100 here to match).

Each round runs advjax and then torchattacks, each in a fresh process
(advjax: the first call compiles, the second is timed; torchattacks: one
timed call), and prints images/s and the machine's load average:

  python experiments/benchmark_autoattack.py
  python experiments/benchmark_autoattack.py --num_images=64 --rounds=3
  python experiments/benchmark_autoattack.py --version=fast --eps=0.03

Needs the torch venv of `.ci/torch_env.sh` for the torchattacks side.
Numbers are for the machine it runs on; nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TORCH_PY = os.path.join(ROOT, ".ci", "torch-venv", "bin", "python")
WIDTHS, HIDDEN, NUM_CLASSES = (32, 64), 128, 10


def load_avg() -> str:
  return "load %.2f %.2f %.2f" % os.getloadavg()


def prepare(folder: str, num_images: int) -> None:
  """Random quickstart weights and self-labelled test images, as npz."""
  sys.path.insert(0, ROOT)
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from flax import traverse_util  # pylint: disable=g-import-not-at-top
  from advjax import input_pipeline  # pylint: disable=g-import-not-at-top
  from advjax.models.cnn import SmallCNN  # pylint: disable=g-import-not-at-top
  source = input_pipeline.get_source("fashion_mnist", "test")
  examples = source.__getitems__(list(range(num_images)))
  x = np.stack([e["image"] for e in examples]).astype(np.float32) / 127.5 - 1
  model = SmallCNN(num_classes=NUM_CLASSES, widths=WIDTHS, convs_per_stage=1,
                   hidden=HIDDEN)
  variables = model.init(jax.random.key(0), x[:1], train=False)
  y = np.asarray(model.apply(variables, x, train=False).argmax(-1), np.int32)
  np.savez(os.path.join(folder, "weights.npz"), **{
      k: np.asarray(v) for k, v in
      traverse_util.flatten_dict(jax.device_get(variables), sep="/").items()})
  np.savez(os.path.join(folder, "data.npz"), x=x, y=y)


def run_advjax(folder: str, args) -> dict:
  sys.path.insert(0, ROOT)
  import functools  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from flax import traverse_util  # pylint: disable=g-import-not-at-top
  from advjax.attacks import autoattack  # pylint: disable=g-import-not-at-top
  from advjax.models.cnn import SmallCNN  # pylint: disable=g-import-not-at-top
  variables = traverse_util.unflatten_dict(
      dict(np.load(os.path.join(folder, "weights.npz"))), sep="/")
  data = np.load(os.path.join(folder, "data.npz"))
  model = SmallCNN(num_classes=NUM_CLASSES, widths=WIDTHS, convs_per_stage=1,
                   hidden=HIDDEN)
  logits_fn = functools.partial(model.apply, variables, train=False)
  times = []
  for _ in range(2):  # compile + run, then run
    start = time.perf_counter()
    result = autoattack.autoattack(logits_fn, data["x"], data["y"], args.eps,
                                   norm=args.norm, version=args.version,
                                   batch_size=args.num_images)
    times.append(time.perf_counter() - start)
  return {"seconds": times[1], "first_call_seconds": times[0],
          "robust": float(result.robust.mean())}


def run_torchattacks(folder: str, args) -> dict:
  sys.path.insert(0, os.path.join(ROOT, "tests", "torch_reference"))
  import numpy as np  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  import torchattacks  # pylint: disable=g-import-not-at-top
  from autoattack_torchattacks import SmallCNN  # pylint: disable=g-import-not-at-top
  data = np.load(os.path.join(folder, "data.npz"))
  x = torch.from_numpy((data["x"].transpose(0, 3, 1, 2) + 1.) / 2.)
  y = torch.from_numpy(data["y"].astype(np.int64))
  model = SmallCNN(dict(np.load(os.path.join(folder, "weights.npz"))),
                   WIDTHS, HIDDEN, x.shape[1], NUM_CLASSES).eval()
  norm = {"linf": "Linf", "l2": "L2"}[args.norm]
  attack = torchattacks.AutoAttack(model, norm=norm, eps=args.eps / 2,
                                   version="standard", n_classes=NUM_CLASSES,
                                   seed=0)
  inner = attack._autoattack.attacks  # pylint: disable=protected-access
  if args.version == "fast":
    inner[:] = inner[:2]
  for a in inner:
    if hasattr(a, "steps"):
      a.steps = args.torch_steps
  start = time.perf_counter()
  adv = attack(x, y)
  seconds = time.perf_counter() - start
  with torch.no_grad():
    robust = (model(adv).argmax(1) == y).float().mean().item()
  return {"seconds": seconds, "robust": robust}


def spawn(python: str, side: str, folder: str, argv: list[str]) -> dict:
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env.setdefault("JAX_PLATFORMS", "cpu")
  proc = subprocess.run(
      [python, os.path.abspath(__file__), f"--side={side}",
       f"--folder={folder}", *argv], env=env, capture_output=True, text=True)
  if proc.returncode:
    raise RuntimeError(f"{side} failed:\n{proc.stderr[-3000:]}")
  return json.loads(proc.stdout.strip().splitlines()[-1])


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--num_images", type=int, default=16)
  parser.add_argument("--rounds", type=int, default=2)
  parser.add_argument("--eps", type=float, default=0.0,
                      help="in [-1, 1] units; 0: nothing breaks, full work")
  parser.add_argument("--norm", default="linf", choices=("linf", "l2"))
  parser.add_argument("--version", default="standard",
                      choices=("standard", "fast"))
  parser.add_argument("--torch_steps", type=int, default=100,
                      help="APGD/FAB steps in torchattacks (its default: 10)")
  parser.add_argument("--side", default="", help=argparse.SUPPRESS)
  parser.add_argument("--folder", default="", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.side:
    run = {"advjax": run_advjax, "torchattacks": run_torchattacks}[args.side]
    print(json.dumps(run(args.folder, args)))
    return
  if not os.path.exists(TORCH_PY):
    sys.exit(f"no torch venv at {TORCH_PY}: run `bash .ci/torch_env.sh`")
  argv = [f"--num_images={args.num_images}", f"--eps={args.eps}",
          f"--norm={args.norm}", f"--version={args.version}",
          f"--torch_steps={args.torch_steps}"]
  rates = {"advjax": [], "torchattacks": []}
  with tempfile.TemporaryDirectory() as folder:
    prepare(folder, args.num_images)
    print(f"AutoAttack {args.version}, {args.norm} eps={args.eps}, "
          f"{args.num_images} images, quickstart SmallCNN (random weights); "
          f"{load_avg()}", flush=True)
    for r in range(args.rounds):
      for side, python in (("advjax", sys.executable),
                           ("torchattacks", TORCH_PY)):
        before = load_avg()
        out = spawn(python, side, folder, argv)
        rate = args.num_images / out["seconds"]
        rates[side].append(rate)
        extra = (f", first call {out['first_call_seconds']:.1f}s"
                 if "first_call_seconds" in out else "")
        print(f"round {r}: {side:12s} {rate:8.3f} images/s "
              f"({out['seconds']:.1f}s{extra}; robust {out['robust']:.0%}); "
              f"{before} -> {load_avg()}", flush=True)
  ours, theirs = (statistics.median(rates[k])
                  for k in ("advjax", "torchattacks"))
  print(f"median: advjax {ours:.3f} images/s, torchattacks {theirs:.3f} "
        f"images/s, ratio {ours / theirs:.2f}x")


if __name__ == "__main__":
  main()
