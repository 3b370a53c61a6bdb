"""experiments/colab.ipynb runs top to bottom (tiny mode, mock data).

Every code cell is executed in order, in one namespace, in a fresh Python
process (no Jupyter kernel); lines starting with `!` or `%` (IPython magics)
are skipped. The notebook's last cell writes a JSON summary to
$ADVJAX_NOTEBOOK_OUT, which the test checks.
"""

import json
import os
import subprocess
import sys

import pytest

from tests.helpers import ROOT

pytestmark = pytest.mark.slow

NOTEBOOK = os.path.join(ROOT, "experiments", "colab.ipynb")

# Runs the notebook given as argv[1]; names the failing cell on an error.
RUNNER = r"""
import json, sys, traceback
with open(sys.argv[1], encoding="utf-8") as f:
  notebook = json.load(f)
namespace = {"__name__": "__main__"}
for i, cell in enumerate(notebook["cells"]):
  if cell["cell_type"] != "code":
    continue
  source = "".join(cell["source"])
  lines = [line for line in source.splitlines()
           if not line.lstrip().startswith(("!", "%"))]
  print(f"--- cell {i}", flush=True)
  try:
    exec(compile("\n".join(lines), f"<notebook cell {i}>", "exec"), namespace)
  except BaseException:
    traceback.print_exc()
    print(f"notebook cell {i} failed", file=sys.stderr, flush=True)
    sys.exit(1)
"""


def _load_notebook():
  with open(NOTEBOOK, encoding="utf-8") as f:
    return json.load(f)


def test_notebook_is_valid_nbformat_4_with_colab_install_cell():
  nb = _load_notebook()
  assert nb["nbformat"] == 4
  code = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
  assert all(c["outputs"] == [] for c in nb["cells"] if c["cell_type"] == "code")
  # The install cell only acts inside Colab.
  assert "IN_COLAB" in code[0] and "if IN_COLAB:" in code[0]
  text = "\n".join(code)
  for name in ("fgsm(", "fgsm_least_likely(", "pgd(", "unrestricted_attack(",
               "train_patch(", "apply_patch(", "evaluate_patch(",
               "transfer_attack(", "evaluate.report("):
    assert name in text, name


def test_notebook_runs_end_to_end_in_tiny_mode(tmp_path):
  out = tmp_path / "summary.json"
  env = dict(os.environ)
  env.update({
      "ADVJAX_NOTEBOOK_TINY": "1",
      "ADVJAX_NOTEBOOK_OUT": str(out),
      "MPLBACKEND": "Agg",
      "JAX_PLATFORMS": "cpu",
      "XLA_FLAGS": ("--xla_force_host_platform_device_count=2"
                    " --xla_backend_optimization_level=0"),
      "PYTHONPATH": ROOT + os.pathsep + env.get("PYTHONPATH", ""),
      "TF_CPP_MIN_LOG_LEVEL": "3",
  })
  env.pop("ADVJAX_NOTEBOOK_WORKDIR", None)
  proc = subprocess.run([sys.executable, "-c", RUNNER, NOTEBOOK],
                        cwd=tmp_path, env=env, capture_output=True, text=True,
                        timeout=600)
  assert proc.returncode == 0, (proc.stdout[-3000:] + "\n" +
                                proc.stderr[-5000:])

  summary = json.loads(out.read_text(encoding="utf-8"))
  assert summary["tiny"] is True
  base = tmp_path / "advjax_notebook_tiny"
  assert summary["classifier_steps"] == [2]
  assert summary["substitute_steps"] == [2]
  assert summary["gan_steps"] == [2]
  for run in ("quickstart", "substitute", "quickstart_gan"):
    assert (base / run / "checkpoints" / "2").is_dir(), run
  assert set(summary["attack_accuracy"]) == {
      "FGSM", "FGSM least likely", "PGD L-inf", "PGD L2",
      "PGD L-inf targeted"}
  for value in [summary["clean_accuracy"], summary["targeted_success"],
                summary["unrestricted_success"],
                *summary["attack_accuracy"].values(),
                *summary["transfer_error"].values()]:
    assert 0.0 <= value <= 1.0
  assert set(summary["transfer_error"]) == {"FGSM", "PGD L-inf"}
  report = base / "quickstart" / "eval" / "robustness.md"
  assert summary["robustness_report"] == str(report)
  table = report.read_text(encoding="utf-8")
  assert table == summary["robustness_markdown"]
  assert "| eps | FGSM accuracy |" in table and "transfer error" in table
  assert "on 16 test images" in table
