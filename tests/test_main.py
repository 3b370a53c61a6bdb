"""End to end through the CLI on mock data: checkpoints, resume, errors."""

import os
import signal
import socket
import time

import jax
import numpy as np
import pytest

from advjax import checkpoints, inference
from advjax.metric_writers import read_metrics
from tests.helpers import run_cli

pytestmark = pytest.mark.slow

# A tiny DenseNet-BC (depth 10: one layer per dense block) on mock CIFAR-100.
TINY_DENSENET = [
    "--config=configs/densenet_cifar100.py",
    "--config.model.depth=10", "--config.model.growth_rate=4",
    "--config.batch_size=8", "--config.eval_batch_size=8",
    "--config.num_train_steps=3", "--config.checkpoint.every_steps=2",
    "--config.log_every_steps=1", "--config.eval_every_steps=2",
]


def _params_equal(a, b, rtol=0.0, atol=0.0):
  leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(leaves_a) == len(leaves_b)
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol,
                               atol=atol)


def test_densenet_cifar100_config_trains_and_restores_in_a_notebook(tmp_path):
  workdir = str(tmp_path / "dn")
  out = run_cli([*TINY_DENSENET, f"--workdir={workdir}"], mock_examples=20)
  assert out.returncode == 0, out.stderr[-3000:]
  last_line = out.stdout.strip().splitlines()[-1]
  assert last_line.startswith("advjax: finished 3 steps")
  assert "on 20 cifar100 test images" in last_line

  restored = inference.restore(workdir)
  assert restored.step == 3
  assert restored.trainer == "classifier"
  assert restored.config.model.depth == 10
  assert restored.config.dataset.name == "cifar100"
  images = np.random.default_rng(0).uniform(-1, 1, (2, 32, 32, 3))
  assert restored.logits(images).shape == (2, 100)
  assert set(restored.predict(images)) <= set(range(100))
  # Checkpoints at step 2 and at the end (3); eval ran at 2 and 3.
  assert checkpoints.available_steps(workdir) == [2, 3]

  records = read_metrics(workdir)
  evals = [r for r in records if "eval/accuracy" in r]
  assert [r["step"] for r in evals] == [2, 3]
  # Every one of the 20 test examples counted exactly once (20 = 2*8 + 4).
  assert all(r["eval/count"] == 20 for r in evals)
  assert [r["step"] for r in records if "train/loss" in r] == [1, 2, 3]
  assert os.listdir(os.path.join(workdir, "tensorboard"))


def test_resumed_run_after_sigkill_ends_with_same_params(tmp_path):
  args = ["--config=configs/quickstart.py", "--config.dataset.name=cifar10",
          "--config.model.widths=(32, 64)", "--config.batch_size=16",
          "--config.eval_batch_size=16", "--config.num_train_steps=150",
          "--config.checkpoint.every_steps=10", "--config.eval_every_steps=50",
          "--config.log_every_steps=10", "--config.model.dropout_rate=0.2",
          "--config.checkpoint.async_save=False"]
  reference = str(tmp_path / "reference")
  out = run_cli([*args, f"--workdir={reference}"], mock_examples=64)
  assert out.returncode == 0, out.stderr[-3000:]

  killed = str(tmp_path / "killed")
  proc = run_cli([*args, f"--workdir={killed}"], mock_examples=64, wait=False)
  deadline = time.time() + 240
  try:
    while time.time() < deadline:
      steps = checkpoints.available_steps(killed) if os.path.isdir(
          os.path.join(killed, "checkpoints")) else []
      if steps and max(steps) >= 30:
        break
      assert proc.poll() is None, "run finished before it could be killed"
      time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
  finally:
    proc.wait()
  assert proc.returncode == -signal.SIGKILL
  steps_at_kill = checkpoints.available_steps(killed)
  assert max(steps_at_kill) < 150

  out = run_cli([*args, f"--workdir={killed}"], mock_examples=64)
  assert out.returncode == 0, out.stderr[-3000:]
  assert f"resumed from step {max(steps_at_kill)}" in out.stdout
  _params_equal(inference.restore(killed).state,
                inference.restore(reference).state)


def test_bad_inputs_give_one_line_errors_and_keep_checkpoints(tmp_path):
  workdir = str(tmp_path / "run")
  out = run_cli([*TINY_DENSENET, f"--workdir={workdir}"], mock_examples=20)
  assert out.returncode == 0, out.stderr[-3000:]
  before = inference.restore(workdir).state

  cases = {
      "--config.dataset.name=cifar1000": "cifar100",
      "--config.batch_size=6": "6",
      "--config.dataset.data_dir=/no/such/dir": "/no/such/dir",
  }
  for flag, needle in cases.items():
    out = run_cli([*TINY_DENSENET, flag, f"--workdir={workdir}"],
                  mock_examples=20)
    assert out.returncode == 2, (flag, out.stderr[-2000:])
    lines = [l for l in out.stderr.strip().splitlines()
             if l.startswith("advjax: error:")]
    assert len(lines) == 1, (flag, out.stderr[-2000:])
    assert needle in lines[0]
    assert "Traceback" not in out.stderr
  assert checkpoints.available_steps(workdir) == [2, 3]
  _params_equal(inference.restore(workdir).state, before)


def test_diverging_run_stops_naming_the_step_and_keeps_good_checkpoint(
    tmp_path):
  workdir = str(tmp_path / "nan")
  out = run_cli(["--config=configs/quickstart.py",
                 "--config.dataset.name=cifar10", "--config.batch_size=8",
                 "--config.eval_batch_size=8", "--config.num_train_steps=40",
                 "--config.checkpoint.every_steps=1",
                 "--config.log_every_steps=5",
                 "--config.optimizer.name=sgd",
                 "--config.optimizer.warmup_steps=0",
                 "--config.optimizer.schedule=constant",
                 "--config.optimizer.learning_rate=1e30",
                 f"--workdir={workdir}"], mock_examples=16)
  assert out.returncode == 3, out.stderr[-3000:]
  line = [l for l in out.stderr.splitlines() if l.startswith("advjax: error:")]
  assert len(line) == 1 and "non-finite at step" in line[0]
  bad_step = int(line[0].split("non-finite at step ")[1].split(";")[0])
  steps = checkpoints.available_steps(workdir)
  assert steps and max(steps) <= bad_step
  state = inference.restore(workdir).state
  assert all(np.isfinite(np.asarray(x)).all()
             for x in jax.tree.leaves(state["params"]))


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_train_in_lockstep_with_four_local_devices(tmp_path):
  args = ["--config=configs/quickstart.py", "--config.dataset.name=cifar10",
          "--config.batch_size=8", "--config.eval_batch_size=8",
          "--config.num_train_steps=6", "--config.checkpoint.every_steps=3",
          "--config.log_every_steps=1", "--config.model.dropout_rate=0.0",
          "--config.progress_bar=False"]
  single = str(tmp_path / "single")
  out = run_cli([*args, f"--workdir={single}"], num_devices=4,
                mock_examples=24)
  assert out.returncode == 0, out.stderr[-3000:]

  multi = str(tmp_path / "multi")
  port = _free_port()
  # Process 0 is started by flags, process 1 by environment variables.
  procs = [run_cli([*args, f"--workdir={multi}",
                    f"--coordinator_address=127.0.0.1:{port}",
                    "--num_processes=2", "--process_id=0"],
                   num_devices=2, mock_examples=24, wait=False),
           run_cli([*args, f"--workdir={multi}"], num_devices=2,
                   mock_examples=24, wait=False,
                   env={"ADVJAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}",
                        "ADVJAX_NUM_PROCESSES": "2",
                        "ADVJAX_PROCESS_ID": "1"})]
  outs = [p.communicate(timeout=300) for p in procs]
  for p, (stdout, stderr) in zip(procs, outs):
    assert p.returncode == 0, stderr[-3000:]
  assert "4 device(s) on 2 host(s)" in outs[0][0]

  def losses(workdir):
    return [r["train/loss"] for r in read_metrics(workdir) if "train/loss" in r]
  assert len(losses(multi)) == 6
  np.testing.assert_allclose(losses(multi), losses(single), rtol=1e-5)
  _params_equal(inference.restore(multi).params,
                inference.restore(single).params, rtol=1e-4, atol=1e-6)


def test_distillation_config_trains_teacher_and_student_and_compares(tmp_path):
  workdir = str(tmp_path / "distill")
  out = run_cli(["--config=configs/distillation_fashion_mnist.py",
                 "--config.num_train_steps=4", "--config.batch_size=16",
                 "--config.eval_batch_size=16",
                 "--config.distill.eval_examples=32",
                 "--config.progress_bar=False", f"--workdir={workdir}"],
                mock_examples=64)
  assert out.returncode == 0, out.stderr[-3000:]
  teacher = inference.restore(os.path.join(workdir, "teacher"))
  student = inference.restore(os.path.join(workdir, "student"))
  assert teacher.config.temperature == student.config.temperature == 20.0
  assert student.config.distill.teacher_workdir == os.path.join(workdir,
                                                                "teacher")
  assert not teacher.config.distill.teacher_workdir
  with open(os.path.join(workdir, "distillation.md")) as f:
    table = f.read()
  assert "| teacher |" in table and "| student |" in table
  assert "FGSM eps=0.1" in table
