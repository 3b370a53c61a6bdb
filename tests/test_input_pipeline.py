"""Input pipeline: deterministic, resumable, host-independent batches.

Most tests read a tiny in-memory source or tfds mock data. The Fashion-MNIST
tests build the real dataset offline from the Debian files (needs
tensorflow-cpu for the one-time prepare; skipped without it).
"""

import hashlib
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow_datasets as tfds

from advjax import input_pipeline as ip
from advjax.errors import UserError
from tests.helpers import python_path, write_idx_gz

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class ListSource:
  """In-memory source; example i has label i and random pixels."""

  def __init__(self, n, shape=(32, 32, 3), seed=0):
    rng = np.random.default_rng(seed)
    self.images = rng.integers(0, 256, (n, *shape), dtype=np.uint8)

  def __len__(self):
    return len(self.images)

  def __getitem__(self, i):
    return {"image": self.images[i], "label": np.int64(i)}


class BatchedListSource(ListSource):
  """Same, with the batched `__getitems__` of tfds data sources."""

  def __init__(self, *args, **kwargs):
    super().__init__(*args, **kwargs)
    self.calls = 0

  def __getitems__(self, indices):
    self.calls += 1
    return [self[i] for i in indices]


def take(iterator, n):
  return [next(iterator) for _ in range(n)]


def train_batches(source, n, **kwargs):
  kwargs = {"global_batch_size": 8, "seed": 0, "process_index": 0,
            "process_count": 1, **kwargs}
  with ip.TrainIterator(source, **kwargs) as it:
    batches = take(it, n)
    assert it.step == kwargs.get("start_step", 0) + n
  return batches


def labels_of(batches):
  return np.stack([b["label"] for b in batches])


# ---------------------------------------------------------------------------
# Dataset names, errors, conversion.


def test_dataset_info_has_the_four_datasets():
  assert ip.get_dataset_info("cifar100").num_classes == 100
  assert ip.get_dataset_info("cifar10").image_shape == (32, 32, 3)
  assert ip.get_dataset_info("fashion_mnist").image_shape == (28, 28, 1)
  assert ip.get_dataset_info("mnist").eval_split == "test"


def test_misspelt_dataset_name_suggests_the_closest():
  with pytest.raises(UserError, match="did you mean 'cifar100'"):
    ip.get_dataset_info("cifar1000")
  with pytest.raises(UserError, match="did you mean 'fashion_mnist'"):
    ip.get_source("fashion_mnst", "train")


def test_missing_data_dir_is_a_user_error(tmp_path):
  missing = str(tmp_path / "nope")
  with pytest.raises(UserError, match=f"data_dir '{missing}' does not exist"):
    ip.get_source("mnist", "train", missing)


def test_indivisible_batch_size_names_both_numbers():
  ip.validate_batch_size(64, 4, 2)
  with pytest.raises(UserError, match=r"batch size 10 .* 4 devices"):
    ip.validate_batch_size(10, 4)
  with pytest.raises(UserError, match=r"batch size 12 .* 8 hosts"):
    ip.validate_batch_size(12, 4, 8)
  with pytest.raises(UserError, match="batch size 9 .* 2 hosts"):
    ip.TrainIterator(ListSource(20), global_batch_size=9, seed=0,
                     process_index=0, process_count=2)
  with pytest.raises(UserError, match="batch size 7 .* 3 hosts"):
    ip.eval_batches(ListSource(20), global_batch_size=7, process_index=0,
                    process_count=3)


def test_batch_larger_than_dataset_is_a_user_error():
  with pytest.raises(UserError, match="larger than the 5 training"):
    ip.TrainIterator(ListSource(5), global_batch_size=8, seed=0,
                     process_index=0, process_count=1)


def test_to_float_image_maps_0_255_to_minus1_1():
  x = ip.to_float_image(np.array([0, 255, 51], np.uint8))
  assert x.dtype == np.float32
  np.testing.assert_allclose(x, [-1.0, 1.0, 51 / 127.5 - 1], atol=1e-6)


# ---------------------------------------------------------------------------
# Training order.


def test_order_follows_the_documented_permutation():
  n, b, seed = 20, 8, 3
  batches = train_batches(ListSource(n), 4, seed=seed, prefetch=0)
  perm0 = np.random.default_rng([seed, 0]).permutation(n)
  perm1 = np.random.default_rng([seed, 1]).permutation(n)
  # steps_per_epoch = 20 // 8 = 2: the last 4 of each epoch are dropped.
  np.testing.assert_array_equal(labels_of(batches[:2]).ravel(), perm0[:2 * b])
  np.testing.assert_array_equal(labels_of(batches[2:]).ravel(), perm1[:2 * b])
  assert batches[0]["image"].dtype == np.float32
  assert batches[0]["label"].dtype == np.int32


def test_batches_match_the_source_pixels():
  source = ListSource(20)
  (batch,) = train_batches(source, 1)
  np.testing.assert_allclose(
      batch["image"], ip.to_float_image(source.images[batch["label"]]))


def test_same_seed_same_batches_different_seed_different():
  source = BatchedListSource(40)
  a = train_batches(source, 3, seed=1)
  b = train_batches(source, 3, seed=1)
  c = train_batches(source, 3, seed=2)
  np.testing.assert_array_equal(labels_of(a), labels_of(b))
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x["image"], y["image"])
  assert not np.array_equal(labels_of(a), labels_of(c))
  assert source.calls > 0  # The batched fast path was used.


@pytest.mark.parametrize("crop_flip", [False, True])
def test_start_step_resumes_exactly(crop_flip):
  source = ListSource(20)
  full = train_batches(source, 7, crop_flip=crop_flip)
  resumed = train_batches(source, 2, start_step=5, crop_flip=crop_flip)
  for x, y in zip(full[5:], resumed):
    np.testing.assert_array_equal(x["label"], y["label"])
    np.testing.assert_array_equal(x["image"], y["image"])


def test_steps_per_epoch_and_no_repeats_within_an_epoch():
  with ip.TrainIterator(ListSource(35), global_batch_size=8, seed=0,
                        process_index=0, process_count=1) as it:
    assert it.steps_per_epoch == 4
    labels = labels_of(take(it, 4)).ravel()
  assert len(set(labels.tolist())) == 32


@pytest.mark.parametrize("crop_flip", [False, True])
def test_two_hosts_together_give_the_one_host_batch(crop_flip):
  source = ListSource(24)
  one = train_batches(source, 4, crop_flip=crop_flip)
  h0 = train_batches(source, 4, crop_flip=crop_flip, process_index=0,
                     process_count=2)
  h1 = train_batches(source, 4, crop_flip=crop_flip, process_index=1,
                     process_count=2)
  for g, a, b in zip(one, h0, h1):
    assert a["image"].shape == (4, 32, 32, 3)
    for key in ("image", "label"):
      np.testing.assert_array_equal(g[key], np.concatenate([a[key], b[key]]))


def test_close_stops_the_prefetch_thread():
  it = ip.TrainIterator(ListSource(20), global_batch_size=4, seed=0,
                        process_index=0, process_count=1, prefetch=2)
  next(it)
  it.close()
  assert not it._prefetcher._thread.is_alive()  # pylint: disable=protected-access


def test_errors_in_the_reader_reach_the_caller():

  class Broken(ListSource):

    def __getitem__(self, i):
      raise OSError("disk on fire")

  it = ip.TrainIterator(Broken(20), global_batch_size=4, seed=0,
                        process_index=0, process_count=1)
  with pytest.raises(OSError, match="disk on fire"):
    next(it)
  it.close()


def test_unclosed_iterator_does_not_hang_interpreter_exit():
  code = textwrap.dedent("""
      import numpy as np
      from advjax import input_pipeline as ip
      class S:
        def __len__(self): return 100
        def __getitem__(self, i):
          return {"image": np.zeros((8, 8, 3), np.uint8), "label": i}
      it = ip.TrainIterator(S(), global_batch_size=4, seed=0,
                            process_index=0, process_count=1, prefetch=3)
      keep = it
      print(next(it)["image"].shape)
  """)
  out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, timeout=60,
                       capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": python_path()})
  assert out.returncode == 0, out.stderr
  assert "(4, 8, 8, 3)" in out.stdout


# ---------------------------------------------------------------------------
# Augmentation.


def _matches_a_padded_window(aug, orig):
  """Whether `aug` is a (possibly flipped) window of `orig` padded by 4."""
  padded = np.pad(orig, ((4, 4), (4, 4), (0, 0)))
  h, w, _ = orig.shape
  found = set()
  for dy in range(9):
    for dx in range(9):
      window = padded[dy:dy + h, dx:dx + w]
      if np.array_equal(aug, window):
        found.add(False)
      if np.array_equal(aug, window[:, ::-1]):
        found.add(True)
  return found


def test_crop_flip_is_a_flipped_or_unflipped_padded_crop():
  source = ListSource(64)
  plain = train_batches(source, 1, global_batch_size=64)[0]
  aug = train_batches(source, 1, global_batch_size=64, crop_flip=True)[0]
  np.testing.assert_array_equal(plain["label"], aug["label"])
  assert aug["image"].shape == plain["image"].shape == (64, 32, 32, 3)
  assert aug["image"].min() >= -1 and aug["image"].max() <= 1
  flips = set()
  for image, label in zip(aug["image"], aug["label"]):
    uint8 = np.round((image + 1) * 127.5).astype(np.uint8)
    found = _matches_a_padded_window(uint8, source.images[label])
    assert found, f"example {label} is not a crop of its padded original"
    flips |= found
  assert flips == {False, True}
  assert not np.array_equal(plain["image"], aug["image"])


def test_crop_and_flip_pads_with_black():
  images = np.full((1, 32, 32, 3), 200, np.uint8)
  out = ip.crop_and_flip(images, np.array([[0, 8]]), np.array([False]))
  assert (out[0, :4] == 0).all() and (out[0, :, -4:] == 0).all()
  assert (out[0, 4:, :-4] == 200).all()
  flipped = ip.crop_and_flip(images, np.array([[0, 8]]), np.array([True]))
  assert (flipped[0, :, :4] == 0).all()


# ---------------------------------------------------------------------------
# Evaluation.


@pytest.mark.parametrize("hosts", [1, 3])
def test_eval_covers_every_example_once_with_padding(hosts):
  n, batch = 23, 6
  source = ListSource(n, shape=(4, 4, 1))
  per_host = [list(ip.eval_batches(source, global_batch_size=batch,
                                   process_index=p, process_count=hosts))
              for p in range(hosts)]
  assert {len(b) for b in per_host} == {4}  # ceil(23 / 6), never dropped.
  seen = []
  for p in range(hosts):
    for b in per_host[p]:
      assert b["image"].shape == (batch // hosts, 4, 4, 1)
      assert b["mask"].dtype == np.float32 and b["label"].dtype == np.int32
      real = b["mask"] == 1.0
      assert set(np.unique(b["mask"])) <= {0.0, 1.0}
      seen += b["label"][real].tolist()
      np.testing.assert_array_equal(b["image"][~real], 0.0)
      np.testing.assert_array_equal(b["label"][~real], 0)
      np.testing.assert_allclose(
          b["image"][real], ip.to_float_image(source.images[b["label"][real]]))
  assert sorted(seen) == list(range(n))
  total_mask = sum(b["mask"].sum() for bs in per_host for b in bs)
  assert total_mask == n


def test_eval_without_prefetch_gives_the_same_batches():
  source = ListSource(10, shape=(4, 4, 1))
  a = list(ip.eval_batches(source, global_batch_size=4, process_index=0,
                           process_count=1))
  b = list(ip.eval_batches(source, global_batch_size=4, process_index=0,
                           process_count=1, prefetch=0))
  assert len(a) == len(b) == 3
  for x, y in zip(a, b):
    for key in x:
      np.testing.assert_array_equal(x[key], y[key])


# ---------------------------------------------------------------------------
# tfds mock data.


@pytest.mark.parametrize("name", sorted(ip.DATASETS))
def test_mock_data_batches_have_the_dataset_shape(name):
  info = ip.get_dataset_info(name)
  with tfds.testing.mock_data(num_examples=12):
    train = ip.get_source(name, info.train_split)
    test = ip.get_source(name, info.eval_split)
    assert ip.num_examples(train) == 12
    with ip.TrainIterator(train, global_batch_size=4, seed=0, crop_flip=True,
                          process_index=0, process_count=1) as it:
      batch = next(it)
    evals = list(ip.eval_batches(test, global_batch_size=8, process_index=0,
                                 process_count=1))
  assert batch["image"].shape == (4, *info.image_shape)
  assert batch["image"].dtype == np.float32
  assert -1 <= batch["image"].min() < batch["image"].max() <= 1
  assert batch["label"].dtype == np.int32
  assert ((0 <= batch["label"]) & (batch["label"] < info.num_classes)).all()
  assert len(evals) == 2 and evals[1]["mask"].sum() == 4
  assert evals[0]["image"].shape == (8, *info.image_shape)


def test_fashion_mnist_without_files_or_internet_says_how_to_get_it(
    tmp_path, monkeypatch):
  monkeypatch.setenv(ip.FASHION_MNIST_ENV, str(tmp_path))  # No files there.

  def offline(*args, **kwargs):
    raise ConnectionError("no internet")

  monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare",
                      offline)
  with pytest.raises(UserError, match="apt-get install dataset-fashion-mnist"):
    ip.get_source("fashion_mnist", "train", str(tmp_path))
  with pytest.raises(UserError, match=r"advjax\[prepare\]"):
    ip.get_source("cifar10", "train", str(tmp_path))


# ---------------------------------------------------------------------------
# Fashion-MNIST built offline from the Debian package (needs tensorflow).


def _digest(image, label):
  return hashlib.sha1(np.asarray(image, np.uint8).tobytes()
                      + bytes([int(label)])).hexdigest()


def test_offline_fashion_mnist_matches_the_idx_files(fashion_dir):
  train = ip.get_source("fashion_mnist", "train", fashion_dir)
  test = ip.get_source("fashion_mnist", "test", fashion_dir)
  assert len(train) == 60000 and len(test) == 10000
  folder = ip.FASHION_MNIST_DIR
  raw_images = ip.read_idx_gz(
      os.path.join(folder, "t10k-images-idx3-ubyte.gz"))
  raw_labels = ip.read_idx_gz(
      os.path.join(folder, "t10k-labels-idx1-ubyte.gz"))
  assert raw_images.shape == (10000, 28, 28)
  # tfds stores examples in its own (hashed-key) order, as in the official
  # build; as a multiset the split equals the idx file.
  images, labels = ip.read_examples(test, range(len(test)))
  assert images.shape == (10000, 28, 28, 1)
  built = sorted(_digest(i, l) for i, l in zip(images, labels))
  raw = sorted(_digest(i[..., None], l) for i, l in zip(raw_images,
                                                       raw_labels))
  assert built == raw
  first = _digest(raw_images[0][..., None], raw_labels[0])
  assert first in built
  # The first training example is in the train idx file with its label.
  ex = train[0]
  train_images = ip.read_idx_gz(
      os.path.join(folder, "train-images-idx3-ubyte.gz"))
  train_labels = ip.read_idx_gz(
      os.path.join(folder, "train-labels-idx1-ubyte.gz"))
  where = np.flatnonzero((train_images == ex["image"][..., 0]).all((1, 2)))
  assert len(where) >= 1 and ex["label"] in train_labels[where]


def test_cli_reports_the_prepared_dataset(fashion_dir, capsys):
  assert ip.main(["--dataset=fashion_mnist", f"--data_dir={fashion_dir}"]) == 0
  out = capsys.readouterr().out
  assert "train: 60000" in out and "test: 10000" in out
  assert ip.main(["--dataset=fashion_mnit"]) == 2
  assert "did you mean 'fashion_mnist'" in capsys.readouterr().err


def test_reading_a_prepared_dataset_does_not_import_tensorflow(fashion_dir):
  code = textwrap.dedent(f"""
      import sys
      from advjax import input_pipeline as ip
      src = ip.get_source("fashion_mnist", "test", {fashion_dir!r})
      it = ip.TrainIterator(src, global_batch_size=16, seed=0, crop_flip=True,
                            process_index=0, process_count=1)
      batch = next(it)
      it.close()
      ev = next(iter(ip.eval_batches(src, global_batch_size=16,
                                     process_index=0, process_count=1)))
      assert batch["image"].shape == ev["image"].shape == (16, 28, 28, 1)
      print("tensorflow imported:", "tensorflow" in sys.modules)
  """)
  out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, timeout=120,
                       capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": python_path()})
  assert out.returncode == 0, out.stderr[-2000:]
  assert "tensorflow imported: False" in out.stdout


def _fake_fashion_mnist(folder, parts):
  """Idx files with `parts[prefix]` random images; returns the images."""
  folder.mkdir()
  rng = np.random.default_rng(0)
  raw = {}
  for prefix, n in parts.items():
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = np.arange(n, dtype=np.uint8) % 10
    write_idx_gz(folder / f"{prefix}-images-idx3-ubyte.gz", images)
    write_idx_gz(folder / f"{prefix}-labels-idx1-ubyte.gz", labels)
    raw[prefix] = images
  return raw


def test_fashion_mnist_folder_can_be_overridden(tmp_path, monkeypatch):
  pytest.importorskip("tensorflow")
  folder = tmp_path / "raw"
  parts = {"train": 7, "t10k": 3}
  raw = _fake_fashion_mnist(folder, parts)
  monkeypatch.setenv(ip.FASHION_MNIST_ENV, str(folder))
  data_dir = tmp_path / "tfds" / "not yet made"  # prepare creates it
  ip.prepare("fashion_mnist", str(data_dir))
  for split, prefix in (("train", "train"), ("test", "t10k")):
    source = ip.get_source("fashion_mnist", split, str(data_dir))
    assert len(source) == parts[prefix]
    for i in range(len(source)):
      ex = source[i]
      np.testing.assert_array_equal(ex["image"][..., 0],
                                    raw[prefix][ex["label"]])


def test_two_processes_preparing_at_once_both_get_the_dataset(tmp_path):
  pytest.importorskip("tensorflow")
  folder = tmp_path / "raw"
  _fake_fashion_mnist(folder, {"train": 7, "t10k": 3})
  data_dir = tmp_path / "tfds"
  data_dir.mkdir()
  code = textwrap.dedent(f"""
      from advjax import input_pipeline as ip
      ip.prepare("fashion_mnist", {str(data_dir)!r})
      print("examples", len(ip.get_source("fashion_mnist", "train",
                                          {str(data_dir)!r})), flush=True)
  """)
  env = {**os.environ, "PYTHONPATH": ROOT, ip.FASHION_MNIST_ENV: str(folder)}
  # Both arrive while the preparation lock is taken, then race for it.
  builder = ip._local_fashion_mnist_builder(str(folder), str(data_dir))  # pylint: disable=protected-access
  with ip._preparing(builder, "fashion_mnist"):  # pylint: disable=protected-access
    procs = [subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    for p in procs:
      assert p.stdout.readline().startswith(
          f"advjax: waiting for pid {os.getpid()} on ")
  outs = [p.communicate(timeout=300) for p in procs]
  for p, (stdout, stderr) in zip(procs, outs):
    assert p.returncode == 0, stderr[-2000:]
    assert stdout.strip().splitlines()[-1] == "examples 7"
    assert "advjax: error" not in stderr
