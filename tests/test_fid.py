"""Tests for advjax.inception (FID InceptionV3 port) and advjax.fid (metrics).

The port is checked against pytorch-fid itself: tests/torch_reference/
dump_fid_inception.py builds pytorch-fid's network with random weights in the
separate torch venv made by `.ci/torch_env.sh`; those tests skip without it.
Everything else runs without torch.
"""

import fcntl
import hashlib
import os
import pickle
import subprocess
import sys
import time
import urllib.error
import zipfile
from pathlib import Path

import numpy as np
import pytest

from advjax import fid
from advjax import fileio
from advjax import inception
from advjax.errors import UserError
from tests import helpers

# One worker runs this module, so its module fixtures are built once
# (pyproject.toml: --dist=loadgroup).
pytestmark = pytest.mark.xdist_group("fid")

REPO = Path(__file__).resolve().parents[1]
DUMP_SCRIPT = REPO / "tests" / "torch_reference" / "dump_fid_inception.py"


# ---------------------------------------------------------------------------
# Against pytorch-fid (needs .ci/torch-venv).
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def torch_reference(tmp_path_factory):
  """Run the dump script once; returns (out_dir, reference arrays)."""
  torch_py = helpers.torch_python()
  # One dump per pytest run, shared by pytest-xdist workers (their basetemps
  # share a parent); a lock makes the other workers wait for the first.
  digest = hashlib.sha1(DUMP_SCRIPT.read_bytes()).hexdigest()[:12]
  root = tmp_path_factory.getbasetemp()
  if os.environ.get("PYTEST_XDIST_WORKER"):
    root = root.parent
  out = root / f"fid_torch_reference_{digest}"
  with open(root / f"fid_torch_reference_{digest}.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not (out / "reference.npz").exists():
      start = time.time()
      proc = subprocess.run([torch_py, str(DUMP_SCRIPT), str(out)],
                            capture_output=True, text=True, timeout=900)
      assert proc.returncode == 0, (
          f"dump script failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
      print(f"\ntorch reference dumped in {time.time() - start:.1f}s")
  with np.load(out / "reference.npz") as f:
    ref = {k: f[k] for k in f.files}
  return out, ref


@pytest.fixture(scope="module")
def jax_outputs(torch_reference):
  """FIDInceptionV3 in JAX with the converted .pth, on the same inputs.

  Batch size 4: the 4 small images fill one batch, the 2 large ones are
  padded, and both are resized to 299 before the (once-compiled) network.
  """
  out, ref = torch_reference
  start = time.time()
  variables = inception.load_fid_weights(str(out / "weights.pth"))
  extractor = fid.FeatureExtractor(variables=variables, batch_size=4)
  got = {"small": extractor(ref["images_small"]),
         "large": extractor(ref["images_large"])}
  print(f"\nJAX InceptionV3 on 6 images (8 with padding): "
        f"{time.time() - start:.1f}s")
  return got


@pytest.mark.parametrize("name", ["small", "large"])
def test_inception_matches_pytorch_fid(torch_reference, jax_outputs, name):
  _, ref = torch_reference
  pool3, logits = jax_outputs[name]
  want_pool3, want_logits = ref[f"pool3_{name}"], ref[f"logits_{name}"]
  assert pool3.shape == want_pool3.shape == (want_pool3.shape[0], 2048)
  assert logits.shape == want_logits.shape == (want_pool3.shape[0], 1008)
  for got, want, what in ((pool3, want_pool3, "pool3"),
                          (logits, want_logits, "logits")):
    scale = np.abs(want).max()
    diff = np.abs(got - want).max()
    print(f"{name} {what}: max|ref|={scale:.3g} max|diff|={diff:.3g} "
          f"(rel {diff / scale:.2g})")
    # The random reference is non-degenerate: outputs vary between images.
    assert want.std(axis=0).mean() > 1e-3 * scale
    assert diff < 2e-4 * scale


def test_resize_matches_torch_interpolate(torch_reference):
  _, ref = torch_reference  # shrinking 350x320 -> 299x299
  got = np.asarray(inception.preprocess(ref["resize_in"]))
  diff = np.abs(got - ref["resize_out"]).max()
  print(f"resize max|diff|={diff:.3g}")
  assert diff < 1e-5


@pytest.mark.parametrize("fmt", ["weights.pth", "weights_legacy.pth"])
def test_torch_free_reader_matches_npz(torch_reference, fmt):
  out, _ = torch_reference
  got = inception.read_torch_state_dict(str(out / fmt))
  with np.load(out / "state_dict.npz") as f:
    assert sorted(got) == sorted(f.files)
    for k in f.files:
      assert got[k].dtype == f[k].dtype, k
      np.testing.assert_array_equal(got[k], f[k], err_msg=k)


def test_weights_are_found_and_read_in_cloud_storage(torch_reference,
                                                     gcs_dir):
  out, _ = torch_reference
  for fmt in ("weights.pth", "weights_legacy.pth"):
    path = f"{gcs_dir}/{fmt}"
    fileio.write_bytes(path, (out / fmt).read_bytes())
    try:
      assert inception.find_fid_weights(path) == path
      got = inception.read_torch_state_dict(path)
    finally:
      fileio.remove(path)  # 91 MB held by the emulator otherwise
    want = inception.read_torch_state_dict(str(out / fmt))
    assert sorted(got) == sorted(want)
    for k, v in want.items():
      np.testing.assert_array_equal(got[k], v, err_msg=k)


# ---------------------------------------------------------------------------
# Reader, converter and preprocessing without torch.
# ---------------------------------------------------------------------------


def test_reader_refuses_arbitrary_objects(tmp_path):
  path = tmp_path / "evil.pth"
  with zipfile.ZipFile(path, "w") as zf:
    zf.writestr("archive/data.pkl", pickle.dumps({"x": os.system}))
  with pytest.raises(UserError, match="refusing to load"):
    inception.read_torch_state_dict(str(path))


def _crafted_pth(path, offset, size, stride, numel=4):
  """A zip .pth holding one float tensor 'w' over a storage of `numel`
  floats, with the given offset, size and stride (pickle opcodes written by
  hand: no torch needed to make a file torch's format describes)."""
  def text(value):
    data = value.encode()
    return b"X" + len(data).to_bytes(4, "little") + data

  def integer(value):
    return b"J" + int(value).to_bytes(4, "little", signed=True)

  def ints(values):
    return b"(" + b"".join(integer(v) for v in values) + b"t"

  pkl = (b"\x80\x02}" + text("w") + b"ctorch._utils\n_rebuild_tensor_v2\n("
         + b"(" + text("storage") + b"ctorch\nFloatStorage\n" + text("0")
         + text("cpu") + integer(numel) + b"tQ"
         + integer(offset) + ints(size) + ints(stride) + b"\x89}tRs.")
  with zipfile.ZipFile(path, "w") as zf:
    zf.writestr("archive/data.pkl", pkl)
    zf.writestr("archive/data/0",
                np.arange(numel, dtype="<f4").tobytes())
  return str(path)


@pytest.mark.parametrize("offset, size, stride, expected", [
    (0, (2, 2), (2, 1), [[0, 1], [2, 3]]),
    (1, (3,), (1,), [1, 2, 3]),
    (3, (), (), 3),
    (2, (0, 5), (5, 1), np.zeros((0, 5))),
    (3, (2,), (1,), None),  # one past the end
    (0, (2, 2), (3, 1), None),
    (4, (), (), None),
    (0, (2,), (-1,), None),
    (-1, (1,), (1,), None),
    (0, (2, 2), (1,), None),
    (2 ** 30, (1,), (1,), None),
])
def test_reader_checks_offsets_and_strides(tmp_path, offset, size, stride,
                                           expected):
  path = _crafted_pth(tmp_path / "w.pth", offset, size, stride)
  if expected is None:
    with pytest.raises(UserError, match="corrupt: tensor w .* does not lie in "
                       "its storage of 4 elements"):
      inception.read_torch_state_dict(path)
    return
  got = inception.read_torch_state_dict(path)["w"]
  np.testing.assert_array_equal(got, np.asarray(expected, np.float32))
  assert got.shape == np.asarray(expected).shape


def _torch_layout_state_dict(seed=0):
  """A random state_dict in torch's layout, built from FIDInceptionV3's shapes."""
  rng = np.random.default_rng(seed)
  shapes = inception._expected_shapes()
  sd = {}

  def walk(tree, prefix, collection):
    for name, sub in tree.items():
      if isinstance(sub, dict):
        walk(sub, prefix + [name], collection)
        continue
      mod = ".".join(prefix)
      if collection == "batch_stats":
        key = {"mean": "running_mean", "var": "running_var"}[name]
        value = rng.uniform(0.5, 2.0, sub).astype(np.float32)
      elif name == "kernel" and len(sub) == 4:  # HWIO -> OIHW
        key = "weight"
        value = rng.normal(size=(sub[3], sub[2], sub[0], sub[1]))
      elif name == "kernel":  # fc: (in, out) -> (out, in)
        key, value = "weight", rng.normal(size=sub[::-1])
      else:
        key = {"scale": "weight", "bias": "bias"}[name]
        value = rng.normal(size=sub)
      sd[f"{mod}.{key}"] = np.asarray(value, np.float32)
      if key == "running_var":
        sd[f"{mod}.num_batches_tracked"] = np.array(7, np.int64)

  walk(shapes["params"], [], "params")
  walk(shapes["batch_stats"], [], "batch_stats")
  return sd


def test_convert_state_dict_layout():
  sd = _torch_layout_state_dict()
  assert len([k for k in sd if not k.endswith("num_batches_tracked")]) == 472
  v = inception.convert_torch_state_dict(sd)
  np.testing.assert_array_equal(
      v["params"]["Mixed_7c"]["branch3x3_2a"]["conv"]["kernel"],
      sd["Mixed_7c.branch3x3_2a.conv.weight"].transpose(2, 3, 1, 0))
  assert v["params"]["Mixed_7c"]["branch3x3_2a"]["conv"]["kernel"].shape == (
      1, 3, 384, 384)
  np.testing.assert_array_equal(v["params"]["fc"]["kernel"],
                                sd["fc.weight"].T)
  np.testing.assert_array_equal(v["params"]["Mixed_5b"]["branch_pool"]["bn"]
                                ["scale"], sd["Mixed_5b.branch_pool.bn.weight"])
  np.testing.assert_array_equal(
      v["batch_stats"]["Conv2d_1a_3x3"]["bn"]["var"],
      sd["Conv2d_1a_3x3.bn.running_var"])
  np.testing.assert_array_equal(
      v["batch_stats"]["Conv2d_1a_3x3"]["bn"]["mean"],
      sd["Conv2d_1a_3x3.bn.running_mean"])


def test_convert_rejects_wrong_weights():
  sd = _torch_layout_state_dict()
  missing = dict(sd)
  del missing["Mixed_6a.branch3x3.conv.weight"]
  with pytest.raises(UserError, match="missing"):
    inception.convert_torch_state_dict(missing)
  wrong = dict(sd)
  wrong["fc.weight"] = np.zeros((1000, 2048), np.float32)
  with pytest.raises(UserError, match="shape"):
    inception.convert_torch_state_dict(wrong)


def test_preprocess_resize_and_grayscale():
  # torch's bilinear (align_corners=False) doubling of [a, b] along a row is
  # [a, .75a + .25b, .25a + .75b, b].
  x = np.array([-1.0, 1.0], np.float32).reshape(1, 1, 2, 1)
  x = np.broadcast_to(x, (1, 2, 2, 1))
  y = np.asarray(inception.preprocess(x, size=4))
  assert y.shape == (1, 4, 4, 3)
  np.testing.assert_allclose(y[0, 0, :, 0], [-1.0, -0.5, 0.5, 1.0], atol=1e-6)
  np.testing.assert_array_equal(y[..., 0], y[..., 2])  # gray -> 3 channels
  same = np.random.default_rng(0).uniform(-1, 1, (1, 5, 5, 3))
  np.testing.assert_allclose(inception.preprocess(same, size=5), same,
                             atol=1e-6)


# ---------------------------------------------------------------------------
# Locating weights (never touches the network).
# ---------------------------------------------------------------------------


@pytest.fixture
def offline(monkeypatch, tmp_path):
  monkeypatch.delenv(inception.FID_WEIGHTS_ENV, raising=False)
  monkeypatch.setenv("HOME", str(tmp_path))

  def no_network(url, dest, timeout=60.0):
    raise urllib.error.URLError("network unreachable (test)")

  monkeypatch.setattr(inception, "_download", no_network)
  return tmp_path


def test_missing_weights_offline_is_a_clear_user_error(offline):
  with pytest.raises(UserError) as e:
    inception.load_fid_weights()
  msg = str(e.value)
  print(msg)
  assert "\n" not in msg
  assert inception.FID_WEIGHTS_ENV in msg
  assert inception.FID_WEIGHTS_URL in msg
  assert str(offline / ".cache" / "advjax") in msg
  assert "download failed" in msg


def test_missing_explicit_path_and_env(offline, monkeypatch):
  with pytest.raises(UserError, match="not found at /nonexistent/w.pth"):
    inception.find_fid_weights("/nonexistent/w.pth")
  monkeypatch.setenv(inception.FID_WEIGHTS_ENV, "/nonexistent/env.pth")
  with pytest.raises(UserError, match="ADVJAX_FID_WEIGHTS"):
    inception.find_fid_weights()


def test_weights_found_in_env_then_cache_then_download(offline, monkeypatch):
  env_file = offline / "w.pth"
  env_file.write_bytes(b"x")
  monkeypatch.setenv(inception.FID_WEIGHTS_ENV, str(env_file))
  assert inception.find_fid_weights() == str(env_file)
  monkeypatch.delenv(inception.FID_WEIGHTS_ENV)
  calls = []

  def fake_download(url, dest, timeout=60.0):
    calls.append(url)
    Path(dest).parent.mkdir(parents=True, exist_ok=True)
    Path(dest).write_bytes(b"x")

  monkeypatch.setattr(inception, "_download", fake_download)
  monkeypatch.setattr(inception, "FID_WEIGHTS_SHA256",
                      hashlib.sha256(b"x").hexdigest())
  cache = inception.default_cache_path()
  assert inception.find_fid_weights() == cache
  assert calls == [inception.FID_WEIGHTS_URL]
  assert inception.find_fid_weights() == cache  # now cached: no second call
  assert len(calls) == 1


# ---------------------------------------------------------------------------
# Frechet distance.
# ---------------------------------------------------------------------------


def _random_psd(rng, d, rank=None):
  a = rng.normal(size=(d, rank or d))
  return a @ a.T / (rank or d)


@pytest.mark.parametrize("method", ["scipy", "eigh"])
def test_frechet_distance_zero_for_identical(method):
  rng = np.random.default_rng(0)
  mu, s = rng.normal(size=16), _random_psd(rng, 16)
  assert fid.frechet_distance(mu, s, mu, s, method=method) == pytest.approx(
      0.0, abs=1e-8)


@pytest.mark.parametrize("method", ["scipy", "eigh"])
def test_frechet_distance_closed_form(method):
  # 1-D: (m1 - m2)^2 + s1 + s2 - 2 sqrt(s1 s2), variances s.
  got = fid.frechet_distance([1.5], [[4.0]], [-0.5], [[9.0]], method=method)
  assert got == pytest.approx(2.0**2 + 4 + 9 - 2 * 6.0)
  rng = np.random.default_rng(1)
  m1, m2 = rng.normal(size=5), rng.normal(size=5)
  v1, v2 = rng.uniform(0.1, 3, 5), rng.uniform(0.1, 3, 5)
  want = np.sum((m1 - m2)**2 + v1 + v2 - 2 * np.sqrt(v1 * v2))
  got = fid.frechet_distance(m1, np.diag(v1), m2, np.diag(v2), method=method)
  assert got == pytest.approx(want, rel=1e-10)


def test_frechet_distance_symmetric_and_methods_agree():
  rng = np.random.default_rng(2)
  m1, m2 = rng.normal(size=32), rng.normal(size=32)
  s1, s2 = _random_psd(rng, 32), _random_psd(rng, 32, rank=8)  # one singular
  d12 = fid.frechet_distance(m1, s1, m2, s2)
  d21 = fid.frechet_distance(m2, s2, m1, s1)
  eig = fid.frechet_distance(m1, s1, m2, s2, method="eigh")
  assert d12 == pytest.approx(d21, rel=1e-6)
  assert d12 == pytest.approx(eig, rel=1e-6)


def test_statistics_and_feature_fids():
  rng = np.random.default_rng(3)
  a = rng.normal(size=(200, 6))
  b = rng.normal(size=(300, 6)) * 2 + 1
  mu, sigma = fid.compute_statistics(a)
  np.testing.assert_allclose(mu, a.mean(0))
  np.testing.assert_allclose(sigma, np.cov(a, rowvar=False))
  assert fid.classifier_fid(a, b) == pytest.approx(fid.fid_from_features(a, b))
  assert fid.classifier_fid(a, a) == pytest.approx(0.0, abs=1e-8)
  assert fid.classifier_fid(a, b) > 5.0
  with pytest.raises(UserError):
    fid.frechet_distance(mu, sigma, mu[:3], sigma[:3, :3])
  with pytest.raises(UserError):
    fid.compute_statistics(a[:1])


def test_statistics_round_trip(tmp_path):
  rng = np.random.default_rng(4)
  mu, sigma = rng.normal(size=3), _random_psd(rng, 3)
  fid.save_statistics(tmp_path / "s.npz", mu, sigma)
  mu2, sigma2 = fid.load_statistics(tmp_path / "s.npz")
  np.testing.assert_array_equal(mu, mu2)
  np.testing.assert_array_equal(sigma, sigma2)


# ---------------------------------------------------------------------------
# Inception Score.
# ---------------------------------------------------------------------------


def test_inception_score_extremes():
  classes, per_split, splits = 10, 3, 4
  # Every split holds each class `per_split` times: marginal uniform.
  labels = np.tile(np.arange(classes), per_split * splits)
  onehot = np.eye(classes)[labels]
  mean, std = fid.inception_score(onehot, splits=splits)
  assert mean == pytest.approx(classes)
  assert std == pytest.approx(0.0, abs=1e-9)
  # The same as very confident logits.
  mean, _ = fid.inception_score(onehot * 100.0, splits=splits)
  assert mean == pytest.approx(classes, rel=1e-6)
  # Identical predictions: p(y|x) = p(y), KL = 0, IS = 1.
  same = np.tile(np.random.default_rng(0).dirichlet(np.ones(classes)), (40, 1))
  assert fid.inception_score(same, splits=4)[0] == pytest.approx(1.0)
  logits = np.tile(np.random.default_rng(1).normal(size=classes), (40, 1))
  assert fid.inception_score(logits, splits=4)[0] == pytest.approx(1.0)
  with pytest.raises(UserError):
    fid.inception_score(onehot[:3], splits=4)


# ---------------------------------------------------------------------------
# Feature extractor batching.
# ---------------------------------------------------------------------------


def test_feature_extractor_counts_each_image_once():
  traces = []

  def apply_fn(variables, x):
    traces.append(x.shape)
    return x.mean(axis=(1, 2, 3)) * variables, x.reshape(x.shape[0], -1)[:, :2]

  extractor = fid.FeatureExtractor(apply_fn=apply_fn, variables=2.0,
                                   batch_size=3)
  images = np.random.default_rng(0).uniform(-1, 1, (7, 4, 5, 1)).astype(
      np.float32)
  means, firsts = extractor(images)
  assert means.shape == (7,) and firsts.shape == (7, 2)
  np.testing.assert_allclose(means, images.mean(axis=(1, 2, 3)) * 2, rtol=1e-5)
  np.testing.assert_array_equal(firsts, images.reshape(7, -1)[:, :2])
  # An iterable of chunks (sizes 5 and 2) gives the same rows.
  means2, _ = extractor(iter([images[:5], images[5:]]))
  np.testing.assert_allclose(means2, means, rtol=1e-6)
  assert traces == [(3, 4, 5, 1)]  # compiled once, for the fixed batch shape
  with pytest.raises(UserError, match=r"\[-1, 1\]"):
    extractor(images * 127.5 + 127.5)
  with pytest.raises(UserError, match="no images"):
    extractor([])


if __name__ == "__main__":
  sys.exit(pytest.main([__file__, "-q", "-s"]))


def test_the_full_hash_extends_the_prefix_in_the_file_name():
  prefix = inception.FID_WEIGHTS_FILENAME.rsplit("-", 1)[1].split(".")[0]
  assert len(inception.FID_WEIGHTS_SHA256) == 64
  assert inception.FID_WEIGHTS_SHA256.startswith(prefix)
  assert inception.FID_WEIGHTS_URL.endswith(inception.FID_WEIGHTS_FILENAME)


def test_download_is_cached_only_with_the_right_sha256(monkeypatch, tmp_path):
  """A local fake server: a body cut short (urllib does not raise) or altered
  never stays in the cache; a stale bad cache file is fetched again."""
  monkeypatch.delenv(inception.FID_WEIGHTS_ENV, raising=False)
  monkeypatch.setenv("HOME", str(tmp_path))
  body = os.urandom(3 << 20)
  monkeypatch.setattr(inception, "FID_WEIGHTS_SHA256",
                      hashlib.sha256(body).hexdigest())
  served = []

  def urlopen(url, timeout):
    assert url == inception.FID_WEIGHTS_URL and timeout > 0
    import io  # pylint: disable=g-import-not-at-top
    return io.BytesIO(served[-1])

  monkeypatch.setattr(inception.urllib.request, "urlopen", urlopen)
  cache = Path(inception.default_cache_path())
  for bad in (body[:len(body) // 2], body[:-1] + b"!"):
    served.append(bad)
    with pytest.raises(UserError, match="cut short or altered") as e:
      inception.find_fid_weights()
    assert "\n" not in str(e.value) and str(cache) in str(e.value)
    assert not cache.exists()
    assert os.listdir(cache.parent) == []  # no .part left either
  served.append(body)
  assert inception.find_fid_weights() == str(cache)
  assert cache.read_bytes() == body
  # A file cut short by an older version is refused offline, fetched again
  # otherwise.
  cache.write_bytes(body[:100])
  with pytest.raises(UserError, match="not the expected file"):
    inception.find_fid_weights(download=False)
  assert inception.find_fid_weights() == str(cache)
  assert cache.read_bytes() == body
