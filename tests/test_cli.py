"""advjax.cli: one line, not a traceback, for trouble with credentials,
Cloud Storage, files and JSON, and for an interrupt outside the loop."""

import errno
import json
import os

import pytest
from absl import flags

from advjax import checkpoints, cli, fileio
from advjax.errors import UserError

if "workdir" not in flags.FLAGS:
  flags.DEFINE_string("workdir", None, "Work directory.")


def _run(main, capsys, *argv):
  with pytest.raises(SystemExit) as exit_info:
    cli.run(main, ["prog", *argv], required=(), config_flag=None)
  err = capsys.readouterr().err
  lines = err.strip().splitlines()
  assert len(lines) == 1 and "Traceback" not in err, err
  return exit_info.value.code, lines[0]


def _raiser(error):
  def main(argv):
    del argv
    raise error
  return main


def _auth_error():
  from google.auth import exceptions  # pylint: disable=g-import-not-at-top
  return exceptions.DefaultCredentialsError(
      "Your default credentials were not found.")


def _http_error():
  from gcsfs.retry import HttpError  # pylint: disable=g-import-not-at-top
  return HttpError({"code": 403, "message": "a@b does not have "
                    "storage.objects.create access to the bucket"})


def _json_error():
  try:
    json.loads("")
  except json.JSONDecodeError as e:
    return e


@pytest.mark.parametrize("make_error, needles", [
    (_auth_error, ["no usable Google Cloud credentials",
                   "application-default login"]),
    (_http_error, ["Cloud Storage request failed (HTTP 403)",
                   "storage.objects.create"]),
    (lambda: PermissionError(errno.EACCES, "Permission denied", "/data/x"),
     ["permission denied: /data/x"]),
    (lambda: FileNotFoundError(errno.ENOENT, "No such file or directory",
                               "gs://b/w/metrics.jsonl"),
     ["no such file or directory: gs://b/w/metrics.jsonl"]),
    (_json_error, ["JSON file is empty or corrupt", "line 1 column 1"]),
])
def test_environment_trouble_is_one_line_with_status_2(capsys, make_error,
                                                       needles):
  code, line = _run(_raiser(make_error()), capsys)
  assert code == 2 and line.startswith("advjax: error: ")
  for needle in needles:
    assert needle in line, line


def test_a_cause_is_described_and_other_errors_keep_their_traceback(capsys):
  try:
    try:
      raise _auth_error()
    except Exception as e:
      raise RuntimeError("could not open the lock") from e
  except RuntimeError as e:
    wrapped = e
  code, line = _run(_raiser(wrapped), capsys)
  assert code == 2 and "credentials" in line
  with pytest.raises(RuntimeError, match="a bug"):
    cli.run(_raiser(RuntimeError("a bug")), ["prog"], required=(),
            config_flag=None)


@pytest.mark.parametrize("steps", [[], [2, 4]])
def test_an_interrupt_says_whether_there_is_a_checkpoint(
    capsys, monkeypatch, tmp_path, steps):
  monkeypatch.setattr(checkpoints, "available_steps", lambda workdir: steps)
  code, line = _run(_raiser(KeyboardInterrupt()), capsys,
                    f"--workdir={tmp_path}")
  assert code == 130
  if steps:
    assert "nothing to resume" not in line
    assert line.endswith(os.path.join(str(tmp_path), "checkpoints", "4"))
  else:
    assert line.endswith("nothing to resume from yet")


def test_a_corrupt_line_in_metrics_jsonl_is_one_line_naming_it(tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_text('{"step": 1}\n{"step": 2, "train/lo\n{"step": 3}\n'
                  '{"step": 4, "tra')  # the last line, cut short, is dropped
  with pytest.raises(UserError, match=f"line 2 of {path} is not JSON"):
    fileio.read_jsonl(path)
  with pytest.raises(UserError, match=f"line 2 of {path} is not JSON"):
    fileio.MetricsLog(str(path), resume_step=3)
  path.write_text('{"step": 1}\n{"step": 4, "tra')
  assert fileio.read_jsonl(path) == [{"step": 1}]


def test_an_empty_or_corrupt_json_file_is_one_line_naming_it(tmp_path):
  path = tmp_path / "study_done.json"
  assert fileio.read_json(path) is None
  path.write_text("")
  with pytest.raises(UserError, match=f"{path} is empty"):
    fileio.read_json(path)
  path.write_text('{"a": ')
  with pytest.raises(UserError, match=f"{path} is corrupt"):
    fileio.read_json(path)
  path.write_text('{"a": 1}')
  assert fileio.read_json(path) == {"a": 1}
