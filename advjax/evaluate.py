"""Evaluating checkpoints: classifier robustness and GAN sample quality.

  python -m advjax.evaluate --mode=robustness --workdir=CLASSIFIER_DIR \
      [--eps=0.02,0.05,0.1] [--substitute_workdir=DIR] [--gan_workdir=DIR] \
      [--unrestricted.num_steps=500 --unrestricted.num_samples=256 ...] \
      [--patch.size=8 --patch.target=0 ...]
  python -m advjax.evaluate --mode=gan --workdir=GAN_DIR \
      [--classifier_workdir=DIR] [--fid_weights=PATH]

Each writes `<out>/<mode>.md` (a Markdown table), `<out>/<mode>.json` and PNG
images (clean above, adversarial below) to `--out` (default
`<workdir>/eval`), and prints the table.
"""

from __future__ import annotations

import functools
import json
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from advjax import attacks, checkpoints, fileio, input_pipeline
from advjax.errors import UserError, one_line_errors
from advjax.metric_writers import image_grid, save_png


def eval_data(restored: checkpoints.Restored, num_examples: int,
              batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """(images, labels) batches of the run's test split, first `num_examples`."""
  config = restored.config
  info = input_pipeline.get_dataset_info(config.dataset.name)
  source = input_pipeline.get_source(info.name, info.eval_split,
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


def robustness(classifier: checkpoints.Restored, *, eps_list: list[float],
               pgd_steps: int = 10, pgd_step_ratio: float = 0.25,
               num_examples: int = 1000, batch_size: int = 250,
               substitute: checkpoints.Restored | None = None,
               seed: int = 0) -> dict[str, Any]:
  """Clean, FGSM and PGD (L-inf) accuracy, and transfer error if asked.

  eps is in the pipeline's [-1, 1] units; PGD uses `pgd_steps` steps of
  `pgd_step_ratio * eps` with a random start (0 steps: no PGD).
  """
  if any(e < 0 for e in eps_list):
    raise UserError(f"eps must be >= 0, got {eps_list}")
  logits_fn = classifier.logits_fn()
  fgsm = jax.jit(functools.partial(attacks.fgsm, logits_fn),
                 static_argnames=())
  pgd = jax.jit(functools.partial(attacks.pgd, logits_fn),
                static_argnames=("num_steps", "norm"))
  sub_fgsm = None
  if substitute is not None:
    sub_fgsm = jax.jit(functools.partial(attacks.fgsm,
                                         substitute.logits_fn()))
  counts = {"n": 0, "clean": 0.0}
  per_eps = {e: {"fgsm": 0.0, "pgd": 0.0, "transfer": 0.0} for e in eps_list}
  examples = {}
  key = jax.random.key(seed)
  for b, (images, labels) in enumerate(eval_data(classifier, num_examples,
                                                 batch_size)):
    x, y = jnp.asarray(images), jnp.asarray(labels)
    n = len(labels)
    counts["n"] += n
    counts["clean"] += n * _accuracy(classifier.predict, x, y)
    for e in eps_list:
      x_fgsm = fgsm(x, y, e)
      per_eps[e]["fgsm"] += n * _accuracy(classifier.predict, x_fgsm, y)
      x_pgd = x_fgsm
      if pgd_steps > 0:
        x_pgd = pgd(x, y, jax.random.fold_in(key, b), eps=e,
                    step_size=pgd_step_ratio * e, num_steps=pgd_steps)
        per_eps[e]["pgd"] += n * _accuracy(classifier.predict, x_pgd, y)
      if sub_fgsm is not None:
        x_t = sub_fgsm(x, y, e)
        per_eps[e]["transfer"] += n * (
            1.0 - _accuracy(classifier.predict, x_t, y))
      if b == 0:
        examples[e] = (np.asarray(x[:8]), np.asarray(x_fgsm[:8]),
                       np.asarray(x_pgd[:8]))
  total = max(counts["n"], 1)
  rows = []
  for e in eps_list:
    row = {"eps": e, "fgsm_accuracy": per_eps[e]["fgsm"] / total}
    if pgd_steps > 0:
      row["pgd_accuracy"] = per_eps[e]["pgd"] / total
    if substitute is not None:
      row["transfer_error"] = per_eps[e]["transfer"] / total
    rows.append(row)
  return {"num_examples": counts["n"], "clean_accuracy": counts["clean"] / total,
          "pgd_steps": pgd_steps, "rows": rows, "examples": examples}


def robustness_markdown(result: dict[str, Any]) -> str:
  clean = result["clean_accuracy"]
  has_transfer = any("transfer_error" in r for r in result["rows"])
  has_pgd = result["pgd_steps"] > 0
  lines = [f"Clean accuracy: {100 * clean:.2f}% on {result['num_examples']} "
           f"test images (eps in [-1, 1] pixel units"
           + (f"; PGD: {result['pgd_steps']} steps, L-inf, random start)"
              if has_pgd else ")"), "",
           "| eps | FGSM accuracy | drop vs clean |"
           + (" PGD accuracy |" if has_pgd else "")
           + (" transfer error |" if has_transfer else ""),
           "| --- | --- | --- |" + (" --- |" if has_pgd else "")
           + (" --- |" if has_transfer else "")]
  for r in result["rows"]:
    line = (f"| {r['eps']:g} | {100 * r['fgsm_accuracy']:.2f}% | "
            f"{100 * (clean - r['fgsm_accuracy']):.2f} points |")
    if has_pgd:
      line += f" {100 * r['pgd_accuracy']:.2f}% |"
    if has_transfer:
      line += f" {100 * r['transfer_error']:.2f}% |"
    lines.append(line)
  return "\n".join(lines) + "\n"


def unrestricted_config() -> ml_collections.ConfigDict:
  """Latent-attack settings of the report; defaults are the study's.

  Song et al. 2018 as used by the study: lambda_z = lambda_aux = 0.1,
  eps_z = 0.1, learning rate 0.1, 500 steps with Langevin noise; pixel noise
  (x = clip(G(z) + noise_eps * tanh(tau))) off unless `noise` is set, with
  the study's noise_eps = 0.1.
  """
  return ml_collections.ConfigDict(dict(
      num_samples=256, num_steps=500, learning_rate=0.1, eps_z=0.1,
      lambda_z=0.1, lambda_aux=0.1, noise=False, noise_eps=0.1,
      langevin=True, targeted=False, seed=0, batch_size=256))


def unrestricted(classifier: checkpoints.Restored, gan: checkpoints.Restored,
                 settings: ml_collections.ConfigDict | None = None
                 ) -> dict[str, Any]:
  """Unrestricted adversarial examples against `classifier` from an AC-GAN.

  Draws `num_samples` latent vectors with balanced source classes, runs
  `attacks.unrestricted_attack` (targeted at a random other class if
  `targeted`) and reports the classifier's accuracy on the clean samples
  G(z0, y_s) and on the attacked ones, how often the GAN's auxiliary
  classifier still says y_s, the success rate (both at once) and the mean
  iteration of first success.
  """
  s = unrestricted_config()
  if settings is not None:
    s.update(dict(settings))
  classifier._require("classifier")  # pylint: disable=protected-access
  gan._require("gan")  # pylint: disable=protected-access
  if classifier.config.dataset.name != gan.config.dataset.name:
    raise UserError(f"the classifier was trained on "
                    f"{classifier.config.dataset.name}, the GAN on "
                    f"{gan.config.dataset.name}")
  if not gan.num_classes:
    raise UserError(f"the GAN in {gan.workdir} is unconditional; the latent "
                    f"attack needs a class-conditional AC-GAN")
  if int(s.num_samples) <= 0 or int(s.batch_size) <= 0:
    raise UserError("unrestricted.num_samples and .batch_size must be > 0")
  aux_logits_fn = gan.aux_logits_fn()
  generate_fn = gan.generate_fn(ema=True)
  logits_fn = classifier.logits_fn()
  k = gan.num_classes
  n = int(s.num_samples)
  key = jax.random.key(int(s.seed))
  source = (np.arange(n) % k).astype(np.int32)
  z0_all = jax.random.normal(jax.random.fold_in(key, 0),
                             (n, int(gan.config.model.latent_dim)))
  target_all = None
  if s.targeted:
    shift = jax.random.randint(jax.random.fold_in(key, 1), (n,), 1, k)
    target_all = np.asarray((source + shift) % k, np.int32)
  parts = []
  for b, i in enumerate(range(0, n, int(s.batch_size))):
    sl = slice(i, i + int(s.batch_size))
    z0, ys = z0_all[sl], jnp.asarray(source[sl])
    out = attacks.unrestricted_attack(
        generate_fn, aux_logits_fn, logits_fn, z0, ys,
        jax.random.fold_in(key, 2 + b),
        target_labels=None if target_all is None else target_all[sl],
        num_steps=int(s.num_steps), learning_rate=float(s.learning_rate),
        eps_z=float(s.eps_z), lambda_z=float(s.lambda_z),
        lambda_aux=float(s.lambda_aux),
        noise_eps=float(s.noise_eps) if s.noise else 0.0,
        langevin=bool(s.langevin))
    clean = generate_fn(z0, ys)
    parts.append({
        "clean": np.asarray(clean), "adv": np.asarray(out["images"]),
        "clean_pred": np.asarray(jnp.argmax(logits_fn(clean), -1)),
        "adv_pred": np.asarray(jnp.argmax(logits_fn(out["images"]), -1)),
        "clean_aux": np.asarray(jnp.argmax(aux_logits_fn(clean), -1)),
        "adv_aux": np.asarray(jnp.argmax(aux_logits_fn(out["images"]), -1)),
        "success": np.asarray(out["success"]),
        "first": np.asarray(out["first_success"]),
        "dz": np.asarray(jnp.sqrt(jnp.mean(jnp.square(out["z"] - z0), -1))),
    })
  cat = {key_: np.concatenate([p[key_] for p in parts]) for key_ in parts[0]}
  first = cat["first"][cat["success"]]
  order = np.arange(min(n, k, 10))  # one sample per class: 0, 1, ...
  result = {
      "num_samples": n, "num_steps": int(s.num_steps),
      "targeted": bool(s.targeted),
      "settings": {k_: (v.item() if hasattr(v, "item") else v)
                   for k_, v in s.items()},
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


def patch(classifier: checkpoints.Restored,
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
      positions = attacks._random_positions(  # pylint: disable=protected-access
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
  """Per eps: clean row above, FGSM below, PGD at the bottom."""
  out = {}
  for e, (clean, x_fgsm, x_pgd) in examples.items():
    stacked = np.concatenate([clean, x_fgsm, x_pgd])
    out[f"robustness_eps{e:g}"] = image_grid(stacked, rows=3)
  return out


def gan_metrics(gan: checkpoints.Restored,
                classifier: checkpoints.Restored | None = None, *,
                samples_per_class: int = 100, num_real: int = 2000,
                fid_weights: str | None = None, inception: bool = True,
                seed: int = 0, batch_size: int = 250) -> dict[str, Any]:
  """Sample-quality numbers of a GAN checkpoint.

  - classifier accuracy on class-conditional samples (how often `classifier`
    gives the conditioning class; the study reports 89% for its DenseNet);
  - classifier FID: FID in the feature space of `classifier` between test
    images and samples (offline; not comparable with Inception FID);
  - Inception FID and Inception Score with pytorch-fid's weights, when they
    can be found (else the reason is reported).
  """
  from advjax import fid  # pylint: disable=g-import-not-at-top
  num_classes = gan.num_classes
  classes = max(num_classes, 1)
  labels = np.repeat(np.arange(classes), samples_per_class).astype(np.int32)
  z = jax.random.normal(jax.random.key(seed),
                        (len(labels), int(gan.config.model.latent_dim)))
  fakes = np.concatenate([
      np.asarray(gan.generate(z[i:i + batch_size],
                              labels[i:i + batch_size] if num_classes
                              else None))
      for i in range(0, len(labels), batch_size)])
  result: dict[str, Any] = {"num_samples": int(len(fakes))}
  if classifier is not None:
    classifier._require("classifier")  # pylint: disable=protected-access
    if classifier.config.dataset.name != gan.config.dataset.name:
      raise UserError(f"the classifier was trained on "
                      f"{classifier.config.dataset.name}, the GAN on "
                      f"{gan.config.dataset.name}")
    preds = np.concatenate([classifier.predict(fakes[i:i + batch_size])
                            for i in range(0, len(fakes), batch_size)])
    if num_classes:
      result["classifier_accuracy_on_samples"] = float(np.mean(preds ==
                                                               labels))
    reals = np.concatenate([x for x, _ in eval_data(classifier, num_real,
                                                    batch_size)])
    model, variables = classifier.model, classifier.variables
    extractor = fid.FeatureExtractor(
        lambda v, x: model.apply(v, x, train=False, return_features=True)[1],
        variables, batch_size=batch_size)
    result["classifier_fid"] = fid.classifier_fid(extractor(reals),
                                                  extractor(fakes))
  if inception:
    try:
      extractor = fid.FeatureExtractor(weights_path=fid_weights,
                                       batch_size=50)
    except UserError as e:
      result["inception"] = f"not computed: {e}"
    else:
      info = input_pipeline.get_dataset_info(gan.config.dataset.name)
      source = input_pipeline.get_source(
          info.name, info.eval_split, gan.config.dataset.get("data_dir") or None)
      reals = np.concatenate([
          b["image"][b["mask"] > 0] for b in input_pipeline.eval_batches(
              source, global_batch_size=batch_size, process_index=0,
              process_count=1)])[:num_real]
      real_pool, _ = extractor(reals)
      fake_pool, fake_logits = extractor(fakes)
      result["inception_fid"] = fid.fid_from_features(real_pool, fake_pool)
      result["inception_score"] = fid.inception_score(fake_logits)[0]
  grid_rows = min(classes, 10)
  per_row = min(samples_per_class, 10)
  picks = np.concatenate([np.arange(r * samples_per_class,
                                    r * samples_per_class + per_row)
                          for r in range(grid_rows)])
  result["grid"] = image_grid(fakes[picks], rows=grid_rows)
  return result


def gan_markdown(result: dict[str, Any]) -> str:
  rows = [("samples", f"{result['num_samples']}")]
  if "classifier_accuracy_on_samples" in result:
    rows.append(("classifier accuracy on class-conditional samples",
                 f"{100 * result['classifier_accuracy_on_samples']:.2f}%"))
  if "classifier_fid" in result:
    rows.append(("FID in the classifier's feature space (not Inception FID)",
                 f"{result['classifier_fid']:.3f}"))
  if "inception_fid" in result:
    rows.append(("Inception FID", f"{result['inception_fid']:.2f}"))
    rows.append(("Inception Score", f"{result['inception_score']:.2f}"))
  elif "inception" in result:
    rows.append(("Inception FID / IS", result["inception"]))
  return "\n".join(["| metric | value |", "| --- | --- |"]
                   + [f"| {k} | {v} |" for k, v in rows]) + "\n"


def report(mode: str, workdir: str, out: str | None = None, *,
           eps: tuple[float, ...] = (0.02, 0.05, 0.1), pgd_steps: int = 10,
           num_examples: int = 1000, batch_size: int = 250,
           substitute_workdir: str | None = None,
           gan_workdir: str | None = None,
           unrestricted_settings: ml_collections.ConfigDict | None = None,
           patch_settings: ml_collections.ConfigDict | None = None,
           classifier_workdir: str | None = None,
           samples_per_class: int = 100, fid_weights: str | None = None,
           inception: bool = True) -> str:
  """Writes the `mode` report of `workdir` to `out`; returns its Markdown."""
  out = out or fileio.join(workdir, "eval")
  if mode == "robustness":
    classifier = checkpoints.restore(workdir)
    classifier._require("classifier")  # pylint: disable=protected-access
    substitute = (checkpoints.restore(substitute_workdir)
                  if substitute_workdir else None)
    result = robustness(classifier, eps_list=[float(e) for e in eps],
                        pgd_steps=pgd_steps, num_examples=num_examples,
                        batch_size=batch_size, substitute=substitute)
    markdown = robustness_markdown(result)
    images = _example_images(result.pop("examples"))
    if gan_workdir:
      latent = unrestricted(classifier, checkpoints.restore(gan_workdir),
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
    gan = checkpoints.restore(workdir)
    gan._require("gan")  # pylint: disable=protected-access
    classifier = (checkpoints.restore(classifier_workdir)
                  if classifier_workdir else None)
    result = gan_metrics(gan, classifier, samples_per_class=samples_per_class,
                         fid_weights=fid_weights, inception=inception)
    markdown = gan_markdown(result)
    images = {"gan_samples": result.pop("grid")}
  else:
    raise UserError(f"--mode must be 'robustness' or 'gan', not '{mode}'")
  write_report(out, mode, markdown, result, images)
  return markdown


def main(argv):
  from absl import flags  # pylint: disable=g-import-not-at-top
  f = flags.FLAGS
  if len(argv) > 1:
    raise UserError(f"unexpected arguments: {' '.join(argv[1:])}")
  if not f.workdir:
    raise UserError("--workdir is required")
  out = f.out or fileio.join(f.workdir, "eval")
  markdown = report(f.mode, f.workdir, out, eps=tuple(f.eps),
                    pgd_steps=f.pgd_steps, num_examples=f.num_examples,
                    batch_size=f.batch_size,
                    substitute_workdir=f.substitute_workdir,
                    gan_workdir=f.gan_workdir,
                    unrestricted_settings=f.unrestricted,
                    patch_settings=f.patch,
                    classifier_workdir=f.classifier_workdir,
                    samples_per_class=f.samples_per_class,
                    fid_weights=f.fid_weights, inception=f.inception)
  print(markdown)
  print(f"advjax: report written to {out}")


def _define_flags():
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_enum("mode", "robustness", ["robustness", "gan"],
                    "What to evaluate.")
  flags.DEFINE_string("workdir", None, "The checkpoint's work directory.")
  flags.DEFINE_string("out", None, "Report folder (default <workdir>/eval).")
  flags.DEFINE_list("eps", ["0.02", "0.05", "0.1"],
                    "Attack budgets in [-1, 1] pixel units.")
  flags.DEFINE_integer("pgd_steps", 10, "PGD iterations.")
  flags.DEFINE_integer("num_examples", 1000, "Test images to attack (<=0: all).")
  flags.DEFINE_integer("batch_size", 250, "Batch size of the attacks.")
  flags.DEFINE_string("substitute_workdir", None,
                      "Classifier to craft transfer attacks on.")
  flags.DEFINE_string("gan_workdir", None,
                      "--mode=robustness: AC-GAN for the unrestricted "
                      "(latent) attack; settings as --unrestricted.<key>.")
  config_flags.DEFINE_config_dict("unrestricted", unrestricted_config(),
                                  "Latent-attack settings.")
  config_flags.DEFINE_config_dict(
      "patch", patch_config(),
      "--mode=robustness: adversarial patch settings; --patch.size=8 "
      "turns it on.")
  flags.DEFINE_string("classifier_workdir", None,
                      "--mode=gan: classifier for accuracy on samples and "
                      "classifier-feature FID.")
  flags.DEFINE_integer("samples_per_class", 100, "--mode=gan: samples.")
  flags.DEFINE_string("fid_weights", None,
                      "--mode=gan: pytorch-fid's InceptionV3 weights file.")
  flags.DEFINE_bool("inception", True,
                    "--mode=gan: compute Inception FID/IS (needs weights).")


def entry_point():
  from absl import app  # pylint: disable=g-import-not-at-top
  _define_flags()
  app.run(one_line_errors(main))


if __name__ == "__main__":
  entry_point()
