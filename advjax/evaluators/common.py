"""The evaluator protocol, its registry, and what every evaluator shares.

An evaluator is a frozen settings dataclass (each default written once, in
its fields) and a pure `run(settings, inputs) -> result dict`, with optional
`markdown(result) -> str` and `images(result) -> {tag: image}` (which may pop
image arrays out of the result before it is written as JSON). `register`
adds one by name; `python -m advjax.evaluate` builds its flags from the
registered settings, and the trainers, distillation and the study run the
same entries:

    @dataclasses.dataclass(frozen=True)
    class MeanSettings:
      num_examples: int = 100

    @register("mean_image", MeanSettings, needs=("classifier",))
    def _mean(s, inputs):
      x, _ = next(eval_data(inputs.classifier, s.num_examples, 100))
      return {"mean": float(x.mean())}

Every result can say what produced it (`provenance`): the resolved
settings, the checkpoint step and digest of each run it read, and the
advjax version. A keyed cache (`same_key`) reuses a stored result only when
that record matches.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

import advjax
from advjax import checkpoints, fileio, inference, input_pipeline, integrity
from advjax import settings as settings_lib
from advjax.errors import UserError
from advjax.metric_writers import save_png

ROLES = ("classifier", "gan", "substitute")


@dataclasses.dataclass(frozen=True)
class Inputs:
  """The restored runs an evaluator reads (each optional)."""
  classifier: inference.Classifier | None = None
  gan: inference.GAN | None = None
  substitute: inference.Classifier | None = None


@dataclasses.dataclass(frozen=True)
class Evaluator:
  """One registry entry (see the module docstring).

  Attributes:
    name: the name reports, flags (`--<name>.<field>`) and JSON keys use.
    settings: frozen dataclass; its defaults are the evaluator's defaults.
    run: `run(settings, inputs) -> dict` (JSON-able, but for what `images`
      pops).
    needs: roles of `Inputs` that must be given.
    mode: the `python -m advjax.evaluate --mode` whose report includes it.
    applies: `applies(settings, inputs) -> bool`: whether a report runs it
      (default: when every role it needs is given).
    markdown: `markdown(result) -> str`, its section of the report.
    images: `images(result) -> {tag: HWC image}`; may pop arrays.
    help: one line for `--help`.
  """
  name: str
  settings: type
  run: Callable[[Any, Inputs], dict[str, Any]]
  needs: tuple[str, ...] = ("classifier",)
  mode: str = "robustness"
  applies: Callable[[Any, Inputs], bool] | None = None
  markdown: Callable[[dict[str, Any]], str] | None = None
  images: Callable[[dict[str, Any]], dict[str, np.ndarray]] | None = None
  help: str = ""

  def read(self, block: Any = None, **overrides: Any) -> Any:
    """Its settings from a block of fields over the defaults (checked)."""
    return settings_lib.from_block(self.settings, block, self.name,
                                   **overrides)

  def wanted(self, settings: Any, inputs: Inputs) -> bool:
    if any(getattr(inputs, role) is None for role in self.needs):
      return False
    return self.applies is None or bool(self.applies(settings, inputs))

  def __call__(self, settings: Any, inputs: Inputs) -> dict[str, Any]:
    missing = [r for r in self.needs if getattr(inputs, r) is None]
    if missing:
      raise UserError(f"evaluator '{self.name}' needs a {missing[0]} run")
    result = self.run(settings, inputs)
    # What produced it, unless the evaluator said more (resolved settings).
    result.setdefault("provenance", provenance(
        settings, **{role: getattr(inputs, role) for role in self.needs}))
    return result


# name -> entry, in registration order (the order of a report's sections).
EVALUATORS: dict[str, Evaluator] = {}


def register(name: str, settings: type, *,
             needs: Sequence[str] = ("classifier",), mode: str = "robustness",
             applies: Callable[[Any, Inputs], bool] | None = None,
             markdown: Callable[[dict[str, Any]], str] | None = None,
             images: Callable | None = None,
             help: str = "") -> Callable[[Callable], Callable]:  # pylint: disable=redefined-builtin
  """Decorator: adds `run(settings, inputs)` to the registry as `name`."""
  if name in EVALUATORS:
    raise ValueError(f"evaluator '{name}' is already registered")
  bad = [r for r in needs if r not in ROLES]
  if bad:
    raise ValueError(f"evaluator '{name}': unknown role(s) {bad}; roles "
                     f"are {ROLES}")

  def add(run: Callable) -> Callable:
    EVALUATORS[name] = Evaluator(
        name=name, settings=settings, run=run, needs=tuple(needs), mode=mode,
        applies=applies, markdown=markdown, images=images, help=help)
    return run
  return add


def get(name: str) -> Evaluator:
  """The entry `name`; a UserError lists the registered ones."""
  if name not in EVALUATORS:
    raise UserError(f"unknown evaluator '{name}'; registered: "
                    f"{sorted(EVALUATORS)}")
  return EVALUATORS[name]


def of_mode(mode: str) -> list[Evaluator]:
  return [e for e in EVALUATORS.values() if e.mode == mode]


def from_block(block: Any) -> list[tuple[Evaluator, Any]]:
  """(entry, settings) of each evaluator a config block names ({name:
  {field: value}}, e.g. a trainer's `config.eval.evaluators`), checked."""
  return [(get(name), get(name).read(fields))
          for name, fields in settings_lib.plain(block).items()]


def numbers(chosen: Sequence[tuple[Evaluator, Any]], inputs: Inputs,
            prefix: str = "eval/") -> dict[str, float]:
  """Runs each (entry, settings); the numbers of its result as
  `<prefix><name>/<key>` (what a trainer logs)."""
  metrics = {}
  for entry, s in chosen:
    for key, value in entry(s, inputs).items():
      if isinstance(value, (int, float)) and not isinstance(value, bool):
        metrics[f"{prefix}{entry.name}/{key}"] = float(value)
  return metrics


# ---------------------------------------------------------------------------
# What produced a result.


def checkpoint_digest(workdir: str, step: int, state: Any = None) -> str:
  """A short SHA-256 naming the checkpoint's content: of the integrity
  digest written at save time (`advjax.integrity`), else of the arrays."""
  path = fileio.join(checkpoints.checkpoint_dir(workdir), str(step),
                     integrity.DIGEST_NAME)
  h = hashlib.sha256()
  if fileio.isfile(path):
    h.update(fileio.read_text(path).encode())
  elif state is not None:
    import jax  # pylint: disable=g-import-not-at-top
    for leaf in jax.tree.leaves(state):
      h.update(np.ascontiguousarray(np.asarray(leaf)).tobytes())
  else:
    return ""
  return h.hexdigest()[:16]


class ArrayModel:
  """A model outside advjax as an evaluator's classifier: any `logits_fn`
  (images [B, H, W, C] in `bounds` -> logits [B, K]) with its test images
  and labels as arrays. `evaluate.report_model` builds one; evaluators read
  it as they read a restored run (`logits_fn()`, `predict`, `eval_data`),
  and its provenance names it and digests the arrays it was given."""

  def __init__(self, logits_fn: Callable, images: Any, labels: Any, *,
               bounds: tuple[float, float] = (-1., 1.), name: str = "model"):
    import jax  # pylint: disable=g-import-not-at-top
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
    images, labels = np.asarray(images), np.asarray(labels)
    if images.ndim != 4 or not np.issubdtype(images.dtype, np.floating):
      raise UserError(f"images must be a float array [N, H, W, C] (NHWC), "
                      f"got {images.dtype} of shape {images.shape}")
    if labels.shape != images.shape[:1] or not np.issubdtype(
        labels.dtype, np.integer):
      raise UserError(f"labels must be {len(images)} integers (one per "
                      f"image), got {labels.dtype} of shape {labels.shape}")
    self.images = images.astype(np.float32)
    self.labels = labels.astype(np.int32)
    self.bounds = (float(bounds[0]), float(bounds[1]))
    self.name = str(name)
    self._logits_fn = logits_fn
    self._predict = jax.jit(lambda x: jnp.argmax(logits_fn(x), axis=-1))

  def logits_fn(self) -> Callable:
    return self._logits_fn

  def predict(self, images: Any) -> np.ndarray:
    return np.asarray(self._predict(images))

  def batches(self, num_examples: int, batch_size: int
              ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    n = len(self.labels) if num_examples <= 0 else min(num_examples,
                                                       len(self.labels))
    for lo in range(0, n, batch_size):
      hi = min(lo + batch_size, n)
      yield self.images[lo:hi], self.labels[lo:hi]

  def record(self) -> dict[str, Any]:
    h = hashlib.sha256()
    for a in (self.images, self.labels):
      h.update(str(a.shape).encode())
      h.update(np.ascontiguousarray(a).tobytes())
    return {"model": self.name, "bounds": list(self.bounds),
            "data_digest": h.hexdigest()[:16], "num_images": len(self.labels)}


def run_record(run: inference.Run | None) -> dict[str, Any] | None:
  """{'workdir', 'step', 'digest'} of a restored run (None for None); an
  `ArrayModel`'s own record."""
  if run is None:
    return None
  if isinstance(run, ArrayModel):
    return run.record()
  cached = getattr(run, "_advjax_record", None)
  if cached is None:
    cached = {"workdir": str(run.workdir), "step": int(run.step),
              "digest": checkpoint_digest(run.workdir, run.step, run.state)}
    if getattr(run, "averaged_weights", False):
      cached["weights"] = "moving average"
    try:
      run._advjax_record = cached  # pylint: disable=protected-access
    except AttributeError:
      pass
  return dict(cached)


def as_json(value: Any) -> Any:
  """Dataclasses, tuples and numpy scalars as JSON's plain values."""
  if dataclasses.is_dataclass(value) and not isinstance(value, type):
    value = dataclasses.asdict(value)
  if isinstance(value, Mapping):
    return {str(k): as_json(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [as_json(v) for v in value]
  if isinstance(value, (np.generic, np.ndarray)):
    return value.tolist()
  return value


def provenance(settings: Any, **runs: inference.Run | None
               ) -> dict[str, Any]:
  """What produced a result: the resolved `settings`, each run read
  (`run_record`; only those given) and the advjax version."""
  return {"settings": as_json(settings),
          "checkpoints": {role: run_record(r) for role, r in runs.items()
                          if r is not None},
          "advjax_version": advjax.__version__}


def same_key(stored: Mapping[str, Any] | None, key: Mapping[str, Any]
             ) -> bool:
  """Whether a stored record was produced by `key` (JSON-compared, so
  tuples equal lists); the workdir of a run is where it was read from, not
  what it holds, so only step and digest count."""
  if not stored:
    return False
  return _canonical(stored) == _canonical(key)


def _canonical(record: Any) -> str:
  def strip(v):
    if isinstance(v, Mapping):
      return {k: strip(x) for k, x in v.items() if k != "workdir"}
    if isinstance(v, (list, tuple)):
      return [strip(x) for x in v]
    return v
  return json.dumps(strip(as_json(record)), sort_keys=True, default=str)


# ---------------------------------------------------------------------------
# Shared pieces.


def eval_data(restored: inference.Run, num_examples: int,
              batch_size: int, split: str | None = None
              ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """(images, labels) batches of the run's test split (or `split`), first
  `num_examples` (all if <= 0), in order (an `ArrayModel`: its arrays)."""
  if isinstance(restored, ArrayModel):
    yield from restored.batches(num_examples, batch_size)
    return
  info = input_pipeline.get_dataset_info(restored.config.dataset.name)
  source = data_source(restored, split or info.eval_split)
  n = len(source) if num_examples <= 0 else min(num_examples, len(source))
  for batch in input_pipeline.eval_batches(source, global_batch_size=batch_size,
                                           process_index=0, process_count=1):
    keep = batch["mask"] > 0
    images, labels = batch["image"][keep], batch["label"][keep]
    if n <= 0:
      return
    yield images[:n], labels[:n]
    n -= len(labels)


def data_source(run: inference.Run, split: str) -> Any:
  """The `split` of the dataset `run` was trained on, read from where it
  was (`dataset.data_dir`, '' = tfds's default)."""
  info = input_pipeline.get_dataset_info(run.config.dataset.name)
  return input_pipeline.get_source(info.name, split,
                                   run.config.dataset.data_dir or None)


def accuracy(predict: Callable, images, labels) -> float:
  return float(np.mean(np.asarray(predict(images)) == np.asarray(labels)))


def balanced_labels(n: int, num_classes: int) -> np.ndarray:
  """0, 1, ..., K-1, 0, 1, ... (n labels; all 0 for K <= 1): the
  class-balanced conditioning every GAN evaluation uses."""
  return (np.arange(n) % max(num_classes, 1)).astype(np.int32)


def same_dataset(classifier: inference.Run, gan: inference.Run) -> None:
  if classifier.config.dataset.name != gan.config.dataset.name:
    raise UserError(f"the classifier was trained on "
                    f"{classifier.config.dataset.name}, the GAN on "
                    f"{gan.config.dataset.name}")


def write_report(out_dir: str, name: str, markdown: str,
                 data: dict[str, Any], images: dict[str, np.ndarray]) -> None:
  """`<name>.md`, `<name>.json` and `<tag>.png` files in `out_dir` (local or
  `gs://...`)."""
  fileio.makedirs(out_dir)
  fileio.write_text(fileio.join(out_dir, f"{name}.md"), markdown)
  fileio.write_text(fileio.join(out_dir, f"{name}.json"),
                    json.dumps(as_json(data), indent=2))
  for tag, image in images.items():
    save_png(image, fileio.join(out_dir, f"{tag}.png"))
