"""GAN metrics: Frechet Inception Distance and Inception Score.

FID (Heusel et al. 2017, "GANs Trained by a Two Time-Scale Update Rule
Converge to a Local Nash Equilibrium") fits a Gaussian to each set of features
and reports the Frechet distance between them:
  FID = |mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)).
Inception FID uses the pool3 features of pytorch-fid's InceptionV3
(advjax.inception); only that number is comparable with published FIDs, and
only when it comes from as many images as they use: FID is biased upward
for small sets, so Heusel et al. use at least 10,000 samples
(`FID_STANDARD_SIZE`; 50,000 is common) against the statistics of the whole
training set. The real statistics are cached (`cached_statistics`, keyed by
dataset, split, count and weights file), so they are computed once.

Inception Score (Salimans et al. 2016, "Improved Techniques for Training
GANs"): IS = exp(E_x KL(p(y|x) || p(y))), averaged over `splits` parts; the
paper's protocol is 50,000 samples in 10 splits (`IS_STANDARD_SIZE`).

`classifier_fid` is the same distance in the feature space of one of our own
classifiers; it is a useful within-project signal (e.g. on Fashion-MNIST,
where ImageNet features fit poorly) but is NOT comparable to Inception FID.
"""

from __future__ import annotations

import os
import re
import tempfile
import warnings
from typing import Any, Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np

from advjax import inception
from advjax.errors import UserError

# The sample sizes of published numbers: FID from at least 10,000 samples
# against the whole training set (Heusel et al. 2017), IS over 50,000
# samples (Salimans et al. 2016).
FID_STANDARD_SIZE = 10_000
IS_STANDARD_SIZE = 50_000

try:  # scipy is optional; the eigen method below needs only numpy.
  import scipy.linalg as _scipy_linalg
except ImportError:  # pragma: no cover - scipy is installed here
  _scipy_linalg = None


# ---------------------------------------------------------------------------
# Frechet distance.
# ---------------------------------------------------------------------------


def compute_statistics(features) -> tuple[np.ndarray, np.ndarray]:
  """Mean and (unbiased, ddof=1) covariance of (N, D) features, in float64."""
  f = np.asarray(features, np.float64)
  if f.ndim != 2:
    raise UserError(f"features must be (N, D), got shape {f.shape}")
  if f.shape[0] < 2:
    raise UserError(f"need at least 2 feature vectors for a covariance, got "
                    f"{f.shape[0]}")
  return f.mean(axis=0), np.cov(f, rowvar=False)


def _sqrtm_psd(s: np.ndarray) -> np.ndarray:
  w, v = np.linalg.eigh((s + s.T) / 2)
  return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def _trace_sqrt_product_eigh(s1, s2) -> float:
  """Tr((S1 S2)^(1/2)) for symmetric PSD S1, S2, exactly.

  S1 S2 is similar to A S2 A with A = S1^(1/2) (symmetric PSD), so its
  eigenvalues are those of a symmetric PSD matrix: sum their square roots.
  """
  a = _sqrtm_psd(s1)
  m = a @ s2 @ a
  ev = np.linalg.eigvalsh((m + m.T) / 2)
  return float(np.sqrt(np.clip(ev, 0, None)).sum())


def _trace_sqrt_product_scipy(s1, s2, eps) -> float:
  """Tr((S1 S2)^(1/2)) with scipy.linalg.sqrtm, as pytorch-fid computes it."""
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    covmean = _scipy_linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():
      # Near-singular product: regularise both covariances (pytorch-fid does
      # the same with the same eps).
      offset = np.eye(s1.shape[0]) * eps
      covmean = _scipy_linalg.sqrtm((s1 + offset) @ (s2 + offset))
  covmean = np.asarray(covmean)
  if np.iscomplexobj(covmean):
    scale = max(np.abs(np.diag(covmean)).max(), 1.0)
    if np.abs(covmean.imag).max() > 1e-3 * scale:
      return _trace_sqrt_product_eigh(s1, s2)
    covmean = covmean.real
  return float(np.trace(covmean))


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6,
                     method: str = "auto") -> float:
  """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2).

  method: 'scipy' (scipy.linalg.sqrtm of S1 S2, pytorch-fid's numerics),
  'eigh' (numpy only; exact for symmetric PSD covariances), or 'auto'
  (scipy when installed, else eigh). Heusel et al. 2017.
  """
  mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(
      np.asarray(mu2, np.float64))
  s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(
      np.asarray(sigma2, np.float64))
  d = mu1.shape[0]
  if mu1.shape != (d,) or mu2.shape != (d,) or s1.shape != (d, d) \
      or s2.shape != (d, d):
    raise UserError(
        f"statistics do not match: mu {mu1.shape} vs {mu2.shape}, sigma "
        f"{s1.shape} vs {s2.shape}; both sets must come from the same features")
  if method == "auto":
    method = "scipy" if _scipy_linalg is not None else "eigh"
  if method == "scipy":
    if _scipy_linalg is None:
      raise UserError("method='scipy' needs scipy; use method='eigh'")
    tr_covmean = _trace_sqrt_product_scipy(s1, s2, eps)
  elif method == "eigh":
    tr_covmean = _trace_sqrt_product_eigh(s1, s2)
  else:
    raise UserError(f"unknown method {method!r}; use 'auto', 'scipy' or 'eigh'")
  diff = mu1 - mu2
  value = diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean
  return float(max(value, 0.0))  # negative only through rounding


def fid_from_features(features1, features2, **kwargs) -> float:
  """Frechet distance between Gaussians fitted to two (N, D) feature sets."""
  return frechet_distance(*compute_statistics(features1),
                          *compute_statistics(features2), **kwargs)


def classifier_fid(features_real, features_fake, **kwargs) -> float:
  """FID in the feature space of our own classifier (NOT Inception FID).

  Feed it the pooled penultimate features of a trained advjax classifier,
  `model.apply(variables, x, train=False, return_features=True)[1]`, e.g. via
  `FeatureExtractor(apply_fn=...)`. Lower is better and it tracks sample
  quality, but its scale depends on that classifier: compare it only between
  runs that use the same classifier checkpoint, never with published FIDs.
  """
  return fid_from_features(features_real, features_fake, **kwargs)


def save_statistics(path: str, mu, sigma) -> None:
  """Save (mu, sigma) as .npz with keys 'mu' and 'sigma' (pytorch-fid's)."""
  np.savez(path, mu=np.asarray(mu), sigma=np.asarray(sigma))


def load_statistics(path: str) -> tuple[np.ndarray, np.ndarray]:
  """Load (mu, sigma) from an .npz with keys 'mu' and 'sigma'."""
  with np.load(path) as f:
    if "mu" not in f or "sigma" not in f:
      raise UserError(f"{path} has no 'mu'/'sigma' arrays (keys: {f.files})")
    return f["mu"].astype(np.float64), f["sigma"].astype(np.float64)


def below_standard_sizes(num_real: int, num_samples: int, real_available: int,
                         *, fid: bool = True,
                         inception_score: bool = True) -> str | None:
  """One line naming the sizes, of the metrics computed (`fid`,
  `inception_score`), below those of published numbers (FID: the whole
  training set of `real_available` images vs at least 10,000 samples; IS:
  50,000 samples); None if none is."""
  short = []
  if fid and (num_real < real_available or num_samples < FID_STANDARD_SIZE):
    short.append(f"FID from {num_real} of {real_available} training images "
                 f"and {num_samples} samples (published FIDs use the whole "
                 f"training set and at least {FID_STANDARD_SIZE:,} samples, "
                 f"Heusel et al. 2017)")
  if inception_score and num_samples < IS_STANDARD_SIZE:
    short.append(f"IS from {num_samples} samples (published ones use "
                 f"{IS_STANDARD_SIZE:,}, Salimans et al. 2016)")
  if not short:
    return None
  return ("below the standard sample sizes, not comparable with published "
          "numbers: " + "; ".join(short))


def default_statistics_cache() -> str:
  """~/.cache/advjax/fid_stats: the real images' Inception statistics."""
  return os.path.join(os.path.expanduser("~"), ".cache", "advjax",
                      "fid_stats")


def statistics_cache_path(dataset: str, split: str, count: int,
                          weights_path: str,
                          cache_dir: str | None = None) -> str:
  """Where the Inception statistics of the first `count` images of
  `dataset`'s `split` under the weights file `weights_path` are cached."""
  key = "-".join([dataset, split, str(int(count)),
                  os.path.basename(os.fspath(weights_path))])
  key = re.sub(r"[^A-Za-z0-9._-]+", "_", key)
  return os.path.join(cache_dir or default_statistics_cache(), key + ".npz")


def cached_statistics(path: str, compute: Callable[[], tuple[Any, Any]]
                      ) -> tuple[np.ndarray, np.ndarray]:
  """(mu, sigma) from the .npz at `path`, else `compute()`, saved there
  (written to a temporary file and renamed, so readers never see a part)."""
  if os.path.isfile(path):
    return load_statistics(path)
  mu, sigma = compute()
  folder = os.path.dirname(path)
  os.makedirs(folder, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=folder, suffix=".npz")
  os.close(fd)
  try:
    save_statistics(tmp, mu, sigma)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  return np.asarray(mu, np.float64), np.asarray(sigma, np.float64)


# ---------------------------------------------------------------------------
# Inception Score.
# ---------------------------------------------------------------------------


def _looks_like_probs(x: np.ndarray) -> bool:
  return bool(x.min() >= 0 and x.max() <= 1
              and np.allclose(x.sum(axis=1), 1.0, atol=1e-3))


def inception_score(logits_or_probs, splits: int = 10,
                    from_logits: bool | None = None) -> tuple[float, float]:
  """Inception Score (Salimans et al. 2016): mean and std over `splits`.

  Input (N, C): logits, or class probabilities. `from_logits=None` guesses:
  rows that are non-negative and sum to 1 are taken as probabilities. With
  pytorch-fid's weights, use the 1008-way logits of FIDInceptionV3.
  """
  x = np.asarray(logits_or_probs, np.float64)
  if x.ndim != 2:
    raise UserError(f"inception_score expects (N, C) logits or probabilities, "
                    f"got shape {x.shape}")
  if not 1 <= splits <= x.shape[0]:
    raise UserError(f"splits={splits} must be between 1 and the number of "
                    f"samples ({x.shape[0]})")
  if from_logits is None:
    from_logits = not _looks_like_probs(x)
  if from_logits:
    x = x - x.max(axis=1, keepdims=True)
    p = np.exp(x)
    p /= p.sum(axis=1, keepdims=True)
  else:
    p = x / x.sum(axis=1, keepdims=True)
  scores = []
  for part in np.array_split(p, splits):
    py = part.mean(axis=0, keepdims=True)
    safe = lambda a: np.log(np.where(a > 0, a, 1.0))  # 0 log 0 = 0
    kl = (part * (safe(part) - safe(py))).sum(axis=1)
    scores.append(np.exp(kl.mean()))
  return float(np.mean(scores)), float(np.std(scores))


# ---------------------------------------------------------------------------
# Batched feature extraction.
# ---------------------------------------------------------------------------


class FeatureExtractor:
  """Jitted, fixed-batch feature extraction over images in [-1, 1].

  Default: pytorch-fid's InceptionV3 (weights from `variables`, or loaded with
  `advjax.inception.load_fid_weights(weights_path)`); calls return
  `(pool3 (N, 2048), logits (N, 1008))` as numpy arrays. Any size works: the
  images are resized to 299x299 first, so the network compiles once.

  Custom: `apply_fn(variables, images)` returning an array or a tuple of
  arrays with a leading batch axis, e.g. for classifier FID
  `lambda v, x: model.apply(v, x, train=False, return_features=True)`.

  Every call pads the last partial batch (the padding rows are dropped), so
  each image is counted exactly once and only one batch shape is compiled.
  A call takes one (N, H, W, C) array or an iterable of such arrays.
  """

  def __init__(self, apply_fn: Callable[..., Any] | None = None,
               variables: Any = None, batch_size: int = 50,
               weights_path: str | None = None):
    if batch_size < 1:
      raise UserError(f"batch_size must be positive, got {batch_size}")
    self.batch_size = int(batch_size)
    if apply_fn is None:
      if variables is None:
        variables = inception.load_fid_weights(weights_path)
      net = inception.FIDInceptionV3(resize_input=False)
      apply_fn = net.apply
      self._prepare = jax.jit(inception.preprocess)
    else:
      self._prepare = None
    self.variables = variables
    self._apply = jax.jit(apply_fn)

  def _batch(self, images: np.ndarray):
    n = images.shape[0]
    if n < self.batch_size:
      pad = np.zeros((self.batch_size - n,) + images.shape[1:], images.dtype)
      images = np.concatenate([images, pad])
    x = jnp.asarray(images)
    if self._prepare is not None:
      x = self._prepare(x)
    out = self._apply(self.variables, x)
    return jax.tree_util.tree_map(lambda a: np.asarray(a)[:n], out)

  def __call__(self, images: np.ndarray | Iterable[np.ndarray]):
    if isinstance(images, (np.ndarray, jax.Array)):
      images = [images]
    outputs = []
    count = 0
    for chunk in images:
      chunk = np.asarray(chunk, np.float32)
      if chunk.ndim != 4:
        raise UserError(f"images must be NHWC batches, got shape {chunk.shape}")
      if chunk.size and (chunk.min() < -1.001 or chunk.max() > 1.001):
        raise UserError(
            f"images must be in [-1, 1], got values in [{chunk.min():.3g}, "
            f"{chunk.max():.3g}]; map uint8 images with x / 127.5 - 1")
      for start in range(0, chunk.shape[0], self.batch_size):
        outputs.append(self._batch(chunk[start:start + self.batch_size]))
      count += chunk.shape[0]
    if not count:
      raise UserError("no images were given to the feature extractor")
    return jax.tree_util.tree_map(lambda *a: np.concatenate(a), *outputs)
