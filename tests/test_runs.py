"""Runs that cannot be lost: the work directory's lock, the config check on
resume, verified checkpoints, stop signals and one line for every mistake
(through the real command line, on mock data)."""

import errno
import glob
import os
import signal
import time

import numpy as np
import pytest
import tensorflow_datasets as tfds

from advjax import checkpoints, inference, trainers
from advjax.errors import UserError
from advjax.metric_writers import read_metrics
from tests.helpers import load_config, run_cli

pytestmark = pytest.mark.slow

TINY = ["--config=configs/quickstart.py", "--config.model.widths=(4, 8)",
        "--config.model.hidden=8", "--config.batch_size=8",
        "--config.eval_batch_size=8", "--config.checkpoint.every_steps=2",
        "--config.checkpoint.keep=10", "--config.log_every_steps=1",
        "--config.eval_every_steps=100", "--config.progress_bar=False",
        "--config.checkpoint.async_save=False"]


def _run(workdir, *flags, steps=4, wait=True):
  return run_cli([*TINY, f"--config.num_train_steps={steps}", *flags,
                  f"--workdir={workdir}"], num_devices=1, mock_examples=32,
                 wait=wait)


def _error_lines(out):
  return [l for l in out.stderr.strip().splitlines()
          if l.startswith("advjax: error:")]


def _one_error(out, status=2):
  assert out.returncode == status, out.stderr[-3000:]
  lines = _error_lines(out)
  assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr[-3000:]
  return lines[0]


def _step_files(workdir):
  """The step folders (and folders set aside) of the run's checkpoints."""
  return sorted(n for n in os.listdir(os.path.join(workdir, "checkpoints"))
                if n[0].isdigit())


def test_changed_config_is_refused_and_keeps_every_checkpoint(tmp_path):
  workdir = str(tmp_path / "run")
  assert _run(workdir).returncode == 0
  before = _step_files(workdir)
  assert before == ["2", "4"]
  for flags in (["--config.model.widths=(8, 8)"], ["--config.seed=1"],
                ["--config.optimizer.name=sgd"]):
    line = _one_error(_run(workdir, *flags, steps=8))
    field = flags[0].split("=")[0][len("--config."):]
    assert field in line and "--allow_config_change" in line
    assert "another --workdir" in line
    assert _step_files(workdir) == before
  # A longer run and other intervals only extend or observe it.
  out = _run(workdir, "--config.log_every_steps=2", steps=6)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "resuming with a changed" in out.stdout
  assert "resumed from step 4" in out.stdout
  assert _step_files(workdir) == ["2", "4", "6"]
  # Allowed, a change the saved state fits continues the run...
  out = _run(workdir, "--allow_config_change",
             "--config.optimizer.learning_rate=0.001", steps=8)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "resumed from step 6" in out.stdout
  # ...and one it does not fit is one line; nothing is moved or deleted.
  line = _one_error(_run(workdir, "--allow_config_change",
                         "--config.model.widths=(8, 8)", steps=10))
  assert "does not fit" in line and "another --workdir" in line
  assert _step_files(workdir) == ["2", "4", "6", "8"]
  records = read_metrics(workdir)
  steps = [r["step"] for r in records if "train/loss" in r]
  # Each logged step once (steps 5-6 were logged every 2 steps).
  assert steps == [1, 2, 3, 4, 6, 7, 8]


def _newest_state_files(workdir):
  newest = max(checkpoints.available_steps(workdir))
  pattern = os.path.join(workdir, "checkpoints", str(newest), "state", "**",
                         "*")
  files = [p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p)]
  return newest, sorted(files, key=os.path.getsize)


def test_corrupt_newest_step_is_set_aside_and_the_run_completes(tmp_path):
  workdir = str(tmp_path / "run")
  assert _run(workdir).returncode == 0
  newest, files = _newest_state_files(workdir)
  with open(files[-1], "r+b") as f:  # truncate the largest array file
    f.truncate(os.path.getsize(files[-1]) // 2)
  out = _run(workdir, steps=6)
  assert out.returncode == 0, out.stderr[-3000:]
  assert f"checkpoint step {newest} cannot be read" in out.stderr
  assert "resumed from step 2" in out.stdout
  names = _step_files(workdir)
  assert "2" in names and "4" in names and "6" in names
  aside = [n for n in names if n.startswith(f"{newest}.unreadable-")]
  assert len(aside) == 1  # moved aside, never deleted
  # Running again finds everything readable: no crash loop.
  again = _run(workdir, steps=6)
  assert again.returncode == 0, again.stderr[-3000:]


def test_flipped_bytes_are_caught_by_the_digest(tmp_path):
  workdir = str(tmp_path / "run")
  assert _run(workdir).returncode == 0
  newest, files = _newest_state_files(workdir)
  with open(files[-1], "r+b") as f:
    f.seek(max(os.path.getsize(files[-1]) // 2 - 32, 0))
    data = f.read(64)
    f.seek(-len(data), os.SEEK_CUR)
    f.write(bytes(b ^ 0xFF for b in data))
  with pytest.warns(RuntimeWarning, match="differs from its digest"):
    restored = checkpoints.load(workdir)
  assert restored.step == newest - 2


def test_update_to_infinite_parameters_is_never_saved(tmp_path):
  workdir = str(tmp_path / "run")
  out = _run(workdir, "--config.optimizer.learning_rate=1e39",
             "--config.optimizer.warmup_steps=0",
             "--config.optimizer.schedule=constant", steps=4)
  line = _one_error(out, status=3)
  assert "non-finite at step 0" in line
  assert not os.path.isdir(os.path.join(workdir, "checkpoints")) or (
      not checkpoints.available_steps(workdir))


def _wait_for(predicate, proc, seconds=300):
  deadline = time.time() + seconds
  while not predicate():
    assert proc.poll() is None, proc.communicate()[1][-3000:]
    assert time.time() < deadline
    time.sleep(0.1)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_second_run_is_refused_and_a_signal_stops_at_a_checkpoint(
    tmp_path, sig):
  workdir = str(tmp_path / "run")
  first = _run(workdir, "--config.checkpoint.every_steps=1000000",
               steps=1000000, wait=False)
  try:
    _wait_for(lambda: os.path.isfile(os.path.join(workdir, "metrics.jsonl"))
              and read_metrics(workdir), first)
    second = _run(workdir, "--config.checkpoint.every_steps=1000000",
                  steps=1000000)
    line = _one_error(second)
    assert "in use by another run" in line and str(first.pid) in line
    os.kill(first.pid, sig)
    _, err = first.communicate(timeout=120)
  finally:
    if first.poll() is None:
      first.kill()
  assert first.returncode == 128 + sig, err[-3000:]
  last = err.strip().splitlines()[-1]
  name = signal.Signals(sig).name
  assert last.startswith(f"advjax: stopped by {name} at step "), err[-3000:]
  step = int(last.split(" at step ")[1].split(";")[0])
  assert checkpoints.available_steps(workdir) == [step]
  assert not os.path.exists(os.path.join(workdir, "advjax.lock"))
  out = _run(workdir, steps=step + 2)
  assert out.returncode == 0, out.stderr[-3000:]
  assert f"resumed from step {step}" in out.stdout
  logged = [r["step"] for r in read_metrics(workdir) if "train/loss" in r]
  assert logged == list(range(1, step + 3))


def test_finished_run_rerun_with_fewer_steps_says_so(tmp_path):
  workdir = str(tmp_path / "run")
  assert _run(workdir).returncode == 0
  line = _one_error(_run(workdir, steps=2))
  assert "already at step 4" in line and "2 steps" in line


CONFIGS = {
    "syntax.py": "def get_config(:\n  pass\n",
    "raises.py": "def get_config():\n  raise RuntimeError('boom')\n",
    "noget.py": "x = 1\n",
}


@pytest.mark.parametrize("args, needle", [
    ([], "--config=configs/<experiment>.py is required"),
    (["--config=configs/quickstart.py"], "--workdir=DIR is required"),
    (["--config=configs/quickstart.py", "--workdir=W", "extra"],
     "unexpected argument(s) 'extra'"),
    (["--config=configs/nope.py", "--workdir=W"], "does not exist"),
    (["--config=CFG/syntax.py", "--workdir=W"], "syntax error"),
    (["--config=CFG/raises.py", "--workdir=W"], "raised RuntimeError: boom"),
    (["--config=CFG/noget.py", "--workdir=W"], "defines no get_config()"),
    ([*TINY, "--config.optimizer.learning_rate=-0.1", "--workdir=W"],
     "optimizer.learning_rate must be > 0"),
    ([*TINY, "--config.trainer=gan", "--workdir=W"], "configs/quickstart_gan"),
    ([*TINY, "--config.optimizer.learning_rte=1", "--workdir=W"],
     "did you mean optimizer.learning_rate?"),
    ([*TINY, "--config.batch_size=abc", "--workdir=W"], "batch_size"),
    ([*TINY, "--nonsense=1", "--workdir=W"], "nonsense"),
    ([*TINY, "--workdir=FILE"], "is not a directory"),
])
def test_command_line_mistakes_are_one_line_with_status_2(tmp_path, args,
                                                         needle):
  cfg = tmp_path / "cfg"
  cfg.mkdir()
  for name, text in CONFIGS.items():
    (cfg / name).write_text(text)
  (tmp_path / "afile").write_text("")
  args = [a.replace("CFG", str(cfg)).replace("=W", f"={tmp_path / 'w'}")
          .replace("=FILE", f"={tmp_path / 'afile'}") for a in args]
  line = _one_error(run_cli(args, num_devices=1, mock_examples=16))
  assert needle in line, line


def test_an_override_given_twice_takes_its_last_value():
  from advjax import cli
  argv = ["prog", "--config=x.py", "--config.model.widths=(8, 16)",
          "--config.seed=1", "--config.model.widths=(4, 4)"]
  assert cli.last_wins(argv) == ["prog", "--config=x.py", "--config.seed=1",
                                 "--config.model.widths=(4, 4)"]


def _tiny_config():
  config = load_config("quickstart")
  config.model.widths, config.model.hidden = (4,), 8
  config.batch_size = config.eval_batch_size = 8
  config.num_train_steps = 2
  config.checkpoint.every_steps = 1
  config.progress_bar = False
  return config


def test_disk_full_is_one_line_naming_the_path(tmp_path, monkeypatch):
  workdir = str(tmp_path / "run")
  path = os.path.join(workdir, "checkpoints", "2")
  save = checkpoints.ocp.CheckpointManager.save

  def full(self, step, *args, **kwargs):
    if step == 2:
      raise OSError(errno.ENOSPC, "No space left on device", path)
    return save(self, step, *args, **kwargs)

  monkeypatch.setattr(checkpoints.ocp.CheckpointManager, "save", full)
  with tfds.testing.mock_data(num_examples=16):
    with pytest.raises(UserError, match="no space left on device writing "
                       + path):
      trainers.run(_tiny_config(), workdir)
  # What was saved before the disk filled up survives.
  assert checkpoints.available_steps(workdir) == [1]


def test_old_checkpoints_with_frozen_models_in_the_state_say_how_to_proceed(
    tmp_path):
  workdir = str(tmp_path / "run")
  config = _tiny_config()
  ckpt = checkpoints.Checkpointer(workdir, checkpoints.Settings(
      async_save=False))
  state = {"step": np.int32(1), "params": {"w": np.zeros(3, np.float32)},
           "augment_vars": {"generator": {"w": np.zeros(2, np.float32)}}}
  ckpt.save(1, state, {"trainer": "classifier", "data_position": {"step": 1},
                       "config": checkpoints.config_to_json(config)})
  ckpt.close()
  with tfds.testing.mock_data(num_examples=16):
    with pytest.raises(checkpoints.StateMismatch,
                       match="kept frozen models .*advjax.inference.restore"):
      trainers.run(config, workdir)
  assert checkpoints.available_steps(workdir) == [1]


def test_predict_and_sample_refuse_malformed_requests(tmp_path):
  workdir = str(tmp_path / "cls")
  with tfds.testing.mock_data(num_examples=16):
    trainers.run(_tiny_config(), workdir)
  classifier = inference.restore(workdir)
  with pytest.raises(UserError, match="NCHW"):
    classifier.predict(np.zeros((2, 1, 28, 28), np.float32))
  with pytest.raises(UserError, match=r"\[N, 28, 28, 1\]"):
    classifier.predict(np.zeros((2, 32, 32, 3), np.float32))
  assert classifier.predict(np.zeros((28, 28, 1))).shape == (1,)


def _free_port():
  import socket  # pylint: disable=g-import-not-at-top
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _two_processes(workdir, steps, env=None):
  port = _free_port()
  flags = [*TINY, f"--config.num_train_steps={steps}",
           "--config.checkpoint.every_steps=1000000",
           "--config.checkpoint.async_save=True", f"--workdir={workdir}",
           f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2"]
  return [run_cli([*flags, f"--process_id={i}"], num_devices=1,
                  mock_examples=32, wait=False, env=env) for i in range(2)]


def _communicate(procs, timeout=300):
  try:
    return [p.communicate(timeout=timeout) for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()


@pytest.mark.parametrize("sig, service", [
    (signal.SIGTERM, True),  # JAX's preemption service agrees on the step
    # The processes exchange the flag at log steps; SIGINT (one handler for
    # both signals, and tested alone above) keeps the suite's time.
    (signal.SIGINT, False)])
def test_signal_to_one_of_two_processes_stops_both_at_one_step(
    tmp_path, sig, service):
  workdir = str(tmp_path / "run")
  env = {"JAX_ENABLE_PREEMPTION_SERVICE": str(service).lower()}
  procs = _two_processes(workdir, steps=1000000, env=env)
  try:
    _wait_for(lambda: os.path.isfile(os.path.join(workdir, "metrics.jsonl"))
              and len(read_metrics(workdir)) >= 2, procs[0])
    assert procs[1].poll() is None
    os.kill(procs[1].pid, sig)  # the process without the lock
    outs = _communicate(procs)
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  stops = []
  name = signal.Signals(sig).name
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 128 + sig, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"advjax: stopped by {name}"), err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    stops.append(int(last.split(" at step ")[1].split(";")[0]))
  assert stops[0] == stops[1], stops
  step = stops[0]
  assert checkpoints.available_steps(workdir) == [step]
  assert not os.path.exists(os.path.join(workdir, "advjax.lock"))
  # Both resume from that step, in lockstep, and finish.
  procs = _two_processes(workdir, steps=step + 2, env=env)
  outs = _communicate(procs)
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  assert f"resumed from step {step}" in outs[0][0]
  logged = [r["step"] for r in read_metrics(workdir) if "train/loss" in r]
  assert logged == list(range(1, step + 3))
  assert checkpoints.available_steps(workdir) == [step, step + 2]


def test_a_stop_saves_before_evaluating_and_a_second_signal_cannot_cut_the_save(
    tmp_path, monkeypatch):
  from advjax import loop  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path / "run")
  config = _tiny_config()
  config.num_train_steps, config.eval_every_steps = 100, 3
  config.checkpoint.every_steps = 2
  save, close = checkpoints.Checkpointer.save, checkpoints.Checkpointer.close
  during_close = []

  def signalling_save(self, step, *args, **kwargs):
    if step == 2:  # the stop is pending at step 3, an evaluation step
      os.kill(os.getpid(), signal.SIGTERM)
    if step == 3:  # a second and third signal while the last save runs
      os.kill(os.getpid(), signal.SIGINT)
      os.kill(os.getpid(), signal.SIGTERM)
    return save(self, step, *args, **kwargs)

  def signalled_close(self):
    os.kill(os.getpid(), signal.SIGINT)  # still protected while committing
    during_close.append(signal.getsignal(signal.SIGINT))
    return close(self)

  monkeypatch.setattr(checkpoints.Checkpointer, "save", signalling_save)
  monkeypatch.setattr(checkpoints.Checkpointer, "close", signalled_close)
  previous = signal.getsignal(signal.SIGINT)
  with tfds.testing.mock_data(num_examples=16):
    with pytest.raises(loop.Stopped, match="stopped by SIGTERM at step 3;"):
      trainers.run(config, workdir)
  assert during_close and during_close[0] is not previous
  assert signal.getsignal(signal.SIGINT) is previous
  assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
  assert checkpoints.available_steps(workdir) == [2, 3]
  evaluated = [r["step"] for r in read_metrics(workdir)
               if any(k.startswith("eval/") for k in r)]
  assert 3 not in evaluated


def test_stop_signals_restore_a_handler_installed_in_c():
  import ctypes  # pylint: disable=g-import-not-at-top
  from advjax import loop  # pylint: disable=g-import-not-at-top
  libc = ctypes.CDLL(None)
  libc.signal.restype = ctypes.c_void_p
  libc.signal.argtypes = [ctypes.c_int, ctypes.c_void_p]

  def c_handler():
    return ctypes.c_void_p.from_buffer(loop._c_action(signal.SIGTERM)).value

  # SIG_IGN installed behind Python's back, as JAX installs its notifier.
  libc.signal(signal.SIGTERM, 1)
  try:
    assert c_handler() == 1
    with loop._StopSignals():
      assert c_handler() not in (None, 0, 1)
    assert c_handler() == 1  # not SIG_DFL
  finally:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


class _Lock:
  def __init__(self, lost):
    self.lost = lost

  def check(self):
    if self.lost:
      raise UserError("the work directory was taken over by host h")


@pytest.mark.parametrize("mine, theirs, lock_lost, expected", [
    (0, 0, False, None), (0, signal.SIGINT, False, signal.SIGINT),
    (signal.SIGTERM, 0, False, signal.SIGTERM), (0, 0, True, "taken over"),
    (0, -1, False, "process 0 lost")])
def test_processes_agree_on_a_stop_and_on_a_lost_lock(
    monkeypatch, mine, theirs, lock_lost, expected):
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  from advjax import loop  # pylint: disable=g-import-not-at-top
  stop = loop._StopSignals()
  stop.multi, stop.received = True, mine or None

  def allgather(x):  # this process and another one
    other = [0, 1] if theirs == -1 else [theirs, 0]
    return np.stack([np.asarray(x), np.asarray(other, np.int32)])

  monkeypatch.setattr(multihost_utils, "process_allgather", allgather)
  lock = _Lock(lock_lost) if lock_lost or theirs != -1 else None
  if isinstance(expected, str):
    with pytest.raises(UserError, match=expected):
      stop.pending(4, True, lock)
    return
  assert not stop.pending(3, False, lock)  # no exchange between log steps
  assert stop.pending(4, True, lock) == (expected is not None)
  assert stop.signum == expected


def test_writer_and_iterator_are_closed_when_the_checkpoint_close_fails(
    tmp_path, monkeypatch):
  from advjax import input_pipeline, metric_writers  # pylint: disable=g-import-not-at-top
  closed = []
  close = checkpoints.Checkpointer.close

  def failing_close(self):
    close(self)
    closed.append("ckpt")
    raise OSError(errno.EIO, "Input/output error", "checkpoints/2")

  for cls, name in ((metric_writers.MetricWriter, "writer"),
                    (input_pipeline.TrainIterator, "iterator")):
    def recording(self, cls=cls, name=name, orig=cls.close):
      closed.append(name)
      return orig(self)
    monkeypatch.setattr(cls, "close", recording)
  monkeypatch.setattr(checkpoints.Checkpointer, "close", failing_close)
  with tfds.testing.mock_data(num_examples=16):
    with pytest.raises(OSError, match="Input/output error"):
      trainers.run(_tiny_config(), str(tmp_path / "run"))
  assert sorted(closed) == ["ckpt", "iterator", "writer"]
  # A mistake found in the data (a batch larger than the dataset) closes the
  # checkpoints too.
  closed.clear()
  monkeypatch.setattr(checkpoints.Checkpointer, "close",
                      lambda self: (close(self), closed.append("ckpt")))
  config = _tiny_config()
  config.batch_size = 4096
  with tfds.testing.mock_data(num_examples=16):
    with pytest.raises(UserError):
      trainers.run(config, str(tmp_path / "other"))
  assert "ckpt" in closed
