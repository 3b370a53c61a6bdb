"""The package's layers (docs/extending.md, "Package layout"): no module
imports one above it. Read from the import statements of every module, so
a new module must be given a layer here."""

from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Bottom up, as docs/extending.md lists them; a package name covers its
# submodules unless one is listed itself.
LAYERS = [
    ("settings, data and models",
     ["advjax", "advjax.errors", "advjax.settings", "advjax.run_settings",
      "advjax.config_changes", "advjax.config_utils", "advjax.fileio",
      "advjax.integrity", "advjax.parallel", "advjax.example_rng",
      "advjax.metric_writers", "advjax.input_pipeline", "advjax.two_domain",
      "advjax.models", "advjax.inception", "advjax.fid", "advjax.run_lock"]),
    ("the pieces that compose a step",
     ["advjax.losses", "advjax.attacks", "advjax.robust_losses",
      "advjax.adversaries", "advjax.optimizers"]),
    ("checkpoints, the notebook handles and frozen models",
     ["advjax.checkpoints", "advjax.inference", "advjax.frozen_models",
      "advjax.adversarial_training"]),
    ("the evaluators", ["advjax.evaluators"]),
    ("the shared host loop", ["advjax.loop"]),
    ("the trainers", ["advjax.trainers"]),
    ("the command lines", ["advjax.cli", "advjax.main", "advjax.evaluate"]),
]


def _modules() -> dict[str, pathlib.Path]:
  out = {}
  for path in (ROOT / "advjax").rglob("*.py"):
    name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    out[name.removesuffix(".__init__")] = path
  return out


def _layer(module: str) -> int | None:
  best, depth = None, -1
  for i, (_, names) in enumerate(LAYERS):
    for name in names:
      if (module == name or module.startswith(name + ".")) and (
          name.count(".") > depth):
        best, depth = i, name.count(".")
  return best


def _imports(path: pathlib.Path, modules: set[str]) -> set[str]:
  """The advjax modules `path` imports (at any depth of the file)."""
  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.ImportFrom) and node.module and (
        node.module.startswith("advjax")):
      for alias in node.names:
        sub = f"{node.module}.{alias.name}"
        found.add(sub if sub in modules else node.module)
    elif isinstance(node, ast.Import):
      found.update(a.name for a in node.names if a.name in modules)
  return found


def test_every_module_has_a_layer():
  missing = sorted(m for m in _modules() if _layer(m) is None)
  assert not missing, f"give these modules a layer in LAYERS: {missing}"


def test_no_module_imports_one_above_it():
  modules = _modules()
  upward = []
  for name, path in sorted(modules.items()):
    for dep in _imports(path, set(modules)):
      if _layer(dep) is not None and _layer(name) is not None and (
          _layer(dep) > _layer(name)):
        upward.append(f"{name} ({LAYERS[_layer(name)][0]}) imports {dep} "
                      f"({LAYERS[_layer(dep)][0]})")
  assert not upward, "\n".join(upward)


def test_the_layers_are_the_ones_the_docs_name():
  text = (ROOT / "docs" / "extending.md").read_text()
  sentence = text[text.index("The layers, bottom up:"):]
  sentence = " ".join(sentence[:sentence.index("tests/test_layering.py")].split())
  positions = [sentence.find(title.split(",")[0].split(" and ")[0])
               for title, _ in LAYERS]
  assert -1 not in positions, (sentence, [t for t, _ in LAYERS])
  assert positions == sorted(positions), sentence
