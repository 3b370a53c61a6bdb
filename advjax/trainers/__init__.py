"""The trainers, by the name a config gives in `config.trainer`.

Each trainer module has `train_and_evaluate(config, workdir)`, which builds
its train state and per-device step and hands them to the shared host loop
(`advjax.loop.run`); `TRAINERS` maps `config.trainer` to it. A new trainer
is one module with that function and one entry here (and, if notebooks
should restore its runs, a handle in `advjax.inference.HANDLES`).
"""

from __future__ import annotations

from typing import Callable

import ml_collections

from advjax.errors import UserError
from advjax.trainers import classifier, cyclegan, distillation, gan

TRAINERS: dict[str, Callable[[ml_collections.ConfigDict, str], dict]] = {
    classifier.TRAINER: classifier.train_and_evaluate,
    distillation.TRAINER: distillation.train_and_evaluate,
    gan.TRAINER: gan.train_and_evaluate,
    cyclegan.TRAINER: cyclegan.train_and_evaluate,
}


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Runs the trainer `config.trainer` names; returns its final metrics."""
  name = config.get("trainer", "classifier")
  if name not in TRAINERS:
    raise UserError(f"config.trainer '{name}' is not one of "
                    f"{sorted(TRAINERS)}")
  return TRAINERS[name](config, workdir)
