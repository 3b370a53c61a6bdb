"""Runs torchattacks' APGD, APGD-T, FAB-T, Square and AutoAttack on the
classifier that tests/test_autoattack_reference.py trained in JAX.

Test-only: run with the torch venv made by .ci/torch_env.sh, e.g.
  .ci/torch-venv/bin/python tests/torch_reference/autoattack_torchattacks.py DIR

Reads from DIR:
  weights.npz     the flax SmallCNN variables, keys like "params/conv0_0/kernel"
  data.npz        x [N, H, W, C] float32 in [-1, 1], y [N] int labels
  settings.json   eps and norm (in [-1, 1] units), widths, hidden, the
                  attacks' step and query counts, seed
Writes DIR/torchattacks.npz: for each attack, robust_<name> bool [N] (still
correctly classified at the attack's output, which lies in the eps-ball) and
seconds_<name>; plus logits [N, K] of the clean images.

The torch network is the same function as the JAX one: it takes images in
[0, 1] (torchattacks' convention), maps them to 2x - 1 and applies the same
layers (conv without bias, BatchNorm in eval mode, ReLU, 2x2 max-pool, the
hidden layer, the logits), flattening in NHWC order as flax does. So eps in
torch units is our eps / 2.
"""

import json
import os
import sys
import time

import numpy as np
import torch
import torchattacks
from torch import nn


class SmallCNN(nn.Module):
  """advjax.models.cnn.SmallCNN (one conv per stage) on [0, 1] inputs."""

  def __init__(self, weights, widths, hidden, channels, num_classes):
    super().__init__()
    layers = []
    for i, width in enumerate(widths):
      conv = nn.Conv2d(channels, width, 3, padding=1, bias=False)
      bn = nn.BatchNorm2d(width, eps=1e-5)
      name = f"{i}_0"
      conv.weight.data = torch.from_numpy(
          weights[f"params/conv{name}/kernel"].transpose(3, 2, 0, 1).copy())
      bn.weight.data = torch.from_numpy(weights[f"params/bn{name}/scale"])
      bn.bias.data = torch.from_numpy(weights[f"params/bn{name}/bias"])
      bn.running_mean.data = torch.from_numpy(
          weights[f"batch_stats/bn{name}/mean"])
      bn.running_var.data = torch.from_numpy(
          weights[f"batch_stats/bn{name}/var"])
      layers += [conv, bn, nn.ReLU(), nn.MaxPool2d(2)]
      channels = width
    self.features = nn.Sequential(*layers)
    self.hidden = nn.Linear(1, hidden)
    self.logits = nn.Linear(hidden, num_classes)
    for layer, name in ((self.hidden, "hidden"), (self.logits, "logits")):
      layer.weight.data = torch.from_numpy(
          weights[f"params/{name}/kernel"].T.copy())
      layer.bias.data = torch.from_numpy(weights[f"params/{name}/bias"])

  def forward(self, x01):
    h = self.features(2. * x01 - 1.)
    h = h.permute(0, 2, 3, 1).reshape(h.shape[0], -1)  # NHWC order, as flax
    return self.logits(torch.relu(self.hidden(h)))


def distance(a, b, norm):
  d = (a - b).reshape(a.shape[0], -1)
  return d.abs().max(1)[0] if norm == "Linf" else d.norm(dim=1)


def main(folder):
  with open(os.path.join(folder, "settings.json")) as f:
    s = json.load(f)
  weights = dict(np.load(os.path.join(folder, "weights.npz")))
  data = np.load(os.path.join(folder, "data.npz"))
  x = torch.from_numpy((data["x"].transpose(0, 3, 1, 2) + 1.) / 2.)
  y = torch.from_numpy(data["y"].astype(np.int64))
  torch.manual_seed(s["seed"])
  model = SmallCNN(weights, s["widths"], s["hidden"], x.shape[1],
                   s["num_classes"]).eval()
  norm = {"linf": "Linf", "l2": "L2"}[s["norm"]]
  eps = s["eps"] / 2.
  common = {"norm": norm, "eps": eps, "seed": s["seed"]}
  steps, queries = s["steps"], s["square_queries"]
  k = s["num_classes"]
  attacks = {
      "apgd-ce": torchattacks.APGD(model, steps=steps, loss="ce", **common),
      "apgd-t": torchattacks.APGDT(model, steps=steps, n_classes=k, **common),
      "fab-t": torchattacks.FAB(model, steps=steps, multi_targeted=True,
                                n_classes=k, **common),
      "square": torchattacks.Square(model, n_queries=queries, **common),
      "autoattack": torchattacks.AutoAttack(model, version="standard",
                                            n_classes=k, **common),
  }
  # torchattacks' standard AutoAttack, except for Square's query budget
  # (5000 there), which the test may cut to stay short.
  square = attacks["autoattack"]._autoattack.attacks[-1]  # pylint: disable=protected-access
  assert isinstance(square, torchattacks.Square)
  square.n_queries = queries
  out = {}
  with torch.no_grad():
    out["logits"] = model(x).numpy()
  for name, attack in attacks.items():
    start = time.time()
    adv = attack(x, y)
    out[f"seconds_{name}"] = time.time() - start
    with torch.no_grad():
      correct = model(adv).argmax(1) == y
    inside = distance(adv, x, norm) <= eps * (1 + 1e-5) + 1e-6
    out[f"robust_{name}"] = (correct | ~inside).numpy()
    print(f"torchattacks {name}: robust {out[f'robust_{name}'].mean():.2%} "
          f"in {out[f'seconds_{name}']:.1f}s", flush=True)
  np.savez(os.path.join(folder, "torchattacks.npz"), **out)


if __name__ == "__main__":
  main(sys.argv[1])
