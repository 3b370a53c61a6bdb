"""The attack package's structure: its public names, no private names
crossing its files, and one cross-entropy for the whole library."""

import ast
import pathlib

from advjax import attacks

ADVJAX = pathlib.Path(attacks.__file__).resolve().parents[1]
PACKAGE = ADVJAX / "attacks"


def _trees(folder):
  for path in sorted(folder.rglob("*.py")):
    yield path, ast.parse(path.read_text())


def test_the_public_api_is_reached_from_the_package():
  for name in ("fgsm", "fgsm_least_likely", "pgd", "unrestricted_attack",
               "train_patch", "apply_patch", "evaluate_patch",
               "random_positions", "transfer_attack", "check_attack_inputs"):
    assert callable(getattr(attacks, name)), name
  aa = attacks.autoattack  # AutoAttack's one home
  for name in ("autoattack", "apgd", "apgd_targeted", "fab_targeted", "square",
               "dlr_loss", "targeted_dlr_loss", "apgd_checkpoints"):
    assert callable(getattr(aa, name)), name
  assert set(aa.VERSIONS) == {"standard", "fast"} and aa.NORMS == attacks.NORMS


def test_no_private_name_crosses_a_file():
  for path, tree in _trees(ADVJAX):
    for node in ast.walk(tree):
      if isinstance(node, ast.ImportFrom):
        # Only the package's own files use its internal module _common.
        inside = path.parent == PACKAGE
        private = [a.name for a in node.names if a.name.startswith("_")
                   and not (inside and a.name == "_common")]
        assert not private, f"{path.name} imports {private} from {node.module}"
        assert inside or not (node.module or "").endswith("._common"), (
            f"{path.name} imports from {node.module}")
      if (isinstance(node, ast.Attribute) and node.attr.startswith("_")
          and not node.attr.startswith("__")
          and isinstance(node.value, ast.Name)
          and node.value.id in ("attacks", "autoattack", "_common", "losses")):
        raise AssertionError(f"{path.name}:{node.lineno} reaches "
                             f"{node.value.id}.{node.attr}")


def test_the_library_has_one_cross_entropy():
  # Softmax cross-entropies are losses.cross_entropy: no other function of
  # advjax/ is one, and no attack takes log_softmax itself but the latent
  # attack's untargeted objective min_{k != y_s} CE(f(x), k), which is not
  # the cross-entropy of one label.
  defined = {(path.name, node.name) for path, tree in _trees(ADVJAX)
             for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)
             and "sigmoid" not in node.name  # GAN losses' binary one
             and ("cross_entropy" in node.name or node.name.endswith("_ce")
                  or "_ce_" in node.name)}
  assert defined == {("losses.py", "cross_entropy")}, defined
  users = {path.name for path, tree in _trees(PACKAGE)
           for node in ast.walk(tree)
           if isinstance(node, ast.Attribute) and node.attr == "log_softmax"}
  assert users == {"latent.py"}, users

