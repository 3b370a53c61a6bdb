"""Evaluating checkpoints from the command line: a report built from the
evaluators of `advjax.evaluators`.

  python -m advjax.evaluate --mode=robustness --workdir=CLASSIFIER_DIR \
      [--eps=0.02,0.05,0.1] [--attacks=fgsm,pgd] [--attack.pgd.num_steps=20] \
      [--substitute_workdir=DIR] [--gan_workdir=DIR] \
      [--attack.unrestricted.num_steps=500 --unrestricted.num_samples=256 ...] \
      [--patch.size=8 --patch.target=0 ...] [--evaluators=NAME,...]
  python -m advjax.evaluate --mode=gan --workdir=GAN_DIR \
      [--classifier_workdir=DIR] [--fid_weights=PATH] \
      [--num_samples=50000] [--num_real=0]

Each report runs the evaluators of its mode that apply (robustness, then
unrestricted examples with --gan_workdir, then the patch with --patch.size >
0; the GAN's quality) and those named in --evaluators, and writes
`<out>/<mode>.md` (Markdown), `<out>/<mode>.json` and PNG images to `--out`
(default `<workdir>/eval`), and prints the Markdown. Every section of the
JSON holds `provenance`: its resolved settings, the step and digest of each
checkpoint it read and the advjax version. The flags are built from the
evaluators' settings dataclasses (`--<name>.<field>` for any evaluator
without flags of its own), so each default is written once, there.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import ml_collections

from advjax import adversaries, attacks, cli, evaluators, fileio, inference
from advjax import settings as settings_lib
from advjax.errors import UserError
from advjax.evaluators import common
from advjax.evaluators import gan_quality as gan_quality_lib
from advjax.evaluators import patch as patch_lib
from advjax.evaluators import robustness as robustness_lib
from advjax.evaluators import unrestricted as unrestricted_lib

# The evaluators' functions, under the names notebooks and tests use.
eval_data = common.eval_data
write_report = common.write_report
robustness = robustness_lib.robustness
robustness_markdown = robustness_lib.robustness_markdown
flat_accuracy = robustness_lib.flat_accuracy
unrestricted = unrestricted_lib.unrestricted
unrestricted_markdown = unrestricted_lib.unrestricted_markdown
unrestricted_config = unrestricted_lib.unrestricted_config
patch = patch_lib.patch
patch_markdown = patch_lib.patch_markdown
patch_config = patch_lib.patch_config
gan_metrics = gan_quality_lib.gan_metrics
gan_markdown = gan_quality_lib.gan_markdown

MODES = {"robustness": "robustness", "gan": "gan_quality"}  # mode -> main
# Evaluators whose settings have flags of their own below; every other one
# gets `--<name>.<field>`.
_OWN_FLAGS = ("robustness", "unrestricted", "patch", "gan_quality")


def attack_flags() -> ml_collections.ConfigDict:
  """`--attack.<name>.<field>`: every adversary's evaluation settings."""
  return ml_collections.ConfigDict({
      name: dataclasses.asdict(entry.evaluation_defaults())
      for name, entry in adversaries.ADVERSARIES.items()})


def run_report(mode: str, inputs: common.Inputs,
               settings: Mapping[str, Any],
               extra: Sequence[str] = ()) -> tuple[str, dict, dict]:
  """(markdown, data, images) of the `mode` report: the mode's evaluators
  that apply, then those named in `extra`; `settings[name]` is each one's
  settings (default: its defaults). The mode's main evaluator's result is
  the top of `data`, the others sit under their names."""
  if mode not in MODES:
    raise UserError(f"--mode must be one of {sorted(MODES)}, not '{mode}'")
  names = [e.name for e in common.of_mode(mode)]
  chosen = []
  for name in list(names) + [n for n in extra if n not in names]:
    entry = evaluators.get(name)
    s = settings.get(name)
    s = s if isinstance(s, entry.settings) else entry.read(s)
    if name in extra or entry.wanted(s, inputs):
      chosen.append((entry, s))
  markdown, data, images = [], {}, {}
  for entry, s in chosen:
    result = entry(s, inputs)
    if entry.images is not None:
      images.update(entry.images(result))
    if entry.markdown is not None:
      markdown.append(entry.markdown(result))
    if entry.name == MODES[mode]:
      data = {**result, **data}
    else:
      data[entry.name] = result
  return "\n".join(markdown), data, images


def report(mode: str, workdir: str, out: str | None = None, *,
           eps: Sequence[float] | None = None,
           attack_names: Sequence[str] | None = None,
           attack_settings: Mapping[str, Any] | None = None,
           num_examples: int | None = None, batch_size: int | None = None,
           substitute_workdir: str | None = None,
           gan_workdir: str | None = None,
           unrestricted_settings: Mapping[str, Any] | None = None,
           patch_settings: Mapping[str, Any] | None = None,
           classifier_workdir: str | None = None,
           num_samples: int | None = None, num_real: int | None = None,
           fid_weights: str | None = None, inception: bool | None = None,
           fid_cache_dir: str | None = None,
           evaluators_named: Sequence[str] = (),
           evaluator_settings: Mapping[str, Any] | None = None) -> str:
  """Writes the `mode` report of `workdir` to `out`; returns its Markdown.

  Arguments left None keep the evaluators' defaults. `attack_settings[name]`
  overrides fields of adversary `name`'s evaluation settings (the
  unrestricted section reads `attack_settings['unrestricted']`;
  `unrestricted_settings` holds its sample count, batch size and seed);
  `evaluators_named` adds evaluators, with `evaluator_settings[name]`.
  """
  given = lambda **kw: {k: v for k, v in kw.items() if v is not None}
  attack_settings = settings_lib.plain(attack_settings)
  robust = given(eps=None if eps is None else tuple(float(e) for e in eps),
                 attacks=None if attack_names is None else tuple(attack_names),
                 num_examples=num_examples, batch_size=batch_size)
  robust["attack"] = attack_settings
  robust_s = evaluators.get("robustness").read(robust)
  settings: dict[str, Any] = dict(evaluator_settings or {})
  settings["robustness"] = robust_s
  settings["unrestricted"] = dict(
      settings_lib.plain(unrestricted_settings),
      attack=settings_lib.plain(attack_settings.get("unrestricted")))
  settings["patch"] = {"num_examples": robust_s.num_examples,
                       "eval_batch_size": robust_s.batch_size,
                       **settings_lib.plain(patch_settings)}
  settings["gan_quality"] = given(
      num_samples=num_samples, num_real=num_real, fid_weights=fid_weights,
      inception=inception, cache_dir=fid_cache_dir)
  restore = lambda path, kind: (inference.restore(path, kind=kind) if path
                                else None)
  if mode == "gan":
    inputs = common.Inputs(gan=restore(workdir, "gan"),
                           classifier=restore(classifier_workdir,
                                              "classifier"))
  elif mode == "robustness":
    inputs = common.Inputs(classifier=restore(workdir, "classifier"),
                           gan=restore(gan_workdir, "gan"),
                           substitute=restore(substitute_workdir,
                                              "classifier"))
  else:
    raise UserError(f"--mode must be 'robustness' or 'gan', not '{mode}'")
  markdown, data, images = run_report(mode, inputs, settings,
                                      evaluators_named)
  out = out or fileio.join(workdir, "eval")
  write_report(out, mode, markdown, data, images)
  return markdown


def report_model(logits_fn, images, labels, out: str | None = None, *,
                 bounds: tuple[float, float] = (-1., 1.),
                 eps: Sequence[float] | None = None,
                 attack_names: Sequence[str] | None = None,
                 attack_settings: Mapping[str, Any] | None = None,
                 num_examples: int = 0, batch_size: int | None = None,
                 seed: int = 0, name: str = "model") -> str:
  """The robustness report of any model: `logits_fn` (images [B, H, W, C]
  in `bounds` -> logits [B, K], e.g. a plain `flax.linen` model's apply)
  on the test arrays `images` and `labels`; returns its Markdown and, with
  `out`, writes `robustness.md`, `.json` and example PNGs there, as
  `python -m advjax.evaluate --mode=robustness` does for a checkpoint.

  `bounds` is the model's valid input range: images outside it are
  refused, every attack keeps its images in it and eps is in its units
  (bounds=(0, 1), eps=(8/255,) for a [0, 1] model as torchattacks and
  RobustBench count). `num_examples` <= 0: every image given. The JSON's
  provenance names `name` and a digest of the arrays.
  """
  model = common.ArrayModel(logits_fn, images, labels, bounds=bounds,
                            name=name)
  attacks.check_images_in_range(model.images, model.bounds)
  given = {"eps": None if eps is None else tuple(float(e) for e in eps),
           "attacks": None if attack_names is None else tuple(attack_names),
           "batch_size": batch_size}
  block = {k: v for k, v in given.items() if v is not None}
  block.update(attack=settings_lib.plain(attack_settings),
               num_examples=int(num_examples), seed=int(seed),
               bounds=model.bounds)
  settings = {"robustness": evaluators.get("robustness").read(block)}
  markdown, data, images_out = run_report(
      "robustness", common.Inputs(classifier=model), settings)
  if out:
    write_report(out, "robustness", markdown, data, images_out)
  return markdown


def _floats(values: Sequence[str], name: str) -> list[float]:
  try:
    return [float(v) for v in values]
  except ValueError:
    raise UserError(f"--{name} takes numbers separated by commas, got "
                    f"{','.join(values)!r}") from None


def main(argv):
  del argv  # cli.run refuses positional arguments
  from absl import flags  # pylint: disable=g-import-not-at-top
  f = flags.FLAGS
  if f.batch_size <= 0:
    raise UserError(f"--batch_size must be > 0, got {f.batch_size}")
  out = f.out or fileio.join(f.workdir, "eval")
  others = {name: f[name].value.to_dict() for name in _other_evaluators()}
  markdown = report(f.mode, f.workdir, out, eps=_floats(f.eps, "eps"),
                    attack_names=f.attacks, attack_settings=f.attack.to_dict(),
                    num_examples=f.num_examples, batch_size=f.batch_size,
                    substitute_workdir=f.substitute_workdir,
                    gan_workdir=f.gan_workdir,
                    unrestricted_settings=f.unrestricted.to_dict(),
                    patch_settings=f.patch.to_dict(),
                    classifier_workdir=f.classifier_workdir,
                    num_samples=f.num_samples, num_real=f.num_real,
                    fid_weights=f.fid_weights, inception=f.inception,
                    evaluators_named=f.evaluators,
                    evaluator_settings=others)
  print(markdown)
  print(f"advjax: report written to {out}")


def _other_evaluators() -> list[str]:
  return [n for n in evaluators.EVALUATORS if n not in _OWN_FLAGS]


def _define_flags():
  from absl import flags  # pylint: disable=g-import-not-at-top
  robust = robustness_lib.Settings()
  quality = gan_quality_lib.Settings()
  flags.DEFINE_enum("mode", "robustness", list(MODES), "What to evaluate.")
  flags.DEFINE_string("workdir", None, "The checkpoint's work directory.")
  flags.DEFINE_string("out", None, "Report folder (default <workdir>/eval).")
  flags.DEFINE_list("eps", [f"{e:g}" for e in robust.eps],
                    "Attack budgets in [-1, 1] pixel units.")
  flags.DEFINE_list("attacks", robust.names(),
                    "--mode=robustness: norm-bounded adversaries to run "
                    "(advjax.adversaries), a column each.")
  cli.define_config_dict(
      "attack", attack_flags(),
      "Settings of each adversary, --attack.<name>.<field>.")
  flags.DEFINE_integer("num_examples", robust.num_examples,
                       "Test images to attack (<=0: all).")
  flags.DEFINE_integer("batch_size", robust.batch_size,
                       "Batch size of the attacks.")
  flags.DEFINE_string("substitute_workdir", None,
                      "Classifier to craft transfer attacks on.")
  flags.DEFINE_string("gan_workdir", None,
                      "--mode=robustness: AC-GAN for the unrestricted "
                      "(latent) attack; settings as "
                      "--attack.unrestricted.<field>.")
  cli.define_config_dict(
      "unrestricted", unrestricted_lib.report_fields(),
      "The unrestricted report's samples: --unrestricted.num_samples, "
      ".batch_size, .seed.")
  cli.define_config_dict(
      "patch", patch_config(),
      "--mode=robustness: adversarial patch settings; --patch.size=8 "
      "turns it on.")
  flags.DEFINE_string("classifier_workdir", None,
                      "--mode=gan: classifier for accuracy on samples and "
                      "classifier-feature FID.")
  flags.DEFINE_integer("num_samples", quality.num_samples,
                       "--mode=gan: class-balanced samples for FID, IS and "
                       "the classifier metrics (published IS: 50,000).")
  flags.DEFINE_integer("num_real", quality.num_real,
                       "--mode=gan: training images FID compares with; "
                       "0: the whole training split (published FIDs).")
  flags.DEFINE_string("fid_weights", quality.fid_weights or None,
                      "--mode=gan: pytorch-fid's InceptionV3 weights file.")
  flags.DEFINE_bool("inception", quality.inception,
                    "--mode=gan: compute Inception FID/IS (needs weights).")
  flags.DEFINE_list("evaluators", [],
                    f"More evaluators to run (advjax.evaluators): "
                    f"{', '.join(_other_evaluators())}.")
  for name in _other_evaluators():
    entry = evaluators.get(name)
    cli.define_config_dict(name, settings_lib.to_block(entry.settings),
                           f"--evaluators={name}: {entry.help}")


def entry_point(argv: Sequence[str] | None = None):
  _define_flags()
  cli.run(main, argv, config_flag=None)


if __name__ == "__main__":
  entry_point()
