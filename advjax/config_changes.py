"""The config is part of a run: what may change when a run is resumed.

A checkpoint's meta holds the config the run was started with. On resume,
`compare_configs(saved, new)` splits the differences into

  accepted: fields that only extend or observe the run (its length, how
    often it logs, evaluates and checkpoints, what evaluation measures, where
    the dataset is read from): those whose settings dataclass marks them
    `settings.extends_run(default, reason)` (`extending_fields()` lists them
    by path; every trainer's blocks are known once `advjax.trainers` is
    imported); the loop lists them and goes on;
  refused: every other change (model, optimiser, data, batch size, loss,
    seed, ...); the loop stops with `refused_message`, one line naming the
    fields and the two ways forward: a new --workdir, or `ALLOW_FLAG`, which
    accepts the change when the saved state's structure still fits.

Decisions:
  seed is refused: it fixes the data order, dropout and every other random
    draw, so a run resumed under another seed is neither the old run nor the
    new one. `ALLOW_FLAG` accepts it (the state does not depend on it).
  checkpoint.best_metric and checkpoint.best_mode are refused: retention
    keeps the best checkpoint by them, so a change makes the next save delete
    the checkpoint that was best so far (those saved before carry no value of
    a new metric). `ALLOW_FLAG` accepts them.
  num_train_steps / num_epochs are accepted both ways. A schedule over the
    run's length (cosine, linear, piecewise) is stretched or shrunk from the
    resumed step on; a new length at or below the saved step leaves nothing
    to train.
  checkpoint.keep is accepted both ways; a smaller value deletes old
    checkpoints at the next save, as asked.
  A field present in only one of the configs (a config written by an older
  advjax, or an override of a field the file lacks) counts as a change from
  or to `<absent>`, except where the other config holds that field's default
  (a field a newer advjax added to a block, at its default, is no change).
  A field that neither run reads is no change either: a module that knows
  which blocks a run uses registers `register_unused(predicate)` (e.g. the
  settings of an adversary other than the run's training mode), so a new
  default of an adversary does not stop runs of every other mode.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Callable

from advjax import settings

ALLOW_FLAG = "--allow_config_change"

class _Absent:
  """A field missing from one of the two configs."""

  def __repr__(self) -> str:
    return "<absent>"


ABSENT = _Absent()


@dataclasses.dataclass(frozen=True)
class ConfigChange:
  """One field that differs: `old` in the saved config, `new` now."""
  field: str
  old: Any
  new: Any

  def describe(self, width: int = 40) -> str:
    return f"{self.field} ({_short(self.old, width)} -> {_short(self.new, width)})"


def _short(value: Any, width: int) -> str:
  text = repr(value) if value is ABSENT else json.dumps(value, default=str)
  return text if len(text) <= width else text[:width - 3] + "..."


def _plain(value: Any) -> Any:
  """JSON's view of a value: tuples become lists, mappings dicts."""
  if isinstance(value, dict) or hasattr(value, "items"):
    return {str(k): _plain(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_plain(v) for v in value]
  return value


# predicate(flat config, dotted field) -> True when that run never reads it.
_UNUSED: list[Callable[[dict[str, Any], str], bool]] = []


def register_unused(predicate: Callable[[dict[str, Any], str], bool]
                    ) -> Callable[[dict[str, Any], str], bool]:
  """Adds `predicate(flat_config, field)`: True when a run with that
  (flattened) config does not read `field`. Decorator."""
  _UNUSED.append(predicate)
  return predicate


def _unused(flat: dict[str, Any], field: str) -> bool:
  return any(p(flat, field) for p in _UNUSED)


def flatten(config: Any, prefix: str = "") -> dict[str, Any]:
  """{'a.b.c': leaf} of a nested dict or ConfigDict (empty dicts are leaves)."""
  out: dict[str, Any] = {}
  for key, value in _plain(config).items():
    name = f"{prefix}{key}"
    if isinstance(value, dict) and value:
      out.update(flatten(value, name + "."))
    else:
      out[name] = value
  return out


def extending_fields() -> dict[str, str]:
  """{dotted field: reason} of every field whose change only extends or
  observes a run (the `extends_run` metadata of the settings dataclasses)."""
  return settings.extending_fields()


def is_extending(field: str) -> bool:
  """Whether a change of `field` only extends or observes the run (a field
  inside an extending one, e.g. `eval.evaluators.<name>.<field>`, too)."""
  fields = settings.extending_fields()
  parts = field.split(".")
  return any(".".join(parts[:i]) in fields for i in range(1, len(parts) + 1))


def diff_configs(saved: Any, new: Any) -> list[ConfigChange]:
  """Every field whose value differs, sorted by name."""
  a, b = flatten(saved), flatten(new)
  defaults = _plain(settings.registered_defaults())
  changes = []
  for field in sorted(set(a) | set(b)):
    old, now = a.get(field, ABSENT), b.get(field, ABSENT)
    if ABSENT in (old, now) and field in defaults and (
        (now if old is ABSENT else old) == defaults[field]):
      continue
    if _unused(a, field) and _unused(b, field):
      continue
    if old != now:
      changes.append(ConfigChange(field, old, now))
  return changes


def compare_configs(saved: Any, new: Any
                    ) -> tuple[list[ConfigChange], list[ConfigChange]]:
  """(accepted, refused) changes from `saved` to `new` (dicts or
  ConfigDicts; tuples and lists compare equal, as JSON stores both)."""
  changes = diff_configs(saved, new)
  accepted = [c for c in changes if is_extending(c.field)]
  refused = [c for c in changes if not is_extending(c.field)]
  return accepted, refused


def _listing(changes: list[ConfigChange], limit: int) -> str:
  shown = ", ".join(c.describe() for c in changes[:limit])
  if len(changes) > limit:
    shown += f" and {len(changes) - limit} more"
  return shown


def refused_message(refused: list[ConfigChange], workdir: str,
                    limit: int = 4) -> str:
  """The one-line UserError message for refused changes."""
  return (f"the config differs from the one the run in {workdir} was started "
          f"with: {_listing(refused, limit)}; {ways_forward()}")


def ways_forward() -> str:
  """The end of every refusal to resume: the two ways forward."""
  return (f"to keep that run, pass another --workdir; to continue it with "
          f"these changes, add {ALLOW_FLAG}")


def accepted_message(accepted: list[ConfigChange], limit: int = 6) -> str:
  """The line the loop prints when it resumes with accepted changes."""
  return f"advjax: resuming with a changed {_listing(accepted, limit)}"
