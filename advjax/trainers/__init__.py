"""The trainers, by the name a config gives in `config.trainer`.

Each trainer module has `train_and_evaluate(config, workdir, options)`, which
builds its train state and per-device step and hands them to the shared host
loop (`advjax.loop.run`), and names the config sections it needs
(`SECTIONS`) and an example config; `TRAINERS` maps `config.trainer` to the
module. A new trainer is one such module and one entry here (and, if
notebooks should restore its runs, a handle in `advjax.inference.HANDLES`).
"""

from __future__ import annotations

import types

import ml_collections

from advjax import fileio, loop, run_settings
from advjax.errors import UserError
from advjax.trainers import classifier, cyclegan, distillation, gan

TRAINERS: dict[str, types.ModuleType] = {
    module.TRAINER: module for module in (classifier, distillation, gan,
                                          cyclegan)}


def run(config: ml_collections.ConfigDict, workdir: str,
        options: loop.RunOptions = loop.RunOptions()) -> dict[str, float]:
  """Runs the trainer `config.trainer` names; returns its final metrics."""
  name = run_settings.read(config).trainer
  if name not in TRAINERS:
    raise UserError(f"config.trainer '{name}' is not one of "
                    f"{sorted(TRAINERS)}")
  module = TRAINERS[name]
  missing = [k for k in module.SECTIONS if k not in config]
  if missing:
    raise UserError(f"trainer '{name}' needs the config sections "
                    f"{list(module.SECTIONS)}; this config has no "
                    f"{missing}: use a {name} config such as "
                    f"{module.EXAMPLE_CONFIG}")
  return module.train_and_evaluate(config, fileio.resolve(workdir), options)
