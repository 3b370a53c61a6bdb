"""An in-memory Cloud Storage for the tests, on 127.0.0.1 only.

`gcp-storage-emulator` serves the Cloud Storage JSON API; this launcher adds
what the libraries here rely on and it lacks:
  - `POST .../o/{object}/moveTo/o/{dest}` (objects.move): gcsfs renames with
    it, and without it retries for about 34 s before copying and deleting;
  - suffix byte ranges, `Range: bytes=-N` (the last N bytes): the array_record
    reader behind `tfds.data_source` reads a file's tail that way, and the
    emulator would send the whole object (array_record then reports an
    "Invalid Riegeli/records file");
  - conditional media downloads (`ifGenerationNotMatch`: 304 Not Modified,
    `ifGenerationMatch`: 412) and the `x-goog-generation` header: tensorstore
    (orbax's array writer) revalidates what it cached with them, and without
    them takes a generation from nowhere and fails its next write with
    "Malformed StorageGeneration" (now and then, depending on timing);
  - generation preconditions on writes and deletes (`ifGenerationMatch`,
    0 meaning "no live object"; 412 otherwise): the work-directory lock
    creates, heartbeats, takes over and releases with them. The server
    handles one request at a time, so a check and its write are atomic.
It also skips what only costs time in memory: rewriting its JSON index after
every change, and keeping deleted objects for soft-delete.

`start(bucket)` runs it in a child process on a listening socket bound here,
so the port is known (and reserved) before the server is up, and `env(...)`
gives the variables that steer every client (gcsfs, google-cloud-storage,
tensorstore, array_record's C++ client, google-auth) to it and nowhere else.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from http import HTTPStatus

MOVE_ROUTE = (r"^/storage/v1/b/(?P<bucket_name>[-.\w]+)/o/(?P<object_id>.*[^/]+)"
              r"/moveTo/o/(?P<dest_object_id>.*[^/]+)$")
_SUFFIX_RANGE = re.compile(r"^\s*bytes=-(?P<length>[0-9]+)\s*$")


def env(port: int, metadata_port: int, gcloud_config_dir: str
        ) -> dict[str, str | None]:
  """Variables that send every Cloud Storage client to 127.0.0.1:`port`.

  None means: remove the variable. `metadata_port` is a bound, never
  listening port: google-auth, looking for Compute Engine credentials, gets
  'connection refused' at once instead of asking 169.254.169.254.
  `gcloud_config_dir` (an empty folder) hides a developer's gcloud login.
  """
  url = f"http://127.0.0.1:{port}"
  metadata = f"127.0.0.1:{metadata_port}"
  return {
      "STORAGE_EMULATOR_HOST": url,  # gcsfs, google-cloud-storage
      # gcsfs without credentials: it would try google-auth's chain, and
      # gcsfs < 2026 then retries the metadata server for 15 s.
      "FSSPEC_GCS_TOKEN": "anon",
      "TENSORSTORE_GCS_HTTP_URL": url,  # orbax's array writes
      "GOOGLE_AUTH_TOKEN_FOR_TESTING": "fake",  # tensorstore: no credentials
      "CLOUD_STORAGE_EMULATOR_ENDPOINT": url,  # array_record (google-cloud-cpp)
      "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",  # no gRPC bucket lookup
      "EPATH_USE_TF": "false",  # etils.epath on gcsfs even if TF is imported
      "GCE_METADATA_HOST": metadata,
      "GCE_METADATA_ROOT": metadata,
      "GCE_METADATA_IP": metadata,
      "NO_GCE_CHECK": "true",
      "GOOGLE_APPLICATION_CREDENTIALS": None,
      "CLOUDSDK_CONFIG": gcloud_config_dir,
      "GOOGLE_CLOUD_PROJECT": "advjax-test",
  }


def apply_env(variables: dict[str, str | None]) -> None:
  for key, value in variables.items():
    if value is None:
      os.environ.pop(key, None)
    else:
      os.environ[key] = value


def reserve_port(listen: bool) -> socket.socket:
  """A socket bound to a free 127.0.0.1 port; listening if `listen`."""
  sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
  sock.bind(("127.0.0.1", 0))
  if listen:
    sock.listen(128)
  return sock


@dataclasses.dataclass
class Emulator:
  """A running emulator: `url`, its `bucket`, and the child process."""
  url: str
  bucket: str
  process: subprocess.Popen
  log_path: str

  @property
  def root(self) -> str:
    return f"gs://{self.bucket}"

  def stop(self) -> None:
    self.process.terminate()
    try:
      self.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
      self.process.kill()
      self.process.wait()


def start(listener: socket.socket, bucket: str, log_path: str,
          timeout: float = 30.0) -> Emulator:
  """Serves in a child process on `listener` (bound and listening)."""
  port = listener.getsockname()[1]
  with open(log_path, "ab") as log:
    process = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__),
         f"--fd={listener.fileno()}", f"--bucket={bucket}",
         f"--parent={os.getpid()}"],
        pass_fds=(listener.fileno(),), stdout=log, stderr=log,
        stdin=subprocess.DEVNULL)
  url = f"http://127.0.0.1:{port}"
  deadline = time.monotonic() + timeout
  while True:
    try:
      with urllib.request.urlopen(f"{url}/storage/v1/b/{bucket}",
                                  timeout=2) as r:
        if r.status == 200:
          return Emulator(url, bucket, process, log_path)
    except OSError:
      pass
    if process.poll() is not None or time.monotonic() > deadline:
      process.kill()
      with open(log_path, encoding="utf-8", errors="replace") as f:
        tail = f.read()[-3000:]
      raise RuntimeError(f"the Cloud Storage emulator did not start on {url}:"
                         f"\n{tail}")
    time.sleep(0.05)


# ---------------------------------------------------------------------------
# The child process.


def _move(request, response, storage, copy, delete):
  """objects.move within one bucket: copy, then delete the source."""
  params = request.params
  params["dest_bucket_name"] = params["bucket_name"]
  copy(request, response, storage)
  if response.status == HTTPStatus.OK:
    delete(request, response, storage)


def _download(request, response, storage, download):
  """Media downloads as Cloud Storage answers them (see the module doc)."""
  from gcp_storage_emulator.exceptions import NotFound  # pylint: disable=g-import-not-at-top
  params = request.params
  try:
    obj = storage.get_file_obj(params["bucket_name"], params["object_id"])
    size = len(storage.get_file(params["bucket_name"], params["object_id"]))
  except NotFound:
    return download(request, response, storage)  # 404
  generation = str(obj["generation"])
  if_not = request.query.get("ifGenerationNotMatch", [None])[0]
  if_match = request.query.get("ifGenerationMatch", [None])[0]
  if if_not == generation:
    response.status = HTTPStatus.NOT_MODIFIED
    return None
  if if_match is not None and if_match != generation:
    response.status = HTTPStatus.PRECONDITION_FAILED
    return None
  match = _SUFFIX_RANGE.match(request.get_header("range", "") or "")
  if match:
    start = max(size - int(match["length"]), 0)
    headers = request._request_handler.headers  # pylint: disable=protected-access
    headers.replace_header("Range", f"bytes={start}-")
  download(request, response, storage)
  response["x-goog-generation"] = generation
  response["x-goog-metageneration"] = str(obj["metageneration"])
  return None


def _generation_mismatch(request, storage, bucket: str, name: str | None
                         ) -> bool:
  """Whether the request's `ifGenerationMatch` differs from the live
  generation of `bucket`/`name` ("0" when there is none)."""
  from gcp_storage_emulator.exceptions import NotFound  # pylint: disable=g-import-not-at-top
  want = request.query.get("ifGenerationMatch", [None])[0]
  if want is None or name is None:
    return False
  try:
    live = str(storage.get_file_obj(bucket, name)["generation"])
  except NotFound:
    live = "0"
  return want != live


def _precondition_failed(response) -> None:
  response.status = HTTPStatus.PRECONDITION_FAILED
  response.json({"error": {"code": 412, "message": "Precondition Failed"}})


def _insert(request, response, storage, insert):
  """objects.insert (media, multipart, resumable start) with preconditions."""
  query = request.query
  name = query["name"][0] if "name" in query else None
  upload_type = query.get("uploadType", [""])[0]
  if name is None and upload_type == "multipart":
    name = request.data["meta"].get("name")
  elif name is None and upload_type == "resumable" and request.data:
    name = request.data.get("name")
  if _generation_mismatch(request, storage, request.params["bucket_name"],
                          name):
    return _precondition_failed(response)
  return insert(request, response, storage)


def _upload_partial(request, response, storage, upload_partial):
  """Resumable upload chunks: the start's precondition (kept in the upload's
  URL) is checked again at every chunk, so also when the object appears."""
  from gcp_storage_emulator.exceptions import NotFound  # pylint: disable=g-import-not-at-top
  try:
    obj = storage.get_resumable_file_obj(request.query["upload_id"][0])
  except (NotFound, KeyError):
    return upload_partial(request, response, storage)
  if _generation_mismatch(request, storage, obj["bucket"], obj["name"]):
    return _precondition_failed(response)
  return upload_partial(request, response, storage)


def _delete_object(request, response, storage, delete):
  from gcp_storage_emulator.exceptions import NotFound  # pylint: disable=g-import-not-at-top
  params = request.params
  try:
    storage.get_file_obj(params["bucket_name"], params["object_id"])
  except NotFound:
    return delete(request, response, storage)  # 404, as on the real one
  if _generation_mismatch(request, storage, params["bucket_name"],
                          params["object_id"]):
    return _precondition_failed(response)
  return delete(request, response, storage)


def _exit_with(parent: int) -> None:
  """Ends this process once `parent` has gone (e.g. pytest was killed)."""
  while os.getppid() == parent:
    time.sleep(1.0)
  os._exit(0)  # pylint: disable=protected-access


def _serve(fd: int, bucket: str) -> None:
  """Serves forever on the inherited listening socket `fd`."""
  import logging  # pylint: disable=g-import-not-at-top
  from http.server import HTTPServer  # pylint: disable=g-import-not-at-top
  from gcp_storage_emulator import server  # pylint: disable=g-import-not-at-top
  from gcp_storage_emulator.handlers import buckets, objects  # pylint: disable=g-import-not-at-top
  from gcp_storage_emulator.storage import Storage  # pylint: disable=g-import-not-at-top

  logging.basicConfig(level=logging.ERROR)
  # 'Resource not found' for every existence check is no error here.
  logging.getLogger("gcp_storage_emulator.storage").setLevel(logging.CRITICAL)

  class MemoryStorage(Storage):
    def _write_config_to_file(self):
      pass  # Nothing to persist in memory (it rewrites its whole index).

    def _bucket_soft_delete_retention_seconds(self, bucket_name):
      return 0  # Delete at once.

  move = functools.partial(_move, copy=objects.copy, delete=objects.delete)
  wrapped = {}
  for name, wrapper in [("download", _download), ("insert", _insert),
                        ("upload_partial", _upload_partial),
                        ("delete", _delete_object)]:
    original = getattr(objects, name)
    wrapped[original] = functools.partial(wrapper, **{name: original})
    # `objects.get` with alt=media calls `download`; the server falls back
    # to `objects.insert` for uploads without the /upload prefix.
    setattr(objects, name, wrapped[original])
  handlers = [(MOVE_ROUTE, {"POST": move})]
  for regex, methods in server.HANDLERS:
    handlers.append((regex, {m: wrapped.get(h, h)
                             for m, h in methods.items()}))
  server.HANDLERS = tuple(handlers)

  class Server(HTTPServer):
    request_queue_size = 128

    def handle_error(self, request, client_address):
      if not isinstance(sys.exc_info()[1], ConnectionError):
        super().handle_error(request, client_address)
      # Otherwise the client hung up first: gcsfs asks for an object and for
      # a listing at once and drops whichever answers second.

  storage = MemoryStorage(use_memory_fs=True)
  buckets.create_bucket(bucket, storage)
  httpd = Server(("127.0.0.1", 0), functools.partial(
      server.RequestHandler, storage), bind_and_activate=False)
  httpd.socket.close()
  httpd.socket = socket.socket(fileno=fd)
  httpd.server_address = httpd.socket.getsockname()
  httpd.serve_forever()


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--fd", type=int, required=True,
                      help="a listening socket inherited from the parent")
  parser.add_argument("--bucket", required=True)
  parser.add_argument("--parent", type=int, required=True,
                      help="the process id to outlive by at most a second")
  args = parser.parse_args()
  threading.Thread(target=_exit_with, args=(args.parent,), daemon=True).start()
  _serve(args.fd, args.bucket)


if __name__ == "__main__":
  main()
