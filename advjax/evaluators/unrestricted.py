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
  objective is a batch mean), drawn with which seed; `preset` ('seed' or
  'song', `attacks.LATENT_PRESETS`) puts a reference's settings under the
  `attack` fields ('' : the adversary's evaluation defaults, the seed's)."""
  num_samples: int = 256
  batch_size: int = 64
  seed: int = 0
  preset: str = ""
  attack: dict = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    if self.preset:
      settings_lib.check_choice(self, "preset",
                                tuple(attacks.LATENT_PRESETS))


def report_fields() -> ml_collections.ConfigDict:
  """`--unrestricted.<field>`: the report's fields but the attack's."""
  block = settings_lib.to_block(Settings)
  del block["attack"]
  return block


def attack_settings(s: Settings) -> adversaries.UnrestrictedSettings:
  """The latent attack of report `s`: its preset's values (if any), then
  `s.attack`, over the adversary's evaluation defaults."""
  block = dict(adversaries.unrestricted_preset(s.preset) if s.preset else {})
  block.update(settings_lib.plain(s.attack))
  return adversaries.get("unrestricted").evaluation_settings(
      block, "attack.unrestricted")


def resolved(s: Settings) -> dict[str, Any]:
  """Every setting a result depends on, the attack's in full."""
  return {"num_samples": s.num_samples, "batch_size": s.batch_size,
          "seed": s.seed, "preset": s.preset,
          "attack": dataclasses.asdict(attack_settings(s))}


def unrestricted_config() -> ml_collections.ConfigDict:
  """The report's fields with their defaults (`Settings`, but the attack)."""
  return report_fields()


def _figures(out: dict[str, np.ndarray], source: np.ndarray,
             eps_z: float) -> dict[str, Any]:
  """What one search (the attack or the baseline) did, from its per-example
  arrays: accuracy over all samples, success over the attacked ones, and how
  far the attacked ones moved (latent RMS per dimension, the share within
  eps_z by that measure, pixel RMS and L-inf distance from G(z0, y_s))."""
  attacked = out["attacked"]
  n_att = int(attacked.sum())
  mean_att = lambda v: float(np.mean(v[attacked])) if n_att else None
  first = out["first"][out["success"]]
  return {
      "classifier_accuracy_attacked_samples": float(
          np.mean(out["adv_pred"] == source)),
      "aux_keeps_source_attacked": float(np.mean(out["adv_aux"] == source)),
      "successes": int(out["success"].sum()),
      "success_rate": (float(out["success"].sum()) / n_att if n_att
                       else 0.0),
      "mean_first_success_step": (float(np.mean(first)) if first.size
                                  else None),
      "latent_rms_displacement": mean_att(out["dz"]),
      "within_eps_z": mean_att(out["dz"] <= eps_z),
      "pixel_rms_distance": mean_att(out["dx_rms"]),
      "pixel_linf_distance": mean_att(out["dx_inf"]),
  }


def unrestricted(classifier: inference.Classifier, gan: inference.GAN,
                 attack: Any = None,
                 report_settings: Mapping[str, Any] | None = None
                 ) -> dict[str, Any]:
  """Unrestricted adversarial examples against `classifier` from an AC-GAN.

  Draws `num_samples` latent vectors with balanced source classes and runs
  `attacks.unrestricted_attack` with the 'unrestricted' adversary's settings
  (`attack`: its settings or a block of fields over its evaluation defaults;
  targeted at a random other class if `targeted`), and the random-search
  baseline with the same settings, latents and noise keys (the classifier
  and auxiliary gradients switched off).

  The protocol: a sample is attacked only if the classifier and the GAN's
  auxiliary classifier both give its source class on G(z0, y_s)
  (`num_attacked`); `success_rate` is the share of the attacked samples
  whose returned image fools the classifier while the auxiliary classifier
  keeps y_s; accuracy on the unrestricted examples is over all samples
  (the ones not attacked keep G(z0, y_s), so those the classifier got wrong
  count as wrong). Displacements are means over the attacked samples. The
  same figures for the baseline are under 'baseline'.
  """
  for run, handle in ((classifier, inference.Classifier),
                      (gan, inference.GAN)):
    if not isinstance(run, handle):
      raise UserError(f"checkpoint in {run.workdir} was written by the "
                      f"'{run.trainer}' trainer, not a {handle.kind}")
  r = settings_lib.from_block(Settings, report_settings, "unrestricted")
  entry = adversaries.get("unrestricted")
  if isinstance(attack, entry.settings):
    s = attack
  else:
    s = attack_settings(dataclasses.replace(r, attack=dict(
        settings_lib.plain(attack))))
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
  parts = {"attack": [], "baseline": []}
  clean_parts = []
  for b, i in enumerate(range(0, n, int(r.batch_size))):
    sl = slice(i, i + int(r.batch_size))
    z0, ys = z0_all[sl], jnp.asarray(source[sl])
    clean = generate_fn(z0, ys)
    clean_parts.append({
        "clean": np.asarray(clean),
        "clean_pred": np.asarray(jnp.argmax(logits_fn(clean), -1)),
        "clean_aux": np.asarray(jnp.argmax(aux_logits_fn(clean), -1))})
    for name in parts:
      out = attacks.unrestricted_attack(
          generate_fn, aux_logits_fn, logits_fn, z0, ys,
          jax.random.fold_in(key, 2 + b),
          target_labels=None if target_all is None else target_all[sl],
          num_steps=s.num_steps, learning_rate=s.learning_rate,
          eps_z=s.eps_z, lambda_z=s.lambda_z, lambda_aux=s.lambda_aux,
          noise_eps=s.noise_eps, langevin=s.langevin, iterate=s.iterate,
          baseline=name == "baseline")
      diff = (out["images"] - clean).reshape(clean.shape[0], -1)
      parts[name].append({
          "adv": np.asarray(out["images"]),
          "adv_pred": np.asarray(jnp.argmax(logits_fn(out["images"]), -1)),
          "adv_aux": np.asarray(jnp.argmax(aux_logits_fn(out["generated"]),
                                           -1)),
          "attacked": np.asarray(out["attacked"]),
          "success": np.asarray(out["success"]),
          "first": np.asarray(out["first_success"]),
          "dz": np.asarray(jnp.sqrt(jnp.mean(jnp.square(out["z"] - z0),
                                             -1))),
          "dx_rms": np.asarray(jnp.sqrt(jnp.mean(jnp.square(diff), -1))),
          "dx_inf": np.asarray(jnp.max(jnp.abs(diff), -1)),
      })
  cat = lambda ps: {k_: np.concatenate([p[k_] for p in ps]) for k_ in ps[0]}
  clean = cat(clean_parts)
  found = {name: cat(ps) for name, ps in parts.items()}
  att = found["attack"]
  order = np.arange(min(n, k, 10))  # one sample per class: 0, 1, ...
  result = {
      "num_samples": n, "num_steps": s.num_steps, "targeted": s.targeted,
      "iterate": s.iterate, "preset": adversaries.matching_preset(s),
      "settings": dataclasses.asdict(s),
      "num_attacked": int(att["attacked"].sum()),
      "classifier_accuracy_clean_samples": float(
          np.mean(clean["clean_pred"] == source)),
      "aux_keeps_source_clean": float(np.mean(clean["clean_aux"] == source)),
      **_figures(att, source, s.eps_z),
      "baseline": _figures(found["baseline"], source, s.eps_z),
  }
  if target_all is not None:
    result["target_hit_rate"] = float(np.mean(att["adv_pred"] == target_all))
  # G(z0, y_s) on top, the attack's example below it, the baseline's last.
  result["grid"] = image_grid(np.concatenate(
      [clean["clean"][order], att["adv"][order],
       found["baseline"]["adv"][order]]), rows=3)
  return result


def unrestricted_markdown(result: dict[str, Any]) -> str:
  pct = lambda v: "-" if v is None else f"{100 * v:.2f}%"
  num = lambda v, f: "-" if v is None else f"{v:{f}}"
  kind = "targeted" if result["targeted"] else "untargeted"
  base = result["baseline"]
  both = lambda key, fmt: (f"{fmt(result[key])} / {fmt(base[key])}")
  eps_z = result["settings"]["eps_z"]
  rows = [
      ("classifier accuracy on clean AC-GAN samples",
       pct(result["classifier_accuracy_clean_samples"])),
      ("attacked (classifier and auxiliary classifier right at z0)",
       f"{result['num_attacked']} of {result['num_samples']}"),
      ("attack success rate among the attacked (attack / baseline)",
       both("success_rate", pct)),
      ("classifier accuracy on unrestricted examples, all samples "
       "(attack / baseline)", both("classifier_accuracy_attacked_samples",
                                   pct)),
      ("auxiliary classifier keeps the source class (clean / attack / "
       "baseline)",
       f"{pct(result['aux_keeps_source_clean'])} / "
       f"{pct(result['aux_keeps_source_attacked'])} / "
       f"{pct(base['aux_keeps_source_attacked'])}"),
  ]
  if "target_hit_rate" in result:
    rows.append(("classifier predicts the target class",
                 pct(result["target_hit_rate"])))
  rows += [
      ("mean iteration of first success (attack / baseline)",
       both("mean_first_success_step", lambda v: num(v, ".1f"))),
      ("RMS latent displacement per dimension (attack / baseline)",
       both("latent_rms_displacement", lambda v: num(v, ".3f"))),
      (f"share within eps_z = {eps_z:g} (RMS per dimension; attack / "
       f"baseline)", both("within_eps_z", pct)),
      ("RMS pixel distance from G(z0) (attack / baseline)",
       both("pixel_rms_distance", lambda v: num(v, ".3f"))),
      ("L-inf pixel distance from G(z0) (attack / baseline)",
       both("pixel_linf_distance", lambda v: num(v, ".3f"))),
  ]
  preset = result.get("preset")
  source = {"seed": "the seed study's code", "song": "Song et al.'s code"}
  head = (f"Unrestricted adversarial examples ({kind} latent attack, "
          f"Song et al. 2018): {result['num_samples']} samples, "
          f"{result['num_steps']} steps, the {result['iterate']} iterate "
          f"judged; settings "
          + (f"of {source.get(preset, preset)}" if preset else "custom")
          + "; baseline: the same search without the classifier's and the "
          "auxiliary classifier's gradients")
  return "\n".join([head, "", "| metric | value |", "| --- | --- |"]
                   + [f"| {k} | {v} |" for k, v in rows]) + "\n"


def grid_image(result: dict[str, Any]) -> dict[str, np.ndarray]:
  return {"unrestricted": result.pop("grid")}


@common.register("unrestricted", Settings, needs=("classifier", "gan"),
                 markdown=unrestricted_markdown, images=grid_image,
                 help="unrestricted adversarial examples from --gan_workdir "
                      "(--unrestricted.*, --attack.unrestricted.*)")
def run(s: Settings, inputs: common.Inputs) -> dict[str, Any]:
  result = unrestricted(inputs.classifier, inputs.gan, attack_settings(s),
                        {"num_samples": s.num_samples,
                         "batch_size": s.batch_size, "seed": s.seed,
                         "preset": s.preset})
  result["provenance"] = common.provenance(
      resolved(s), classifier=inputs.classifier, gan=inputs.gan)
  return result
