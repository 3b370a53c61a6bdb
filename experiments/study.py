"""The study, end to end: does training a classifier with FGSM or PGD
examples, AC-GAN samples or unrestricted adversarial examples change its
accuracy and robustness, compared with plain training?

  python experiments/study.py --workdir=/tmp/advjax/study [--preset=small]

1. trains the AC-GAN of `--gan_config` (or uses `--gan_workdir`);
2. trains one classifier per mode and seed of the config family `--config`
   (a file whose `get_config('<mode>,seed=<s>')` gives each run, with
   `adversarial_training.gan_workdir` pointing at the GAN for the modes
   that sample it) and, during training, logs its accuracy on a fixed set of
   AC-GAN samples (`eval/gan_sample_accuracy`); the modes are 'none' and
   every adversary of `advjax.adversaries` that trains; each run is one
   `advjax.trainers.run`, so an interrupted run resumes and a changed config
   meets the loop's config check (as `advjax.main`; `--allow_config_change`);
3. evaluates each classifier with the evaluators of `advjax.evaluators`:
   clean test accuracy, accuracy under each attack of `--attacks` at
   `--eps` (settings `--attack.<name>.<field>`), accuracy on clean AC-GAN
   samples and on unrestricted adversarial examples made against that very
   classifier (`--attack.unrestricted.<field>`, `--unrestricted.<field>`;
   the protocol of `advjax.evaluators.unrestricted`: only samples both
   networks get right at z0 are attacked, next to a random-search
   baseline), and any evaluator named in `--evaluators` (a column per number);
4. writes `<workdir>/study.md` and `study.csv` (the comparison table),
   `accuracy_curves.png` (test accuracy and accuracy on generated samples over
   training, every mode) and `unrestricted_<mode>.png` (G(z0) on top, the
   attack's example below it, the baseline's last).

With `--seeds=N` every mode is trained and evaluated N times on the same GAN
(seed s is the config argument's `seed=s`, added to the config's seed, and
added to the attacks' seeds); study.md shows mean ± standard deviation,
study.csv one row per mode and seed.

Layout: `<workdir>/acgan` (the GAN run), `<workdir>/classifiers/<mode>` (one
classifier run per mode; `<mode>.seed<s>` for the seeds after the first),
the table and figures at the top. Each run's `study_eval.json` holds its
training record (config and final step) and its results, each under the key
that produced it: the resolved settings, the step and digest of the
checkpoints read (the GAN's too, for the GAN-based columns) and the advjax
version. A result is reused only when its key matches, so rerunning with
another eps, attack list, GAN or preset computes what those settings need
(a new attack: only that attack) and the table's caption is written from the
settings stored with its numbers. `--config.<field>=value` sets a field of
every classifier config and `--gan_config.<field>=value` of the GAN's.
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

from advjax import (adversarial_training, adversaries, checkpoints,  # pylint: disable=wrong-import-position
                    config_utils, evaluate, evaluators, fileio, inference,
                    loop, trainers)
from advjax.evaluators import common  # pylint: disable=wrong-import-position
from advjax.evaluators import robustness  # pylint: disable=wrong-import-position
from advjax.evaluators import unrestricted as unrestricted_lib  # pylint: disable=wrong-import-position
from advjax import cli  # pylint: disable=wrong-import-position
from advjax.errors import UserError  # pylint: disable=wrong-import-position
from advjax.metric_writers import read_metrics  # pylint: disable=wrong-import-position

RESULTS = "study_eval.json"  # per run: its training record and keyed results
DEFAULT_ATTACKS = ("fgsm", "pgd", "autoattack")
FULL_NUM_EXAMPLES = 10000  # the whole Fashion-MNIST test split


STUDY_MODES = ("none", "fgsm", "pgd", "gan", "unrestricted")


def study_modes() -> list[str]:
  """The study's five modes (its table's rows); `--modes` adds others that
  train, e.g. trades, mart, fgsm_rs."""
  return [m for m in STUDY_MODES if m in adversaries.training_modes()]


def all_modes() -> list[str]:
  """Every mode `--modes` accepts: 'none' and every adversary that trains
  (each also as '<mode>+<source>', with generated data: 'trades+gan')."""
  return adversaries.training_modes()


def _known_mode(name: str) -> bool:
  try:
    adversarial_training.split_mode(name)
  except UserError:
    return False
  return True


def columns(attack_names: Sequence[str]) -> list[tuple[str, str, str | None]]:
  """(key, title, format) of the table: one accuracy column per attack."""
  return ([("mode", "mode", None),
           ("clean_accuracy", "clean test accuracy", "pct")]
          + [(f"{n}_accuracy", f"{_label(n)} accuracy", "pct")
             for n in attack_names]
          + [("gan_sample_accuracy", "accuracy on AC-GAN samples", "pct"),
             ("unrestricted_attacked", "samples attacked", "pct"),
             ("unrestricted_accuracy", "accuracy on unrestricted examples",
              "pct"),
             ("unrestricted_success", "unrestricted attack success", "pct"),
             ("unrestricted_baseline_success", "random-search baseline "
              "success", "pct"),
             ("unrestricted_latent_move", "latent RMS move", "dist"),
             ("unrestricted_baseline_latent_move", "baseline latent RMS move",
              "dist"),
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


def _field(config: ml_collections.ConfigDict, key: str, what: str):
  """(the block holding field `key` ('a.b.c'), its last name); a missing
  field is a UserError starting with `what`."""
  *parents, leaf = key.split(".")
  node = config
  for p in parents:
    if p not in node:
      raise UserError(f"{what}: the config has no '{p}'")
    node = node[p]
  if leaf not in node:
    raise UserError(f"{what}: the config has no '{key}'")
  return node, leaf


def apply_overrides(config: ml_collections.ConfigDict,
                    overrides: Sequence[str]) -> None:
  """Applies 'a.b=value' strings (value parsed as JSON, else a string): the
  presets' changes."""
  for item in overrides:
    key, sep, value = item.partition("=")
    if not sep:
      raise UserError(f"override '{item}' is not of the form key=value")
    node, leaf = _field(config, key, f"override '{item}'")
    old = node[leaf]
    new = _parse_value(value)
    if isinstance(old, tuple) and isinstance(new, list):
      new = tuple(new)
    if isinstance(old, float) and isinstance(new, int):
      new = float(new)
    node[leaf] = new


def set_fields(config: ml_collections.ConfigDict,
               fields: Mapping[str, Any] | None) -> None:
  """Sets {'a.b': value} fields (typed already, as the command line's
  `--config.a.b` overrides are), each of which must exist."""
  for path, value in (fields or {}).items():
    node, leaf = _field(config, path, f"--config.{path}")
    node[leaf] = value


def _newest(workdir: str) -> dict[str, Any]:
  """{'step', 'digest'} of a run's newest checkpoint."""
  step = checkpoints.available_steps(workdir)[-1]
  return {"step": step, "digest": common.checkpoint_digest(workdir, step)}


def _train(config: ml_collections.ConfigDict, workdir: str, what: str,
           log: Callable[[str], None], options: loop.RunOptions,
           gan_dir: str | None = None) -> dict[str, Any]:
  """Trains (or resumes) the run through `trainers.run`, so the loop's
  config check decides what a changed config means; returns its training
  record {'config', 'step', 'train_seconds', 'gan'}. A run whose newest
  checkpoint is the one recorded with this very config is not touched. A run
  trained on the GAN in `gan_dir` (its modes sample it) refuses, in one
  line, a GAN there that is not the one it was trained on."""
  cell = _read_json(fileio.join(workdir, RESULTS)) or {}
  stored = cell.get("train")
  saved = checkpoints.config_to_json(config)
  steps = checkpoints.available_steps(workdir)
  gan = _newest(gan_dir) if gan_dir else None
  if (stored and steps and gan and stored.get("gan")
      and not common.same_key(stored["gan"], gan)):
    raise UserError(
        f"{what} in {workdir} was trained on another GAN in {gan_dir} (step "
        f"{stored['gan']['step']}, now {gan['step']} with another digest); "
        f"pass another --workdir to train it on this one")
  if (stored and steps and steps[-1] == stored["step"]
      and common.same_key(stored["config"], saved)):
    log(f"{what}: already trained in {workdir}")
    return stored
  log(f"{what}: training in {workdir}")
  t0 = time.time()
  trainers.run(config, workdir, options)
  seconds = time.time() - t0
  step = checkpoints.available_steps(workdir)[-1]
  if stored and steps and steps[-1] == stored["step"]:
    # Continued: the earlier training time, plus this call's if it trained
    # (a resume of a finished run under an accepted change trains nothing).
    seconds = float(stored.get("train_seconds", 0.0)) + (
        seconds if step != stored["step"] else 0.0)
  record = {"config": saved, "step": step, "train_seconds": seconds,
            "gan": gan}
  _write_json(fileio.join(workdir, RESULTS),
              {"train": record, "parts": cell.get("parts", {})})
  return record


def _history(workdir: str, key: str) -> tuple[list[int], list[float]]:
  records = [r for r in read_metrics(workdir) if key in r]
  return [int(r["step"]) for r in records], [float(r[key]) for r in records]


def _reuse(parts: dict[str, Any], name: str, key: dict[str, Any]
           ) -> dict[str, Any] | None:
  """The stored result of part `name` made by `key`, if any (each part
  keeps one result per key, so going back to earlier settings reuses
  theirs)."""
  for stored in parts.get(name, []):
    if common.same_key(stored.get("key"), key):
      return stored["result"]
  return None


def _store(parts: dict[str, Any], name: str, key: dict[str, Any],
           result: dict[str, Any]) -> None:
  kept = [p for p in parts.get(name, [])
          if not common.same_key(p.get("key"), key)]
  parts[name] = kept + [{"key": key, "result": common.as_json(result)}]


def evaluate_classifier(classifier_dir: str, gan_dir: str, *, eps: float,
                        attack_names: Sequence[str],
                        attack_settings: Mapping[str, Any],
                        num_examples: int,
                        unrestricted: Mapping[str, Any],
                        seed: int = 0,
                        extra: Mapping[str, Any] | None = None,
                        log: Callable[[str], None] = print
                        ) -> tuple[dict[str, Any], Any]:
  """The study's numbers for one trained classifier, from its keyed
  results in `<classifier_dir>/study_eval.json`: each part (clean accuracy,
  each attack, the GAN-based columns, each evaluator of `extra`) is reused
  only when its key (resolved settings, the checkpoints' steps and digests,
  the advjax version) matches, else computed; `seed` is added to the
  attacks' seeds (random starts, the latent report's draws). Returns (the
  result row, the unrestricted grid or None when reused)."""
  path = fileio.join(classifier_dir, RESULTS)
  cell = _read_json(path) or {}
  parts = dict(cell.get("parts", {}))
  classifier = inference.restore(classifier_dir, kind="classifier")
  gan = inference.restore(gan_dir, kind="gan")
  inputs = common.Inputs(classifier=classifier, gan=gan)
  robust = robustness.Settings(
      eps=(float(eps),), attacks=tuple(attack_names),
      attack={k: dict(v) for k, v in attack_settings.items()
              if k in attack_names},
      num_examples=num_examples, batch_size=min(250, max(num_examples, 1)),
      seed=seed)
  full = robustness.resolved(robust)
  clean_key = common.provenance(
      {k: full[k] for k in ("num_examples", "batch_size")},
      classifier=classifier)
  attack_key = {n: common.provenance(
      {"eps": float(eps), "attack": n, "settings": full["attack"][n],
       "num_examples": num_examples, "batch_size": robust.batch_size,
       "seed": seed}, classifier=classifier) for n in attack_names}
  missing = [n for n in attack_names
             if _reuse(parts, f"attack/{n}", attack_key[n]) is None]
  computed = []
  if missing or _reuse(parts, "clean", clean_key) is None:
    computed += missing or ["clean"]
    log(f"  evaluating {', '.join(missing) or 'clean accuracy'}")
    result = robustness.robustness(
        classifier, eps_list=[float(eps)], attack_names=missing,
        attack_settings=robust.attack, num_examples=num_examples,
        batch_size=robust.batch_size, seed=seed)
    row = result["rows"][0]
    _store(parts, "clean", clean_key, {
        "clean_accuracy": result["clean_accuracy"],
        "num_examples": result["num_examples"]})
    for n in missing:
      _store(parts, f"attack/{n}", attack_key[n], {
          "accuracy": row[f"{n}_accuracy"],
          "signals": row.get("signals", {}).get(n, {}),
          "broken_by": row.get("broken_by", {}).get(n, {}),
          "settings": full["attack"][n]})
  report = {**unrestricted_lib.report_fields().to_dict(), **unrestricted}
  latent_s = unrestricted_lib.Settings(
      **{**report, "seed": int(report["seed"]) + seed},
      attack=dict(attack_settings.get("unrestricted", {})))
  latent_key = common.provenance(unrestricted_lib.resolved(latent_s),
                                 classifier=classifier, gan=gan)
  grid = None
  if _reuse(parts, "unrestricted", latent_key) is None:
    computed.append("unrestricted")
    log(f"  evaluating unrestricted examples "
        f"({latent_key['settings']['attack']['num_steps']} latent steps)")
    latent = unrestricted_lib.run(latent_s, inputs)
    grid = latent.pop("grid")
    latent.pop("provenance")
    _store(parts, "unrestricted", latent_key, latent)
  for name, block in (extra or {}).items():
    entry = evaluators.get(name)
    s = entry.read(block)
    key = common.provenance(s, classifier=classifier, gan=gan)
    if _reuse(parts, f"evaluator/{name}", key) is None:
      log(f"  evaluating {name}")
      out = entry(s, inputs)
      if entry.images is not None:
        entry.images(out)
      out.pop("provenance", None)
      _store(parts, f"evaluator/{name}", key, out)
      computed.append(name)
  if not computed:
    log("  every result reused")
  # Only what this format knows (a file from an older advjax keeps nothing).
  _write_json(path, {"train": cell.get("train"), "parts": parts})
  clean = _reuse(parts, "clean", clean_key)
  latent = _reuse(parts, "unrestricted", latent_key)
  attacks = {n: _reuse(parts, f"attack/{n}", attack_key[n])
             for n in attack_names}
  row = {
      "clean_accuracy": clean["clean_accuracy"],
      **{f"{n}_accuracy": attacks[n]["accuracy"] for n in attack_names},
      "gan_sample_accuracy": latent["classifier_accuracy_clean_samples"],
      "unrestricted_accuracy": latent["classifier_accuracy_attacked_samples"],
      "unrestricted_attacked": latent["num_attacked"] / latent["num_samples"],
      "unrestricted_success": latent["success_rate"],
      "unrestricted_baseline_success": latent["baseline"]["success_rate"],
      "unrestricted_latent_move": latent["latent_rms_displacement"] or 0.0,
      "unrestricted_baseline_latent_move": (
          latent["baseline"]["latent_rms_displacement"] or 0.0),
      # Per attack: points per masking sign, and per cascade stage.
      "signals": {n: a["signals"] for n, a in attacks.items()
                  if a["signals"]},
      "broken_by": {n: a["broken_by"] for n, a in attacks.items()
                    if a["broken_by"]},
      "unrestricted": latent,
      "num_examples": clean["num_examples"],
      # What produced the numbers: the table's caption is written from it.
      "made_with": {
          "eps": float(eps), "num_examples": clean["num_examples"],
          "attacks": list(attack_names),
          "attack_settings": {n: attacks[n]["settings"]
                              for n in attack_names},
          "unrestricted_steps": latent_key["settings"]["attack"]["num_steps"],
          "unrestricted": {
              "num_samples": latent["num_samples"],
              "preset": latent.get("preset", ""),
              "settings": latent_key["settings"]["attack"]},
          "classifier": common.run_record(classifier),
          "gan": common.run_record(gan),
          "advjax_version": latent_key["advjax_version"]},
  }
  for name, block in (extra or {}).items():
    key = common.provenance(evaluators.get(name).read(block),
                            classifier=classifier, gan=gan)
    for k, v in _reuse(parts, f"evaluator/{name}", key).items():
      if isinstance(v, (int, float)) and not isinstance(v, bool):
        row[f"{name}/{k}"] = v
  return row, grid


def _format(value: Any, kind: str | None) -> str:
  if kind == "pct":
    return f"{100 * value:.2f}%"
  if kind == "min":
    return f"{value:.1f}"
  if kind == "dist":
    return f"{value:.3f}"
  if kind == "num":
    return f"{value:.4g}"
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
                command: str) -> str:
  """study.md (mean +/- std over seeds per mode) and study.csv (one row per
  mode and seed) from the per-seed result rows; the caption is written from
  the settings stored with the numbers (each row's `made_with`)."""
  made = rows[0]["made_with"] if rows else {
      "eps": 0.0, "num_examples": 0, "attacks": [], "attack_settings": {},
      "unrestricted_steps": 0}
  attack_names = made["attacks"]
  extra = [k for k in (rows[0] if rows else {}) if "/" in k]
  cols = columns(attack_names) + [(k, k, "num") for k in extra]
  keys = [k for k, _, kind in cols if kind]
  seeds = sorted({int(r.get("seed", 0)) for r in rows})
  summary = summarize(rows, keys)
  attack_settings = made["attack_settings"]
  described = "; ".join(
      f"{_label(n)}: " + ", ".join(
          f"{k} {v}" for k, v in attack_settings.get(n, {}).items())
      for n in attack_names if attack_settings.get(n))
  differ = sorted({json.dumps(
      {k: v for k, v in r["made_with"].items()
       if k not in ("classifier", "gan")}, sort_keys=True) for r in rows})
  header = "| " + " | ".join(title for _, title, _ in cols) + " |"
  lines = [
      "# Adversarial training: the study's comparison", "",
      f"Clean accuracy and accuracy under "
      f"{', '.join(_label(n) for n in attack_names)} on "
      f"{made['num_examples']} test images (L-inf eps {made['eps']:g} in "
      f"[-1, 1] units" + (f"; {described}" if described else "") + "); "
      f"accuracy on class-conditional AC-GAN samples and on unrestricted "
      f"adversarial examples ({made['unrestricted_steps']} latent steps) made "
      f"against each classifier. " + _latent_protocol(made)
      + (f" Mean ± standard deviation over {len(seeds)} seeds "
         f"({', '.join(map(str, seeds))}) per mode; per-seed rows in "
         f"study.csv." if len(seeds) > 1 else ""), "",
      header, "|" + " --- |" * len(cols)]
  if len(differ) > 1:  # cannot happen through run_study; said if it does
    lines[2] += " Warning: the rows were not all measured with these settings."
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


def _latent_protocol(made: Mapping[str, Any]) -> str:
  """The unrestricted columns' protocol, from the settings stored with the
  rows (`made_with['unrestricted']`)."""
  latent = made.get("unrestricted")
  if not latent:
    return ""
  a = latent["settings"]
  refs = {"seed": "the seed study's code", "song": "Song et al.'s code"}
  which = (f"the settings of {refs.get(latent['preset'], latent['preset'])}"
           if latent.get("preset") else "custom settings")
  return (
      f"Unrestricted protocol: {latent['num_samples']} class-balanced "
      f"samples; {which} (learning rate {a['learning_rate']:g} on the batch "
      f"mean, lambda_z {a['lambda_z']:g}, lambda_aux {a['lambda_aux']:g}, "
      f"eps_z {a['eps_z']:g}, Langevin noise "
      f"{'on' if a['langevin'] else 'off'}, the {a['iterate']} iterate "
      f"judged). A sample is attacked only if the classifier and the GAN's "
      f"auxiliary classifier both give its class at z0 (samples attacked); "
      f"success is the share of attacked samples that fool the classifier "
      f"while the auxiliary classifier keeps the class; accuracy on "
      f"unrestricted examples is over all samples. The random-search "
      f"baseline runs the same search with the classifiers' gradients off "
      f"(noise and latent constraint alone); latent moves are RMS per "
      f"dimension over the attacked samples.")


def _label(name: str) -> str:
  """An adversary's label; its name if no longer registered."""
  entry = adversaries.ADVERSARIES.get(name)
  return entry.label if entry is not None else name


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
              num_examples: int = FULL_NUM_EXAMPLES,
              unrestricted: Mapping[str, Any] | None = None,
              seeds: int = 1, evaluators_named: Mapping[str, Any] | None = None,
              classifier_fields: Mapping[str, Any] | None = None,
              gan_fields: Mapping[str, Any] | None = None,
              allow_config_change: bool = False,
              command: str = "", log: Callable[[str], None] = print
              ) -> list[dict[str, Any]]:
  """Runs (or resumes) the whole study; returns one result row per mode and
  seed.

  Each mode is trained and evaluated `seeds` times on the same GAN: seed s
  adds s to the classifier config's `seed` (initialisation, batch order,
  dropout, crafting) and to the evaluation's seeds, in
  `classifiers/<mode>` for s = 0 and `classifiers/<mode>.seed<s>` after.
  Each run is one `trainers.run` (resumed by the loop, which also refuses a
  changed config unless `allow_config_change`); each result is reused only
  when the settings and checkpoints it was computed from match.

  `attack_settings[name]` overrides fields of adversary `name`'s
  evaluation settings ('unrestricted': the latent attack of the table);
  `unrestricted` holds the latent report's sample count, batch and seed;
  `evaluators_named` maps more evaluators (`advjax.evaluators`) to their
  settings, a column per number they return. `classifier_fields` and
  `gan_fields` ({'a.b': value}, what `--config.a.b=value` and
  `--gan_config.a.b=value` give) are set on every classifier's config and
  on the GAN's, after the preset's `*_overrides` ('a.b=value' strings).
  """
  from advjax.metric_writers import save_png  # pylint: disable=g-import-not-at-top
  if not isinstance(seeds, int) or seeds < 1:
    raise UserError(f"--seeds must be a positive number of seeds, got "
                    f"{seeds!r}")
  modes = list(modes if modes is not None else study_modes())
  bad = [m for m in modes if not _known_mode(m)]
  if bad:
    raise UserError(f"unknown mode(s) {bad}; modes are {all_modes()}, each "
                    f"also with generated data as <mode>+<source>, source one "
                    f"of {list(adversarial_training.GENERATED_SOURCES)}")
  attack_names = list(attack_names)
  for n in attack_names:
    if not adversaries.get(n).norm_bounded:
      raise UserError(f"--attacks: '{n}' has no eps; the table's attacks are "
                      f"norm-bounded: {robustness.attackable()}")
  for n in evaluators_named or {}:
    evaluators.get(n)
  attack_settings = {k: dict(v) for k, v in (attack_settings or {}).items()}
  for n, block in attack_settings.items():
    adversaries.get(n).evaluation_settings(block, f"attack.{n}")
  options = loop.RunOptions(allow_config_change=allow_config_change)
  family = config_utils.split_arg(classifier_config)[0]
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
    set_fields(gan_cfg, gan_fields)
    _train(gan_cfg, gan_dir, "GAN", log, options)

  rows, curves = [], {}
  for mode in modes:
    for seed in range(seeds):
      name = mode if seed == 0 else f"{mode}.seed{seed}"
      what = f"classifier '{mode}'" + (f" (seed {seed})" if seeds > 1 else "")
      mode_dir = fileio.join(workdir, "classifiers", name)
      # The family's member: mode and seed are the config's argument.
      config = config_utils.load(f"{family}:{mode},seed={seed}")
      # Only modes that sample the GAN depend on it for training; the
      # others read it only to evaluate.
      uses_gan = adversarial_training.uses_gan(mode)
      config.adversarial_training.gan_workdir = gan_dir if uses_gan else ""
      if "eval" not in config:
        config.eval = ml_collections.ConfigDict()
      config.eval.gan_workdir = gan_dir
      apply_overrides(config, classifier_overrides)
      set_fields(config, classifier_fields)
      done = _train(config, mode_dir, what, log, options,
                    gan_dir=gan_dir if uses_gan else None)
      log(f"{what}: evaluating")
      results, grid = evaluate_classifier(
          mode_dir, gan_dir, eps=eps, attack_names=attack_names,
          attack_settings=attack_settings, num_examples=num_examples,
          unrestricted=unrestricted or {}, seed=seed,
          extra=evaluators_named, log=log)
      if grid is not None:
        save_png(grid, fileio.join(workdir, f"unrestricted_{name}.png"))
      rows.append({"mode": mode, "seed": seed,
                   "train_minutes": done["train_seconds"] / 60, **results})
      if seed == 0:
        curves[mode] = {k: _history(mode_dir, k) for k in
                        ("eval/accuracy", "eval/gan_sample_accuracy")}
  markdown = write_table(rows, workdir, command=command)
  plot_curves(curves, fileio.join(workdir, "accuracy_curves.png"))
  log(markdown)
  return rows


# Smaller versions of the study; flags given on the command line win.
PRESETS = {
    "full": {},
    # The README's main job (with --seeds=3: 40 minutes on a 2-core CPU
    # measured at load 1-3 with 100 latent steps; the seed's 500 add about
    # a minute per classifier).
    "small": dict(
        gan_overrides=["num_epochs=1.0", "eval_every_steps=1000"],
        classifier_overrides=["num_epochs=0.5", "eval_every_steps=25"],
        num_examples=1000,
        # AutoAttack's "fast" version (APGD-CE + APGD-T): the standard one's
        # FAB-T and 5000-query Square on every robust point would take
        # hours here. The table names the version.
        # The latent attack keeps the seed study's settings (500 steps).
        attack_settings={"autoattack": {"version": "fast"}},
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
  report = unrestricted_lib.report_fields().to_dict()
  report.update(p.get("unrestricted", {}))
  report.update(unrestricted or {})
  return dict(
      gan_overrides=list(p.get("gan_overrides", [])) + list(gan_overrides),
      classifier_overrides=(list(p.get("classifier_overrides", []))
                            + list(classifier_overrides)),
      num_examples=(num_examples if num_examples is not None
                    else p.get("num_examples", FULL_NUM_EXAMPLES)),
      attack_settings=attacks, unrestricted=report)


def _define_flags():
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string("workdir", None, "The folder of the whole study.")
  config_flags.DEFINE_config_file(
      "gan_config", os.path.join(ROOT, "configs", "quickstart_gan.py"),
      "AC-GAN config (trained unless --gan_workdir); --gan_config.<field> "
      "overrides.")
  flags.DEFINE_string("gan_workdir", None, "An AC-GAN run to use as is.")
  config_flags.DEFINE_config_file(
      "config", os.path.join(ROOT, "configs", "study_fashion_mnist.py"),
      "The family of classifier configs: get_config('<mode>,seed=<s>') "
      "gives each run; --config.<field> overrides set a field of every one.")
  flags.DEFINE_enum("preset", "full", list(PRESETS),
                    "'small': a shorter GAN and classifiers, fewer test "
                    "images (about 17 minutes per seed on 2 CPU cores).")
  flags.DEFINE_list("modes", study_modes(), "Modes to train and compare.")
  flags.DEFINE_float("eps", 0.2, "L-inf budget of the attacks, [-1, 1] "
                     "units.")
  flags.DEFINE_list("attacks", list(DEFAULT_ATTACKS),
                    "Norm-bounded adversaries of the table (a column each).")
  cli.define_config_dict(
      "attack", evaluate.attack_flags(),
      "Settings of each adversary, --attack.<name>.<field>.")
  flags.DEFINE_integer("num_examples", FULL_NUM_EXAMPLES,
                       "Test images to evaluate.")
  flags.DEFINE_integer("seeds", 1, "Classifiers per mode (seeds 0 .. N-1); "
                       "the table shows mean +/- std.")
  cli.define_config_dict(
      "unrestricted", unrestricted_lib.report_fields(),
      "The latent report's samples: --unrestricted.num_samples, ...")
  flags.DEFINE_list("evaluators", [],
                    "More evaluators (advjax.evaluators) per classifier, a "
                    "column per number they return.")
  flags.DEFINE_bool("allow_config_change", False,
                    "Continue runs whose saved config differs in more than "
                    "their length and intervals (as advjax.main's flag).")


def _given(f, name: str) -> dict[str, Any]:
  """The fields of config-dict flag `name` given on the command line."""
  given: dict[str, Any] = {}
  for path in f:
    if path.startswith(name + ".") and f[path].present:
      keys = path.split(".")[1:]
      node = given
      for k in keys[:-1]:
        node = node.setdefault(k, {})
      value = getattr(f, name)
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
      unrestricted=_given(f, "unrestricted"))
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  run_study(f.workdir,
            gan_config=config_flags.get_config_filename(f["gan_config"]),
            classifier_config=config_flags.get_config_filename(f["config"]),
            classifier_fields=config_flags.get_override_values(f["config"]),
            gan_fields=config_flags.get_override_values(f["gan_config"]),
            modes=f.modes,
            gan_workdir=f.gan_workdir, eps=f.eps, attack_names=f.attacks,
            seeds=f.seeds, evaluators_named={n: {} for n in f.evaluators},
            allow_config_change=f.allow_config_change, command=command,
            **settings)


if __name__ == "__main__":
  _define_flags()
  cli.run(_main, config_flag="config")
