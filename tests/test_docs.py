"""Docs are code: every Python and shell block of README.md and docs/ runs.

A block's mode is given by an HTML comment on the line before its fence:

    <!-- docs-test: run -->                 Python: executed. Shell: each
                                            command run, on mock data.
    <!-- docs-test: run: <extra flags> -->  a shell command run with these
                                            flags appended (tiny settings).
    <!-- docs-test: check -->               shell: each command's flags and
                                            config overrides parsed by the
                                            command itself (tests/docs_command.py)
    <!-- docs-test: skip: <reason> -->      not runnable here, and why.

Without a comment, Python blocks run and shell blocks are checked. Paths
under /tmp/advjax point into one temporary folder, in which a tiny
quickstart classifier (the README's own command, with the flags of its
comment) and a tiny quickstart AC-GAN are trained first, so blocks that
restore `/tmp/advjax/quickstart` or `/tmp/advjax/gan` find them. A renamed
function, module, flag or config field makes one of these tests fail.
"""

from __future__ import annotations

import dataclasses
import fcntl
import os
import re
import shlex
import subprocess
import sys

import pytest

from tests import helpers

PAGES = ["README.md"] + sorted(
    os.path.join("docs", f) for f in os.listdir(os.path.join(helpers.ROOT,
                                                             "docs"))
    if f.endswith(".md"))
_MARK = re.compile(r"<!--\s*docs-test:\s*(\w+)\s*(?::\s*(.*?))?\s*-->")
_COMMANDS = ("python -m advjax.", "python experiments/")
TINY_GAN = ["--config.num_train_steps=4", "--config.batch_size=16",
            "--config.log_every_steps=2", "--config.sample.num_columns=2",
            "--config.model.latent_dim=8"]


@dataclasses.dataclass(frozen=True)
class Block:
  page: str
  line: int  # 1-based line of the opening fence
  lang: str
  mode: str
  arg: str
  text: str

  @property
  def id(self) -> str:
    return f"{self.page}:{self.line}"


def _blocks() -> list[Block]:
  found = []
  for page in PAGES:
    with open(os.path.join(helpers.ROOT, page), encoding="utf-8") as f:
      lines = f.read().split("\n")
    i = 0
    while i < len(lines):
      fence = re.fullmatch(r"```(\w*)\s*", lines[i])
      if not fence:
        i += 1
        continue
      end = next(j for j in range(i + 1, len(lines))
                 if lines[j].startswith("```"))
      lang = {"sh": "bash", "shell": "bash"}.get(fence[1], fence[1])
      if lang in ("python", "bash"):
        prev = next((l for l in reversed(lines[:i]) if l.strip()), "")
        mark = _MARK.fullmatch(prev.strip())
        mode, arg = ((mark[1], mark[2] or "") if mark else
                     ("run" if lang == "python" else "check", ""))
        found.append(Block(page, i + 1, lang, mode, arg,
                           "\n".join(lines[i + 1:end])))
      i = end + 1
  return found


BLOCKS = _blocks()


def _commands(text: str) -> list[str]:
  """The shell block's commands, continuations joined, comments dropped."""
  joined = re.sub(r"\\\n\s*", " ", text)
  out = []
  for line in joined.split("\n"):
    line = line.split(" #")[0].strip()
    if line and not line.startswith("#"):
      out.append(line)
  return out


def _tmp_paths(text: str, root: str) -> str:
  return text.replace("/tmp/advjax", os.path.join(root, "advjax"))


def _env() -> dict[str, str]:
  env = dict(os.environ)
  env.update({"PYTHONPATH": helpers.python_path(), "JAX_PLATFORMS": "cpu",
              "MOCK_NUM_EXAMPLES": "32", "TF_CPP_MIN_LOG_LEVEL": "3",
              "XLA_FLAGS": "--xla_force_host_platform_device_count=4"
                           " --xla_backend_optimization_level=0"})
  return env


def _run_command(command: str, root: str, extra: str = "") -> None:
  argv = shlex.split(_tmp_paths(command, root)) + shlex.split(extra)
  assert argv[0] == "python", f"not a python command: {command}"
  if argv[1:3] == ["-m", "advjax.main"]:  # On mock data.
    argv = [sys.executable, os.path.join(helpers.ROOT, "tests", "mock_main.py"),
            *argv[3:]]
  else:
    argv = [sys.executable, *argv[1:]]
  proc = subprocess.run(argv, cwd=helpers.ROOT, env=_env(),
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, (
      f"`{command}` failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")


@pytest.fixture(scope="session")
def runs(tmp_path_factory):
  """A folder whose advjax/quickstart and advjax/gan hold tiny trained runs
  (shared by pytest-xdist workers, built once under a lock)."""
  base = tmp_path_factory.getbasetemp()
  if os.environ.get("PYTEST_XDIST_WORKER"):
    base = base.parent
  root = str(base / "docs_runs")
  with open(root + ".lock", "w", encoding="utf-8") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not os.path.exists(os.path.join(root, "done")):
      os.makedirs(root, exist_ok=True)
      quickstart = next(b for b in BLOCKS if b.page == "README.md"
                        and "configs/quickstart.py" in b.text
                        and b.mode == "run")
      for command in _commands(quickstart.text):
        _run_command(command, root, quickstart.arg)
      _run_command("python -m advjax.main --config=configs/quickstart_gan.py"
                   " --workdir=/tmp/advjax/gan", root, " ".join(TINY_GAN))
      open(os.path.join(root, "done"), "w", encoding="utf-8").close()
  return root


def test_every_block_is_run_checked_or_skipped_with_a_reason():
  assert len(BLOCKS) > 10
  for b in BLOCKS:
    assert b.mode in ("run", "check", "skip"), f"{b.id}: mode {b.mode!r}"
    if b.mode == "skip":
      assert len(b.arg) > 10, f"{b.id}: a skipped block says why"
    if b.lang == "bash" and b.mode != "skip":
      for command in _commands(b.text):
        assert command.startswith(_COMMANDS), (
            f"{b.id}: `{command}` is neither an advjax command nor marked "
            "<!-- docs-test: skip: <reason> -->")


@pytest.mark.parametrize(
    "block", [b for b in BLOCKS if b.lang == "bash" and b.mode == "check"],
    ids=lambda b: b.id)
def test_documented_command_parses(block, tmp_path):
  for command in _commands(block.text):
    argv = shlex.split(_tmp_paths(command, str(tmp_path)))[1:]
    proc = subprocess.run(
        [sys.executable, os.path.join(helpers.ROOT, "tests", "docs_command.py"),
         *argv], cwd=helpers.ROOT, env=_env(), capture_output=True, text=True,
        timeout=300)
    assert proc.returncode == 0, (
        f"{block.id}: `{command}` does not parse:\n{proc.stderr[-3000:]}")


@pytest.mark.slow
@pytest.mark.parametrize(
    "block", [b for b in BLOCKS if b.mode == "run"], ids=lambda b: b.id)
def test_documented_block_runs(block, runs, tmp_path):
  if block.lang == "bash":
    # Into a fresh copy, so a run block never resumes the fixture's runs.
    for command in _commands(block.text):
      _run_command(command, str(tmp_path), block.arg)
    return
  script = tmp_path / "block.py"
  script.write_text(_tmp_paths(block.text, runs), encoding="utf-8")
  proc = subprocess.run([sys.executable, str(script)], cwd=str(tmp_path),
                        env=_env(), capture_output=True, text=True,
                        timeout=600)
  assert proc.returncode == 0, (
      f"{block.id} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
