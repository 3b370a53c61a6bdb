"""Files on a local disk or in Cloud Storage (`gs://bucket/...`), one API.

Every file the library reads or writes goes through here (orbax and tfds go
through etils.epath themselves). Paths are strings; a path with a scheme
(`gs://`) is remote and handled by etils.epath on gcsfs, anything else is a
local path.

Object stores are not disks: there is no append (gcsfs silently turns mode
'a' into an overwrite) and no cheap rename (a copy of the object), but writing
one object is atomic (it appears whole, or not at all). So:
  - `write_bytes`/`write_text` replace a file atomically: one object write on
    a store, write-then-rename locally;
  - `MetricsLog` keeps `metrics.jsonl` correct on both (see there).

Two process-wide settings, made when this module is imported, before any
`gs://` path is opened:
  - EPATH_USE_TF=false (unless set): etils.epath otherwise sends `gs://` to
    TensorFlow's file system whenever TensorFlow is installed (it is, after
    `advjax[prepare]`), importing TensorFlow into training;
  - gcsfs without its listings cache: it never expires, so a process would
    not see files another process wrote after its first listing (a notebook
    would not see a running job's newer checkpoints).
"""

from __future__ import annotations

import json
import math
import os
import posixpath
import shutil
import time
import uuid
from typing import Any, Iterable

import fsspec
from etils import epath

from advjax.errors import UserError

os.environ.setdefault("EPATH_USE_TF", "false")
fsspec.config.conf.setdefault("gcs", {}).setdefault("use_listings_cache",
                                                    False)


def is_remote(path: str | os.PathLike) -> bool:
  """Whether `path` is a URL such as `gs://bucket/x` (not a local path)."""
  return "://" in os.fspath(path)


def resolve(path: str | os.PathLike) -> str:
  """A local path made absolute with `~` expanded; a URL unchanged (minus a
  trailing '/')."""
  path = os.fspath(path)
  if is_remote(path):
    scheme, rest = path.split("://", 1)
    return f"{scheme}://{rest.rstrip('/')}"
  return os.path.abspath(os.path.expanduser(path))


def join(path: str | os.PathLike, *parts: str) -> str:
  path = os.fspath(path)
  if is_remote(path):
    return posixpath.join(path, *parts)
  return os.path.join(path, *parts)


def exists(path: str | os.PathLike) -> bool:
  return epath.Path(path).exists()


def isdir(path: str | os.PathLike) -> bool:
  """A folder; in an object store, a prefix with at least one object under
  it."""
  return epath.Path(path).is_dir()


def isfile(path: str | os.PathLike) -> bool:
  return epath.Path(path).is_file()


def makedirs(path: str | os.PathLike) -> None:
  """Creates a folder and its parents (in an object store: nothing to do)."""
  epath.Path(path).mkdir(parents=True, exist_ok=True)


def listdir(path: str | os.PathLike) -> list[str]:
  """Names of the entries of folder `path`, sorted."""
  return sorted(p.name for p in epath.Path(path).iterdir())


def read_bytes(path: str | os.PathLike) -> bytes:
  return epath.Path(path).read_bytes()


def read_text(path: str | os.PathLike) -> str:
  return epath.Path(path).read_text(encoding="utf-8")


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
  """Replaces `path` with `data` atomically; creates its folder if needed.

  In an object store one object write is atomic. Locally the bytes go to a
  temporary file beside `path`, then `os.replace` puts it in place.
  """
  path = os.fspath(path)
  if is_remote(path):
    epath.Path(path).write_bytes(data)
    return
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  tmp = f"{path}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
  try:
    with open(tmp, "xb") as f:
      f.write(data)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def write_text(path: str | os.PathLike, text: str) -> None:
  write_bytes(path, text.encode("utf-8"))


def remove(path: str | os.PathLike) -> None:
  epath.Path(path).unlink()


def upload_tree(local_dir: str, dest: str, last: Iterable[str] = ()) -> None:
  """Copies the files under `local_dir` to folder `dest` (any kind).

  Files named in `last` are copied after all others, so a reader that takes
  one of them as the sign of a complete folder never sees a partial one.
  """
  files = []
  for root, _, names in os.walk(local_dir):
    files += [os.path.join(root, n) for n in names]
  last = set(last)
  for src in sorted(files, key=lambda f: (os.path.basename(f) in last, f)):
    target = join(dest, *os.path.relpath(src, local_dir).split(os.sep))
    if is_remote(target):
      with open(src, "rb") as f_in, epath.Path(target).open("wb") as f_out:
        shutil.copyfileobj(f_in, f_out, 16 << 20)
    else:
      os.makedirs(os.path.dirname(target), exist_ok=True)
      shutil.copyfile(src, target)


# ---------------------------------------------------------------------------
# metrics.jsonl


def _json_value(v: Any) -> Any:
  """Floats that JSON cannot hold (nan, inf) become strings."""
  if isinstance(v, float) and not math.isfinite(v):
    return str(v)
  return v


def _parse_jsonl(text: str, path: str) -> list[tuple[str, dict[str, Any]]]:
  """(line, record) pairs of JSON lines. A last line cut short (a process
  killed while appending it) is left out; any other bad line is a UserError
  naming `path` and the line."""
  lines = [(n, l) for n, l in enumerate(text.splitlines(), 1) if l.strip()]
  pairs = []
  for i, (number, line) in enumerate(lines):
    try:
      pairs.append((line + "\n", json.loads(line)))
    except json.JSONDecodeError as e:
      if i < len(lines) - 1:
        raise UserError(f"line {number} of {path} is not JSON ({e.msg}); "
                        f"delete or repair that line (checkpoints are not "
                        f"affected)") from None
  return pairs


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
  """The records of a JSON-lines file, in order ([] if there is none)."""
  if not exists(path):
    return []
  return [record for _, record in _parse_jsonl(read_text(path), str(path))]


def read_json(path: str | os.PathLike) -> Any:
  """The JSON value in `path` (None if there is no such file); an empty or
  corrupt file is a UserError naming it."""
  if not isfile(path):
    return None
  text = read_text(path)
  try:
    return json.loads(text)
  except json.JSONDecodeError as e:
    what = "empty" if not text.strip() else f"corrupt ({e.msg})"
    raise UserError(f"{path} is {what}; a process killed while writing it "
                    f"can leave it so: delete it to redo that part") from None


class MetricsLog:
  """`metrics.jsonl`: one JSON object per logged step, each step once.

  Resuming from step s (`resume_step=s`) drops the records after s that a
  previous, interrupted process had written: the resumed run logs them
  again. (Records need a "step"; resume_step=None keeps everything.)

  Locally each record is appended and flushed at once. An object store has no
  append, so there the log keeps its lines in memory and `flush()` rewrites
  the whole file as one object: readers see a complete file at every moment,
  no rename is needed, and nothing is merged on read. `write` flushes at most
  every `flush_secs`; call `flush()` before saving a checkpoint, so that the
  log always reaches at least the newest checkpoint (a resume never loses
  records), and `close()` at the end. A rewrite costs the file's size
  (about 200 bytes a record).
  """

  def __init__(self, path: str, resume_step: int | None = None,
               flush_secs: float = 30.0):
    self.path = resolve(path)
    self._remote = is_remote(self.path)
    self._flush_secs = float(flush_secs)
    self._last_flush = -math.inf
    self._lines: list[str] = []
    self._dirty = False
    self._file = None
    text = read_text(self.path) if exists(self.path) else ""
    kept = [line for line, record in _parse_jsonl(text, self.path)
            if resume_step is None or record.get("step", 0) <= resume_step]
    changed = "".join(kept) != text
    if self._remote:
      self._lines = kept
      if changed:
        self._dirty = True
        self.flush()
      return
    if changed:
      write_text(self.path, "".join(kept))
    os.makedirs(os.path.dirname(self.path), exist_ok=True)
    self._file = open(self.path, "a", encoding="utf-8")  # pylint: disable=consider-using-with

  def write(self, record: dict[str, Any]) -> None:
    line = json.dumps({k: _json_value(v) for k, v in record.items()}) + "\n"
    if not self._remote:
      self._file.write(line)
      self._file.flush()
      return
    self._lines.append(line)
    self._dirty = True
    if time.monotonic() - self._last_flush >= self._flush_secs:
      self.flush()

  def flush(self) -> None:
    """Makes every record written so far durable."""
    if self._file is not None:
      self._file.flush()
    elif self._dirty:
      write_text(self.path, "".join(self._lines))
      self._dirty = False
      self._last_flush = time.monotonic()

  def close(self) -> None:
    self.flush()
    if self._file is not None:
      self._file.close()
      self._file = None
