"""The study, end to end: does training a classifier with FGSM or PGD
examples, AC-GAN samples or unrestricted adversarial examples change its
accuracy and robustness, compared with plain training?

  python experiments/study.py --workdir=/tmp/advjax/study

1. trains the AC-GAN of `--gan_config` (or uses `--gan_workdir`);
2. trains one classifier per mode of `--classifier_config` ('path.py' whose
   `get_config(mode)` gives each mode's config, with
   `adversarial_training.gan_workdir` pointing at the GAN) and, during
   training, logs its accuracy on a fixed set of AC-GAN samples
   (`eval/gan_sample_accuracy`); the modes are 'none' and every adversary of
   `advjax.adversaries` that trains;
3. evaluates each classifier: clean test accuracy, accuracy under each
   attack of `--attacks` at `--eps` (settings `--attack.<name>.<field>`),
   accuracy on clean AC-GAN samples and on unrestricted adversarial
   examples made against that very classifier (`advjax.evaluate`);
4. writes `<workdir>/study.md` and `study.csv` (the comparison table),
   `accuracy_curves.png` (test accuracy and accuracy on generated samples over
   training, every mode) and `unrestricted_<mode>.png` (clean samples above,
   adversarial below).

With `--seeds=N` every mode is trained and evaluated N times on the same GAN
(seeds 0 .. N-1 added to the config's seed and the attacks' seeds); study.md
shows mean ± standard deviation, study.csv one row per mode and seed.

Layout: `<workdir>/acgan` (the GAN run), `<workdir>/classifiers/<mode>` (one
classifier run per mode, with `study_eval.json`; `<mode>.seed<s>` for the
seeds after the first), the table and figures at the
top. Each finished part leaves a `study_done.json` and is not redone when the
command is rerun; an interrupted training run resumes from its checkpoint.
Any config field can be changed for every classifier with
`--classifier_override=key=value` (repeatable) and for the GAN with
`--gan_override=key=value`; the latent attack with
`--attack.unrestricted.<field>` and its sample count with
`--unrestricted.num_samples`.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
import time
from typing import Any, Callable, Mapping, Sequence

import ml_collections
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # run as a script from a clone without installing
  sys.path.insert(0, ROOT)

from advjax import (adversaries, checkpoints, config_utils, evaluate,  # pylint: disable=wrong-import-position
                    fileio, inference, trainers)
from advjax import cli  # pylint: disable=wrong-import-position
from advjax.errors import UserError  # pylint: disable=wrong-import-position
from advjax.metric_writers import read_metrics  # pylint: disable=wrong-import-position

DONE = "study_done.json"
DEFAULT_ATTACKS = ("fgsm", "pgd", "autoattack")


STUDY_MODES = ("none", "fgsm", "pgd", "gan", "unrestricted")


def study_modes() -> list[str]:
  """The study's five modes (its table's rows); `--modes` adds others that
  train, e.g. trades, mart, fgsm_rs."""
  return [m for m in STUDY_MODES if m in adversaries.training_modes()]


def all_modes() -> list[str]:
  """Every mode `--modes` accepts: 'none' and every adversary that trains."""
  return adversaries.training_modes()


def columns(attack_names: Sequence[str]) -> list[tuple[str, str, str | None]]:
  """(key, title, format) of the table: one accuracy column per attack."""
  return ([("mode", "mode", None),
           ("clean_accuracy", "clean test accuracy", "pct")]
          + [(f"{n}_accuracy", f"{adversaries.get(n).label} accuracy", "pct")
             for n in attack_names]
          + [("gan_sample_accuracy", "accuracy on AC-GAN samples", "pct"),
             ("unrestricted_accuracy", "accuracy on unrestricted examples",
              "pct"),
             ("unrestricted_success", "unrestricted attack success", "pct"),
             ("train_minutes", "training minutes", "min")])


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
  metrics = trainers.run(config, workdir)
  done = {"metrics": {k: float(v) for k, v in metrics.items()},
          "train_seconds": time.time() - t0}
  _write_json(fileio.join(workdir, DONE), done)
  return done


def _history(workdir: str, key: str) -> tuple[list[int], list[float]]:
  records = [r for r in read_metrics(workdir) if key in r]
  return [int(r["step"]) for r in records], [float(r[key]) for r in records]


def evaluate_classifier(classifier_dir: str, gan_dir: str, *, eps: float,
                        attack_names: Sequence[str],
                        attack_settings: Mapping[str, Any],
                        num_examples: int,
                        unrestricted: Mapping[str, Any],
                        seed: int = 0) -> dict[str, Any]:
  """The study's numbers for one trained classifier; `seed` is added to the
  attacks' seeds (random starts, the latent report's draws)."""
  classifier = inference.restore(classifier_dir, kind="classifier")
  gan = inference.restore(gan_dir, kind="gan")
  robust = evaluate.robustness(classifier, eps_list=[eps],
                               attack_names=attack_names,
                               attack_settings=attack_settings,
                               num_examples=num_examples,
                               batch_size=min(250, max(num_examples, 1)),
                               seed=seed)
  latent = evaluate.unrestricted(
      classifier, gan, attack_settings.get("unrestricted"),
      {**unrestricted, "seed": int(unrestricted.get("seed", 0)) + seed})
  grid = latent.pop("grid")
  row = robust["rows"][0]
  return {
      "clean_accuracy": robust["clean_accuracy"],
      **{f"{n}_accuracy": row[f"{n}_accuracy"] for n in attack_names},
      "gan_sample_accuracy": latent["classifier_accuracy_clean_samples"],
      "unrestricted_accuracy": latent["classifier_accuracy_attacked_samples"],
      "unrestricted_success": latent["success_rate"],
      "attack_settings": robust["settings"],
      # Per attack: points per masking sign, and per cascade stage.
      "signals": row.get("signals", {}),
      "broken_by": row.get("broken_by", {}),
      "unrestricted": latent,
      "num_examples": robust["num_examples"],
  }, grid


def _format(value: Any, kind: str | None) -> str:
  if kind == "pct":
    return f"{100 * value:.2f}%"
  if kind == "min":
    return f"{value:.1f}"
  return str(value)


def summarize(rows: list[dict[str, Any]], keys: Sequence[str]
              ) -> list[dict[str, Any]]:
  """One row per mode (in first-seen order) from per-seed rows: for each key
  the mean over seeds and the sample standard deviation (ddof 1; 0 for one
  seed), as `key` and `key_std`, and the number of seeds."""
  by_mode: dict[str, list[dict[str, Any]]] = {}
  for r in rows:
    by_mode.setdefault(r["mode"], []).append(r)
  out = []
  for mode, group in by_mode.items():
    row: dict[str, Any] = {"mode": mode, "num_seeds": len(group)}
    for k in keys:
      values = np.array([float(r[k]) for r in group])
      row[k] = float(values.mean())
      row[f"{k}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    out.append(row)
  return out


def write_table(rows: list[dict[str, Any]], out_dir: str, *,
                attack_names: Sequence[str], eps: float, num_examples: int,
                attack_settings: Mapping[str, Any], unrestricted_steps: int,
                command: str) -> str:
  """study.md (mean +/- std over seeds per mode) and study.csv (one row per
  mode and seed) from the per-seed result rows."""
  cols = columns(attack_names)
  keys = [k for k, _, kind in cols if kind]
  seeds = sorted({int(r.get("seed", 0)) for r in rows})
  summary = summarize(rows, keys)
  described = "; ".join(
      f"{adversaries.get(n).label}: " + ", ".join(
          f"{k} {v}" for k, v in attack_settings.get(n, {}).items())
      for n in attack_names if attack_settings.get(n))
  header = "| " + " | ".join(title for _, title, _ in cols) + " |"
  lines = [
      "# Adversarial training: the study's comparison", "",
      f"Clean accuracy and accuracy under "
      f"{', '.join(adversaries.get(n).label for n in attack_names)} on "
      f"{num_examples} test images (L-inf eps {eps:g} in [-1, 1] units"
      + (f"; {described}" if described else "") + "); "
      f"accuracy on class-conditional AC-GAN samples and on unrestricted "
      f"adversarial examples ({unrestricted_steps} latent steps) made against "
      f"each classifier."
      + (f" Mean ± standard deviation over {len(seeds)} seeds "
         f"({', '.join(map(str, seeds))}) per mode; per-seed rows in "
         f"study.csv." if len(seeds) > 1 else ""), "",
      header, "|" + " --- |" * len(cols)]
  for r in summary:
    lines.append("| " + " | ".join(
        _format(r[k], kind) + (f" ± {_format(r[k + '_std'], kind)}"
                               if kind and len(seeds) > 1 else "")
        for k, _, kind in cols) + " |")
  lines += ["", f"Command: `{command}`", ""]
  markdown = "\n".join(lines)
  fileio.write_text(fileio.join(out_dir, "study.md"), markdown)
  table = io.StringIO(newline="")
  writer = csv.writer(table)
  writer.writerow(["mode", "seed"] + [k for k, _, _ in cols[1:]])
  for r in rows:
    writer.writerow([r["mode"], r.get("seed", 0)]
                    + [r[k] for k, _, _ in cols[1:]])
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
              modes: Sequence[str] | None = None,
              gan_workdir: str | None = None,
              gan_overrides: Sequence[str] = (),
              classifier_overrides: Sequence[str] = (), eps: float = 0.2,
              attack_names: Sequence[str] = DEFAULT_ATTACKS,
              attack_settings: Mapping[str, Any] | None = None,
              num_examples: int = 10000,
              unrestricted: Mapping[str, Any] | None = None,
              seeds: int = 1,
              command: str = "", log: Callable[[str], None] = print
              ) -> list[dict[str, Any]]:
  """Runs (or resumes) the whole study; returns one result row per mode and
  seed.

  Each mode is trained and evaluated `seeds` times on the same GAN: seed s
  adds s to the classifier config's `seed` (initialisation, batch order,
  dropout, crafting) and to the evaluation's seeds, in
  `classifiers/<mode>` for s = 0 and `classifiers/<mode>.seed<s>` after.

  `attack_settings[name]` overrides fields of adversary `name`'s
  evaluation settings ('unrestricted': the latent attack of the table);
  `unrestricted` holds the latent report's sample count, batch and seed.
  """
  from advjax.metric_writers import save_png  # pylint: disable=g-import-not-at-top
  if not isinstance(seeds, int) or seeds < 1:
    raise UserError(f"--seeds must be a positive number of seeds, got "
                    f"{seeds!r}")
  modes = list(modes if modes is not None else study_modes())
  bad = [m for m in modes if m not in all_modes()]
  if bad:
    raise UserError(f"unknown mode(s) {bad}; modes are {all_modes()}")
  attack_settings = {k: dict(v) for k, v in (attack_settings or {}).items()}
  latent_steps = adversaries.get("unrestricted").evaluation_settings(
      attack_settings.get("unrestricted")).num_steps
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
    for seed in range(seeds):
      name = mode if seed == 0 else f"{mode}.seed{seed}"
      what = f"classifier '{mode}'" + (f" (seed {seed})" if seeds > 1 else "")
      mode_dir = fileio.join(workdir, "classifiers", name)
      config = config_utils.load(f"{classifier_config}:{mode}")
      config.adversarial_training.gan_workdir = gan_dir
      if "eval" not in config:
        config.eval = ml_collections.ConfigDict()
      config.eval.gan_workdir = gan_dir
      apply_overrides(config, classifier_overrides)
      config.seed = int(config.seed) + seed
      done = _train(config, mode_dir, what, log)
      results_path = fileio.join(mode_dir, "study_eval.json")
      results = _read_json(results_path)
      if results is not None:
        log(f"{what}: already evaluated")
      else:
        log(f"{what}: evaluating ({', '.join(attack_names)}, GAN samples, "
            f"{latent_steps}-step latent attack)")
        results, grid = evaluate_classifier(
            mode_dir, gan_dir, eps=eps, attack_names=attack_names,
            attack_settings=attack_settings, num_examples=num_examples,
            unrestricted=unrestricted or {}, seed=seed)
        save_png(grid, fileio.join(workdir, f"unrestricted_{name}.png"))
        _write_json(results_path, results)
      rows.append({"mode": mode, "seed": seed,
                   "train_minutes": done["train_seconds"] / 60, **results})
      if seed == 0:
        curves[mode] = {k: _history(mode_dir, k) for k in
                        ("eval/accuracy", "eval/gan_sample_accuracy")}
  num = rows[0]["num_examples"] if rows else 0
  markdown = write_table(
      rows, workdir, attack_names=attack_names, eps=eps, num_examples=num,
      attack_settings=rows[0].get("attack_settings", {}) if rows else {},
      unrestricted_steps=latent_steps, command=command)
  plot_curves(curves, fileio.join(workdir, "accuracy_curves.png"))
  log(markdown)
  return rows


# Smaller versions of the study; flags given on the command line win.
PRESETS = {
    "full": {},
    # The README's main job (with --seeds=3: 40 minutes on a 2-core CPU,
    # measured at load 1-3; one seed about 15).
    "small": dict(
        gan_overrides=["num_epochs=1.0", "eval_every_steps=1000"],
        classifier_overrides=["num_epochs=0.5", "eval_every_steps=25"],
        num_examples=1000,
        # AutoAttack's "fast" version (APGD-CE + APGD-T): the standard one's
        # FAB-T and 5000-query Square on every robust point would take
        # hours here. The table names the version.
        attack_settings={"unrestricted": {"num_steps": 100},
                         "autoattack": {"version": "fast"}},
        unrestricted=dict(num_samples=128)),
}


def preset_settings(preset: str, *, num_examples: int | None = None,
                    attack_settings: Mapping[str, Any] | None = None,
                    unrestricted: Mapping[str, Any] | None = None,
                    gan_overrides: Sequence[str] = (),
                    classifier_overrides: Sequence[str] = ()
                    ) -> dict[str, Any]:
  """`run_study` arguments of a preset, with what the user gave on top."""
  if preset not in PRESETS:
    raise UserError(f"unknown preset '{preset}'; presets are "
                    f"{sorted(PRESETS)}")
  p = PRESETS[preset]
  attacks = {k: dict(v) for k, v in p.get("attack_settings", {}).items()}
  for name, fields in (attack_settings or {}).items():
    attacks.setdefault(name, {}).update(fields)
  report = evaluate.unrestricted_config().to_dict()
  report.update(p.get("unrestricted", {}))
  report.update(unrestricted or {})
  return dict(
      gan_overrides=list(p.get("gan_overrides", [])) + list(gan_overrides),
      classifier_overrides=(list(p.get("classifier_overrides", []))
                            + list(classifier_overrides)),
      num_examples=(num_examples if num_examples is not None
                    else p.get("num_examples", 10000)),
      attack_settings=attacks, unrestricted=report)


def _define_flags():
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string("workdir", None, "The folder of the whole study.")
  flags.DEFINE_string("gan_config",
                      os.path.join(ROOT, "configs", "quickstart_gan.py"),
                      "AC-GAN config (trained unless --gan_workdir).")
  flags.DEFINE_string("gan_workdir", None, "An AC-GAN run to use as is.")
  flags.DEFINE_string("classifier_config",
                      os.path.join(ROOT, "configs", "study_fashion_mnist.py"),
                      "Config file whose get_config(mode) gives each mode.")
  flags.DEFINE_enum("preset", "full", list(PRESETS),
                    "'small': a shorter GAN and classifiers, fewer test "
                    "images and latent steps (about 15 minutes per seed on 2 "
                    "CPU cores).")
  flags.DEFINE_list("modes", study_modes(), "Modes to train and compare.")
  flags.DEFINE_multi_string("classifier_override", [],
                            "key=value for every classifier config.")
  flags.DEFINE_multi_string("gan_override", [], "key=value for the GAN.")
  flags.DEFINE_float("eps", 0.2, "L-inf budget of the attacks, [-1, 1] "
                     "units.")
  flags.DEFINE_list("attacks", list(DEFAULT_ATTACKS),
                    "Norm-bounded adversaries of the table (a column each).")
  cli.define_config_dict(
      "attack", evaluate.attack_flags(),
      "Settings of each adversary, --attack.<name>.<field>.")
  flags.DEFINE_integer("num_examples", 10000, "Test images to evaluate.")
  flags.DEFINE_integer("seeds", 1, "Classifiers per mode (seeds 0 .. N-1); "
                       "the table shows mean +/- std.")
  cli.define_config_dict(
      "unrestricted", evaluate.unrestricted_config(),
      "The latent report's samples: --unrestricted.num_samples, ...")


def _given(f, name: str) -> dict[str, Any]:
  """The fields of config-dict flag `name` given on the command line."""
  given: dict[str, Any] = {}
  for path in f:
    if path.startswith(name + ".") and f[path].present:
      keys = path.split(".")[1:]
      node = given
      for k in keys[:-1]:
        node = node.setdefault(k, {})
      value = f[name]
      for k in keys:
        value = value[k]
      node[keys[-1]] = value
  return given


def _main(argv):
  del argv  # cli.run refuses positional arguments
  from absl import flags  # pylint: disable=g-import-not-at-top
  f = flags.FLAGS
  command = " ".join(["python", "experiments/study.py"] + sys.argv[1:])
  settings = preset_settings(
      f.preset, num_examples=(f.num_examples if f["num_examples"].present
                              else None),
      attack_settings=_given(f, "attack"),
      unrestricted=_given(f, "unrestricted"), gan_overrides=f.gan_override,
      classifier_overrides=f.classifier_override)
  run_study(f.workdir, gan_config=f.gan_config,
            classifier_config=f.classifier_config, modes=f.modes,
            gan_workdir=f.gan_workdir, eps=f.eps, attack_names=f.attacks,
            seeds=f.seeds, command=command, **settings)


if __name__ == "__main__":
  _define_flags()
  cli.run(_main, config_flag=None)
