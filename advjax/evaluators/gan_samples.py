"""Accuracy on GAN samples: how often a classifier gives the conditioning
class of a fixed set of class-balanced samples of an AC-GAN (the study's
finding: a classifier learns them early)."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from advjax import inference
from advjax import settings as settings_lib
from advjax.errors import UserError
from advjax.evaluators import common


@dataclasses.dataclass(frozen=True)
class Settings:
  """num_samples class-balanced samples, drawn in chunks of `batch_size`
  (chunk i from seed `seed + i`)."""
  num_samples: int = 1000
  seed: int = 0
  batch_size: int = 500

  def __post_init__(self):
    settings_lib.check_positive(self, "num_samples", "batch_size")


def balanced_samples(gan: inference.GAN, num_samples: int, seed: int = 0,
                     batch_size: int = 500
                     ) -> tuple[np.ndarray, np.ndarray]:
  """(images, labels): `num_samples` samples with labels 0, 1, ..., K-1,
  0, ...; chunk i of `batch_size` drawn with seed `seed + i`."""
  labels = common.balanced_labels(num_samples, gan.num_classes)
  images = []
  for i in range(0, num_samples, batch_size):
    chunk = labels[i:i + batch_size]
    images.append(np.asarray(gan.sample(chunk if gan.num_classes else None,
                                        n=len(chunk), seed=seed + i)))
  return np.concatenate(images), labels


def check_fits(gan: inference.GAN, num_classes: int,
               image_shape: tuple[int, ...], where: str) -> None:
  """One line when the GAN's classes or image shape differ from a
  classifier's."""
  if gan.num_classes != num_classes:
    raise UserError(f"{where} {gan.workdir} is a GAN with {gan.num_classes} "
                    f"classes (0 = unconditional); the classifier has "
                    f"{num_classes}")
  shape = tuple(gan.dataset.image_shape)
  if shape != tuple(image_shape):
    raise UserError(f"{where} {gan.workdir} makes images of shape {shape}, "
                    f"the classifier reads {tuple(image_shape)}")


def markdown(result: dict[str, Any]) -> str:
  return (f"Accuracy on {result['num_samples']} class-balanced GAN samples: "
          f"{100 * result['accuracy']:.2f}%\n")


@common.register("gan_samples", Settings, needs=("classifier", "gan"),
                 applies=lambda s, inputs: False, markdown=markdown,
                 help="classifier accuracy on class-balanced samples of "
                      "--gan_workdir (--evaluators=gan_samples)")
def run(s: Settings, inputs: common.Inputs) -> dict[str, Any]:
  classifier, gan = inputs.classifier, inputs.gan
  common.same_dataset(classifier, gan)
  check_fits(gan, classifier.num_classes, classifier.dataset.image_shape,
             "the GAN in")
  images, labels = balanced_samples(gan, s.num_samples, s.seed,
                                    s.batch_size)
  preds = np.concatenate([classifier.predict(images[i:i + s.batch_size])
                          for i in range(0, len(labels), s.batch_size)])
  return {"accuracy": float(np.mean(preds == labels)),
          "num_samples": int(len(labels)),
          "provenance": common.provenance(s, classifier=classifier, gan=gan)}

