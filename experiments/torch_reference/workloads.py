"""The PyTorch side of experiments/benchmark_torch.py (eager PyTorch, CPU).

Each workload is the PyTorch equivalent of one advjax workload: the same
network (weights copied from advjax's, see models.load_flax), the same
losses and update rules. Run by the benchmark in the torch venv:

  .ci/torch-venv/bin/python experiments/torch_reference/workloads.py \
      --spec='{"kind": "fgsm", ...}' --weights=W.npz --steps=10

prints one JSON line {"ms": [wall-clock ms per call], "cpu_ms": [process
CPU ms per call], "threads": n}.
`step_fns(spec, variables, data)` is also what the equality checks use.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import models  # pylint: disable=g-import-not-at-top,wrong-import-position


def _nchw(x: np.ndarray) -> torch.Tensor:
  return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def _sub(variables: dict[str, np.ndarray], prefix: str) -> dict[str, Any]:
  """The variables under `prefix/` (e.g. 'classifier'), prefix removed."""
  n = len(prefix) + 1
  return {k[n:]: v for k, v in variables.items() if k.startswith(prefix + "/")}


def build_model(spec: dict[str, Any]) -> torch.nn.Module:
  """The torch network of a model spec (see benchmark_torch.MODELS)."""
  kind = spec["name"]
  shape = tuple(spec["image_shape"])
  if kind == "cnn":
    return models.SmallCNN(spec["num_classes"], shape[2], shape[0],
                           widths=spec["widths"],
                           convs_per_stage=spec["convs_per_stage"],
                           hidden=spec["hidden"],
                           dropout_rate=spec["dropout_rate"])
  if kind == "densenet":
    return models.DenseNet(spec["num_classes"], shape[2], depth=spec["depth"],
                           growth_rate=spec["growth_rate"])
  if kind == "dcgan_g":
    return models.DCGANGenerator(spec["latent_dim"], shape,
                                 spec["num_classes"], spec["width"])
  if kind == "dcgan_d":
    return models.DCGANDiscriminator(shape, spec["num_classes"],
                                     spec["width"], conditional=False,
                                     aux_classifier=True)
  if kind == "resnet_g":
    return models.ResNetGenerator(spec["latent_dim"], shape,
                                  spec["num_classes"], spec["width"])
  if kind == "resnet_d":
    return models.ResNetCritic(shape, spec["num_classes"], spec["width"])
  raise ValueError(f"unknown model {kind!r}")


def load(spec: dict[str, Any], variables: dict[str, np.ndarray], prefix: str
         ) -> torch.nn.Module:
  model = build_model(spec)
  models.load_flax(model, _sub(variables, prefix))
  return model


def _ce_sum(logits, y):
  return F.cross_entropy(logits, y, reduction="sum")


def classifier_step(spec, variables, data) -> Callable[[], dict]:
  """One training step: cross-entropy, backward, optimiser update."""
  model = load(spec["model"], variables, "classifier").train()
  x, y = _nchw(data["image"]), torch.from_numpy(data["label"]).long()
  opt = spec["optimizer"]
  if opt["name"] == "adam":
    optimizer = torch.optim.Adam(model.parameters(), lr=opt["learning_rate"])
  else:
    optimizer = torch.optim.SGD(model.parameters(), lr=opt["learning_rate"],
                                momentum=opt["momentum"],
                                nesterov=opt["nesterov"],
                                weight_decay=opt["weight_decay"])

  def step():
    optimizer.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    optimizer.step()
    return {"loss": loss}
  step.models = {"grads": model}
  return step


def _frozen(spec, variables, prefix):
  model = load(spec, variables, prefix).eval()
  for p in model.parameters():
    p.requires_grad_(False)
  return model


def fgsm_step(spec, variables, data):
  model = _frozen(spec["model"], variables, "classifier")
  x, y = _nchw(data["image"]), torch.from_numpy(data["label"]).long()
  eps = spec["eps"]

  def step():
    xg = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(_ce_sum(model(xg), y), xg)
    return {"x_adv": torch.clamp(x + eps * torch.sign(g), -1, 1)}
  return step


def pgd_step(spec, variables, data):
  model = _frozen(spec["model"], variables, "classifier")
  x, y = _nchw(data["image"]), torch.from_numpy(data["label"]).long()
  eps, size = spec["eps"], spec["step_size"]
  start = _nchw(data["start"])  # the random start, drawn by advjax

  def step():
    x_adv = torch.clamp(x + start, -1, 1)
    for _ in range(spec["num_steps"]):
      xg = x_adv.requires_grad_(True)
      (g,) = torch.autograd.grad(_ce_sum(model(xg), y), xg)
      x_adv = x_adv.detach() + size * torch.sign(g)
      x_adv = torch.clamp(x + torch.clamp(x_adv - x, -eps, eps), -1, 1)
    return {"x_adv": x_adv}
  return step


def latent_step(spec, variables, data):
  """advjax.attacks.unrestricted_attack: untargeted, Langevin gradient
  descent on the batch mean, only examples both networks get right at z0
  attacked, the `iterate` spec's iterate judged."""
  classifier = _frozen(spec["model"], variables, "classifier")
  gen = _frozen(spec["generator"], variables, "generator")
  disc = _frozen(spec["discriminator"], variables, "discriminator")
  z0 = torch.from_numpy(data["z0"])
  source = torch.from_numpy(data["label"]).long()
  noise = torch.from_numpy(data["noise"])  # [num_steps, B, D], advjax's draws
  lr, eps_z = spec["learning_rate"], spec["eps_z"]
  lambda_z, lambda_aux = spec["lambda_z"], spec["lambda_aux"]
  is_source = F.one_hot(source, spec["model"]["num_classes"]).bool()

  def forward(z):
    images = gen(z, source)
    logits, aux = classifier(images), disc(images)[1]
    logp = F.log_softmax(logits, -1)
    loss0 = -torch.max(logp.masked_fill(is_source, -float("inf")), -1).values
    z_pen = torch.clamp((z - z0) ** 2 - eps_z ** 2, min=0).mean(-1)
    aux_loss = F.cross_entropy(aux, source, reduction="none")
    keeps = aux.argmax(-1) == source
    success = (logits.argmax(-1) != source) & keeps
    right = (logits.argmax(-1) == source) & keeps
    return loss0 + lambda_z * z_pen + lambda_aux * aux_loss, images, success, right

  def step():
    z = z0.clone()
    with torch.no_grad():
      attacked = forward(z0)[3]
    done = torch.zeros(z.shape[0], dtype=torch.bool)
    for t in range(spec["num_steps"]):
      zg = z.clone().requires_grad_(True)
      loss, _, success, _ = forward(zg)
      (g,) = torch.autograd.grad(loss.mean(), zg)
      done = done | (success & attacked)
      std = (0.01 / (1 + t) ** 0.55) ** 0.5
      new_z = z - lr * (g + std * noise[t])
      frozen = ~attacked | (done if spec["iterate"] == "first" else False)
      z = torch.where(frozen[:, None], z, new_z)
    with torch.no_grad():
      loss, images, success, _ = forward(z)
    success = success & attacked
    if spec["iterate"] == "first":
      success = done | success
    return {"images": images, "success": success, "attacked": attacked,
            "loss": loss}
  return step


def wgan_gp_step(spec, variables, data):
  """advjax.trainers.gan.train_step for the AC-WGAN-GP: k critic updates
  (Wasserstein loss, gradient penalty, AC-GAN term on real images), then one
  generator update (Wasserstein + AC-GAN term on its fakes); Adam for
  both."""
  gen = load(spec["generator"], variables, "generator").train()
  critic = load(spec["discriminator"], variables, "discriminator").train()
  opt = spec["optimizer"]
  betas = (opt["b1"], opt["b2"])
  g_opt = torch.optim.Adam(gen.parameters(), lr=opt["learning_rate"],
                           betas=betas)
  d_opt = torch.optim.Adam(critic.parameters(), lr=opt["learning_rate"],
                           betas=betas)
  k = spec["critic_steps"]
  images = _nchw(data["image"])
  images = images.reshape(k, -1, *images.shape[1:])
  labels = torch.from_numpy(data["label"]).long().reshape(k, -1)
  z_d, z_g = torch.from_numpy(data["z_d"]), torch.from_numpy(data["z_g"])
  e = torch.from_numpy(data["e"])  # [k, n] gradient-penalty mixing weights
  y_g = torch.from_numpy(data["y_g"]).long()

  def critic_loss(real, y, z, e_i):
    with torch.no_grad():
      fake = gen(z, y)
    s_real, logits_real = critic(real)
    s_fake, _ = critic(fake)
    loss = s_fake.mean() - s_real.mean()
    x_hat = (e_i[:, None, None, None] * real
             + (1 - e_i[:, None, None, None]) * fake).requires_grad_(True)
    (g,) = torch.autograd.grad(critic(x_hat)[0].sum(), x_hat,
                               create_graph=True)
    norms = torch.sqrt(g.pow(2).sum((1, 2, 3)) + 1e-12)
    gp = ((norms - 1) ** 2).mean()
    aux = F.cross_entropy(logits_real, y)
    return loss + spec["gradient_penalty"] * gp + spec["aux_weight_real"] * aux

  def generator_loss():
    s_fake, logits = critic(gen(z_g, y_g))
    return -s_fake.mean() + spec["aux_weight_g"] * F.cross_entropy(logits,
                                                                   y_g)

  def step():
    for i in range(k):
      d_opt.zero_grad(set_to_none=True)
      d_loss = critic_loss(images[i], labels[i], z_d[i], e[i])
      d_loss.backward()
      d_opt.step()
    critic.requires_grad_(False)  # the generator step needs no critic grads
    g_opt.zero_grad(set_to_none=True)
    g_loss = generator_loss()
    g_loss.backward()
    g_opt.step()
    critic.requires_grad_(True)
    return {"d_loss": d_loss, "g_loss": g_loss}
  step.models = {"d_grads": critic, "g_grads": gen}
  return step


STEPS = {"classifier_train": classifier_step, "fgsm": fgsm_step,
         "pgd": pgd_step, "latent_attack": latent_step,
         "wgan_gp_train": wgan_gp_step}


def step_fn(spec, variables, data) -> Callable[[], dict]:
  return STEPS[spec["kind"]](spec, variables, data)


def check(step, variables) -> dict[str, np.ndarray]:
  """One call's results, and the parameter gradients it left (flax keys:
  'grads/params/...' for a classifier, 'd_grads/...' and 'g_grads/...' for
  a GAN's critic and generator)."""
  out = {k: v.detach().numpy() for k, v in step().items()}
  prefixes = {"grads": "classifier", "d_grads": "discriminator",
              "g_grads": "generator"}
  for name, model in getattr(step, "models", {}).items():
    keys = [k for k in _sub(variables, prefixes[name])
            if k.startswith("params/")]
    grads = models.flax_grads(model, keys)
    out.update({f"{name}/{k}": v for k, v in grads.items()})
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--spec", required=True, help="workload spec (JSON)")
  parser.add_argument("--weights", required=True,
                      help="npz of flax variables and inputs from advjax")
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--threads", type=int, default=0,
                      help="torch threads (0: torch's default)")
  parser.add_argument("--check", help="instead of timing, save one call's "
                      "results and gradients to this npz")
  args = parser.parse_args()
  if args.threads:
    torch.set_num_threads(args.threads)
  spec = json.loads(args.spec)
  with np.load(args.weights) as f:
    arrays = {k: f[k] for k in f.files}
  variables = {k[5:]: v for k, v in arrays.items() if k.startswith("vars/")}
  data = {k[5:]: v for k, v in arrays.items() if k.startswith("data/")}
  step = step_fn(spec, variables, data)
  if args.check:
    np.savez(args.check, **check(step, variables))
    return
  step()  # warm-up
  wall, cpu = [], []
  for _ in range(args.steps):
    start, start_cpu = time.perf_counter(), time.process_time()
    step()
    wall.append(1000 * (time.perf_counter() - start))
    cpu.append(1000 * (time.process_time() - start_cpu))
  print(json.dumps({"ms": wall, "cpu_ms": cpu,
                    "threads": torch.get_num_threads()}))


if __name__ == "__main__":
  main()
