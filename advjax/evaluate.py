"""Evaluating checkpoints: classifier robustness and GAN sample quality.

  python -m advjax.evaluate --mode=robustness --workdir=CLASSIFIER_DIR \
      [--eps=0.02,0.05,0.1] [--attacks=fgsm,pgd] [--attack.pgd.num_steps=20] \
      [--substitute_workdir=DIR] [--gan_workdir=DIR] \
      [--attack.unrestricted.num_steps=500 --unrestricted_samples=256 ...] \
      [--patch.size=8 --patch.target=0 ...]
  python -m advjax.evaluate --mode=gan --workdir=GAN_DIR \
      [--classifier_workdir=DIR] [--fid_weights=PATH] \
      [--num_samples=50000] [--num_real=0]

The robustness report evaluates every norm-bounded adversary of
`advjax.adversaries` named in `--attacks` at every eps (settings
`--attack.<name>.<field>`, defaulting to each adversary's evaluation
settings). Each report writes `<out>/<mode>.md` (a Markdown table),
`<out>/<mode>.json` and PNG images (clean above, adversarial below) to
`--out` (default `<workdir>/eval`), and prints the table.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from typing import Any, Callable, Iterator, Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from advjax import adversaries, attacks, fileio, inference, input_pipeline
from advjax import cli
from advjax import fid
from advjax import inception as inception_lib
from advjax.errors import UserError
from advjax.metric_writers import image_grid, save_png


def eval_data(restored: inference.Run, num_examples: int,
              batch_size: int, split: str | None = None
              ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """(images, labels) batches of the run's test split (or `split`), first
  `num_examples` (all if <= 0), in order."""
  config = restored.config
  info = input_pipeline.get_dataset_info(config.dataset.name)
  source = input_pipeline.get_source(info.name, split or info.eval_split,
                                     config.dataset.get("data_dir") or None)
  n = len(source) if num_examples <= 0 else min(num_examples, len(source))
  for batch in input_pipeline.eval_batches(source, global_batch_size=batch_size,
                                           process_index=0, process_count=1):
    keep = batch["mask"] > 0
    images, labels = batch["image"][keep], batch["label"][keep]
    if n <= 0:
      return
    yield images[:n], labels[:n]
    n -= len(labels)


def _accuracy(predict: Callable, images, labels) -> float:
  return float(np.mean(np.asarray(predict(images)) == np.asarray(labels)))


def _default_attacks() -> list[str]:
  """Norm-bounded adversaries a report runs unless told otherwise."""
  return [n for n, a in adversaries.ADVERSARIES.items() if a.norm_bounded]


def _compiled_attack(entry: adversaries.Adversary, settings: Any,
                     target: adversaries.Target
                     ) -> Callable[..., dict[str, Any]]:
  """(x, y, rng) -> the entry's output dict ('image', maybe 'signals' and
  'broken_by');
  jit-compiled where the entry can be traced (AutoAttack-like entries run
  their own compiled pieces on the host)."""
  if not entry.trains:
    return lambda x, y, rng: entry.craft(settings, target, x, y, rng)
  fn = jax.jit(lambda x, y, rng: entry.craft(settings, target, x, y,
                                             rng)["image"])
  return lambda x, y, rng: {"image": fn(x, y, rng)}


def robustness(classifier: inference.Classifier, *, eps_list: Sequence[float],
               attack_names: Sequence[str] | None = None,
               attack_settings: Mapping[str, Any] | None = None,
               num_examples: int = 1000, batch_size: int = 250,
               substitute: inference.Classifier | None = None,
               seed: int = 0) -> dict[str, Any]:
  """Clean accuracy, accuracy under each attack at each eps, and transfer
  error if asked.

  `attack_names` are norm-bounded adversaries of `advjax.adversaries`
  (default: all); `attack_settings[name]` overrides fields of that
  adversary's evaluation settings (eps comes from `eps_list`, in the
  pipeline's [-1, 1] units). The transfer error is that of FGSM examples
  crafted on `substitute` (Papernot et al. 2017).
  """
  names = list(attack_names if attack_names is not None
               else _default_attacks())
  entries = [adversaries.get(n) for n in names]
  for entry in entries:
    if not entry.norm_bounded:
      raise UserError(f"attack '{entry.name}' has no eps; the robustness "
                      f"table takes norm-bounded attacks "
                      f"{_default_attacks()}")
  if any(not np.isfinite(e) or e < 0 for e in eps_list):
    raise UserError(f"eps must be finite and >= 0, got {list(eps_list)}")
  attack_settings = dict(attack_settings or {})
  target = adversaries.Target(classifier.logits_fn())
  crafted = {}
  for e in eps_list:
    for entry in entries:
      settings = entry.evaluation_settings(attack_settings.get(entry.name),
                                           f"attack.{entry.name}", eps=e)
      crafted[(e, entry.name)] = (settings,
                                  _compiled_attack(entry, settings, target))
  sub_fgsm = None
  if substitute is not None:
    sub_fgsm = jax.jit(lambda x, y, e: attacks.fgsm(
        substitute.logits_fn(), x, y, e))
  count, clean = 0, 0.0
  hits = {key: 0.0 for key in crafted}
  # (eps, attack) -> {signal or cascade stage: points}, summed over batches.
  signals: dict[tuple[float, str], dict[str, int]] = {}
  broken_by: dict[tuple[float, str], dict[str, int]] = {}
  transfer = {e: 0.0 for e in eps_list}
  examples = {}
  key = jax.random.key(seed)
  from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top
  # On a terminal only (disable=None): images attacked so far.
  bar = tqdm(desc="robustness", unit="img", disable=None,
             total=num_examples if num_examples > 0 else None)
  for b, (images, labels) in enumerate(eval_data(classifier, num_examples,
                                                 batch_size)):
    x, y = jnp.asarray(images), jnp.asarray(labels)
    n = len(labels)
    bar.update(n)
    count += n
    clean += n * _accuracy(classifier.predict, x, y)
    for e in eps_list:
      shown = [np.asarray(x[:8])]
      for entry in entries:
        out = crafted[(e, entry.name)][1](x, y, jax.random.fold_in(key, b))
        x_adv = out["image"]
        hits[(e, entry.name)] += n * _accuracy(classifier.predict, x_adv, y)
        for store, field in ((signals, "signals"), (broken_by, "broken_by")):
          for what, flagged in out.get(field, {}).items():
            counts = store.setdefault((e, entry.name), {})
            counts[what] = counts.get(what, 0) + int(np.sum(flagged))
        shown.append(np.asarray(x_adv[:8]))
      if sub_fgsm is not None:
        transfer[e] += n * (1.0 - _accuracy(classifier.predict,
                                             sub_fgsm(x, y, e), y))
      if b == 0:
        examples[e] = shown
  bar.close()
  total = max(count, 1)
  rows = []
  for e in eps_list:
    row = {"eps": e}
    for entry in entries:
      row[f"{entry.name}_accuracy"] = hits[(e, entry.name)] / total
      flagged = {k: v for k, v in signals.get((e, entry.name), {}).items()
                 if v}
      if flagged:
        row.setdefault("signals", {})[entry.name] = flagged
      if (e, entry.name) in broken_by:
        row.setdefault("broken_by", {})[entry.name] = broken_by[
            (e, entry.name)]
    if substitute is not None:
      row["transfer_error"] = transfer[e] / total
    rows.append(row)
  used = {entry.name: _as_json(crafted[(eps_list[0], entry.name)][0])
          for entry in entries} if eps_list else {}
  return {"num_examples": count, "clean_accuracy": clean / total,
          "attacks": names, "labels": {en.name: en.label for en in entries},
          "settings": used, "rows": rows, "examples": examples}


def _as_json(settings: Any) -> dict[str, Any]:
  return {k: v for k, v in dataclasses.asdict(settings).items()
          if k != "eps"}


def robustness_markdown(result: dict[str, Any]) -> str:
  """The robustness table: one row per eps, a column per attack, the drop
  of the strongest one, and the transfer error if measured."""
  clean = result["clean_accuracy"]
  names = result["attacks"]
  labels = [result["labels"][n] for n in names]
  has_transfer = any("transfer_error" in r for r in result["rows"])
  described = "; ".join(
      f"{result['labels'][n]}: " + ", ".join(
          f"{k} {v}" for k, v in result["settings"].get(n, {}).items())
      for n in names if result["settings"].get(n))
  lines = [f"Clean accuracy: {100 * clean:.2f}% on {result['num_examples']} "
           f"test images (eps in [-1, 1] pixel units"
           + (f"; {described})" if described else ")"), "",
           "| eps | " + " | ".join(f"{l} accuracy" for l in labels)
           + (" | drop vs clean |" if names else "")
           + (" transfer error |" if has_transfer else ""),
           "| --- |" + " --- |" * (len(names) + (1 if names else 0)
                                   + (1 if has_transfer else 0))]
  for r in result["rows"]:
    accs = [r[f"{n}_accuracy"] for n in names]
    line = f"| {r['eps']:g} | " + " | ".join(f"{100 * a:.2f}%" for a in accs)
    if names:
      line += f" | {100 * (clean - min(accs)):.2f} points |"
    else:
      line += " |"
    if has_transfer:
      line += f" {100 * r['transfer_error']:.2f}% |"
    lines.append(line)
  stages = [f"- eps {r['eps']:g}, {result['labels'][n]}: "
            + ", ".join(f"{stage} {count}" for stage, count in counts.items())
            for r in result["rows"]
            for n, counts in r.get("broken_by", {}).items()]
  if stages:
    lines += ["", f"Points broken by each stage (of {result['num_examples']}; "
              "each point counts once, for the first stage that broke it):",
              *stages]
  warnings = [f"- eps {r['eps']:g}, {result['labels'][n]}: {count} of "
              f"{result['num_examples']} points with {what}"
              for r in result["rows"]
              for n, flagged in r.get("signals", {}).items()
              for what, count in flagged.items()]
  warnings += [f"- {result['labels'][n]}: accuracy does not fall from eps "
               f"{lo:g} to {hi:g} ({100 * a:.2f}% -> {100 * b:.2f}%)"
               for n, lo, hi, a, b in flat_accuracy(result)]
  if warnings:
    lines += ["", "Signs of gradient masking (Croce & Hein 2020): the "
              "gradient-based numbers above may overstate robustness on "
              "these points.", *warnings]
  return "\n".join(lines) + "\n"


def flat_accuracy(result: dict[str, Any]
                  ) -> list[tuple[str, float, float, float, float]]:
  """(attack, eps_lo, eps_hi, accuracy_lo, accuracy_hi) wherever an attack's
  accuracy does not fall between consecutive eps > 0 while above zero: a
  larger budget contains every example of the smaller one, so a working
  attack does at least as well with it (Croce & Hein 2020 list flat curves
  among the signs of gradient masking)."""
  rows = sorted((r for r in result["rows"] if r["eps"] > 0),
                key=lambda r: r["eps"])
  return [(n, lo["eps"], hi["eps"], lo[f"{n}_accuracy"],
           hi[f"{n}_accuracy"])
          for n in result["attacks"] for lo, hi in zip(rows, rows[1:])
          if lo[f"{n}_accuracy"] > 0
          and hi[f"{n}_accuracy"] >= lo[f"{n}_accuracy"]]


def unrestricted_config() -> ml_collections.ConfigDict:
  """The unrestricted report's own settings (the latent attack's are the
  'unrestricted' adversary's, `--attack.unrestricted.*`): how many samples,
  in batches of how many (64, as Song et al.'s code: the attack's objective
  is a batch mean), drawn with which seed."""
  return ml_collections.ConfigDict(dict(num_samples=256, batch_size=64,
                                        seed=0))


def unrestricted(classifier: inference.Classifier, gan: inference.GAN,
                 attack: Any = None,
                 report_settings: Mapping[str, Any] | None = None
                 ) -> dict[str, Any]:
  """Unrestricted adversarial examples against `classifier` from an AC-GAN.

  Draws `num_samples` latent vectors with balanced source classes, runs
  `attacks.unrestricted_attack` with the 'unrestricted' adversary's settings
  (`attack`: its settings or a block of fields over its evaluation defaults;
  targeted at a random other class if `targeted`) and reports the
  classifier's accuracy on the clean samples G(z0, y_s) and on the attacked
  ones, how often the GAN's auxiliary classifier still says y_s, the success
  rate (both at once) and the mean iteration of first success.
  """
  for run, handle in ((classifier, inference.Classifier),
                      (gan, inference.GAN)):
    if not isinstance(run, handle):
      raise UserError(f"checkpoint in {run.workdir} was written by the "
                      f"'{run.trainer}' trainer, not a {handle.kind}")
  entry = adversaries.get("unrestricted")
  s = (attack if isinstance(attack, entry.settings)
       else entry.evaluation_settings(attack, "attack.unrestricted"))
  r = unrestricted_config()
  r.update(dict(report_settings or {}))
  if classifier.config.dataset.name != gan.config.dataset.name:
    raise UserError(f"the classifier was trained on "
                    f"{classifier.config.dataset.name}, the GAN on "
                    f"{gan.config.dataset.name}")
  if not gan.num_classes:
    raise UserError(f"the GAN in {gan.workdir} is unconditional; the latent "
                    f"attack needs a class-conditional AC-GAN")
  if int(r.num_samples) <= 0 or int(r.batch_size) <= 0:
    raise UserError("the unrestricted report's num_samples and batch_size "
                    "must be > 0")
  aux_logits_fn = gan.aux_logits_fn()
  generate_fn = gan.generate_fn(ema=True)
  logits_fn = classifier.logits_fn()
  k = gan.num_classes
  n = int(r.num_samples)
  key = jax.random.key(int(r.seed))
  source = (np.arange(n) % k).astype(np.int32)
  z0_all = jax.random.normal(jax.random.fold_in(key, 0), (n, gan.latent_dim))
  target_all = None
  if s.targeted:
    shift = jax.random.randint(jax.random.fold_in(key, 1), (n,), 1, k)
    target_all = np.asarray((source + shift) % k, np.int32)
  parts = []
  for b, i in enumerate(range(0, n, int(r.batch_size))):
    sl = slice(i, i + int(r.batch_size))
    z0, ys = z0_all[sl], jnp.asarray(source[sl])
    out = attacks.unrestricted_attack(
        generate_fn, aux_logits_fn, logits_fn, z0, ys,
        jax.random.fold_in(key, 2 + b),
        target_labels=None if target_all is None else target_all[sl],
        num_steps=s.num_steps, learning_rate=s.learning_rate, eps_z=s.eps_z,
        lambda_z=s.lambda_z, lambda_aux=s.lambda_aux, noise_eps=s.noise_eps,
        langevin=s.langevin)
    clean = generate_fn(z0, ys)
    parts.append({
        "clean": np.asarray(clean), "adv": np.asarray(out["images"]),
        "clean_pred": np.asarray(jnp.argmax(logits_fn(clean), -1)),
        "adv_pred": np.asarray(jnp.argmax(logits_fn(out["images"]), -1)),
        "clean_aux": np.asarray(jnp.argmax(aux_logits_fn(clean), -1)),
        "adv_aux": np.asarray(jnp.argmax(aux_logits_fn(out["generated"]),
                                         -1)),
        "success": np.asarray(out["success"]),
        "first": np.asarray(out["first_success"]),
        "dz": np.asarray(jnp.sqrt(jnp.mean(jnp.square(out["z"] - z0), -1))),
    })
  cat = {key_: np.concatenate([p[key_] for p in parts]) for key_ in parts[0]}
  first = cat["first"][cat["success"]]
  order = np.arange(min(n, k, 10))  # one sample per class: 0, 1, ...
  result = {
      "num_samples": n, "num_steps": s.num_steps, "targeted": s.targeted,
      "settings": dataclasses.asdict(s),
      "classifier_accuracy_clean_samples": float(
          np.mean(cat["clean_pred"] == source)),
      "classifier_accuracy_attacked_samples": float(
          np.mean(cat["adv_pred"] == source)),
      "aux_keeps_source_clean": float(np.mean(cat["clean_aux"] == source)),
      "aux_keeps_source_attacked": float(np.mean(cat["adv_aux"] == source)),
      "success_rate": float(np.mean(cat["success"])),
      "mean_first_success_step": (float(np.mean(first)) if first.size
                                  else None),
      "latent_rms_displacement": float(np.mean(cat["dz"])),
  }
  if target_all is not None:
    result["target_hit_rate"] = float(np.mean(cat["adv_pred"] == target_all))
  # Clean samples above, their attacked versions below.
  result["grid"] = image_grid(np.concatenate([cat["clean"][order],
                                              cat["adv"][order]]), rows=2)
  return result


def unrestricted_markdown(result: dict[str, Any]) -> str:
  pct = lambda v: f"{100 * v:.2f}%"
  kind = "targeted" if result["targeted"] else "untargeted"
  first = result["mean_first_success_step"]
  rows = [
      ("classifier accuracy on clean AC-GAN samples",
       pct(result["classifier_accuracy_clean_samples"])),
      ("classifier accuracy on unrestricted adversarial samples",
       pct(result["classifier_accuracy_attacked_samples"])),
      ("auxiliary classifier keeps the source class (clean / attacked)",
       f"{pct(result['aux_keeps_source_clean'])} / "
       f"{pct(result['aux_keeps_source_attacked'])}"),
      ("attack success rate (classifier fooled and source kept)",
       pct(result["success_rate"])),
  ]
  if "target_hit_rate" in result:
    rows.append(("classifier predicts the target class",
                 pct(result["target_hit_rate"])))
  rows += [
      ("mean iteration of first success",
       "-" if first is None else f"{first:.1f}"),
      ("RMS latent displacement per dimension",
       f"{result['latent_rms_displacement']:.3f}"),
  ]
  head = (f"Unrestricted adversarial examples ({kind} latent attack, "
          f"Song et al. 2018): {result['num_samples']} samples, "
          f"{result['num_steps']} steps")
  return "\n".join([head, "", "| metric | value |", "| --- | --- |"]
                   + [f"| {k} | {v} |" for k, v in rows]) + "\n"


def patch_config() -> ml_collections.ConfigDict:
  """Adversarial-patch settings of the report; size 0 leaves it out."""
  return ml_collections.ConfigDict(dict(
      size=0, target=0, num_steps=500, learning_rate=0.05, batch_size=32,
      num_train_images=2000, seed=0))


def patch(classifier: inference.Classifier,
          settings: ml_collections.ConfigDict, *, num_examples: int = 1000,
          batch_size: int = 250) -> dict[str, Any]:
  """A universal patch (Brown et al. 2017) trained on training images,
  evaluated at random positions on held-out test images (those whose label
  is not already the target)."""
  s = patch_config()
  s.update(dict(settings))
  config = classifier.config
  info = input_pipeline.get_dataset_info(config.dataset.name)
  train = input_pipeline.get_source(info.name, info.train_split,
                                    config.dataset.get("data_dir") or None)
  n_train = min(int(s.num_train_images), len(train))
  raw, _ = input_pipeline._read(train, range(n_train))  # pylint: disable=protected-access
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


def write_report(out_dir: str, name: str, markdown: str,
                 data: dict[str, Any], images: dict[str, np.ndarray]) -> None:
  """`<name>.md`, `<name>.json` and `<tag>.png` files in `out_dir` (local or
  `gs://...`)."""
  fileio.makedirs(out_dir)
  fileio.write_text(fileio.join(out_dir, f"{name}.md"), markdown)
  fileio.write_text(fileio.join(out_dir, f"{name}.json"),
                    json.dumps(data, indent=2))
  for tag, image in images.items():
    save_png(image, fileio.join(out_dir, f"{tag}.png"))


def _example_images(examples) -> dict[str, np.ndarray]:
  """Per eps: the clean row on top, then one row per attack."""
  return {f"robustness_eps{e:g}": image_grid(np.concatenate(rows),
                                             rows=len(rows))
          for e, rows in examples.items()}


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
  available = len(input_pipeline.get_source(
      info.name, info.train_split, gan.config.dataset.get("data_dir") or None))
  n_real = available if num_real <= 0 else min(num_real, available)
  if num_samples < 2 or n_real < 2:
    raise UserError(f"FID needs at least 2 samples and 2 real images, got "
                    f"{num_samples} and {n_real}")
  num_classes = gan.num_classes
  classes = max(num_classes, 1)
  labels = (np.arange(num_samples) % classes).astype(np.int32)
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


def attack_flags() -> ml_collections.ConfigDict:
  """`--attack.<name>.<field>`: every adversary's evaluation settings."""
  return ml_collections.ConfigDict({
      name: dataclasses.asdict(entry.evaluation_defaults())
      for name, entry in adversaries.ADVERSARIES.items()})


def report(mode: str, workdir: str, out: str | None = None, *,
           eps: Sequence[float] = (0.02, 0.05, 0.1),
           attack_names: Sequence[str] | None = None,
           attack_settings: Mapping[str, Any] | None = None,
           num_examples: int = 1000, batch_size: int = 250,
           substitute_workdir: str | None = None,
           gan_workdir: str | None = None,
           unrestricted_settings: Mapping[str, Any] | None = None,
           patch_settings: Mapping[str, Any] | None = None,
           classifier_workdir: str | None = None,
           num_samples: int = 50_000, num_real: int = 0,
           fid_weights: str | None = None, inception: bool = True,
           fid_cache_dir: str | None = None) -> str:
  """Writes the `mode` report of `workdir` to `out`; returns its Markdown.

  `attack_settings[name]` overrides fields of adversary `name`'s evaluation
  settings (the unrestricted section reads `attack_settings['unrestricted']`;
  `unrestricted_settings` holds its sample count, batch size and seed).
  """
  out = out or fileio.join(workdir, "eval")
  attack_settings = dict(attack_settings or {})
  if mode == "robustness":
    classifier = inference.restore(workdir, kind="classifier")
    substitute = (inference.restore(substitute_workdir, kind="classifier")
                  if substitute_workdir else None)
    gan = (inference.restore(gan_workdir, kind="gan") if gan_workdir
           else None)
    result = robustness(classifier, eps_list=[float(e) for e in eps],
                        attack_names=attack_names,
                        attack_settings=attack_settings,
                        num_examples=num_examples, batch_size=batch_size,
                        substitute=substitute)
    markdown = robustness_markdown(result)
    images = _example_images(result.pop("examples"))
    if gan is not None:
      latent = unrestricted(classifier, gan,
                            attack_settings.get("unrestricted"),
                            unrestricted_settings)
      images["unrestricted"] = latent.pop("grid")
      result["unrestricted"] = latent
      markdown += "\n" + unrestricted_markdown(latent)
    if patch_settings is not None and int(patch_settings.get("size", 0)) > 0:
      patched = patch(classifier, patch_settings, num_examples=num_examples,
                      batch_size=batch_size)
      clean, with_patch = patched.pop("examples")
      images["patch"] = image_grid(np.concatenate([clean, with_patch]),
                                   rows=2)
      patched.pop("patch")
      result["patch"] = patched
      markdown += "\n" + patch_markdown(patched)
  elif mode == "gan":
    gan = inference.restore(workdir, kind="gan")
    classifier = (inference.restore(classifier_workdir, kind="classifier")
                  if classifier_workdir else None)
    result = gan_metrics(gan, classifier, num_samples=num_samples,
                         num_real=num_real, fid_weights=fid_weights,
                         inception=inception, cache_dir=fid_cache_dir)
    markdown = gan_markdown(result)
    images = {"gan_samples": result.pop("grid")}
  else:
    raise UserError(f"--mode must be 'robustness' or 'gan', not '{mode}'")
  write_report(out, mode, markdown, result, images)
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
  markdown = report(f.mode, f.workdir, out, eps=_floats(f.eps, "eps"),
                    attack_names=f.attacks, attack_settings=f.attack.to_dict(),
                    num_examples=f.num_examples, batch_size=f.batch_size,
                    substitute_workdir=f.substitute_workdir,
                    gan_workdir=f.gan_workdir,
                    unrestricted_settings=f.unrestricted.to_dict(),
                    patch_settings=f.patch.to_dict(),
                    classifier_workdir=f.classifier_workdir,
                    num_samples=f.num_samples, num_real=f.num_real,
                    fid_weights=f.fid_weights, inception=f.inception)
  print(markdown)
  print(f"advjax: report written to {out}")


def _define_flags():
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_enum("mode", "robustness", ["robustness", "gan"],
                    "What to evaluate.")
  flags.DEFINE_string("workdir", None, "The checkpoint's work directory.")
  flags.DEFINE_string("out", None, "Report folder (default <workdir>/eval).")
  flags.DEFINE_list("eps", ["0.02", "0.05", "0.1"],
                    "Attack budgets in [-1, 1] pixel units.")
  flags.DEFINE_list("attacks", _default_attacks(),
                    "--mode=robustness: norm-bounded adversaries to run "
                    "(advjax.adversaries), a column each.")
  cli.define_config_dict(
      "attack", attack_flags(),
      "Settings of each adversary, --attack.<name>.<field>.")
  flags.DEFINE_integer("num_examples", 1000, "Test images to attack (<=0: all).")
  flags.DEFINE_integer("batch_size", 250, "Batch size of the attacks.")
  flags.DEFINE_string("substitute_workdir", None,
                      "Classifier to craft transfer attacks on.")
  flags.DEFINE_string("gan_workdir", None,
                      "--mode=robustness: AC-GAN for the unrestricted "
                      "(latent) attack; settings as "
                      "--attack.unrestricted.<field>.")
  cli.define_config_dict(
      "unrestricted", unrestricted_config(),
      "The unrestricted report's samples: --unrestricted.num_samples, "
      ".batch_size, .seed.")
  cli.define_config_dict(
      "patch", patch_config(),
      "--mode=robustness: adversarial patch settings; --patch.size=8 "
      "turns it on.")
  flags.DEFINE_string("classifier_workdir", None,
                      "--mode=gan: classifier for accuracy on samples and "
                      "classifier-feature FID.")
  flags.DEFINE_integer("num_samples", 50_000,
                       "--mode=gan: class-balanced samples for FID, IS and "
                       "the classifier metrics (published IS: 50,000).")
  flags.DEFINE_integer("num_real", 0,
                       "--mode=gan: training images FID compares with; "
                       "0: the whole training split (published FIDs).")
  flags.DEFINE_string("fid_weights", None,
                      "--mode=gan: pytorch-fid's InceptionV3 weights file.")
  flags.DEFINE_bool("inception", True,
                    "--mode=gan: compute Inception FID/IS (needs weights).")


def entry_point(argv: Sequence[str] | None = None):
  _define_flags()
  cli.run(main, argv, config_flag=None)


if __name__ == "__main__":
  entry_point()
