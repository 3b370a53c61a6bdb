"""`gs://` paths everywhere, against the in-memory emulator (tests/conftest.py).

The fixture `gcs_dir` is a fresh `gs://advjax-test/<test>-<id>` folder.
"""

import io
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.parse
import urllib.request
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from advjax import checkpoints, fileio, inference, input_pipeline, metric_writers
from tests import gcs_emulator
from tests.helpers import ROOT, python_path, run_cli, write_idx_gz
from tests.netguard import sitecustomize as netguard

# One worker runs this module, so its module fixtures are built once
# (pyproject.toml: --dist=loadgroup).
pytestmark = pytest.mark.xdist_group("gcs")


def _run_python(code: str, timeout: float = 120) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-c", textwrap.dedent(code)],
                        cwd=ROOT, capture_output=True, text=True,
                        timeout=timeout,
                        env={**os.environ, "PYTHONPATH": python_path()})


# ---------------------------------------------------------------------------
# The test environment itself.


def test_guard_refuses_other_machines_here_and_in_subprocesses(gcs):
  log = os.environ[netguard.LOG_VAR]
  start = os.path.getsize(log)
  try:
    # ForbiddenConnection, from whichever copy of the module installed it.
    refused = pytest.raises(ConnectionRefusedError, match="may only connect")
    with socket.socket() as s, refused:
      s.connect(("192.0.2.1", 80))  # TEST-NET-1: never routed
    with pytest.raises(ConnectionRefusedError, match="may only connect"):
      socket.getaddrinfo("storage.googleapis.com", 443)
    out = _run_python("""
        import socket
        socket.create_connection(("192.0.2.1", 80), timeout=1)
    """)
    assert out.returncode != 0
    assert "ForbiddenConnection" in out.stderr
    with open(log, encoding="utf-8") as f:
      f.seek(start)
      attempts = f.read()
    assert attempts.count("connection to ('192.0.2.1', 80)") == 2
    assert "DNS lookup of 'storage.googleapis.com'" in attempts
  finally:
    os.truncate(log, start)  # Expected attempts: do not fail this test.
  with urllib.request.urlopen(f"{gcs.url}/storage/v1/b/{gcs.bucket}") as r:
    assert r.status == 200  # 127.0.0.1 is allowed


def test_emulator_moves_objects_and_serves_ranges_and_conditions(gcs_dir, gcs):
  data = bytes(range(256)) * 4
  fileio.write_bytes(f"{gcs_dir}/a.bin", data)
  key = gcs_dir.split("/", 3)[3]
  quote = lambda k: urllib.parse.quote(k, safe="")  # pylint: disable=unnecessary-lambda-assignment
  request = urllib.request.Request(
      f"{gcs.url}/download/storage/v1/b/{gcs.bucket}/o/{quote(key + '/a.bin')}"
      "?alt=media", headers={"Range": "bytes=-10"})
  with urllib.request.urlopen(request) as r:
    assert r.read() == data[-10:]
    generation = r.headers["x-goog-generation"]
  request = urllib.request.Request(
      f"{gcs.url}/storage/v1/b/{gcs.bucket}/o/{quote(key + '/a.bin')}"
      f"?alt=media&ifGenerationNotMatch={generation}")
  with pytest.raises(urllib.error.HTTPError, match="304"):
    urllib.request.urlopen(request)  # pylint: disable=consider-using-with
  request = urllib.request.Request(
      f"{gcs.url}/storage/v1/b/{gcs.bucket}/o/{quote(key + '/a.bin')}"
      f"/moveTo/o/{quote(key + '/b.bin')}", method="POST")
  with urllib.request.urlopen(request) as r:
    assert json.load(r)["name"] == key + "/b.bin"
  assert fileio.listdir(gcs_dir) == ["b.bin"]
  assert fileio.read_bytes(f"{gcs_dir}/b.bin") == data


def test_emulator_variables_leave_no_client_pointing_elsewhere(gcs):
  env = gcs_emulator.env(1, 2, "/x")
  assert env["GOOGLE_APPLICATION_CREDENTIALS"] is None
  for key, value in env.items():
    if value and "://" in value:
      assert value.startswith("http://127.0.0.1:"), key
  for key in ("STORAGE_EMULATOR_HOST", "TENSORSTORE_GCS_HTTP_URL",
              "CLOUD_STORAGE_EMULATOR_ENDPOINT"):
    assert os.environ[key] == gcs.url


# ---------------------------------------------------------------------------
# advjax.fileio


@pytest.fixture(params=["local", "gcs"])
def folder(request, tmp_path, gcs_dir):
  return str(tmp_path / "d") if request.param == "local" else gcs_dir


def test_files_are_written_read_and_listed_alike_locally_and_on_gcs(folder):
  assert not fileio.exists(folder)
  fileio.write_text(fileio.join(folder, "sub", "a.txt"), "héllo")
  fileio.write_bytes(fileio.join(folder, "b.bin"), b"\0\1")
  fileio.write_text(fileio.join(folder, "b.bin"), "replaced")
  assert fileio.read_text(fileio.join(folder, "sub", "a.txt")) == "héllo"
  assert fileio.read_bytes(fileio.join(folder, "b.bin")) == b"replaced"
  assert fileio.listdir(folder) == ["b.bin", "sub"]  # no temporary files
  assert fileio.isdir(fileio.join(folder, "sub"))
  assert fileio.isfile(fileio.join(folder, "b.bin"))
  assert not fileio.isfile(fileio.join(folder, "sub"))
  fileio.remove(fileio.join(folder, "b.bin"))
  assert not fileio.exists(fileio.join(folder, "b.bin"))


def test_resolve_makes_local_paths_absolute_and_leaves_urls_alone(
    monkeypatch, tmp_path):
  monkeypatch.chdir(tmp_path)
  monkeypatch.setenv("HOME", "/home/someone")
  assert fileio.resolve("run") == str(tmp_path / "run")
  assert fileio.resolve("~/run") == "/home/someone/run"
  assert fileio.resolve("gs://bucket/run/") == "gs://bucket/run"
  assert fileio.join("gs://bucket/run", "checkpoints") == (
      "gs://bucket/run/checkpoints")
  assert checkpoints.checkpoint_dir("gs://b/run") == "gs://b/run/checkpoints"
  assert fileio.is_remote("gs://b") and not fileio.is_remote("/tmp/gs:")


def test_a_process_sees_files_another_process_wrote_after_it_listed(
    gcs_dir):
  fileio.write_text(fileio.join(gcs_dir, "a"), "1")
  assert fileio.listdir(gcs_dir) == ["a"]
  out = _run_python(f"""
      from advjax import fileio
      fileio.write_text({fileio.join(gcs_dir, 'b')!r}, "2")
  """)
  assert out.returncode == 0, out.stderr[-3000:]
  assert fileio.listdir(gcs_dir) == ["a", "b"]  # no stale listing cache
  assert fileio.exists(fileio.join(gcs_dir, "b"))


def test_uploaded_tree_keeps_its_layout(tmp_path, gcs_dir):
  (tmp_path / "v" / "x").mkdir(parents=True)
  (tmp_path / "v" / "x" / "data").write_bytes(b"d")
  (tmp_path / "v" / "info.json").write_text("{}")
  fileio.upload_tree(str(tmp_path / "v"), gcs_dir, last=("info.json",))
  assert fileio.listdir(gcs_dir) == ["info.json", "x"]
  assert fileio.read_bytes(fileio.join(gcs_dir, "x", "data")) == b"d"


# ---------------------------------------------------------------------------
# metrics.jsonl


def _steps(path):
  return [r["step"] for r in fileio.read_jsonl(path)]


def test_metrics_log_holds_each_step_once_after_a_resume(folder):
  path = fileio.join(folder, "metrics.jsonl")
  log = fileio.MetricsLog(path, resume_step=0, flush_secs=1e9)
  for step in range(1, 6):
    log.write({"step": step, "loss": 1.0 / step})
  log.flush()  # checkpoint at step 5
  for step in range(6, 9):
    log.write({"step": step, "loss": float("nan")})
  log.flush()  # a timed flush past the checkpoint
  log.write({"step": 9})
  del log  # killed: step 9 is lost on Cloud Storage, kept locally
  assert _steps(path)[:8] == list(range(1, 9))

  log = fileio.MetricsLog(path, resume_step=5, flush_secs=1e9)
  assert _steps(path) == [1, 2, 3, 4, 5]  # dropped at once
  for step in range(6, 11):
    log.write({"step": step})
  log.close()
  records = fileio.read_jsonl(path)
  assert [r["step"] for r in records] == list(range(1, 11))
  assert records[1]["loss"] == 0.5


def test_metrics_log_on_gcs_is_visible_from_the_first_record(gcs_dir):
  path = fileio.join(gcs_dir, "metrics.jsonl")
  log = fileio.MetricsLog(path, flush_secs=1e9)
  log.write({"step": 1})
  log.write({"step": 2})
  assert _steps(path) == [1]  # written once at once, then every flush_secs
  log.close()
  assert _steps(path) == [1, 2]


def test_local_metrics_log_survives_a_line_cut_short(tmp_path):
  path = str(tmp_path / "metrics.jsonl")
  with open(path, "w", encoding="utf-8") as f:
    f.write('{"step": 1}\n{"step": 2}\n{"st')
  log = fileio.MetricsLog(path, resume_step=2)
  log.write({"step": 3})
  log.close()
  assert _steps(path) == [1, 2, 3]


def _events(data: bytes) -> list[bytes]:
  """The records of a TFRecord file (length, crc, data, crc)."""
  records, i = [], 0
  while i < len(data):
    (n,) = struct.unpack("<Q", data[i:i + 8])
    records.append(data[i + 12:i + 12 + n])
    i += 16 + n
  return records


def test_metric_writer_puts_jsonl_tensorboard_and_pngs_on_gcs(gcs_dir):
  from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top
  writer = metric_writers.MetricWriter(gcs_dir, resume_step=0)
  writer.write_scalars(1, {"train/loss": jnp.float32(0.5)})
  paths = writer.write_images(1, {"samples": np.zeros((4, 6, 3), np.float32)})
  writer.write_scalars(2, {"train/loss": 0.25})
  writer.close()
  assert [r["train/loss"] for r in metric_writers.read_metrics(gcs_dir)] == [
      0.5, 0.25]
  assert paths == [f"{gcs_dir}/images/samples_0000001.png"]
  image = Image.open(io.BytesIO(fileio.read_bytes(paths[0])))
  assert image.size[0] >= 512 and image.getpixel((0, 0)) == (128, 128, 128)
  (events_file,) = fileio.listdir(fileio.join(gcs_dir, "tensorboard"))
  events = [event_pb2.Event.FromString(r) for r in _events(fileio.read_bytes(
      fileio.join(gcs_dir, "tensorboard", events_file)))]
  scalars = [(e.step, v.tag, v.simple_value) for e in events
             for v in e.summary.value if v.HasField("simple_value")]
  assert scalars == [(1, "train/loss", 0.5), (2, "train/loss", 0.25)]
  assert any(v.HasField("image") for e in events for v in e.summary.value)


def test_reports_tables_and_figures_go_to_gcs(gcs_dir):
  import importlib.util  # pylint: disable=g-import-not-at-top
  from advjax import evaluate  # pylint: disable=g-import-not-at-top
  evaluate.write_report(gcs_dir, "robustness", "| a |\n", {"acc": 0.5},
                        {"examples": np.zeros((4, 4, 1), np.float32)})
  assert fileio.listdir(gcs_dir) == ["examples.png", "robustness.json",
                                     "robustness.md"]
  assert json.loads(fileio.read_text(f"{gcs_dir}/robustness.json")) == {
      "acc": 0.5}
  spec = importlib.util.spec_from_file_location(
      "study", os.path.join(ROOT, "experiments", "study.py"))
  study = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(study)
  row = {k: 0.5 for k, _, _ in study.columns(["fgsm"])} | {"mode": "none"}
  row["made_with"] = {"eps": 0.1, "num_examples": 2, "attacks": ["fgsm"],
                      "attack_settings": {}, "unrestricted_steps": 1}
  markdown = study.write_table([row], gcs_dir, command="c")
  assert fileio.read_text(f"{gcs_dir}/study.md") == markdown
  # mode, seed (0 when the row has none), then the columns.
  assert fileio.read_text(f"{gcs_dir}/study.csv").splitlines()[1].startswith(
      "none,0,0.5")
  curve = ([1, 2], [0.1, 0.2])
  study.plot_curves({"none": {"eval/accuracy": curve,
                              "eval/gan_sample_accuracy": curve}},
                    f"{gcs_dir}/curves.png")
  assert Image.open(io.BytesIO(fileio.read_bytes(
      f"{gcs_dir}/curves.png"))).format == "PNG"


# ---------------------------------------------------------------------------
# Checkpoints (orbax: arrays through tensorstore, the rest through epath).


def test_checkpoints_on_gcs_save_list_and_restore_in_a_fresh_process(
    gcs_dir):
  ckpt = checkpoints.Checkpointer(gcs_dir, checkpoints.Settings(
      keep=2, best_metric="acc", async_save=True))
  for step, acc in ((1, 0.9), (2, 0.1), (3, 0.2), (4, None)):
    state = {"params": {"w": jnp.full((3,), float(step))},
             "step": jnp.asarray(step, jnp.int32)}
    ckpt.save(step, state, {"trainer": "classifier", "config": {
        "checkpoint": {"best_metric": "acc"}}},
              metrics=None if acc is None else {"acc": acc})
  ckpt.close()
  ckpt = checkpoints.Checkpointer(gcs_dir, checkpoints.Settings(keep=2))
  assert ckpt.all_steps() == [1, 3, 4]  # the last 2 and the best
  state, meta = ckpt.restore_latest({"params": {"w": jnp.zeros(3)},
                                     "step": jnp.asarray(0, jnp.int32)})
  ckpt.close()
  assert meta["step"] == 4
  np.testing.assert_array_equal(state["params"]["w"], np.full(3, 4.0))

  out = _run_python(f"""
      from advjax import checkpoints
      print(checkpoints.available_steps({gcs_dir!r}))
      r = checkpoints.load({gcs_dir!r}, best=True)
      print(r.step, r.state["params"]["w"].tolist())
  """)
  assert out.returncode == 0, out.stderr[-3000:]
  assert out.stdout.splitlines() == ["[1, 3, 4]", "1 [1.0, 1.0, 1.0]"]


# ---------------------------------------------------------------------------
# Datasets.


def test_dataset_copied_to_gcs_reads_like_the_local_one(fashion_dir, gcs_dir):
  fileio.upload_tree(fashion_dir, gcs_dir)
  source = input_pipeline.get_source("fashion_mnist", "test", gcs_dir)
  local = input_pipeline.get_source("fashion_mnist", "test", fashion_dir)
  assert len(source) == len(local) == 10000
  indices = [0, 1, 4999, 9999]
  for got, want in zip(source.__getitems__(indices),
                       local.__getitems__(indices)):
    np.testing.assert_array_equal(got["image"], want["image"])
    assert got["label"] == want["label"]


def test_cli_prepares_a_dataset_straight_into_gcs(tmp_path, gcs_dir,
                                                  monkeypatch, capsys):
  pytest.importorskip("tensorflow")
  rng = np.random.default_rng(0)
  images = {"train": rng.integers(0, 256, (6, 28, 28)),
            "t10k": rng.integers(0, 256, (3, 28, 28))}
  for prefix, array in images.items():
    write_idx_gz(tmp_path / f"{prefix}-images-idx3-ubyte.gz", array)
    write_idx_gz(tmp_path / f"{prefix}-labels-idx1-ubyte.gz",
                  np.arange(len(array)))
  monkeypatch.setenv(input_pipeline.FASHION_MNIST_ENV, str(tmp_path))
  data_dir = fileio.join(gcs_dir, "tfds")
  assert input_pipeline.main(["--dataset=fashion_mnist",
                              f"--data_dir={data_dir}"]) == 0
  assert f"ready in {data_dir}/fashion_mnist/" in capsys.readouterr().out
  test = input_pipeline.get_source("fashion_mnist", "test", data_dir)
  assert len(test) == 3
  for i in range(3):
    np.testing.assert_array_equal(test[i]["image"][..., 0],
                                  images["t10k"][test[i]["label"]])


# ---------------------------------------------------------------------------
# End to end: a run in a bucket, preempted and resumed.


@pytest.fixture(scope="module")
def small_fashion_dir(tmp_path_factory):
  """Fashion-MNIST cut to its first 640 training and 200 test images.

  Reading through the emulator costs one HTTP request per image (array_record
  reads each record with its own range request), so the end-to-end run uses
  a subset of the real data.
  """
  pytest.importorskip("tensorflow")
  raw = input_pipeline.FASHION_MNIST_DIR
  if not input_pipeline._has_local_fashion_mnist(raw):  # pylint: disable=protected-access
    pytest.skip("apt-get install dataset-fashion-mnist")
  folder = tmp_path_factory.mktemp("raw")
  for split, n in (("train", 640), ("t10k", 200)):
    for kind in ("images-idx3", "labels-idx1"):
      name = f"{split}-{kind}-ubyte.gz"
      write_idx_gz(folder / name,
                   input_pipeline.read_idx_gz(os.path.join(raw, name))[:n])
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  with mock.patch.dict(os.environ,
                       {input_pipeline.FASHION_MNIST_ENV: str(folder)}):
    input_pipeline.prepare("fashion_mnist", data_dir)
  return data_dir


@pytest.mark.slow
def test_preempted_run_in_a_bucket_resumes_to_a_local_runs_params(
    small_fashion_dir, gcs_dir, tmp_path):
  fashion_dir = small_fashion_dir
  data_dir = fileio.join(gcs_dir, "tfds")
  fileio.upload_tree(fashion_dir, data_dir)
  args = ["--config=configs/quickstart.py", "--config.model.widths=(8, 16)",
          "--config.model.hidden=16", "--config.batch_size=32",
          "--config.eval_batch_size=200", "--config.num_train_steps=120",
          "--config.checkpoint.every_steps=10", "--config.log_every_steps=10",
          "--config.eval_every_steps=60", "--config.progress_bar=False"]
  local = str(tmp_path / "local")
  out = run_cli([*args, f"--workdir={local}",
                 f"--config.dataset.data_dir={fashion_dir}"], mock_data=False)
  assert out.returncode == 0, out.stderr[-3000:]

  workdir = fileio.join(gcs_dir, "run")
  gcs_args = [*args, f"--workdir={workdir}",
              f"--config.dataset.data_dir={data_dir}"]
  proc = run_cli(gcs_args, mock_data=False, wait=False)
  try:
    deadline = time.time() + 240
    while not checkpoints.available_steps(workdir):
      assert proc.poll() is None, proc.communicate()[1][-3000:]
      assert time.time() < deadline, "no checkpoint in 240 s"
      time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)  # preempted; nothing local survives
  finally:
    proc.communicate()
  assert proc.returncode == -signal.SIGKILL
  saved = max(checkpoints.available_steps(workdir))
  assert saved < 120

  out = run_cli(gcs_args, mock_data=False)
  assert out.returncode == 0, out.stderr[-3000:]
  assert f"resumed from step {saved}" in out.stdout
  resumed, reference = inference.restore(workdir), inference.restore(local)
  assert resumed.step == reference.step == 120
  for x, y in zip(jax.tree.leaves(resumed.state),
                  jax.tree.leaves(reference.state)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))

  records = metric_writers.read_metrics(workdir)
  assert [r["step"] for r in records if "train/loss" in r] == list(
      range(10, 121, 10))
  assert [r["step"] for r in records if "eval/accuracy" in r] == [60, 120]
  assert fileio.listdir(fileio.join(workdir, "tensorboard"))

  # A notebook in a fresh process, without EPATH_USE_TF from the tests:
  # advjax.fileio keeps etils.epath off TensorFlow.
  images = input_pipeline.to_float_image(np.stack(
      [input_pipeline.get_source("fashion_mnist", "test", fashion_dir)[i][
          "image"] for i in range(8)]))
  np.save(tmp_path / "images.npy", images)
  env = {k: v for k, v in os.environ.items() if k != "EPATH_USE_TF"}
  code = f"""
      import sys
      import numpy as np
      from advjax import inference
      r = inference.restore({workdir!r})
      print(r.predict(np.load({str(tmp_path / 'images.npy')!r})).tolist())
      print("tensorflow imported:", "tensorflow" in sys.modules)
  """
  out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)],
                       cwd=ROOT, capture_output=True, text=True, timeout=120,
                       env={**env, "PYTHONPATH": python_path()})
  assert out.returncode == 0, out.stderr[-3000:]
  assert out.stdout.splitlines() == [
      str(reference.predict(images).tolist()), "tensorflow imported: False"]


@pytest.mark.slow
def test_reports_gans_and_the_study_write_into_the_bucket(small_fashion_dir,
                                                          gcs_dir):
  """Everything a run writes lands in the bucket: a classifier and its
  robustness report (the CLI, in a fresh process), an AC-GAN run, and the
  study's small preset (shrunk), all reading the dataset from the bucket."""
  from advjax import trainers  # pylint: disable=g-import-not-at-top
  from tests.helpers import load_config  # pylint: disable=g-import-not-at-top
  data_dir = fileio.join(gcs_dir, "tfds")
  fileio.upload_tree(small_fashion_dir, data_dir)

  classifier = fileio.join(gcs_dir, "classifier")
  config = load_config("quickstart")
  config.dataset.data_dir = data_dir
  config.model.widths, config.model.hidden = (4, 8), 8
  config.batch_size, config.eval_batch_size = 32, 200
  config.num_train_steps, config.progress_bar = 4, False
  trainers.run(config, classifier)
  out = subprocess.run(
      [sys.executable, "-m", "advjax.evaluate", "--mode=robustness",
       f"--workdir={classifier}", "--num_examples=20", "--batch_size=10",
       "--eps=0.1", "--attacks=fgsm,pgd", "--attack.pgd.num_steps=1"],
      cwd=ROOT,
      capture_output=True, text=True, timeout=300,
      env={**os.environ, "PYTHONPATH": python_path()})
  assert out.returncode == 0, out.stderr[-3000:]
  report = fileio.join(classifier, "eval")
  assert {"robustness.md", "robustness.json",
          "robustness_eps0.1.png"} <= set(fileio.listdir(report))
  assert json.loads(fileio.read_text(fileio.join(
      report, "robustness.json")))["num_examples"] == 20

  gan = fileio.join(gcs_dir, "gan")
  config = load_config("quickstart_gan")
  config.dataset.data_dir = data_dir
  config.model.generator.width = config.model.discriminator.width = 4
  config.model.latent_dim = 8
  config.batch_size, config.num_train_steps, config.progress_bar = 16, 2, False
  config.eval_every_steps = config.checkpoint.every_steps = 2
  config.sample.num_columns = 2
  trainers.run(config, gan)
  assert any(name.startswith("samples_")
             for name in fileio.listdir(fileio.join(gan, "images")))
  assert inference.restore(gan).sample(3, n=2).shape == (2, 28, 28, 1)

  spec = __import__("importlib.util").util.spec_from_file_location(
      "study", os.path.join(ROOT, "experiments", "study.py"))
  study = __import__("importlib.util").util.module_from_spec(spec)
  spec.loader.exec_module(study)
  settings = study.preset_settings(
      "small", num_examples=20,
      attack_settings={"pgd": {"num_steps": 1},
                       "unrestricted": {"num_steps": 1}},
      unrestricted={"num_samples": 4},
      classifier_overrides=[f"dataset.data_dir={json.dumps(data_dir)}",
                            "model.widths=[4]", "model.hidden=8",
                            "batch_size=32", "eval_batch_size=200",
                            "num_train_steps=2", "eval_every_steps=2",
                            "progress_bar=false",
                            "adversarial_training.unrestricted.num_steps=1",
                            "eval.gan_samples=20"])
  workdir = fileio.join(gcs_dir, "study")
  study.run_study(workdir, gan_config="unused", classifier_config=os.path.join(
      ROOT, "configs", "study_fashion_mnist.py"), modes=["none", "gan"],
                  gan_workdir=gan, log=lambda line: None, **settings)
  assert {"study.md", "study.csv", "accuracy_curves.png", "unrestricted_none.png",
          "unrestricted_gan.png"} <= set(fileio.listdir(workdir))
