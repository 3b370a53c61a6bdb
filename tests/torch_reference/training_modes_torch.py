"""PyTorch (and ART) side of tests/test_training_modes_reference.py.

Test-only: run with the torch venv made by .ci/torch_env.sh, e.g.
  .ci/torch-venv/bin/python tests/torch_reference/training_modes_torch.py DIR

Reads from DIR: weights.npz (flax SmallCNN variables, "/"-joined keys, as
autoattack_torchattacks.py), data.npz (x [N, H, W, C] in [-1, 1], y, the
fixed starts x_start (Gaussian, TRADES / MART) and delta (uniform, fast AT),
a fixed adversarial batch x_adv) and settings.json (eps, step_size,
num_steps, beta, alpha in [-1, 1] units; widths, hidden). Writes
DIR/torch.npz:

- trades_attack, mart_attack, fgsm_rs: the inner attacks written from the
  authors' loops (yaodongyu/TRADES trades.py, YisenWang/MART mart.py,
  locuslab/fast_adversarial CIFAR10/train_fgsm.py), BatchNorm in eval mode,
  from the given starts; images back in [-1, 1];
- trades_loss, mart_loss: per-example losses on (x, x_adv), train mode, one
  forward pass each: TRADES as the authors' code computes it (CE +
  beta * KLDivLoss), MART from the paper's equations (Wang et al. 2020, eq.
  10); mart_loss_authors: their code's formula with its constants;
- with ART importable (art_error otherwise): art_trades_mean, the batch loss
  of ART's AdversarialTrainerTRADESPyTorch on the same (x, x_adv) (its
  attack is a stub returning x_adv: ART's TRADES takes any attack, not the
  KL one), art_fbf_x (the perturbed batch of ART's
  AdversarialTrainerFBFPyTorch with its random start replaced by ours) and
  art_fbf_mean (its training loss on it).

The network takes [0, 1] inputs (ART's clip values); eps and steps are
halved for it.
"""

import json
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from autoattack_torchattacks import SmallCNN  # pylint: disable=g-import-not-at-top,wrong-import-position


def sign_loop(model, x, start, objective, eps, step, steps):
  """The authors' L-inf loop: sign step, project on the ball, clamp."""
  x_adv = start.clone()
  for _ in range(steps):
    x_adv.requires_grad_()
    with torch.enable_grad():
      loss = objective(model(x_adv))
    grad = torch.autograd.grad(loss, [x_adv])[0]
    x_adv = x_adv.detach() + step * torch.sign(grad.detach())
    x_adv = torch.min(torch.max(x_adv, x - eps), x + eps)
    x_adv = torch.clamp(x_adv, 0.0, 1.0)
  return torch.clamp(x_adv, 0.0, 1.0).detach()


def mart_paper(logits, logits_adv, y, beta):
  """Wang et al. 2020, eq. 10, per example."""
  p, q = F.softmax(logits, 1), F.softmax(logits_adv, 1)
  q_true = q.gather(1, y[:, None])[:, 0]
  others = q.masked_fill(F.one_hot(y, q.shape[1]).bool(), -1.)
  bce = -torch.log(q_true) - torch.log(1. - others.max(1)[0])
  kl = (p * (torch.log(p) - torch.log(q))).sum(1)
  return bce + beta * kl * (1. - p.gather(1, y[:, None])[:, 0])


def mart_authors(logits, logits_adv, y, beta):
  """The per-example terms of YisenWang/MART mart.py's loss."""
  adv_probs = F.softmax(logits_adv, dim=1)
  tmp1 = torch.argsort(adv_probs, dim=1)[:, -2:]
  new_y = torch.where(tmp1[:, -1] == y, tmp1[:, -2], tmp1[:, -1])
  loss_adv = (F.cross_entropy(logits_adv, y, reduction="none")
              + F.nll_loss(torch.log(1.0001 - adv_probs + 1e-12), new_y,
                           reduction="none"))
  nat_probs = F.softmax(logits, dim=1)
  true_probs = nat_probs.gather(1, y[:, None])[:, 0]
  kl = nn.KLDivLoss(reduction="none")(torch.log(adv_probs + 1e-12),
                                      nat_probs).sum(1)
  return loss_adv + beta * kl * (1.0000001 - true_probs)


def run_art(make_model, x, y, x_adv, delta, s, out):
  """ART's TRADES and FBF trainers on the same network and inputs."""
  try:
    from art.defences.trainer import adversarial_trainer_fbf_pytorch as fbf  # pylint: disable=g-import-not-at-top
    from art.defences.trainer import AdversarialTrainerTRADESPyTorch  # pylint: disable=g-import-not-at-top
    from art.estimators.classification import PyTorchClassifier  # pylint: disable=g-import-not-at-top
  except Exception as e:  # pylint: disable=broad-except
    out["art_error"] = np.asarray(f"{type(e).__name__}: {e}")
    return
  n, k = x.shape[0], s["num_classes"]

  def classifier():
    model = make_model()
    return PyTorchClassifier(
        model=model, loss=nn.CrossEntropyLoss(), input_shape=x.shape[1:],
        nb_classes=k, optimizer=torch.optim.SGD(model.parameters(), lr=0.),
        clip_values=(0., 1.), device_type="cpu")

  class FixedAttack:  # ART's TRADES asks its attack for the examples
    def generate(self, x, y=None):
      del x, y
      return x_adv.numpy()

  trainer = AdversarialTrainerTRADESPyTorch(classifier(), FixedAttack(),
                                            beta=s["beta"])
  onehot = np.eye(k, dtype=np.float32)[y.numpy()]
  loss, _, count = trainer._batch_process(x.numpy(), onehot)  # pylint: disable=protected-access
  out["art_trades_mean"] = np.float32(loss / count)

  # FBF draws delta with random_sphere (uniform in the L-inf ball): ours,
  # clamped to the valid range as Wong et al.'s CIFAR code does.
  start = (torch.clamp(x + delta, 0., 1.) - x).numpy()
  fbf.random_sphere = lambda n_, m, r, norm: start.reshape(n_, m)
  est = classifier()
  seen = []
  apply = est._apply_preprocessing  # pylint: disable=protected-access

  def record(xb, *args, **kw):  # the last call is the training batch's
    seen.append(xb.detach().numpy().copy() if torch.is_tensor(xb)
                else np.array(xb))
    return apply(xb, *args, **kw)

  est._apply_preprocessing = record  # pylint: disable=protected-access
  trainer = fbf.AdversarialTrainerFBFPyTorch(est, eps=s["eps"] / 2.)
  loss, _, count = trainer._batch_process(x.numpy(), onehot, 0.)  # pylint: disable=protected-access
  out["art_fbf_x"] = seen[-1] * 2. - 1.
  out["art_fbf_mean"] = np.float32(loss / count)
  del n


def main(folder):
  with open(os.path.join(folder, "settings.json")) as f:
    s = json.load(f)
  weights = dict(np.load(os.path.join(folder, "weights.npz")))
  data = dict(np.load(os.path.join(folder, "data.npz")))
  to01 = lambda a: torch.from_numpy((a.transpose(0, 3, 1, 2) + 1.) / 2.)
  back = lambda t: t.numpy().transpose(0, 2, 3, 1) * 2. - 1.
  x, x_start, x_adv = (to01(data[k]) for k in ("x", "x_start", "x_adv"))
  delta = torch.from_numpy(data["delta"].transpose(0, 3, 1, 2) / 2.)
  y = torch.from_numpy(data["y"].astype(np.int64))
  # A copy each: the torch network shares its BatchNorm averages with the
  # arrays it is built from, and train-mode passes update them in place.
  make_model = lambda: SmallCNN({k: v.copy() for k, v in weights.items()},
                                s["widths"], s["hidden"], x.shape[1],
                                s["num_classes"])
  model = make_model().eval()
  eps, step = s["eps"] / 2., s["step_size"] / 2.
  out = {}
  with torch.no_grad():
    p_nat = F.softmax(model(x), dim=1)
  kl_sum = nn.KLDivLoss(reduction="sum")
  out["trades_attack"] = back(sign_loop(
      model, x, x_start, lambda z: kl_sum(F.log_softmax(z, dim=1), p_nat),
      eps, step, s["num_steps"]))
  out["mart_attack"] = back(sign_loop(
      model, x, x_start, lambda z: F.cross_entropy(z, y), eps, step,
      s["num_steps"]))
  # Wong et al.: clamp the start to the range, one signed step on delta,
  # clamp delta to the ball and x + delta to the range.
  d = torch.clamp(x + delta, 0., 1.) - x
  d.requires_grad_()
  F.cross_entropy(model(x + d), y).backward()
  d = torch.clamp(d + s["alpha"] / 2. * torch.sign(d.grad), -eps, eps)
  out["fgsm_rs"] = back(torch.clamp(x + d.detach(), 0., 1.))

  model.train()
  with torch.no_grad():
    logits, logits_adv = model(x), model(x_adv)
  kl = nn.KLDivLoss(reduction="none")(F.log_softmax(logits_adv, dim=1),
                                      F.softmax(logits, dim=1)).sum(1)
  out["trades_loss"] = (F.cross_entropy(logits, y, reduction="none")
                        + s["beta"] * kl).numpy()
  out["mart_loss"] = mart_paper(logits, logits_adv, y, s["beta"]).numpy()
  out["mart_loss_authors"] = mart_authors(logits, logits_adv, y,
                                          s["beta"]).numpy()
  run_art(make_model, x, y, x_adv, delta, s, out)
  np.savez(os.path.join(folder, "torch.npz"), **out)


if __name__ == "__main__":
  main(sys.argv[1])
