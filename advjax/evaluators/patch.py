"""A universal adversarial patch (Brown et al. 2017) trained on training
images and evaluated at random positions on held-out test images."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import ml_collections
import numpy as np

from advjax import attacks, inference, input_pipeline
from advjax import settings as settings_lib
from advjax.evaluators import common
from advjax.evaluators.common import eval_data
from advjax.metric_writers import image_grid


@dataclasses.dataclass(frozen=True)
class Settings:
  """size: patch side in pixels (0 leaves the section out); target: the
  class it pushes toward; trained `num_steps` of Adam at `learning_rate` on
  batches of `batch_size` of the first `num_train_images` training images;
  evaluated on the first `num_examples` test images (batches of
  `eval_batch_size`; the robustness report's by default)."""
  size: int = 0
  target: int = 0
  num_steps: int = 500
  learning_rate: float = 0.05
  batch_size: int = 32
  num_train_images: int = 2000
  seed: int = 0
  num_examples: int = 1000
  eval_batch_size: int = 250

  def __post_init__(self):
    settings_lib.check_nonnegative(self, "size")


OWN_FIELDS = ("num_examples", "eval_batch_size")  # from the report's flags


def patch_config() -> ml_collections.ConfigDict:
  """`--patch.<field>`: the patch's settings (size 0 leaves it out); the
  test images are the robustness report's."""
  block = settings_lib.to_block(Settings)
  for name in OWN_FIELDS:
    del block[name]
  return block


def patch(classifier: inference.Classifier,
          settings: ml_collections.ConfigDict, *, num_examples: int = 1000,
          batch_size: int = 250) -> dict[str, Any]:
  """A universal patch (Brown et al. 2017) trained on training images,
  evaluated at random positions on held-out test images (those whose label
  is not already the target)."""
  s = settings_lib.from_block(
      Settings, {k: v for k, v in settings_lib.plain(settings).items()
                 if k not in OWN_FIELDS}, "patch")
  config = classifier.config
  info = input_pipeline.get_dataset_info(config.dataset.name)
  train = common.data_source(classifier, info.train_split)
  n_train = min(int(s.num_train_images), len(train))
  raw, _ = input_pipeline.read_examples(train, range(n_train))
  train_images = input_pipeline.to_float_image(raw)
  logits_fn = classifier.logits_fn()
  key = jax.random.key(int(s.seed))
  trained = attacks.train_patch(
      logits_fn, train_images, int(s.target), jax.random.fold_in(key, 0),
      patch_size=int(s.size), num_steps=int(s.num_steps),
      learning_rate=float(s.learning_rate), batch_size=int(s.batch_size))
  p = trained["patch"]
  hits = kept = 0.0
  shown = None
  for b, (images, labels) in enumerate(eval_data(classifier, num_examples,
                                                 batch_size)):
    keep = float(np.sum(labels != int(s.target)))
    rate = float(attacks.evaluate_patch(logits_fn, images, p, int(s.target),
                                        jax.random.fold_in(key, 1 + b),
                                        labels=labels))
    if keep:
      hits += rate * keep
      kept += keep
    if shown is None:
      positions = attacks.random_positions(
          jax.random.fold_in(key, 1 + b), min(len(images), 8),
          images.shape[1:3], p.shape[:2])
      shown = (images[:8], np.asarray(attacks.apply_patch(
          images[:8], p, positions)))
  return {"size": int(s.size), "target": int(s.target),
          "num_steps": int(s.num_steps), "num_train_images": n_train,
          "success_rate": hits / max(kept, 1.0), "num_evaluated": int(kept),
          "final_train_loss": float(trained["loss"][-1]),
          "patch": np.asarray(p), "examples": shown}


def patch_markdown(result: dict[str, Any]) -> str:
  return (f"Adversarial patch (Brown et al. 2017), {result['size']}x"
          f"{result['size']} pixels toward class {result['target']}, trained "
          f"{result['num_steps']} steps on {result['num_train_images']} "
          f"training images: the classifier says class {result['target']} "
          f"for {100 * result['success_rate']:.2f}% of "
          f"{result['num_evaluated']} test images of other classes with the "
          f"patch at a random position.\n")


def patch_images(result: dict[str, Any]) -> dict[str, np.ndarray]:
  clean, with_patch = result.pop("examples")
  result.pop("patch", None)
  return {"patch": image_grid(np.concatenate([clean, with_patch]), rows=2)}


@common.register("patch", Settings, applies=lambda s, inputs: s.size > 0,
                 markdown=patch_markdown, images=patch_images,
                 help="adversarial patch; --patch.size=8 turns it on")
def run(s: Settings, inputs: common.Inputs) -> dict[str, Any]:
  result = patch(inputs.classifier, dataclasses.asdict(s),
                 num_examples=s.num_examples, batch_size=s.eval_batch_size)
  result["provenance"] = common.provenance(s, classifier=inputs.classifier)
  return result
