"""Unrestricted adversarial examples (Song et al. 2018) against a classifier,
searched in the latent space of a class-conditional AC-GAN: accuracy on the
clean samples and on the attacked ones, the success rate and how the GAN's
auxiliary classifier sees them."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from advjax import adversaries, attacks, inference
from advjax import settings as settings_lib
from advjax.errors import UserError
from advjax.evaluators import common
from advjax.metric_writers import image_grid


@dataclasses.dataclass(frozen=True)
class Settings:
  """The report's own settings (the latent attack's are the 'unrestricted'
  adversary's, `--attack.unrestricted.*`, held in `attack`): how many
  samples, in batches of how many (64, as Song et al.'s code: the attack's
  objective is a batch mean), drawn with which seed."""
  num_samples: int = 256
  batch_size: int = 64
  seed: int = 0
  attack: dict = dataclasses.field(default_factory=dict)


def report_fields() -> ml_collections.ConfigDict:
  """`--unrestricted.<field>`: the report's fields but the attack's."""
  block = settings_lib.to_block(Settings)
  del block["attack"]
  return block


def resolved(s: Settings) -> dict[str, Any]:
  """Every setting a result depends on, the attack's in full."""
  entry = adversaries.get("unrestricted")
  return {"num_samples": s.num_samples, "batch_size": s.batch_size,
          "seed": s.seed, "attack": dataclasses.asdict(
              entry.evaluation_settings(s.attack, "attack.unrestricted"))}


def unrestricted_config() -> ml_collections.ConfigDict:
  """The report's fields with their defaults (`Settings`, but the attack)."""
  return report_fields()


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
  r = settings_lib.from_block(Settings, report_settings, "unrestricted")
  common.same_dataset(classifier, gan)
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
  source = common.balanced_labels(n, k)
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


def grid_image(result: dict[str, Any]) -> dict[str, np.ndarray]:
  return {"unrestricted": result.pop("grid")}


@common.register("unrestricted", Settings, needs=("classifier", "gan"),
                 markdown=unrestricted_markdown, images=grid_image,
                 help="unrestricted adversarial examples from --gan_workdir "
                      "(--unrestricted.*, --attack.unrestricted.*)")
def run(s: Settings, inputs: common.Inputs) -> dict[str, Any]:
  result = unrestricted(inputs.classifier, inputs.gan, s.attack,
                        {"num_samples": s.num_samples,
                         "batch_size": s.batch_size, "seed": s.seed})
  result["provenance"] = common.provenance(
      resolved(s), classifier=inputs.classifier, gan=inputs.gan)
  return result
