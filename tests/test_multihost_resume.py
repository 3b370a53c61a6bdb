"""Two processes (gloo collectives on CPU, as in tests/test_main.py) resume
from the step process 0 chose and broadcast (review #10)."""

import os
import socket

import pytest

from advjax import checkpoints
from tests.helpers import run_cli

pytestmark = pytest.mark.slow

ARGS = ["--config=configs/quickstart.py", "--config.model.widths=(4, 8)",
        "--config.model.hidden=8", "--config.batch_size=8",
        "--config.eval_batch_size=8", "--config.checkpoint.every_steps=2",
        "--config.log_every_steps=1", "--config.eval_every_steps=100",
        "--config.progress_bar=False", "--config.checkpoint.async_save=False"]


def _two_processes(workdir, steps):
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  args = [*ARGS, f"--config.num_train_steps={steps}", f"--workdir={workdir}"]
  procs = [run_cli(args, num_devices=2, mock_examples=32, wait=False,
                   env={"ADVJAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}",
                        "ADVJAX_NUM_PROCESSES": "2",
                        "ADVJAX_PROCESS_ID": str(i)}) for i in range(2)]
  outs = [p.communicate(timeout=300) for p in procs]
  for p, (_, stderr) in zip(procs, outs):
    assert p.returncode == 0, stderr[-3000:]
  return outs


def test_two_processes_resume_together_from_the_step_process_0_chose(
    tmp_path):
  workdir = str(tmp_path / "run")
  _two_processes(workdir, 2)
  assert checkpoints.available_steps(workdir) == [2]
  outs = _two_processes(workdir, 4)
  assert "resumed from step 2" in outs[0][0]
  assert checkpoints.available_steps(workdir) == [2, 4]
  assert not [n for n in os.listdir(workdir) if n.startswith("earlier-")]
