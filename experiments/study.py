"""The study, end to end: does augmenting a classifier's training with FGSM
examples, AC-GAN samples or unrestricted adversarial examples change its
accuracy and robustness, compared with plain training?

  python experiments/study.py --workdir=/tmp/advjax/study

1. trains the AC-GAN of `--gan_config` (or uses `--gan_workdir`);
2. trains one classifier per mode of `--classifier_config` ('path.py' whose
   `get_config(mode)` gives each mode's config, with `augment.gan_workdir`
   pointing at the GAN) and, during training, logs its accuracy on a fixed
   set of AC-GAN samples (`eval/gan_sample_accuracy`);
3. evaluates each classifier: clean test accuracy, FGSM and PGD accuracy at
   `--eps`, accuracy on clean AC-GAN samples and on unrestricted adversarial
   examples made against that very classifier (`advjax.evaluate`);
4. writes `<workdir>/study.md` and `study.csv` (the comparison table),
   `accuracy_curves.png` (test accuracy and accuracy on generated samples over
   training, every mode) and `unrestricted_<mode>.png` (clean samples above,
   adversarial below).

Layout: `<workdir>/acgan` (the GAN run), `<workdir>/classifiers/<mode>` (one
classifier run per mode, with `study_eval.json`), the table and figures at the
top. Each finished part leaves a `study_done.json` and is not redone when the
command is rerun; an interrupted training run resumes from its checkpoint.
Any config field can be changed for every classifier with
`--classifier_override=key=value` (repeatable) and for the GAN with
`--gan_override=key=value`; the latent attack with `--unrestricted.<key>`.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
import time
from typing import Any, Callable, Sequence

import ml_collections

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # run as a script from a clone without installing
  sys.path.insert(0, ROOT)

from advjax import checkpoints, config_utils, evaluate, fileio, main  # pylint: disable=wrong-import-position
from advjax.metric_writers import read_metrics  # pylint: disable=wrong-import-position
from advjax.errors import UserError, one_line_errors  # pylint: disable=wrong-import-position

MODES = ("none", "fgsm", "pgd", "gan", "unrestricted")
DONE = "study_done.json"

COLUMNS = (
    ("mode", "mode", None),
    ("clean_accuracy", "clean test accuracy", "pct"),
    ("fgsm_accuracy", "FGSM accuracy", "pct"),
    ("pgd_accuracy", "PGD accuracy", "pct"),
    ("gan_sample_accuracy", "accuracy on AC-GAN samples", "pct"),
    ("unrestricted_accuracy", "accuracy on unrestricted examples", "pct"),
    ("unrestricted_success", "unrestricted attack success", "pct"),
    ("train_minutes", "training minutes", "min"),
)


def _read_json(path: str) -> dict[str, Any] | None:
  if not fileio.isfile(path):
    return None
  return json.loads(fileio.read_text(path))


def _write_json(path: str, data: dict[str, Any]) -> None:
  fileio.write_text(path, json.dumps(data, indent=2))  # atomic


def _parse_value(text: str) -> Any:
  try:
    return json.loads(text)
  except json.JSONDecodeError:
    return text


def apply_overrides(config: ml_collections.ConfigDict,
                    overrides: Sequence[str]) -> None:
  """Applies 'a.b=value' strings (value parsed as JSON, else a string)."""
  for item in overrides:
    key, sep, value = item.partition("=")
    if not sep:
      raise UserError(f"override '{item}' is not of the form key=value")
    *parents, leaf = key.split(".")
    node = config
    for p in parents:
      if p not in node:
        raise UserError(f"override '{item}': the config has no '{p}'")
      node = node[p]
    if leaf not in node:
      raise UserError(f"override '{item}': the config has no '{key}'")
    old = node[leaf]
    new = _parse_value(value)
    if isinstance(old, tuple) and isinstance(new, list):
      new = tuple(new)
    if isinstance(old, float) and isinstance(new, int):
      new = float(new)
    node[leaf] = new


def _train(config: ml_collections.ConfigDict, workdir: str, what: str,
           log: Callable[[str], None]) -> dict[str, Any]:
  done = _read_json(fileio.join(workdir, DONE))
  if done is not None:
    log(f"{what}: already trained in {workdir}")
    return done
  log(f"{what}: training in {workdir}")
  t0 = time.time()
  metrics = main.run(config, workdir)
  done = {"metrics": {k: float(v) for k, v in metrics.items()},
          "train_seconds": time.time() - t0}
  _write_json(fileio.join(workdir, DONE), done)
  return done


def _history(workdir: str, key: str) -> tuple[list[int], list[float]]:
  steps, values = [], []
  for record in read_metrics(workdir):
    if key in record:
      steps.append(int(record["step"]))
      values.append(float(record[key]))
  return steps, values


def evaluate_classifier(classifier_dir: str, gan_dir: str, *, eps: float,
                        pgd_steps: int, num_examples: int,
                        unrestricted: ml_collections.ConfigDict
                        ) -> dict[str, Any]:
  """The study's numbers for one trained classifier."""
  classifier = checkpoints.restore(classifier_dir)
  gan = checkpoints.restore(gan_dir)
  robust = evaluate.robustness(classifier, eps_list=[eps], pgd_steps=pgd_steps,
                               num_examples=num_examples,
                               batch_size=min(250, max(num_examples, 1)))
  latent = evaluate.unrestricted(classifier, gan, unrestricted)
  grid = latent.pop("grid")
  row = robust["rows"][0]
  return {
      "clean_accuracy": robust["clean_accuracy"],
      "fgsm_accuracy": row["fgsm_accuracy"],
      "pgd_accuracy": row.get("pgd_accuracy", float("nan")),
      "gan_sample_accuracy": latent["classifier_accuracy_clean_samples"],
      "unrestricted_accuracy": latent["classifier_accuracy_attacked_samples"],
      "unrestricted_success": latent["success_rate"],
      "unrestricted": latent,
      "num_examples": robust["num_examples"],
  }, grid


def _format(value: Any, kind: str | None) -> str:
  if kind == "pct":
    return f"{100 * value:.2f}%"
  if kind == "min":
    return f"{value:.1f}"
  return str(value)


def write_table(rows: list[dict[str, Any]], out_dir: str, *, eps: float,
                pgd_steps: int, num_examples: int, unrestricted_steps: int,
                command: str) -> str:
  """study.md and study.csv from one result row per mode."""
  header = "| " + " | ".join(title for _, title, _ in COLUMNS) + " |"
  lines = [
      "# Augmented training: the study's comparison", "",
      f"Clean, FGSM and PGD accuracy on {num_examples} test images "
      f"(L-inf eps {eps:g} in [-1, 1] units; PGD {pgd_steps} steps); "
      f"accuracy on class-conditional AC-GAN samples and on unrestricted "
      f"adversarial examples ({unrestricted_steps} latent steps) made against "
      f"each classifier.", "",
      header, "|" + " --- |" * len(COLUMNS)]
  for r in rows:
    lines.append("| " + " | ".join(_format(r[k], kind)
                                   for k, _, kind in COLUMNS) + " |")
  lines += ["", f"Command: `{command}`", ""]
  markdown = "\n".join(lines)
  fileio.write_text(fileio.join(out_dir, "study.md"), markdown)
  table = io.StringIO(newline="")
  writer = csv.writer(table)
  writer.writerow([k for k, _, _ in COLUMNS])
  for r in rows:
    writer.writerow([r[k] for k, _, _ in COLUMNS])
  fileio.write_text(fileio.join(out_dir, "study.csv"), table.getvalue())
  return markdown


def plot_curves(curves: dict[str, dict[str, tuple[list, list]]],
                path: str) -> None:
  """Test accuracy and accuracy on generated samples over training."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  titles = {"eval/accuracy": "test accuracy",
            "eval/gan_sample_accuracy": "accuracy on AC-GAN samples"}
  for ax, (key, title) in zip(axes, titles.items()):
    for mode, series in curves.items():
      steps, values = series.get(key, ([], []))
      if steps:
        ax.plot(steps, [100 * v for v in values], marker="o", label=mode)
    ax.set_title(title)
    ax.set_xlabel("training step")
    ax.set_ylabel("%")
    ax.grid(alpha=0.3)
    ax.legend()
  fig.tight_layout()
  png = io.BytesIO()
  fig.savefig(png, format="png", dpi=120)
  plt.close(fig)
  fileio.write_bytes(path, png.getvalue())


def run_study(workdir: str, *, gan_config: str, classifier_config: str,
              modes: Sequence[str] = MODES, gan_workdir: str | None = None,
              gan_overrides: Sequence[str] = (),
              classifier_overrides: Sequence[str] = (), eps: float = 0.2,
              pgd_steps: int = 10, num_examples: int = 10000,
              unrestricted: ml_collections.ConfigDict | None = None,
              command: str = "", log: Callable[[str], None] = print
              ) -> list[dict[str, Any]]:
  """Runs (or resumes) the whole study; returns one result row per mode."""
  from advjax.metric_writers import save_png  # pylint: disable=g-import-not-at-top
  bad = [m for m in modes if m not in MODES]
  if bad:
    raise UserError(f"unknown mode(s) {bad}; modes are {list(MODES)}")
  settings = evaluate.unrestricted_config()
  if unrestricted is not None:
    settings.update(dict(unrestricted))
  fileio.makedirs(workdir)
  if gan_workdir:
    if not checkpoints.available_steps(gan_workdir):
      raise UserError(f"--gan_workdir {gan_workdir} holds no checkpoint")
    gan_dir = gan_workdir
    log(f"GAN: using {gan_dir}")
  else:
    gan_dir = fileio.join(workdir, "acgan")
    gan_cfg = config_utils.load(gan_config)
    apply_overrides(gan_cfg, gan_overrides)
    _train(gan_cfg, gan_dir, "GAN", log)

  rows, curves = [], {}
  for mode in modes:
    mode_dir = fileio.join(workdir, "classifiers", mode)
    config = config_utils.load(f"{classifier_config}:{mode}")
    config.augment.gan_workdir = gan_dir
    if "eval" not in config:
      config.eval = ml_collections.ConfigDict()
    config.eval.gan_workdir = gan_dir
    apply_overrides(config, classifier_overrides)
    done = _train(config, mode_dir, f"classifier '{mode}'", log)
    results_path = fileio.join(mode_dir, "study_eval.json")
    results = _read_json(results_path)
    if results is not None:
      log(f"classifier '{mode}': already evaluated")
    else:
      log(f"classifier '{mode}': evaluating (FGSM, PGD, GAN samples, "
          f"{settings.num_steps}-step latent attack)")
      results, grid = evaluate_classifier(
          mode_dir, gan_dir, eps=eps, pgd_steps=pgd_steps,
          num_examples=num_examples, unrestricted=settings)
      save_png(grid, fileio.join(workdir, f"unrestricted_{mode}.png"))
      _write_json(results_path, results)
    rows.append({"mode": mode, "train_minutes": done["train_seconds"] / 60,
                 **results})
    curves[mode] = {k: _history(mode_dir, k) for k in
                    ("eval/accuracy", "eval/gan_sample_accuracy")}
  num = rows[0]["num_examples"] if rows else 0
  markdown = write_table(rows, workdir, eps=eps, pgd_steps=pgd_steps,
                         num_examples=num,
                         unrestricted_steps=int(settings.num_steps),
                         command=command)
  plot_curves(curves, fileio.join(workdir, "accuracy_curves.png"))
  log(markdown)
  return rows


# Smaller versions of the study; flags given on the command line win.
PRESETS = {
    "full": {},
    # About 24 minutes on a 2-core CPU (measured): the README's main job.
    "small": dict(
        gan_overrides=["num_epochs=1.0", "eval_every_steps=1000"],
        classifier_overrides=["num_epochs=0.5", "eval_every_steps=25"],
        num_examples=1000,
        unrestricted=dict(num_samples=128, num_steps=100)),
}


def preset_settings(preset: str, *, num_examples: int | None = None,
                    unrestricted: dict[str, Any] | None = None,
                    gan_overrides: Sequence[str] = (),
                    classifier_overrides: Sequence[str] = ()
                    ) -> dict[str, Any]:
  """`run_study` arguments of a preset, with what the user gave on top."""
  if preset not in PRESETS:
    raise UserError(f"unknown preset '{preset}'; presets are "
                    f"{sorted(PRESETS)}")
  p = PRESETS[preset]
  settings = evaluate.unrestricted_config()
  settings.update(p.get("unrestricted", {}))
  settings.update(unrestricted or {})
  return dict(
      gan_overrides=list(p.get("gan_overrides", [])) + list(gan_overrides),
      classifier_overrides=(list(p.get("classifier_overrides", []))
                            + list(classifier_overrides)),
      num_examples=(num_examples if num_examples is not None
                    else p.get("num_examples", 10000)),
      unrestricted=settings)


def _define_flags():
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  # --workdir (the folder of the whole study) is advjax.main's flag.
  flags.DEFINE_string("gan_config",
                      os.path.join(ROOT, "configs", "quickstart_gan.py"),
                      "AC-GAN config (trained unless --gan_workdir).")
  flags.DEFINE_string("gan_workdir", None, "An AC-GAN run to use as is.")
  flags.DEFINE_string("classifier_config",
                      os.path.join(ROOT, "configs", "study_fashion_mnist.py"),
                      "Config file whose get_config(mode) gives each mode.")
  flags.DEFINE_enum("preset", "full", list(PRESETS),
                    "'small': a shorter GAN and classifiers, fewer test "
                    "images and latent steps (about 24 minutes on 2 CPU "
                    "cores).")
  flags.DEFINE_list("modes", list(MODES), "Modes to train and compare.")
  flags.DEFINE_multi_string("classifier_override", [],
                            "key=value for every classifier config.")
  flags.DEFINE_multi_string("gan_override", [], "key=value for the GAN.")
  flags.DEFINE_float("eps", 0.2, "L-inf budget of FGSM/PGD, [-1, 1] units.")
  flags.DEFINE_integer("pgd_steps", 10, "PGD iterations (step eps / 4).")
  flags.DEFINE_integer("num_examples", 10000, "Test images to evaluate.")
  config_flags.DEFINE_config_dict("unrestricted",
                                  evaluate.unrestricted_config(),
                                  "Latent-attack settings.")


def _main(argv):
  from absl import flags  # pylint: disable=g-import-not-at-top
  f = flags.FLAGS
  if len(argv) > 1:
    raise UserError(f"unexpected arguments: {' '.join(argv[1:])}")
  if not f.workdir:
    raise UserError("--workdir is required")
  command = " ".join(["python", "experiments/study.py"] + sys.argv[1:])
  given = {}
  for key in f.unrestricted:  # the --unrestricted.<key> flags given
    name = f"unrestricted.{key}"
    if name in f and f[name].present:
      given[key] = f.unrestricted[key]
  settings = preset_settings(
      f.preset, num_examples=(f.num_examples if f["num_examples"].present
                              else None),
      unrestricted=given, gan_overrides=f.gan_override,
      classifier_overrides=f.classifier_override)
  run_study(f.workdir, gan_config=f.gan_config,
            classifier_config=f.classifier_config, modes=f.modes,
            gan_workdir=f.gan_workdir, eps=f.eps, pgd_steps=f.pgd_steps,
            command=command, **settings)


if __name__ == "__main__":
  from absl import app  # pylint: disable=g-import-not-at-top
  _define_flags()
  app.run(one_line_errors(_main))
