"""GAN sample quality: classifier accuracy on class-conditional samples,
FID in a classifier's feature space, and Inception FID / Inception Score."""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any

import jax
import numpy as np

from advjax import fid, inference, input_pipeline
from advjax import inception as inception_lib
from advjax.errors import UserError
from advjax.evaluators import common
from advjax.evaluators.common import eval_data
from advjax.metric_writers import image_grid


@dataclasses.dataclass(frozen=True)
class Settings:
  """num_samples: class-balanced samples for FID, IS and the classifier
  metrics (published IS: 50,000); num_real: training images FID compares
  with (<= 0: the whole training split, published FIDs); fid_weights:
  pytorch-fid's InceptionV3 weights file ('' = found as
  `inception.find_fid_weights` says); inception: compute Inception FID/IS;
  cache_dir: of the real images' statistics ('' = ~/.cache/advjax)."""
  num_samples: int = 50_000
  num_real: int = 0
  fid_weights: str = ""
  inception: bool = True
  seed: int = 0
  batch_size: int = 250
  cache_dir: str = ""


def gan_metrics(gan: inference.GAN,
                classifier: inference.Classifier | None = None, *,
                num_samples: int = 50_000, num_real: int = 0,
                fid_weights: str | None = None, inception: bool = True,
                seed: int = 0, batch_size: int = 250,
                cache_dir: str | None = None) -> dict[str, Any]:
  """Sample-quality numbers of a GAN checkpoint.

  - classifier accuracy on class-conditional samples (how often `classifier`
    gives the conditioning class; the study reports 89% for its DenseNet);
  - classifier FID: FID in the feature space of `classifier` between
    training images and samples (offline; not comparable with Inception
    FID);
  - Inception FID and Inception Score with pytorch-fid's weights, when they
    can be found (else the reason is reported).

  The standard protocol by default: `num_samples` = 50,000 class-balanced
  samples (FID, Heusel et al. 2017, and IS in 10 splits, Salimans et al.
  2016) against the whole training split (`num_real` <= 0; else its first
  `num_real` images). The counts used are in the result; below the standard
  sizes it holds a one-line `warning` (numbers not comparable with papers),
  also emitted as a RuntimeWarning. The training images' Inception
  statistics are cached in `cache_dir` (default ~/.cache/advjax/fid_stats)
  by dataset, split, count and weights file.
  """
  info = input_pipeline.get_dataset_info(gan.config.dataset.name)
  available = len(common.data_source(gan, info.train_split))
  n_real = available if num_real <= 0 else min(num_real, available)
  if num_samples < 2 or n_real < 2:
    raise UserError(f"FID needs at least 2 samples and 2 real images, got "
                    f"{num_samples} and {n_real}")
  num_classes = gan.num_classes
  classes = max(num_classes, 1)
  labels = common.balanced_labels(num_samples, classes)
  z = jax.random.normal(jax.random.key(seed), (len(labels), gan.latent_dim))
  fakes = np.concatenate([
      np.asarray(gan.generate(z[i:i + batch_size],
                              labels[i:i + batch_size] if num_classes
                              else None))
      for i in range(0, len(labels), batch_size)])
  result: dict[str, Any] = {"num_samples": int(len(fakes)),
                            "num_real": int(n_real),
                            "real_split": info.train_split}
  reals = []  # loaded once, when first needed

  def real_images() -> np.ndarray:
    if not reals:
      reals.append(np.concatenate([x for x, _ in eval_data(
          gan, n_real, batch_size, split=info.train_split)]))
    return reals[0]

  if classifier is not None:
    if classifier.config.dataset.name != gan.config.dataset.name:
      raise UserError(f"the classifier was trained on "
                      f"{classifier.config.dataset.name}, the GAN on "
                      f"{gan.config.dataset.name}")
    preds = np.concatenate([classifier.predict(fakes[i:i + batch_size])
                            for i in range(0, len(fakes), batch_size)])
    if num_classes:
      result["classifier_accuracy_on_samples"] = float(np.mean(preds ==
                                                               labels))
    extractor = fid.FeatureExtractor(classifier.features_fn(),
                                     classifier.variables,
                                     batch_size=batch_size)
    result["classifier_fid"] = fid.classifier_fid(extractor(real_images()),
                                                  extractor(fakes))
  if inception:
    try:
      weights = inception_lib.find_fid_weights(fid_weights)
      extractor = fid.FeatureExtractor(weights_path=weights, batch_size=50)
    except UserError as e:
      result["inception"] = f"not computed: {e}"
    else:
      cache = fid.statistics_cache_path(info.name, info.train_split, n_real,
                                        weights, cache_dir)
      mu, sigma = fid.cached_statistics(
          cache, lambda: fid.compute_statistics(extractor(real_images())[0]))
      fake_pool, fake_logits = extractor(fakes)
      result["inception_fid"] = fid.frechet_distance(
          mu, sigma, *fid.compute_statistics(fake_pool))
      result["inception_score"] = fid.inception_score(fake_logits)[0]
  warning = fid.below_standard_sizes(
      n_real, len(fakes), available,
      fid="classifier_fid" in result or "inception_fid" in result,
      inception_score="inception_score" in result)
  if warning:
    result["warning"] = warning
    warnings.warn(f"advjax: {warning}", RuntimeWarning, stacklevel=2)
  grid_rows = min(classes, 10, len(fakes))
  per_row = max(min(len(fakes) // classes, 10), 1)
  picks = np.concatenate([r + classes * np.arange(per_row)
                          for r in range(grid_rows)])
  result["grid"] = image_grid(fakes[picks], rows=grid_rows)
  return result


def gan_markdown(result: dict[str, Any]) -> str:
  n, n_real = result["num_samples"], result["num_real"]
  sets = f"{n_real} {result['real_split']} images vs {n} samples"
  rows = [("samples (class-balanced)", f"{n}")]
  if "classifier_accuracy_on_samples" in result:
    rows.append(("classifier accuracy on class-conditional samples",
                 f"{100 * result['classifier_accuracy_on_samples']:.2f}%"))
  if "classifier_fid" in result:
    rows.append((f"FID in the classifier's feature space (not Inception "
                 f"FID; {sets})", f"{result['classifier_fid']:.3f}"))
  if "inception_fid" in result:
    rows.append((f"Inception FID ({sets})", f"{result['inception_fid']:.2f}"))
    rows.append((f"Inception Score ({n} samples, 10 splits)",
                 f"{result['inception_score']:.2f}"))
  elif "inception" in result:
    rows.append(("Inception FID / IS", result["inception"]))
  lines = ["| metric | value |", "| --- | --- |"]
  lines += [f"| {k} | {v} |" for k, v in rows]
  if "warning" in result:
    lines += ["", f"Warning: {result['warning']}."]
  return "\n".join(lines) + "\n"


def grid_image(result: dict[str, Any]) -> dict[str, np.ndarray]:
  return {"gan_samples": result.pop("grid")}


@common.register("gan_quality", Settings, needs=("gan",), mode="gan",
                 markdown=gan_markdown, images=grid_image,
                 help="FID / IS of --workdir's GAN and, with "
                      "--classifier_workdir, accuracy on its samples")
def run(s: Settings, inputs: common.Inputs) -> dict[str, Any]:
  result = gan_metrics(inputs.gan, inputs.classifier,
                       num_samples=s.num_samples, num_real=s.num_real,
                       fid_weights=s.fid_weights or None,
                       inception=s.inception, seed=s.seed,
                       batch_size=s.batch_size,
                       cache_dir=s.cache_dir or None)
  result["provenance"] = common.provenance(s, gan=inputs.gan,
                                           classifier=inputs.classifier)
  return result
