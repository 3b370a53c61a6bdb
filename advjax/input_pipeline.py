"""Image classification data: tfds random-access sources and numpy batches.

Datasets are read with `tfds.data_source` from array_record files, so reading
needs no TensorFlow (tfds decodes the PNG images with pillow). TensorFlow is
only needed once, by tfds, to *prepare* a dataset:

  python -m advjax.input_pipeline --dataset=cifar100 [--data_dir=DIR]

Fashion-MNIST is built offline from the Debian package `dataset-fashion-mnist`
(/usr/share/datasets/fashion-mnist) when that is installed.

Order is a pure function of (seed, step), so training resumes exactly and the
global batch does not depend on how many hosts read it:
  epoch e visits `np.random.default_rng([seed, e]).permutation(N)`;
  global step s reads batch `s % steps_per_epoch` of epoch
  `s // steps_per_epoch`, with steps_per_epoch = N // global_batch_size;
  host p of P takes the p-th contiguous slice of the global batch.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import difflib
import functools
import gzip
import io
import os
import queue
import socket
import sys
import tempfile
import threading
import weakref
from typing import Any, Callable, Iterator, Sequence
from unittest import mock

import numpy as np

from advjax import fileio
from advjax.errors import UserError

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_ENV = "ADVJAX_FASHION_MNIST_DIR"
_FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
_PAD = 4  # CIFAR augmentation: random 32x32 crop of the image padded by 4.


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What the models and the training loop need to know about a dataset."""
  name: str
  num_classes: int
  image_shape: tuple[int, int, int]
  train_split: str
  eval_split: str


DATASETS: dict[str, DatasetInfo] = {
    "cifar10": DatasetInfo("cifar10", 10, (32, 32, 3), "train", "test"),
    "cifar100": DatasetInfo("cifar100", 100, (32, 32, 3), "train", "test"),
    "mnist": DatasetInfo("mnist", 10, (28, 28, 1), "train", "test"),
    "fashion_mnist": DatasetInfo("fashion_mnist", 10, (28, 28, 1), "train",
                                 "test"),
}


def get_dataset_info(name: str) -> DatasetInfo:
  """The `DatasetInfo` of `name`; a UserError suggests the closest name."""
  if name in DATASETS:
    return DATASETS[name]
  close = difflib.get_close_matches(str(name).lower(), DATASETS, n=1,
                                    cutoff=0.5)
  hint = f"did you mean '{close[0]}'? " if close else ""
  raise UserError(f"unknown dataset '{name}'; {hint}"
                  f"known datasets: {', '.join(sorted(DATASETS))}")


# ---------------------------------------------------------------------------
# Sources and one-time preparation.


def _check_data_dir(data_dir: str | None, create: bool = False
                    ) -> str | None:
  """None for tfds's default; a local folder must exist (`create`: it is
  made, as preparing a dataset does), a `gs://` one need not (an object
  store has no empty folders)."""
  if data_dir is None or data_dir == "":
    return None
  data_dir = fileio.resolve(str(data_dir))
  if create and not fileio.is_remote(data_dir):
    try:
      os.makedirs(data_dir, exist_ok=True)
    except OSError as e:
      raise UserError(f"data_dir '{data_dir}' cannot be created: "
                      f"{e.strerror or e}") from None
  if not fileio.is_remote(data_dir) and not os.path.isdir(data_dir):
    raise UserError(
        f"data_dir '{data_dir}' does not exist; create it or leave "
        "dataset.data_dir empty to use ~/tensorflow_datasets")
  return data_dir


def _builder(name: str, data_dir: str | None):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  return tfds.builder(name, data_dir=data_dir, file_format="array_record")


def get_source(name: str, split: str, data_dir: str | None = None):
  """A tfds random-access data source of `split`; prepares it if needed.

  The result supports `len()`, `source[i]` and `source.__getitems__(idx)`,
  each example a dict of numpy arrays ('image' uint8 HWC, 'label').
  """
  info = get_dataset_info(name)
  data_dir = _check_data_dir(data_dir)
  builder = _builder(info.name, data_dir)
  if not builder.is_prepared():
    prepare(info.name, data_dir)
    builder = _builder(info.name, data_dir)  # Re-read the written metadata.
  try:
    return builder.as_data_source(split=split)
  except (ValueError, NotImplementedError) as e:
    if "file format" not in str(e).lower():
      raise
    raise UserError(
        f"{info.name} in {builder.data_dir} was prepared without array_record "
        "(e.g. by tfds.load); choose another dataset.data_dir or delete that "
        "folder so it is prepared again") from e


def _fashion_mnist_dir() -> str:
  return os.environ.get(FASHION_MNIST_ENV) or FASHION_MNIST_DIR


def _has_local_fashion_mnist(folder: str) -> bool:
  return all(os.path.isfile(os.path.join(folder, f))
             for pair in _FASHION_MNIST_FILES.values() for f in pair)


def read_idx_gz(path: str) -> np.ndarray:
  """Reads a gzipped IDX file (the MNIST format) as a uint8 array.

  Header: 2 zero bytes, a type byte (0x08 = uint8), the number of dimensions,
  then one big-endian int32 per dimension.
  """
  with gzip.open(path, "rb") as f:
    data = f.read()
  if data[:2] != b"\0\0" or data[2] != 0x08:
    raise UserError(f"{path} is not a uint8 IDX file")
  ndim = data[3]
  shape = tuple(int(d) for d in np.frombuffer(data, ">i4", ndim, offset=4))
  return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _png_bytes(image: np.ndarray) -> bytes:
  """A uint8 HxWx1 image as grayscale PNG bytes."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  buffer = io.BytesIO()
  Image.fromarray(image[..., 0]).save(buffer, format="png")
  return buffer.getvalue()


@functools.cache
def _local_fashion_mnist_class():
  """tfds's own `fashion_mnist` builder, reading local idx files.

  Same name, version and features as the registered builder, so
  `tfds.data_source('fashion_mnist')` reads what it writes; only the source of
  the raw files differs (the Debian .gz files do not match the checksums tfds
  registered, although the images are the same). Defined once, on first use,
  so tfds is imported lazily.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from tensorflow_datasets.image_classification import mnist  # pylint: disable=g-import-not-at-top

  class LocalFashionMNIST(mnist.FashionMNIST, skip_registration=True):
    """FashionMNIST whose raw files come from the folder `raw_folder`."""
    name = "fashion_mnist"
    # No code folder: nothing is downloaded, so no url checksums are needed
    # (finding them would import importlib_resources, which may be missing).
    code_path = None
    raw_folder = FASHION_MNIST_DIR

    def _split_generators(self, dl_manager):
      del dl_manager  # Nothing is downloaded.
      return [
          tfds.core.SplitGenerator(
              name=split,
              gen_kwargs=dict(
                  images_path=os.path.join(self.raw_folder, images),
                  labels_path=os.path.join(self.raw_folder, labels)))
          for split, (images, labels) in _FASHION_MNIST_FILES.items()
      ]

    def _generate_examples(self, images_path, labels_path):  # pylint: disable=arguments-renamed
      images = read_idx_gz(images_path)[..., None]
      labels = read_idx_gz(labels_path)
      if len(images) != len(labels):
        raise UserError(f"{images_path} and {labels_path} hold different "
                        "numbers of examples")
      for i in range(len(images)):
        # PNG-encoded with pillow: faster than tfds's TF encoder, and
        # decodes to the same pixels.
        yield i, {"image": _png_bytes(images[i]), "label": int(labels[i])}

  return LocalFashionMNIST


def _local_fashion_mnist_builder(folder: str, data_dir: str | None):
  builder = _local_fashion_mnist_class()(data_dir=data_dir,
                                         file_format="array_record")
  builder.raw_folder = folder
  return builder


def _one_line(e: BaseException) -> str:
  text = (str(e).strip().splitlines() or [""])[0]
  return f"{type(e).__name__}: {text[:200]}"


@contextlib.contextmanager
def _preparing(builder, name: str) -> Iterator[None]:
  """Holds `<data dir>/<name>.prepare.lock` while this process prepares
  `name`; waits, with a message, while another process holds it.

  An advisory `flock`: the kernel releases it when its holder exits, however
  it ends, so a killed preparation leaves no lock to clean up. The file
  itself stays (removing it would let a waiter lock a deleted file).
  """
  import fcntl  # pylint: disable=g-import-not-at-top
  root = os.path.dirname(os.path.dirname(os.fspath(builder.data_dir)))
  os.makedirs(root, exist_ok=True)
  path = os.path.join(root, f"{name}.prepare.lock")
  with open(path, "a+", encoding="utf-8") as f:
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      f.seek(0)
      holder = f.read().strip() or "another process"
      print(f"advjax: waiting for {holder} to finish preparing {name} in "
            f"{root}", flush=True)
      fcntl.flock(f, fcntl.LOCK_EX)
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()} on {socket.gethostname()}")
    f.flush()
    try:
      yield
    finally:
      f.truncate(0)
      fcntl.flock(f, fcntl.LOCK_UN)


def prepare(name: str, data_dir: str | None = None) -> None:
  """Builds `name` once in array_record format (needs tensorflow, via tfds).

  Fashion-MNIST is built from the local Debian files when present; the other
  datasets are downloaded by tfds. Processes preparing the same dataset at
  once take turns (`_preparing`); the later ones use the first one's result.
  A `gs://` data_dir is filled from a local build (see `_prepare_remote`).
  """
  info = get_dataset_info(name)
  data_dir = _check_data_dir(data_dir, create=True)
  if data_dir is not None and fileio.is_remote(data_dir):
    _prepare_remote(info.name, data_dir)
    return
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  folder = _fashion_mnist_dir()
  if info.name == "fashion_mnist" and _has_local_fashion_mnist(folder):
    builder = _local_fashion_mnist_builder(folder, data_dir)
    config = tfds.download.DownloadConfig(try_download_gcs=False)
    how = f"from {folder}"
  else:
    builder = _builder(info.name, data_dir)
    config = None
    how = "by downloading it"
  if builder.is_prepared():
    return
  with _preparing(builder, info.name):
    if builder.is_prepared():  # Another process prepared it meanwhile.
      return
    try:
      builder.download_and_prepare(download_config=config,
                                   file_format="array_record")
    except (KeyboardInterrupt, UserError):
      raise
    except Exception as e:  # pylint: disable=broad-except
      if builder.is_prepared():  # Finished by a process outside the lock.
        return
      fix = ("pip install 'advjax[prepare]' (tensorflow is needed once to "
             "prepare) and run once with internet: python -m "
             f"advjax.input_pipeline --dataset={info.name}")
      if info.name == "fashion_mnist":
        fix += (" -- or offline: apt-get install dataset-fashion-mnist (or "
                f"set {FASHION_MNIST_ENV} to a folder with the 4 idx .gz "
                "files)")
      raise UserError(f"could not prepare {info.name} {how} "
                      f"({_one_line(e)}); {fix}") from e


def _prepare_remote(name: str, data_dir: str) -> None:
  """Prepares `name` into an object store through a local temporary folder.

  tfds writes array_record files with POSIX file calls, which cannot create
  `gs://` objects; so the dataset is built locally, then its version folder
  is copied up, the two .json files that make tfds see it as prepared last.
  """
  remote = _builder(name, data_dir)
  if remote.is_prepared():
    return
  with tempfile.TemporaryDirectory(prefix="advjax-prepare-") as local:
    prepare(name, local)
    fileio.upload_tree(_builder(name, local).data_dir, remote.data_dir,
                       last=("dataset_info.json", "features.json"))


def num_examples(source) -> int:
  """Number of examples in `source`."""
  return len(source)


# ---------------------------------------------------------------------------
# Batches.


def validate_batch_size(global_batch_size: int, num_devices: int,
                        num_processes: int = 1) -> None:
  """UserError unless the global batch splits evenly over devices and hosts."""
  b = global_batch_size
  if not isinstance(b, (int, np.integer)) or b <= 0:
    raise UserError(f"batch size must be a positive integer, got {b!r}")
  for count, what in ((num_devices, "devices"), (num_processes, "hosts")):
    if b % count:
      raise UserError(
          f"batch size {b} is not divisible by the {count} {what}; use a "
          f"multiple of {count} such as {max(b // count, 1) * count}")


def to_float_image(images_uint8) -> np.ndarray:
  """uint8 pixels -> float32 in [-1, 1]: x / 127.5 - 1."""
  return np.asarray(images_uint8, np.float32) / np.float32(127.5) - 1.0


def _process(process_index, process_count) -> tuple[int, int]:
  if process_index is None or process_count is None:
    import jax  # pylint: disable=g-import-not-at-top
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  if not 0 <= process_index < process_count:
    raise UserError(f"process_index {process_index} is not in "
                    f"[0, {process_count})")
  return int(process_index), int(process_count)


def _host_batch_size(global_batch_size: int, process_count: int) -> int:
  if global_batch_size <= 0 or global_batch_size % process_count:
    raise UserError(f"batch size {global_batch_size} is not divisible by the "
                    f"{process_count} hosts; use a multiple of {process_count}")
  return global_batch_size // process_count


def _is_tfds_mock(source) -> bool:
  # Under tfds.testing.mock_data the underlying reader is a MagicMock whose
  # `__getitems__` is not bound (tfds 4.9.x), so read item by item there.
  return isinstance(getattr(source, "data_source", None), mock.Mock)


def read_examples(source, indices: Sequence[int]
                  ) -> tuple[np.ndarray, np.ndarray]:
  """uint8 images [n,H,W,C] and int32 labels [n] of `source[indices]`."""
  indices = [int(i) for i in indices]
  if hasattr(source, "__getitems__") and not _is_tfds_mock(source):
    examples = source.__getitems__(indices)
  else:
    examples = [source[i] for i in indices]
  images = np.stack([np.asarray(ex["image"], np.uint8) for ex in examples])
  if images.ndim == 3:  # Grayscale stored without a channel axis.
    images = images[..., None]
  labels = np.asarray([ex["label"] for ex in examples], np.int32)
  return images, labels


def crop_flip_offsets(seed: int, step: int,
                    global_batch_size: int) -> tuple[np.ndarray, np.ndarray]:
  """Crop offsets [B, 2] in [0, 2*pad] and flips [B] of global step `step`.

  Drawn for the whole global batch so hosts agree whatever their number.
  """
  rng = np.random.default_rng([seed, step, 1])
  offsets = rng.integers(0, 2 * _PAD + 1, size=(global_batch_size, 2))
  flips = rng.random(global_batch_size) < 0.5
  return offsets, flips


def crop_and_flip(images: np.ndarray, offsets: np.ndarray,
                  flips: np.ndarray, pad: int = _PAD) -> np.ndarray:
  """Random-crop augmentation: crop [H,W] windows of the zero-padded images.

  Window i starts at offsets[i] = (dy, dx) in the image padded by `pad` zeros
  (black) on each side; it is mirrored left-right where flips[i].
  """
  n, h, w, _ = images.shape
  padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  rows = offsets[:, :1] + np.arange(h)  # [n, h]
  cols = offsets[:, 1:] + np.arange(w)  # [n, w]
  cols = np.where(flips[:, None], cols[:, ::-1], cols)
  return padded[np.arange(n)[:, None, None], rows[:, :, None],
                cols[:, None, :]]


class _Prefetcher:
  """Runs `produce(i)` for i = 0, 1, ... in a daemon thread, `size` ahead."""

  def __init__(self, produce: Callable[[int], Any], size: int,
               count: int | None = None):
    self._queue: queue.Queue = queue.Queue(maxsize=max(size, 1))
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._run, args=(produce, count),
                                    daemon=True, name="advjax-prefetch")
    self._thread.start()

  def _put(self, item) -> bool:
    while not self._stop.is_set():
      try:
        self._queue.put(item, timeout=0.1)
        return True
      except queue.Full:
        continue
    return False

  def _run(self, produce, count):
    i = 0
    try:
      while not self._stop.is_set() and (count is None or i < count):
        if not self._put((True, produce(i))):
          return
        i += 1
      self._put((False, StopIteration()))
    except BaseException as e:  # pylint: disable=broad-except
      self._put((False, e))  # Re-raised in the consumer.

  def get(self):
    while True:
      try:
        ok, item = self._queue.get(timeout=0.5)
        break
      except queue.Empty:
        if not self._thread.is_alive() and self._queue.empty():
          raise RuntimeError("advjax: the prefetch thread stopped") from None
    if not ok:
      raise item
    return item

  def close(self):
    self._stop.set()
    if threading.current_thread() is not self._thread:
      self._thread.join(timeout=5)


class TrainIterator:
  """Infinite iterator of this host's training batches.

  Yields {'image': f32[B_host, H, W, C] in [-1, 1], 'label': i32[B_host]}.
  `step` counts the batches yielded so far (starting at `start_step`); it is
  the data position to save in checkpoints: `TrainIterator(...,
  start_step=step)` continues exactly where this one stopped.
  """

  def __init__(self, source, *, global_batch_size: int, seed: int,
               crop_flip: bool = False, start_step: int = 0,
               process_index: int | None = None,
               process_count: int | None = None, prefetch: int = 2):
    self._source = source
    self._seed = int(seed)
    self._crop_flip = bool(crop_flip)
    self._global_batch_size = int(global_batch_size)
    self._process_index, self._process_count = _process(process_index,
                                                        process_count)
    self._host_batch_size = _host_batch_size(self._global_batch_size,
                                             self._process_count)
    self._num_examples = len(source)
    self.steps_per_epoch = self._num_examples // self._global_batch_size
    if self.steps_per_epoch < 1:
      raise UserError(
          f"batch size {self._global_batch_size} is larger than the "
          f"{self._num_examples} training examples; use a smaller batch_size")
    if start_step < 0:
      raise UserError(f"start_step must be >= 0, got {start_step}")
    self.step = int(start_step)
    self._start_step = self.step
    self._perm_epoch, self._perm = -1, None
    self._prefetcher = None
    if prefetch > 0:
      # A weak reference lets an unclosed iterator be garbage collected (its
      # __del__ then stops the thread).
      ref = weakref.ref(self)
      start = self._start_step

      def produce(i):
        it = ref()
        if it is None:
          raise StopIteration
        return it._batch(start + i)  # pylint: disable=protected-access

      self._prefetcher = _Prefetcher(produce, prefetch)

  def _permutation(self, epoch: int) -> np.ndarray:
    if epoch != self._perm_epoch:
      rng = np.random.default_rng([self._seed, epoch])
      self._perm = rng.permutation(self._num_examples)
      self._perm_epoch = epoch
    return self._perm

  def _batch(self, step: int) -> dict[str, np.ndarray]:
    """This host's batch of global step `step`."""
    epoch, index = divmod(step, self.steps_per_epoch)
    start = index * self._global_batch_size
    lo = start + self._process_index * self._host_batch_size
    indices = self._permutation(epoch)[lo:lo + self._host_batch_size]
    images, labels = read_examples(self._source, indices)
    if self._crop_flip:
      offsets, flips = crop_flip_offsets(self._seed, step,
                                       self._global_batch_size)
      host = slice(lo - start, lo - start + self._host_batch_size)
      images = crop_and_flip(images, offsets[host], flips[host])
    return {"image": to_float_image(images), "label": labels}

  def __iter__(self) -> "TrainIterator":
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    if self._prefetcher is not None:
      batch = self._prefetcher.get()
    else:
      batch = self._batch(self.step)
    self.step += 1
    return batch

  def close(self):
    """Stops the prefetch thread."""
    if self._prefetcher is not None:
      self._prefetcher.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()

  def __del__(self):
    try:
      self.close()
    except Exception:  # pylint: disable=broad-except
      pass


def eval_batches(source, *, global_batch_size: int,
                 process_index: int | None = None,
                 process_count: int | None = None,
                 prefetch: int = 2) -> Iterator[dict[str, np.ndarray]]:
  """This host's evaluation batches, every example exactly once in order.

  Global batch b holds examples [b*B, (b+1)*B); host p takes its p-th
  contiguous slice. The last global batch is padded (image 0, label 0,
  mask 0.0) rather than dropped; 'mask' is float32, 1.0 for real examples.
  """
  p, count = _process(process_index, process_count)
  host = _host_batch_size(int(global_batch_size), count)
  return _eval_iter(source, int(global_batch_size), host, p, prefetch)


def _eval_iter(source, global_batch_size: int, host: int, p: int,
               prefetch: int) -> Iterator[dict[str, np.ndarray]]:
  n = len(source)
  num_batches = -(-n // global_batch_size)
  if num_batches == 0:
    return
  image_shape = read_examples(source, [0])[0].shape[1:]

  def make(b: int) -> dict[str, np.ndarray]:
    lo = b * global_batch_size + p * host
    real = max(min(host, n - lo), 0)
    images = np.zeros((host, *image_shape), np.float32)
    labels = np.zeros((host,), np.int32)
    mask = np.zeros((host,), np.float32)
    if real:
      raw, lab = read_examples(source, range(lo, lo + real))
      images[:real] = to_float_image(raw)
      labels[:real] = lab
      mask[:real] = 1.0
    return {"image": images, "label": labels, "mask": mask}

  if prefetch <= 0:
    for b in range(num_batches):
      yield make(b)
    return
  prefetcher = _Prefetcher(make, prefetch, count=num_batches)
  try:
    while True:
      try:
        batch = prefetcher.get()
      except StopIteration:
        return
      yield batch
  finally:
    prefetcher.close()


# ---------------------------------------------------------------------------
# Command line: prepare a dataset once.


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m advjax.input_pipeline",
      description="Prepare a dataset once (array_record) for advjax.")
  parser.add_argument("--dataset", required=True, help=", ".join(DATASETS))
  parser.add_argument("--data_dir", default=None,
                      help="tfds data dir (default ~/tensorflow_datasets)")
  args = parser.parse_args(argv)
  try:
    info = get_dataset_info(args.dataset)
    data_dir = _check_data_dir(args.data_dir, create=True)
    prepare(info.name, data_dir)
    builder = _builder(info.name, data_dir)
    print(f"advjax: {info.name} is ready in {builder.data_dir} "
          f"({', '.join(f'{k}: {v.num_examples}' for k, v in builder.info.splits.items())})")
  except UserError as e:
    print(f"advjax: error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
