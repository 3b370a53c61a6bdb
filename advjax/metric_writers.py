"""Where a run's numbers and pictures go: JSON lines, TensorBoard, PNG files.

`<workdir>/metrics.jsonl`  one JSON object per logged step: {"step": s, ...}
`<workdir>/tensorboard/`   TensorBoard event files (tensorboardX, no TF)
`<workdir>/images/`        PNG grids, named `<tag>_<step>.png`

Only process 0 writes; other processes get a writer that does nothing.
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any, Mapping

import numpy as np
from PIL import Image


def _to_float(v: Any) -> float:
  return float(np.asarray(v))


class MetricWriter:
  """Writes scalars and images of one run."""

  def __init__(self, workdir: str, enabled: bool = True,
               tensorboard: bool = True):
    self.workdir = workdir
    self.enabled = enabled
    self._tb = None
    self._jsonl = None
    if not enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a",
                       encoding="utf-8")
    if tensorboard:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    if not self.enabled:
      return
    values = {k: _to_float(v) for k, v in scalars.items()}
    record = {"step": int(step), "time": round(time.time(), 3), **{
        k: (v if math.isfinite(v) else str(v)) for k, v in values.items()}}
    self._jsonl.write(json.dumps(record) + "\n")
    self._jsonl.flush()
    if self._tb is not None:
      for k, v in values.items():
        self._tb.add_scalar(k, v, int(step))

  def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> list[str]:
    """Saves HWC images in [-1, 1] (or uint8) as PNG; returns the paths."""
    if not self.enabled:
      return []
    paths = []
    folder = os.path.join(self.workdir, "images")
    os.makedirs(folder, exist_ok=True)
    for tag, image in images.items():
      pixels = to_uint8(image)
      path = os.path.join(folder, f"{tag.replace('/', '_')}_{int(step):07d}.png")
      save_png(pixels, path)
      paths.append(path)
      if self._tb is not None:
        self._tb.add_image(tag, pixels, int(step), dataformats="HWC")
    return paths

  def flush(self) -> None:
    if self._tb is not None:
      self._tb.flush()

  def close(self) -> None:
    if self._jsonl is not None:
      self._jsonl.close()
      self._jsonl = None
    if self._tb is not None:
      self._tb.close()
      self._tb = None


def read_metrics(workdir: str) -> list[dict[str, Any]]:
  """The records of `<workdir>/metrics.jsonl`, in order."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def to_uint8(images: np.ndarray) -> np.ndarray:
  """[-1, 1] floats (or uint8) to uint8 pixels."""
  images = np.asarray(images)
  if images.dtype == np.uint8:
    return images
  return np.clip(np.round((images + 1.0) * 127.5), 0, 255).astype(np.uint8)


def image_grid(images: np.ndarray, rows: int | None = None,
               pad: int = 1) -> np.ndarray:
  """Tiles NHWC images into one HWC image, `rows` rows (row-major order)."""
  images = np.asarray(images)
  n, h, w, c = images.shape
  rows = rows or int(math.ceil(math.sqrt(n)))
  cols = int(math.ceil(n / rows))
  fill = 255 if images.dtype == np.uint8 else 1.0
  grid = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), fill,
                 images.dtype)
  for i in range(n):
    r, col = divmod(i, cols)
    top, left = pad + r * (h + pad), pad + col * (w + pad)
    grid[top:top + h, left:left + w] = images[i]
  return grid


def save_png(image: np.ndarray, path: str, scale: int | None = None) -> str:
  """Writes one HWC image ([-1, 1] floats or uint8); small ones are enlarged."""
  pixels = to_uint8(image)
  if pixels.shape[-1] == 1:
    pixels = pixels[..., 0]
  img = Image.fromarray(pixels)
  if scale is None:  # enlarge small images to at least 512 pixels wide
    scale = max(1, -(-512 // max(img.size)))
  if scale > 1:
    img = img.resize((img.size[0] * scale, img.size[1] * scale),
                     Image.NEAREST)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  img.save(path)
  return path
