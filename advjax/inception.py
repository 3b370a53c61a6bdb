"""InceptionV3 for FID / Inception Score, with pytorch-fid's weights.

`FIDInceptionV3` is the Inception network of Szegedy et al. 2016 ("Rethinking
the Inception Architecture for Computer Vision") in the exact variant that
TensorFlow's FID code used (graph `inception-2015-12-05`) and that pytorch-fid
ports as `fid_inception_v3()`. It differs from torchvision's InceptionV3 in
three places: the 3x3 average pools in the A, C and first E blocks ignore the
padded zeros (count_include_pad=False), the second E block (Mixed_7c) pools
with a 3x3 *max* pool, and the classifier has 1008 outputs.

Weights: pytorch-fid's `pt_inception-2015-12-05-6726825d.pth`. It is read here
without torch (a restricted unpickler that only rebuilds plain tensors) and
converted to flax variables. Nothing here imports torch.

Layout: NHWC, float32, images in [-1, 1] (pytorch-fid maps [0, 1] -> [-1, 1]
before the network; advjax images are already in [-1, 1]).
"""

from __future__ import annotations

import collections
import functools
import hashlib
import io
import os
import pickle
import shutil
import tempfile
import urllib.request
import zipfile
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from advjax import fileio
from advjax.errors import UserError

FID_WEIGHTS_URL = (
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
    "pt_inception-2015-12-05-6726825d.pth")
FID_WEIGHTS_FILENAME = "pt_inception-2015-12-05-6726825d.pth"
# The file's full SHA-256. Its name carries the first 8 hex digits (torch.hub's
# check_hash convention); the full value is the one published for the same
# file (95,628,359 bytes) re-hosted by torch-fidelity as
# weights-inception-2015-12-05-6726825d.pth.
FID_WEIGHTS_SHA256 = (
    "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2")
FID_WEIGHTS_ENV = "ADVJAX_FID_WEIGHTS"
INPUT_SIZE = 299
NUM_CLASSES = 1008
FEATURE_DIM = 2048
BN_EPSILON = 1e-3

Padding = tuple[tuple[int, int], tuple[int, int]]


# ---------------------------------------------------------------------------
# Network.
# ---------------------------------------------------------------------------


def _pad(kernel: tuple[int, int], same: bool) -> Padding:
  """Symmetric padding: (k-1)/2 per side when `same`, else none."""
  if not same:
    return ((0, 0), (0, 0))
  return ((kernel[0] // 2, kernel[0] // 2), (kernel[1] // 2, kernel[1] // 2))


class BasicConv(nn.Module):
  """Conv (no bias) -> BatchNorm (eps 1e-3, running statistics) -> ReLU."""
  features: int
  kernel: tuple[int, int] = (1, 1)
  stride: int = 1
  same: bool = False  # pad so that a stride-1 conv keeps the spatial size

  @nn.compact
  def __call__(self, x):
    x = nn.Conv(self.features, self.kernel, strides=(self.stride, self.stride),
                padding=_pad(self.kernel, self.same), use_bias=False,
                name="conv")(x)
    x = nn.BatchNorm(use_running_average=True, epsilon=BN_EPSILON,
                     name="bn")(x)
    return nn.relu(x)


def _avg_pool_3x3(x):
  """3x3/1 average pool that averages only over real (unpadded) pixels."""
  return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)),
                     count_include_pad=False)


def _max_pool_3x3_s2(x):
  return nn.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")


class InceptionA(nn.Module):
  """35x35 block (Mixed_5b/c/d): 1x1, 5x5, double 3x3 and pooled branches."""
  pool_features: int

  @nn.compact
  def __call__(self, x):
    b1 = BasicConv(64, name="branch1x1")(x)
    b5 = BasicConv(48, name="branch5x5_1")(x)
    b5 = BasicConv(64, (5, 5), same=True, name="branch5x5_2")(b5)
    b3 = BasicConv(64, name="branch3x3dbl_1")(x)
    b3 = BasicConv(96, (3, 3), same=True, name="branch3x3dbl_2")(b3)
    b3 = BasicConv(96, (3, 3), same=True, name="branch3x3dbl_3")(b3)
    bp = BasicConv(self.pool_features, name="branch_pool")(_avg_pool_3x3(x))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
  """35 -> 17 reduction block (Mixed_6a)."""

  @nn.compact
  def __call__(self, x):
    b3 = BasicConv(384, (3, 3), stride=2, name="branch3x3")(x)
    bd = BasicConv(64, name="branch3x3dbl_1")(x)
    bd = BasicConv(96, (3, 3), same=True, name="branch3x3dbl_2")(bd)
    bd = BasicConv(96, (3, 3), stride=2, name="branch3x3dbl_3")(bd)
    return jnp.concatenate([b3, bd, _max_pool_3x3_s2(x)], axis=-1)


class InceptionC(nn.Module):
  """17x17 block with factorised 7x7 convs (Mixed_6b..e)."""
  channels_7x7: int

  @nn.compact
  def __call__(self, x):
    c = self.channels_7x7
    b1 = BasicConv(192, name="branch1x1")(x)
    b7 = BasicConv(c, name="branch7x7_1")(x)
    b7 = BasicConv(c, (1, 7), same=True, name="branch7x7_2")(b7)
    b7 = BasicConv(192, (7, 1), same=True, name="branch7x7_3")(b7)
    bd = BasicConv(c, name="branch7x7dbl_1")(x)
    bd = BasicConv(c, (7, 1), same=True, name="branch7x7dbl_2")(bd)
    bd = BasicConv(c, (1, 7), same=True, name="branch7x7dbl_3")(bd)
    bd = BasicConv(c, (7, 1), same=True, name="branch7x7dbl_4")(bd)
    bd = BasicConv(192, (1, 7), same=True, name="branch7x7dbl_5")(bd)
    bp = BasicConv(192, name="branch_pool")(_avg_pool_3x3(x))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
  """17 -> 8 reduction block (Mixed_7a)."""

  @nn.compact
  def __call__(self, x):
    b3 = BasicConv(192, name="branch3x3_1")(x)
    b3 = BasicConv(320, (3, 3), stride=2, name="branch3x3_2")(b3)
    b7 = BasicConv(192, name="branch7x7x3_1")(x)
    b7 = BasicConv(192, (1, 7), same=True, name="branch7x7x3_2")(b7)
    b7 = BasicConv(192, (7, 1), same=True, name="branch7x7x3_3")(b7)
    b7 = BasicConv(192, (3, 3), stride=2, name="branch7x7x3_4")(b7)
    return jnp.concatenate([b3, b7, _max_pool_3x3_s2(x)], axis=-1)


class InceptionE(nn.Module):
  """8x8 block with split 1x3/3x1 outputs (Mixed_7b: avg pool, 7c: max pool).

  The FID graph pools with max in Mixed_7c (pytorch-fid's FIDInceptionE_2).
  """
  max_pool: bool = False

  @nn.compact
  def __call__(self, x):
    b1 = BasicConv(320, name="branch1x1")(x)
    b3 = BasicConv(384, name="branch3x3_1")(x)
    b3 = jnp.concatenate([
        BasicConv(384, (1, 3), same=True, name="branch3x3_2a")(b3),
        BasicConv(384, (3, 1), same=True, name="branch3x3_2b")(b3)], axis=-1)
    bd = BasicConv(448, name="branch3x3dbl_1")(x)
    bd = BasicConv(384, (3, 3), same=True, name="branch3x3dbl_2")(bd)
    bd = jnp.concatenate([
        BasicConv(384, (1, 3), same=True, name="branch3x3dbl_3a")(bd),
        BasicConv(384, (3, 1), same=True, name="branch3x3dbl_3b")(bd)], axis=-1)
    if self.max_pool:
      pooled = nn.max_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))
    else:
      pooled = _avg_pool_3x3(x)
    bp = BasicConv(192, name="branch_pool")(pooled)
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


def preprocess(images, size: int = INPUT_SIZE):
  """NHWC images in [-1, 1] -> (N, size, size, 3) float32 network input.

  Grayscale (C=1) is repeated to 3 channels. Resizing is bilinear without
  antialiasing at half-pixel centres, which is what torch's
  F.interpolate(mode='bilinear', align_corners=False) in pytorch-fid does.
  """
  x = jnp.asarray(images, jnp.float32)
  if x.ndim != 4 or x.shape[-1] not in (1, 3):
    raise UserError(
        f"Inception expects NHWC images with 1 or 3 channels, got shape "
        f"{tuple(x.shape)}")
  if x.shape[-1] == 1:
    x = jnp.repeat(x, 3, axis=-1)
  if x.shape[1:3] != (size, size):
    rows = _bilinear_matrix(x.shape[1], size)
    cols = _bilinear_matrix(x.shape[2], size)
    hi = jax.lax.Precision.HIGHEST
    x = jnp.einsum("oh,nhwc->nowc", rows, x, precision=hi)
    x = jnp.einsum("pw,nowc->nopc", cols, x, precision=hi)
  return x


def _bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
  """(n_out, n_in) weights of torch's bilinear resize (align_corners=False).

  Output pixel i samples the input at (i + 0.5) * n_in / n_out - 0.5 (clamped
  at 0) with two taps and no antialiasing. jax.image.resize(..., 'bilinear',
  antialias=False) is the same map, but builds its weights in float32 (errors
  up to ~7e-5 when shrinking); these are built in float64.
  """
  src = np.maximum((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0)
  lo = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
  hi = np.minimum(lo + 1, n_in - 1)
  frac = src - lo
  m = np.zeros((n_out, n_in), np.float64)
  np.add.at(m, (np.arange(n_out), lo), 1.0 - frac)
  np.add.at(m, (np.arange(n_out), hi), frac)
  return m.astype(np.float32)


class FIDInceptionV3(nn.Module):
  """pytorch-fid's FID InceptionV3 (Szegedy et al. 2016) in NHWC.

  Returns `(pool3, logits)`: the 2048-d global-average-pooled features used by
  FID and the 1008-way logits used by the Inception Score. Inference only
  (BatchNorm uses running statistics; dropout before the classifier is the
  identity at inference). Set `resize_input=False` to feed 299x299 inputs
  that were already prepared by `preprocess`.
  """
  resize_input: bool = True

  @nn.compact
  def __call__(self, images):
    x = preprocess(images) if self.resize_input else images
    x = BasicConv(32, (3, 3), stride=2, name="Conv2d_1a_3x3")(x)
    x = BasicConv(32, (3, 3), name="Conv2d_2a_3x3")(x)
    x = BasicConv(64, (3, 3), same=True, name="Conv2d_2b_3x3")(x)
    x = _max_pool_3x3_s2(x)
    x = BasicConv(80, name="Conv2d_3b_1x1")(x)
    x = BasicConv(192, (3, 3), name="Conv2d_4a_3x3")(x)
    x = _max_pool_3x3_s2(x)
    x = InceptionA(32, name="Mixed_5b")(x)
    x = InceptionA(64, name="Mixed_5c")(x)
    x = InceptionA(64, name="Mixed_5d")(x)
    x = InceptionB(name="Mixed_6a")(x)
    x = InceptionC(128, name="Mixed_6b")(x)
    x = InceptionC(160, name="Mixed_6c")(x)
    x = InceptionC(160, name="Mixed_6d")(x)
    x = InceptionC(192, name="Mixed_6e")(x)
    x = InceptionD(name="Mixed_7a")(x)
    x = InceptionE(max_pool=False, name="Mixed_7b")(x)
    x = InceptionE(max_pool=True, name="Mixed_7c")(x)
    pool3 = jnp.mean(x, axis=(1, 2))
    logits = nn.Dense(NUM_CLASSES, name="fc")(pool3)
    return pool3, logits


# ---------------------------------------------------------------------------
# torch state_dict -> flax variables.
# ---------------------------------------------------------------------------

_BN_FIELDS = {"weight": ("params", "scale"), "bias": ("params", "bias"),
              "running_mean": ("batch_stats", "mean"),
              "running_var": ("batch_stats", "var")}


def convert_torch_state_dict(
    state_dict: Mapping[str, np.ndarray]) -> dict[str, Any]:
  """pytorch-fid state_dict (numpy arrays) -> {'params', 'batch_stats'}.

  Conv weights go OIHW -> HWIO, the fc weight is transposed, BatchNorm
  weight/bias become scale/bias and running_mean/var become batch_stats.
  `num_batches_tracked` and the unused auxiliary classifier are dropped.
  """
  params: dict[str, Any] = {}
  stats: dict[str, Any] = {}

  def put(tree, path, value):
    for p in path[:-1]:
      tree = tree.setdefault(p, {})
    if path[-1] in tree:
      raise UserError(f"duplicate weight for {'/'.join(path)} in the state_dict")
    tree[path[-1]] = jnp.asarray(value, jnp.float32)

  for key, value in state_dict.items():
    value = np.asarray(value)
    parts = key.split(".")
    if parts[0] == "AuxLogits" or parts[-1] == "num_batches_tracked":
      continue
    if parts[0] == "fc":
      if parts[-1] == "weight":
        put(params, ["fc", "kernel"], value.T)
      elif parts[-1] == "bias":
        put(params, ["fc", "bias"], value)
      else:
        raise UserError(f"unexpected weight {key!r} in the Inception state_dict")
    elif len(parts) >= 3 and parts[-2] == "conv" and parts[-1] == "weight":
      put(params, parts[:-1] + ["kernel"], value.transpose(2, 3, 1, 0))
    elif len(parts) >= 3 and parts[-2] == "bn" and parts[-1] in _BN_FIELDS:
      collection, name = _BN_FIELDS[parts[-1]]
      put(params if collection == "params" else stats, parts[:-1] + [name],
          value)
    else:
      raise UserError(f"unexpected weight {key!r} in the Inception state_dict")
  variables = {"params": params, "batch_stats": stats}
  _check_structure(variables)
  return variables


@functools.lru_cache(maxsize=1)
def _expected_shapes():
  shapes = jax.eval_shape(
      FIDInceptionV3(resize_input=False).init, jax.random.PRNGKey(0),
      jax.ShapeDtypeStruct((1, INPUT_SIZE, INPUT_SIZE, 3), jnp.float32))
  return jax.tree_util.tree_map(lambda s: s.shape, shapes)


def _check_structure(variables):
  """Raise UserError unless `variables` has exactly FIDInceptionV3's leaves."""
  flat = lambda t: {"/".join(str(getattr(k, "key", k)) for k in path): leaf
                    for path, leaf in jax.tree_util.tree_flatten_with_path(
                        t, is_leaf=lambda x: isinstance(x, tuple))[0]}
  want = flat(_expected_shapes())
  got = {k: tuple(v.shape) for k, v in flat(variables).items()}
  missing = sorted(set(want) - set(got))
  extra = sorted(set(got) - set(want))
  if missing or extra:
    raise UserError(
        f"Inception weights do not match FIDInceptionV3: missing {missing[:3]}"
        f" (+{max(len(missing) - 3, 0)}), unexpected {extra[:3]}"
        f" (+{max(len(extra) - 3, 0)}); is this pytorch-fid's "
        f"{FID_WEIGHTS_FILENAME}?")
  bad = [k for k in want if tuple(want[k]) != got[k]]
  if bad:
    raise UserError(f"Inception weight {bad[0]} has shape {got[bad[0]]}, "
                    f"expected {tuple(want[bad[0]])}")


# ---------------------------------------------------------------------------
# Reading a torch .pth without torch.
# ---------------------------------------------------------------------------

_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64,
    "HalfStorage": np.float16, "LongStorage": np.int64,
    "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}
_LEGACY_MAGIC = 0x1950a86a20f9469cfc6c


class _StorageType:
  def __init__(self, name):
    self.dtype = np.dtype(_STORAGE_DTYPES[name])


class _StorageRef:
  def __init__(self, key, dtype, numel):
    self.key, self.dtype, self.numel = key, dtype, numel


class _TensorRef:
  def __init__(self, storage, offset, size, stride):
    self.storage, self.offset = storage, offset
    self.size, self.stride = tuple(size), tuple(stride)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
  del requires_grad, backward_hooks, metadata
  return _TensorRef(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
  del requires_grad, backward_hooks
  return data


_ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
}


class _RestrictedUnpickler(pickle.Unpickler):
  """Unpickles a torch state_dict into placeholders; refuses anything else."""

  def find_class(self, module, name):
    if (module, name) in _ALLOWED_GLOBALS:
      return _ALLOWED_GLOBALS[(module, name)]
    if module == "torch" and name in _STORAGE_DTYPES:
      return _StorageType(name)
    raise pickle.UnpicklingError(
        f"refusing to load {module}.{name}: only plain tensor state_dicts "
        f"can be read without torch")

  def __init__(self, file):
    super().__init__(file)
    self.storage_refs: dict[str, _StorageRef] = {}

  def persistent_load(self, pid):
    # zip format: ('storage', type, key, location, numel)
    # legacy format: ('storage', type, key, location, numel, view_metadata)
    if (not isinstance(pid, tuple) or len(pid) not in (5, 6)
        or pid[0] != "storage" or not isinstance(pid[1], _StorageType)):
      raise pickle.UnpicklingError(f"unsupported persistent id {pid!r:.80}")
    if len(pid) == 6 and pid[5] is not None:
      raise pickle.UnpicklingError("storage views are not supported")
    ref = self.storage_refs.setdefault(
        str(pid[2]), _StorageRef(str(pid[2]), pid[1].dtype, int(pid[4])))
    return ref


def _materialise(obj, storages: Mapping[str, np.ndarray], path: str,
                 name: str = "state_dict"):
  """Replace _TensorRef placeholders with numpy arrays (copies), after
  checking that each tensor lies inside its storage (as_strided does not)."""
  if isinstance(obj, _TensorRef):
    flat = storages[obj.storage.key]
    _check_view(obj, flat.size, path, name)
    if not obj.size:
      return flat[obj.offset].copy()
    if 0 in obj.size:
      return np.zeros(obj.size, flat.dtype)
    item = flat.itemsize
    view = np.lib.stride_tricks.as_strided(
        flat[obj.offset:], shape=obj.size,
        strides=[s * item for s in obj.stride], writeable=False)
    return np.array(view)
  if isinstance(obj, dict):
    return type(obj)((k, _materialise(v, storages, path, str(k)))
                     for k, v in obj.items())
  if isinstance(obj, (list, tuple)):
    return type(obj)(_materialise(v, storages, path, name) for v in obj)
  return obj


def _check_view(ref: _TensorRef, numel: int, path: str, name: str) -> None:
  """A UserError unless offset, sizes and strides are non-negative integers
  and the last element, offset + sum((size - 1) * stride), is in the
  storage's `numel` elements."""
  def ints(values):
    return all(isinstance(v, int) and not isinstance(v, bool) and v >= 0
               for v in values)
  ok = (ints([ref.offset]) and ints(ref.size) and ints(ref.stride)
        and len(ref.size) == len(ref.stride))
  if ok and (not ref.size or 0 not in ref.size):
    last = ref.offset + sum((n - 1) * s for n, s in zip(ref.size, ref.stride))
    ok = last < numel
  if not ok:
    raise UserError(
        f"{path} is corrupt: tensor {name} (offset {ref.offset!r:.20}, size "
        f"{ref.size!r:.40}, stride {ref.stride!r:.40}) does not lie in its "
        f"storage of {numel} elements")


def _collect_storages(obj, found):
  if isinstance(obj, _TensorRef):
    found[obj.storage.key] = obj.storage
  elif isinstance(obj, dict):
    for v in obj.values():
      _collect_storages(v, found)
  elif isinstance(obj, (list, tuple)):
    for v in obj:
      _collect_storages(v, found)
  return found


def _read_zip(f, path):
  with zipfile.ZipFile(f) as zf:
    names = zf.namelist()
    pkl = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
    if len(pkl) != 1:
      raise UserError(f"{path} is a zip file but not a torch checkpoint")
    prefix = pkl[0][:-len("data.pkl")]
    byteorder = "little"
    if prefix + "byteorder" in names:
      byteorder = zf.read(prefix + "byteorder").decode().strip()
    obj = _RestrictedUnpickler(io.BytesIO(zf.read(pkl[0]))).load()
    storages = {}
    for key, ref in _collect_storages(obj, {}).items():
      dtype = ref.dtype.newbyteorder("<" if byteorder == "little" else ">")
      raw = zf.read(f"{prefix}data/{key}")
      storages[key] = np.frombuffer(raw, dtype=dtype, count=ref.numel).astype(
          ref.dtype)
  return obj, storages


def _read_legacy(f, path):
  """torch's pre-1.6 format: pickles (magic, version, sys_info, obj, keys)
  followed by each storage as int64 element count + raw little-endian data."""
  safe = lambda: _RestrictedUnpickler(f).load()
  if safe() != _LEGACY_MAGIC:
    raise UserError(f"{path} is not a torch checkpoint (bad magic number)")
  safe()  # protocol version
  sys_info = safe()
  if isinstance(sys_info, dict) and not sys_info.get("little_endian", True):
    raise UserError(f"{path}: big-endian torch checkpoints are not supported")
  unpickler = _RestrictedUnpickler(f)
  obj = unpickler.load()
  refs = unpickler.storage_refs
  keys = safe()
  storages = {}
  for key in keys:
    ref = refs[str(key)]
    numel = int(np.frombuffer(f.read(8), "<i8")[0])
    raw = f.read(numel * ref.dtype.itemsize)
    if numel != ref.numel or len(raw) != numel * ref.dtype.itemsize:
      raise UserError(f"{path} is truncated or corrupt (storage {key})")
    storages[str(key)] = np.frombuffer(raw, ref.dtype.newbyteorder("<")
                                       ).astype(ref.dtype)
  return obj, storages


def read_torch_state_dict(path: str) -> dict[str, np.ndarray]:
  """Read a torch `state_dict` .pth (zip or legacy format) as numpy arrays.

  No torch needed: a restricted unpickler rebuilds only tensors, OrderedDicts
  and storages, so a file holding arbitrary Python objects is refused.
  `path` may be local or `gs://...`.
  """
  path = os.fspath(path)
  try:
    # A remote file is read whole (one request): the unpickler's many small
    # reads through a remote file object take seconds.
    with (io.BytesIO(fileio.read_bytes(path)) if fileio.is_remote(path)
          else open(path, "rb")) as f:
      is_zip = zipfile.is_zipfile(f)
      f.seek(0)
      obj, storages = _read_zip(f, path) if is_zip else _read_legacy(f, path)
  except (pickle.UnpicklingError, EOFError, KeyError, ValueError) as e:
    if isinstance(e, UserError):
      raise
    raise UserError(f"cannot read {path} as a torch state_dict: {e}") from e
  if not isinstance(obj, dict):
    raise UserError(f"{path} does not hold a state_dict (got {type(obj)})")
  out = _materialise(obj, storages, path)
  return {str(k): np.asarray(v) for k, v in out.items()}


# ---------------------------------------------------------------------------
# Locating / downloading the weights.
# ---------------------------------------------------------------------------


def default_cache_path() -> str:
  return os.path.join(os.path.expanduser("~"), ".cache", "advjax",
                      FID_WEIGHTS_FILENAME)


def _sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def _download(url: str, dest: str, timeout: float = 60.0,
              sha256: str | None = None):
  """Fetches `url` into `dest` if its SHA-256 is `sha256` (default
  FID_WEIGHTS_SHA256): a body cut short or altered never reaches `dest`."""
  sha256 = sha256 or FID_WEIGHTS_SHA256
  os.makedirs(os.path.dirname(dest), exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(dest), suffix=".part")
  try:
    with os.fdopen(fd, "wb") as out, urllib.request.urlopen(
        url, timeout=timeout) as resp:
      shutil.copyfileobj(resp, out)
    got = _sha256(tmp)
    if got != sha256:
      raise UserError(
          f"the {os.path.getsize(tmp)} bytes received have SHA-256 "
          f"{got[:16]}..., not {sha256[:16]}... (cut short or altered); "
          f"nothing was cached")
    os.replace(tmp, dest)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def find_fid_weights(path: str | None = None, download: bool = True) -> str:
  """Path of pytorch-fid's Inception weights.

  Looks at `path`, then $ADVJAX_FID_WEIGHTS, then ~/.cache/advjax/; if none
  exists and `download`, fetches FID_WEIGHTS_URL into the cache. Raises a
  one-line UserError naming all of these when the file cannot be had.
  """
  if path is not None:
    if not fileio.isfile(path):
      raise UserError(f"FID Inception weights not found at {path}; download "
                      f"{FID_WEIGHTS_URL} and pass its path")
    return os.fspath(path)
  env = os.environ.get(FID_WEIGHTS_ENV)
  if env:
    if not fileio.isfile(env):
      raise UserError(f"${FID_WEIGHTS_ENV}={env} is not a file; point it at "
                      f"{FID_WEIGHTS_FILENAME} from {FID_WEIGHTS_URL}")
    return env
  cache = default_cache_path()
  if os.path.isfile(cache):
    if _sha256(cache) == FID_WEIGHTS_SHA256:
      return cache
    if not download:
      raise UserError(f"{cache} is not the expected file (its SHA-256 is not "
                      f"{FID_WEIGHTS_SHA256[:16]}...; an interrupted download "
                      f"by an older version?); delete it, or download "
                      f"{FID_WEIGHTS_URL} again in its place")
    os.remove(cache)  # A download cut short by an older version: fetch again.
  reason = "download disabled"
  if download:
    try:
      _download(FID_WEIGHTS_URL, cache)
      return cache
    except Exception as e:  # noqa: BLE001 - any failure means "offline"
      reason = f"download failed: {type(e).__name__}: {e}"
  raise UserError(
      f"FID Inception weights not found (looked in ${FID_WEIGHTS_ENV} and "
      f"{cache}; {reason}); download {FID_WEIGHTS_URL} and pass its path "
      f"(weights_path=... / load_fid_weights(path)) or set "
      f"{FID_WEIGHTS_ENV}=/path/to/{FID_WEIGHTS_FILENAME}".replace("\n", " "))


def load_fid_weights(path: str | None = None,
                     download: bool = True) -> dict[str, Any]:
  """Flax variables for FIDInceptionV3 from pytorch-fid's .pth (no torch)."""
  return convert_torch_state_dict(
      read_torch_state_dict(find_fid_weights(path, download=download)))
