"""Two image domains as one training source (the data of CycleGAN).

Each domain is a tfds dataset and split (e.g. `cycle_gan/horse2zebra`,
trainA / trainB), optionally only the images of one class (`label` >= 0,
e.g. Fashion-MNIST 7 and 9), optionally resized. `TwoDomainSource` pairs
them for `input_pipeline.TrainIterator`: example i holds an image of each
domain stacked along the channel axis, which `split_domains` takes apart
inside the train step.
"""

from __future__ import annotations

import ml_collections
import numpy as np

from advjax import input_pipeline, run_settings
from advjax.errors import UserError


def _resize(images: np.ndarray, size: int) -> np.ndarray:
  """uint8 [n, h, w, c] -> [n, size, size, c] (bilinear, with pillow)."""
  if not size or images.shape[1:3] == (size, size):
    return images
  from PIL import Image  # pylint: disable=g-import-not-at-top
  out = []
  for im in images:
    squeeze = im.shape[-1] == 1
    pil = Image.fromarray(im[..., 0] if squeeze else im)
    arr = np.asarray(pil.resize((size, size), Image.BILINEAR))
    out.append(arr[..., None] if squeeze else arr)
  return np.stack(out)


def _read_examples(source, indices, size: int = 0
                   ) -> tuple[np.ndarray, np.ndarray]:
  """uint8 images [n, H, W, C] (resized to `size` if set) and labels [n];
  unlike input_pipeline.read_examples, the images may differ in size."""
  indices = [int(i) for i in indices]
  if (hasattr(source, "__getitems__")
      and not input_pipeline._is_tfds_mock(source)):  # pylint: disable=protected-access
    examples = source.__getitems__(indices)
  else:
    examples = [source[i] for i in indices]
  images = []
  for ex in examples:
    im = np.asarray(ex["image"], np.uint8)
    im = im[..., None] if im.ndim == 2 else im
    images.append(_resize(im[None], size)[0])
  labels = np.asarray([ex.get("label", -1) for ex in examples], np.int64)
  return np.stack(images), labels


def _tfds_source(name: str, split: str, data_dir: str | None):
  """A tfds data source; the library's datasets go through get_source."""
  if name in input_pipeline.DATASETS:
    return input_pipeline.get_source(name, split, data_dir)
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  try:
    builder = tfds.builder(name, data_dir=data_dir, file_format="array_record")
  except Exception as e:  # pylint: disable=broad-except
    raise UserError(f"tfds does not know the dataset '{name}' "
                    f"({type(e).__name__})") from e
  try:
    return builder.as_data_source(split=split)
  except Exception:  # pylint: disable=broad-except
    pass  # Not prepared yet (or unknown split): prepare, then try again.
  try:
    builder.download_and_prepare(file_format="array_record")
    return builder.as_data_source(split=split)
  except Exception as e:  # pylint: disable=broad-except
    raise UserError(f"could not read {name} split '{split}' "
                    f"({type(e).__name__}: {str(e).splitlines()[0][:150] if str(e) else ''}); "
                    "prepare it once with internet access") from e


class DomainSource:
  """The images of one domain: a split of a dataset, or one class of it.

  A class subset is read once and kept in memory (fine for small datasets
  such as Fashion-MNIST); a whole split is read on demand.
  """

  def __init__(self, domain: run_settings.DomainSettings, split: str,
               data_dir: str | None, image_size: int = 0,
               max_examples: int = 0):
    self.description = f"{domain.name} {split}"
    self.image_size = int(image_size)
    source = _tfds_source(domain.name, split, data_dir)
    label = domain.label
    self._source, self._cache = source, None
    if label >= 0:
      self.description += f" class {label}"
      kept, n = [], len(source)
      for start in range(0, n, 2000):
        images, labels = _read_examples(
            source, range(start, min(start + 2000, n)), self.image_size)
        kept.append(images[labels == label])
        if max_examples and sum(len(k) for k in kept) >= max_examples:
          break
      self._cache = np.concatenate(kept)
      self._length = len(self._cache)
    else:
      self._length = len(source)
    if max_examples:
      self._length = min(self._length, int(max_examples))
    if self._length == 0:
      raise UserError(f"domain {self.description} has no images")

  def __len__(self) -> int:
    return self._length

  def read(self, indices) -> np.ndarray:
    """uint8 [n, H, W, C] images."""
    indices = np.asarray(indices, np.int64)
    if self._cache is not None:
      return self._cache[indices]
    return _read_examples(self._source, indices, self.image_size)[0]


class TwoDomainSource:
  """Both domains as one source for `input_pipeline.TrainIterator`.

  Example i holds A image i % |A| and B image p(i) % |B|, with p a fixed
  random permutation (the domains are unpaired; `paired=True` takes B image
  i instead), stacked along the channel axis: 'image' is [H, W, 2C].
  """

  def __init__(self, a: DomainSource, b: DomainSource, seed: int,
               paired: bool = False):
    self.a, self.b = a, b
    self._length = max(len(a), len(b))
    if paired:
      if len(a) != len(b):
        raise UserError(f"paired domains need as many images in A "
                        f"({len(a)}) as in B ({len(b)})")
      self._perm = np.arange(self._length)
    else:
      self._perm = np.random.default_rng([seed, 17]).permutation(self._length)
    shape_a, shape_b = a.read([0]).shape[1:], b.read([0]).shape[1:]
    if shape_a != shape_b:
      raise UserError(f"domain images differ in shape ({shape_a} in "
                      f"{a.description}, {shape_b} in {b.description}); set "
                      "dataset.image_size to resize both")
    self.image_shape = tuple(int(s) for s in shape_a)

  def __len__(self) -> int:
    return self._length

  def __getitems__(self, indices) -> list[dict[str, np.ndarray]]:
    idx = np.asarray(indices, np.int64)
    a = self.a.read(idx % len(self.a))
    b = self.b.read(self._perm[idx] % len(self.b))
    images = np.concatenate([a, b], axis=-1)
    return [{"image": im, "label": 0} for im in images]

  def __getitem__(self, i: int) -> dict[str, np.ndarray]:
    return self.__getitems__([i])[0]


def split_domains(images):
  """[..., 2C] stacked batch -> (domain A [..., C], domain B [..., C])."""
  c = images.shape[-1] // 2
  return images[..., :c], images[..., c:]


def make_domains(config: ml_collections.ConfigDict, train: bool,
                 max_examples: int = 0) -> tuple[DomainSource, DomainSource]:
  """(A, B) domain sources of the train or the eval splits."""
  s = run_settings.read(config)
  ds = s.dataset
  out = []
  for name, domain in (("domain_a", ds.domain_a), ("domain_b", ds.domain_b)):
    if domain is None:
      raise UserError(f"config.dataset.{name} is required for two-domain "
                      f"data (a block with name, train_split, eval_split, "
                      f"label)")
    split = domain.train_split if train else domain.eval_split
    out.append(DomainSource(domain, split, s.data_dir, ds.image_size,
                            max_examples))
  return out[0], out[1]
