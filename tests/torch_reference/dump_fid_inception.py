"""Dump pytorch-fid's FID InceptionV3 with random weights, and its outputs.

Test-only: run with the torch venv made by .ci/torch_env.sh, e.g.
  .ci/torch-venv/bin/python tests/torch_reference/dump_fid_inception.py OUT_DIR
tests/test_fid.py compares advjax.inception.FIDInceptionV3 against these files.

The network is pytorch-fid's own `fid_inception_v3()` (through its
`InceptionV3` wrapper, which is what pytorch-fid uses for FID), built without
downloading: the state_dict download is replaced by the freshly built
network's own state_dict. All weights are then re-drawn from a fixed seed and
the BatchNorm running statistics are set to calibrated-then-perturbed values,
so a wrong BatchNorm conversion would change the outputs.

Writes to OUT_DIR:
  state_dict.npz           the network's state_dict as numpy (float32)
  weights.pth              the same via torch.save (zip format)
  weights_legacy.pth       the same in torch's legacy (pre-1.6) format
  reference.npz            inputs (NHWC, [-1, 1]) and float64 torch outputs
"""

import argparse
import os

import numpy as np
import torch
import torch.nn.functional as F
from pytorch_fid import inception as pfi


def build_without_download():
  """pytorch-fid's InceptionV3 wrapper and the fid_inception_v3() inside."""
  built = []
  orig_builder = pfi._inception_v3
  orig_loader = pfi.load_state_dict_from_url

  def capture(*args, **kwargs):
    net = orig_builder(*args, **kwargs)
    built.append(net)
    return net

  def no_download(url, **kwargs):
    assert url == pfi.FID_WEIGHTS_URL
    return built[-1].state_dict()

  pfi._inception_v3 = capture
  pfi.load_state_dict_from_url = no_download
  try:
    wrapper = pfi.InceptionV3(output_blocks=[3], resize_input=True,
                              normalize_input=False)
  finally:
    pfi._inception_v3 = orig_builder
    pfi.load_state_dict_from_url = orig_loader
  return wrapper, built[-1]


def randomise(net, wrapper, calib, gen):
  """Random conv/fc weights; BN stats calibrated on `calib`, then perturbed."""
  with torch.no_grad():
    for m in net.modules():
      if isinstance(m, torch.nn.Conv2d):
        fan_in = m.weight[0].numel()
        m.weight.copy_(torch.randn(m.weight.shape, generator=gen)
                       * (2.0 / fan_in) ** 0.5)
      elif isinstance(m, torch.nn.BatchNorm2d):
        m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=gen))
        m.bias.copy_(0.4 * torch.rand(m.bias.shape, generator=gen) - 0.2)
        m.reset_running_stats()
        m.momentum = None  # cumulative average: one batch -> its statistics
      elif isinstance(m, torch.nn.Linear):
        m.weight.copy_(torch.randn(m.weight.shape, generator=gen)
                       / m.weight.shape[1] ** 0.5)
        m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=gen))
    wrapper.train()
    wrapper(calib)
    wrapper.eval()
    for m in net.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        std = m.running_var.sqrt()
        m.running_mean.add_(0.2 * std * torch.randn(std.shape, generator=gen))
        m.running_var.mul_(0.5 + 1.5 * torch.rand(std.shape, generator=gen))
        m.momentum = 0.1


def images(gen, n, size, channels=3):
  """Smooth random images in [-1, 1] (NCHW): upsampled noise + fine noise."""
  coarse = torch.rand((n, channels, 8, 8), generator=gen) * 2 - 1
  x = F.interpolate(coarse, size=(size, size), mode="bilinear",
                    align_corners=False)
  x = x + 0.3 * (torch.rand((n, channels, size, size), generator=gen) * 2 - 1)
  return x.clamp(-1, 1)


def nhwc(t):
  return t.permute(0, 2, 3, 1).contiguous().numpy()


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("out_dir")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()
  os.makedirs(args.out_dir, exist_ok=True)
  torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
  gen = torch.Generator().manual_seed(args.seed)

  wrapper, net = build_without_download()
  randomise(net, wrapper, images(gen, 4, 299), gen)

  state = {k: v.detach().clone() for k, v in net.state_dict().items()}
  np.savez(os.path.join(args.out_dir, "state_dict.npz"),
           **{k: v.numpy() for k, v in state.items()})
  torch.save(state, os.path.join(args.out_dir, "weights.pth"))
  torch.save(state, os.path.join(args.out_dir, "weights_legacy.pth"),
             _use_new_zipfile_serialization=False)

  small = images(gen, 4, 32)
  large = images(gen, 2, 299)
  resize_in = torch.rand((2, 3, 350, 320), generator=gen) * 2 - 1  # shrink

  ref = {"images_small": nhwc(small), "images_large": nhwc(large),
         "resize_in": nhwc(resize_in)}
  net.double().eval()
  wrapper.double().eval()
  with torch.no_grad():
    for name, x in (("small", small), ("large", large)):
      x = x.double()
      pool3 = wrapper(x)[0].flatten(1)
      logits = net.fc(pool3)
      # The plain torchvision forward must give the same logits.
      full = net(F.interpolate(x, size=(299, 299), mode="bilinear",
                               align_corners=False))
      assert torch.allclose(full, logits, atol=1e-9), name
      ref[f"pool3_{name}"] = pool3.numpy()
      ref[f"logits_{name}"] = logits.numpy()
    ref["resize_out"] = nhwc(F.interpolate(
        resize_in.double(), size=(299, 299), mode="bilinear",
        align_corners=False))
  np.savez(os.path.join(args.out_dir, "reference.npz"), **ref)
  print("wrote", args.out_dir, "torch", torch.__version__)


if __name__ == "__main__":
  main()
