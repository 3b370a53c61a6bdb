"""Robustness: clean accuracy and accuracy under each norm-bounded adversary
of `advjax.adversaries` at each eps, with AutoAttack's per-stage counts, the
signs of gradient masking, and the transfer error of FGSM examples crafted on
a substitute (through `attacks.transfer_attack`)."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from advjax import adversaries, attacks, inference
from advjax.errors import UserError
from advjax.evaluators import common
from advjax.evaluators.common import accuracy as _accuracy
from advjax.evaluators.common import eval_data
from advjax.metric_writers import image_grid


@dataclasses.dataclass(frozen=True)
class Settings:
  """eps: budgets in [-1, 1] pixel units, a row each; attacks: norm-bounded
  adversaries, a column each (empty: all); attack: {name: {field: value}}
  over each adversary's evaluation settings (`--attack.<name>.<field>`);
  num_examples: first test images (<= 0: all); seed: of random starts;
  bounds: (low, high), the classifier's valid input range, which every
  attack keeps its images in, in whose units eps is (the library's (-1, 1);
  (0, 1) for a model on [0, 1] images, see `evaluate.report_model`)."""
  eps: tuple = (0.02, 0.05, 0.1)
  attacks: tuple = ()
  attack: dict = dataclasses.field(default_factory=dict)
  num_examples: int = 1000
  batch_size: int = 250
  seed: int = 0
  bounds: tuple = (-1.0, 1.0)

  def __post_init__(self):
    if self.batch_size <= 0:
      raise UserError(f"batch_size must be > 0, got {self.batch_size}")
    if len(self.bounds) != 2 or not float(self.bounds[0]) < float(
        self.bounds[1]):
      raise UserError(f"bounds must be (low, high) with low < high, got "
                      f"{tuple(self.bounds)}")

  def names(self) -> list[str]:
    return list(self.attacks) or default_attacks()


def resolved(s: Settings) -> dict[str, Any]:
  """Every setting a result depends on, with each adversary's evaluation
  settings in full (eps is the row's)."""
  return {"eps": [float(e) for e in s.eps], "attacks": s.names(),
          "num_examples": s.num_examples, "batch_size": s.batch_size,
          "seed": s.seed, "bounds": [float(b) for b in s.bounds],
          "attack": {n: attack_settings(n, s.attack.get(n))
                     for n in s.names()}}


def attack_settings(name: str, block: Any = None,
                    eps: float | None = None) -> dict[str, Any]:
  """Adversary `name`'s evaluation settings with `block` on top, as JSON
  (with eps only when given)."""
  entry = adversaries.get(name)
  values = dataclasses.asdict(entry.evaluation_settings(
      block, f"attack.{name}", eps=eps))
  if eps is None:
    values.pop("eps", None)
  return values


def default_attacks() -> list[str]:
  """The adversaries a report runs unless told otherwise: the norm-bounded
  ones registered `reported` (FGSM, PGD, AutoAttack and any added one)."""
  return [n for n, a in adversaries.ADVERSARIES.items() if a.reported]


def attackable() -> list[str]:
  """Every adversary `attacks` may name: the norm-bounded ones."""
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
               seed: int = 0,
               bounds: tuple[float, float] = (-1., 1.)) -> dict[str, Any]:
  """Clean accuracy, accuracy under each attack at each eps, and transfer
  error if asked.

  `attack_names` are norm-bounded adversaries of `advjax.adversaries`
  (default: all); `attack_settings[name]` overrides fields of that
  adversary's evaluation settings (eps comes from `eps_list`, in the units
  of `bounds`, the valid input range: the pipeline's [-1, 1] by default).
  The transfer error is that of FGSM examples crafted on `substitute`
  (Papernot et al. 2017).
  """
  names = list(attack_names if attack_names is not None
               else default_attacks())
  entries = [adversaries.get(n) for n in names]
  for entry in entries:
    if not entry.norm_bounded:
      raise UserError(f"attack '{entry.name}' has no eps; the robustness "
                      f"table takes norm-bounded attacks "
                      f"{attackable()}")
  if any(not np.isfinite(e) or e < 0 for e in eps_list):
    raise UserError(f"eps must be finite and >= 0, got {list(eps_list)}")
  attack_settings = dict(attack_settings or {})
  bounds = (float(bounds[0]), float(bounds[1]))
  target = adversaries.Target(classifier.logits_fn(), bounds=bounds)
  crafted = {}
  for e in eps_list:
    for entry in entries:
      settings = entry.evaluation_settings(attack_settings.get(entry.name),
                                           f"attack.{entry.name}", eps=e)
      crafted[(e, entry.name)] = (settings,
                                  _compiled_attack(entry, settings, target))
  substitute_logits = (substitute.logits_fn() if substitute is not None
                       else None)
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
      if substitute_logits is not None:
        transfer[e] += n * float(attacks.transfer_attack(
            attacks.fgsm, substitute_logits, classifier.predict, x, y,
            eps=e, bounds=bounds)["target_error_adv"])
      if b == 0:
        # Shown in the library's [-1, 1] (what the image writer takes).
        examples[e] = [(2 * (v - bounds[0]) / (bounds[1] - bounds[0]) - 1)
                       for v in shown]
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
          "settings": used, "rows": rows, "examples": examples,
          "bounds": list(bounds)}


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
  low, high = result.get("bounds", (-1., 1.))
  lines = [f"Clean accuracy: {100 * clean:.2f}% on {result['num_examples']} "
           f"test images (eps in [{low:g}, {high:g}] pixel units"
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


def example_images(result: dict[str, Any]) -> dict[str, np.ndarray]:
  """Per eps: the clean row on top, then one row per attack (popped)."""
  return {f"robustness_eps{e:g}": image_grid(np.concatenate(rows),
                                             rows=len(rows))
          for e, rows in result.pop("examples", {}).items()}


@common.register("robustness", Settings, markdown=robustness_markdown,
                 images=example_images,
                 help="clean accuracy and accuracy under each attack at "
                      "each eps (--eps, --attacks, --attack.<name>.*)")
def run(s: Settings, inputs: common.Inputs) -> dict[str, Any]:
  result = robustness(inputs.classifier, eps_list=[float(e) for e in s.eps],
                      attack_names=s.names(), attack_settings=s.attack,
                      num_examples=s.num_examples, batch_size=s.batch_size,
                      substitute=inputs.substitute, seed=s.seed,
                      bounds=tuple(s.bounds))
  result["provenance"] = common.provenance(
      resolved(s), classifier=inputs.classifier, substitute=inputs.substitute)
  return result
