"""Where a run's numbers and pictures go: JSON lines, TensorBoard, PNG files.

`<workdir>/metrics.jsonl`  one JSON object per logged step: {"step": s, ...}
`<workdir>/tensorboard/`   TensorBoard event files (tensorboardX, no TF)
`<workdir>/images/`        PNG grids, named `<tag>_<step>.png`

`workdir` may be local or in Cloud Storage (`gs://...`, see advjax.fileio).
Only process 0 writes; other processes get a writer that does nothing.
"""

from __future__ import annotations

import io
import math
import time
from typing import Any, Mapping

import numpy as np
from etils import epath
from PIL import Image

from advjax import fileio, integrity

METRICS_FILE = "metrics.jsonl"


def _to_float(v: Any) -> float:
  return float(np.asarray(v))


class MetricWriter:
  """Writes scalars and images of one run.

  `resume_step`: the step the run resumes from; records and TensorBoard
  events after it, from an interrupted earlier process, are dropped (the
  run logs those steps again). None keeps everything.
  """

  def __init__(self, workdir: str, enabled: bool = True,
               tensorboard: bool = True, resume_step: int | None = None):
    self.workdir = fileio.resolve(workdir)
    self.enabled = enabled
    self._resume_step = resume_step
    self._tb = None
    self._log = None
    if not enabled:
      return
    fileio.makedirs(self.workdir)
    if tensorboard:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      from tensorboardX import record_writer  # pylint: disable=g-import-not-at-top
      record_writer.register_writer_factory("gs", _ObjectStoreEventFiles())
      # TensorBoard hides the events of earlier files from `purge_step` on.
      self._tb = SummaryWriter(
          fileio.join(self.workdir, "tensorboard"),
          purge_step=None if resume_step is None else resume_step + 1)

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    if not self.enabled:
      return
    values = {k: _to_float(v) for k, v in scalars.items()}
    if self._log is None:  # On first use: an image-only writer has none.
      self._log = fileio.MetricsLog(fileio.join(self.workdir, METRICS_FILE),
                                    self._resume_step)
    self._log.write({"step": int(step), "time": round(time.time(), 3),
                     **values})
    if self._tb is not None:
      for k, v in values.items():
        self._tb.add_scalar(k, v, int(step))

  def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> list[str]:
    """Saves HWC images in [-1, 1] (or uint8) as PNG; returns the paths."""
    if not self.enabled:
      return []
    paths = []
    folder = fileio.join(self.workdir, "images")
    for tag, image in images.items():
      pixels = to_uint8(image)
      path = fileio.join(folder,
                         f"{tag.replace('/', '_')}_{int(step):07d}.png")
      save_png(pixels, path)
      paths.append(path)
      if self._tb is not None:
        self._tb.add_image(tag, pixels, int(step), dataformats="HWC")
    return paths

  def flush(self) -> None:
    """Makes what was written durable: call it before saving a checkpoint
    (on Cloud Storage metrics.jsonl is written at most every 30 s)."""
    if self._log is not None:
      self._log.flush()
    if self._tb is not None:
      self._tb.flush()

  def close(self) -> None:
    if self._log is not None:
      self._log.close()
      self._log = None
    if self._tb is not None:
      self._tb.close()
      self._tb = None


class _ObjectStoreEventFile:
  """A TensorBoard event file in an object store: its bytes are kept and the
  whole object is rewritten when tensorboardX flushes (every 2 minutes, and
  at `MetricWriter.flush`/`close`) and something was added. Replaces
  tensorboardX's own `gs://` writer, which uploads again when garbage
  collected (at exit, after close) and needs a second storage client."""

  def __init__(self, path: str):
    self.path = path
    self._data = bytearray()
    self._written = -1

  def write(self, data: bytes) -> None:
    self._data += data

  def flush(self) -> None:
    if len(self._data) != self._written:
      fileio.write_bytes(self.path, bytes(self._data))
      self._written = len(self._data)

  def close(self) -> None:
    self.flush()


class _ObjectStoreEventFiles:
  """tensorboardX's writer factory interface, for `gs://` log folders."""

  def open(self, path: str) -> _ObjectStoreEventFile:
    return _ObjectStoreEventFile(path)

  def directory_check(self, path: str) -> None:
    del path  # An object store needs no folders.


LOG_NAMES = (METRICS_FILE, "tensorboard", "images")


def set_aside_logs(workdir: str, now: float | None = None) -> str | None:
  """Moves the logs of an earlier run that left no usable checkpoint
  (`metrics.jsonl` with records, `tensorboard/`, `images/`) into
  `<workdir>/earlier-<UTC time>/` with a note (MOVED.txt), so that a run
  starting again at step 0 erases none of them (review #12); returns that
  folder, or None when `metrics.jsonl` holds nothing. Nothing is deleted."""
  workdir = fileio.resolve(workdir)
  log = fileio.join(workdir, METRICS_FILE)
  if not fileio.exists(log) or not fileio.read_text(log).strip():
    return None
  target, stamp = integrity.free_name(workdir, "earlier", now)
  target.mkdir(parents=True)
  # The note also makes the folder exist on an object store, where a rename
  # needs the destination's folder.
  (target / "MOVED.txt").write_text(
      f"advjax moved these logs here on {stamp}: the run in {workdir} found "
      f"no checkpoint to resume from and started again at step 0\n")
  for name in LOG_NAMES:
    source = epath.Path(fileio.join(workdir, name))
    if source.exists():
      source.rename(target / name)
  return str(target)


def read_metrics(workdir: str) -> list[dict[str, Any]]:
  """The records of `<workdir>/metrics.jsonl`, in order."""
  return fileio.read_jsonl(fileio.join(workdir, METRICS_FILE))


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
  buffer = io.BytesIO()
  img.save(buffer, format="png")
  fileio.write_bytes(path, buffer.getvalue())
  return path
