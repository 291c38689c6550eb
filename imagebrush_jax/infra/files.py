"""The file layer: every path the project reads or writes, on local disk or in object storage
(`gs://bucket/...`, through fsspec and gcsfs; etils.epath paths for orbax's directories).

Writes are atomic. Locally a file is written under a temporary name in its folder and renamed
into place; in a bucket the object is uploaded whole in one request, and an object store shows
an upload whole or not at all. So a crash or a bad input never leaves a half-written file where
a good one was expected. Logs that grow (`LineLog`) are appended to locally; in a bucket, where
objects cannot be appended to, they are uploaded whole again at most every `flush_secs` and on
flush().

STORAGE_EMULATOR_HOST (e.g. http://127.0.0.1:9023, a `gcp-storage-emulator`) points gcsfs,
google-cloud-storage and tensorstore (orbax's array writer) at a local emulator together.
"""
from __future__ import annotations

import functools
import io
import json
import logging
import os
import posixpath
import re
import tempfile
import time
from typing import Any, BinaryIO

import numpy as np
from PIL import Image


def _point_tensorstore_at_emulator() -> None:
  """Under STORAGE_EMULATOR_HOST: tensorstore's GCS endpoint and a dummy token (an emulator
  checks none), and no gcsfs bucket-layout probe (an emulator has no control-plane API)."""
  host = os.environ.get("STORAGE_EMULATOR_HOST")
  if not host:
    return
  if "://" not in host:
    host = "http://" + host
  os.environ.setdefault("TENSORSTORE_GCS_HTTP_URL", host)
  os.environ.setdefault("GOOGLE_AUTH_TOKEN_FOR_TESTING", "emulator")
  os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")


_point_tensorstore_at_emulator()

from etils import epath  # pylint: disable=g-import-not-at-top,wrong-import-position


class StorageAccessError(OSError):
  """A bucket cannot be reached: no credentials, no such bucket or no permission."""


# ---------------------------------------------------------------------------- paths


_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_remote(path: str | os.PathLike) -> bool:
  """True for a URL such as gs://bucket/key (object storage), False for a local path."""
  return bool(_URL.match(os.fspath(path)))


def _fs(path: str):
  """The fsspec file system of a URL's scheme (gcsfs for gs://). Used directly rather than
  through epath, which switches to tf.io.gfile whenever TensorFlow happens to be installed."""
  import fsspec  # pylint: disable=g-import-not-at-top
  return fsspec.filesystem(path.split("://", 1)[0])


def absolute(path: str | os.PathLike) -> str:
  """A URL as given; a local path made absolute."""
  path = os.fspath(path)
  return path if is_remote(path) else os.path.abspath(path)


def as_path(path: str | os.PathLike) -> epath.Path:
  """An epath.Path (absolute when local) for path operations on either kind of path."""
  return epath.Path(absolute(path))


def is_absolute(path: str | os.PathLike) -> bool:
  return is_remote(path) or os.path.isabs(os.fspath(path))


def join(base: str | os.PathLike, *parts: str) -> str:
  """`base`/parts, normalised (a/b/../c -> a/c); a part that is itself absolute wins; a
  relative part may not climb out of a URL's bucket (ValueError)."""
  base = os.fspath(base)
  for part in parts:
    if is_absolute(part):
      base = os.fspath(part)
    elif is_remote(base):
      scheme, rest = base.split("://", 1)
      joined = posixpath.normpath(posixpath.join(rest, part))
      if joined.split("/")[0] != rest.split("/")[0]:
        raise ValueError(f"{part!r} leaves the bucket of {base}")
      base = f"{scheme}://{joined}"
    else:
      base = os.path.normpath(os.path.join(base, part))
  return base


def join_inside(root: str | os.PathLike, part: str, what: str) -> str:
  """`root`/`part` for a relative `part` read from input data (an index file's entry), which
  may not be absolute, a URL, or climb out of `root` ('..'): ValueError naming `what`."""
  if not isinstance(part, str) or not part:
    raise ValueError(f"{what}: expected a relative path, got {part!r}")
  pieces = part.replace("\\", "/").split("/")
  if is_absolute(part) or part.startswith(("/", "\\")) or ".." in pieces or ":" in pieces[0]:
    raise ValueError(f"{what}: {part!r} must be a path inside {os.fspath(root)} (no absolute "
                     f"path, drive or '..')")
  return join(root, part)


def parent(path: str | os.PathLike) -> str:
  """The folder holding `path` (absolute when local)."""
  return str(as_path(path).parent)


def bucket_of(path: str | os.PathLike) -> str:
  """gs://bucket/a/b -> gs://bucket."""
  scheme, rest = os.fspath(path).split("://", 1)
  return f"{scheme}://{rest.split('/', 1)[0]}"


# ---------------------------------------------------------------------------- access


def check_access(path: str | os.PathLike) -> None:
  """Fails early, in one line naming the bucket, when a gs:// path cannot be used: no
  credentials (and how to log in), or a bucket that does not exist or is not ours to use.
  Local paths and other schemes pass. Checked once per bucket and process."""
  path = os.fspath(path)
  if path.startswith("gs://"):
    _check_bucket(bucket_of(path))


@functools.lru_cache(maxsize=None)
def _check_bucket(bucket: str) -> None:
  if not os.environ.get("STORAGE_EMULATOR_HOST"):
    import google.auth  # pylint: disable=g-import-not-at-top
    from google.auth import exceptions as auth_exceptions  # pylint: disable=g-import-not-at-top
    auth_log = logging.getLogger("google.auth")  # its own warning would repeat ours
    level = auth_log.level
    auth_log.setLevel(logging.ERROR)
    try:
      google.auth.default()
    except auth_exceptions.DefaultCredentialsError as e:
      raise StorageAccessError(
          f"{bucket}: no Google Cloud credentials found; log in with `gcloud auth "
          f"application-default login` (a TPU or GCE VM uses its service account) or set "
          f"GOOGLE_APPLICATION_CREDENTIALS to a key file") from e
    finally:
      auth_log.setLevel(level)
  try:
    found = _fs(bucket).exists(bucket)
  except Exception as e:  # pylint: disable=broad-except  # gcsfs / google-auth raise many types
    raise StorageAccessError(f"{bucket}: cannot reach the bucket ({type(e).__name__}: "
                             f"{' '.join(str(e).split())}); check the network and the "
                             f"credentials (`gcloud auth application-default login`)") from e
  if not found:
    raise StorageAccessError(f"{bucket}: no such bucket, or no permission to see it")


# ---------------------------------------------------------------------------- queries


def exists(path: str | os.PathLike) -> bool:
  path = os.fspath(path)
  return _fs(path).exists(path) if is_remote(path) else os.path.exists(path)


def isfile(path: str | os.PathLike) -> bool:
  path = os.fspath(path)
  return _fs(path).isfile(path) if is_remote(path) else os.path.isfile(path)


def isdir(path: str | os.PathLike) -> bool:
  path = os.fspath(path)
  return _fs(path).isdir(path) if is_remote(path) else os.path.isdir(path)


def listdir(path: str | os.PathLike) -> list[str]:
  """Sorted names in a folder (an object-store prefix)."""
  path = os.fspath(path)
  if not is_remote(path):
    return sorted(os.listdir(path))
  folder = path.split("://", 1)[1].rstrip("/")
  entries = (p.rstrip("/") for p in _fs(path).ls(path, detail=False))
  return sorted(posixpath.basename(p) for p in entries if p != folder)


def makedirs(path: str | os.PathLike) -> None:
  """A local folder and its parents; in a bucket (no folders there) only checks access."""
  if is_remote(path):
    check_access(os.fspath(path))
  else:
    os.makedirs(os.fspath(path), exist_ok=True)


# ---------------------------------------------------------------------------- reads


def open_read(path: str | os.PathLike) -> BinaryIO:
  """A binary file object to read from (missing: FileNotFoundError, as for open())."""
  path = os.fspath(path)
  return _fs(path).open(path, "rb") if is_remote(path) else open(path, "rb")


def read_bytes(path: str | os.PathLike) -> bytes:
  with open_read(path) as f:
    return f.read()


def read_text(path: str | os.PathLike) -> str:
  return read_bytes(path).decode("utf-8")


def read_json_object(path: str | os.PathLike, error: type[Exception] = ValueError) -> dict[str, Any]:
  """The JSON object in `path`; an unreadable file, bad JSON or a non-object raises `error`
  with a message naming the file."""
  try:
    obj = json.loads(read_bytes(path))
  except OSError as e:
    raise error(f"cannot read {os.fspath(path)}: {e}") from e
  except ValueError as e:
    raise error(f"{os.fspath(path)}: not valid JSON: {e}") from e
  if not isinstance(obj, dict):
    raise error(f"{os.fspath(path)}: expected a JSON object, got {type(obj).__name__}")
  return obj


# ---------------------------------------------------------------------------- writes


_PROC_STATUS = "/proc/self/status"


def _default_file_mode() -> int:
  """0o666 less the process umask: the mode open() would give a new file (mkstemp gives 0o600).

  The umask is read, never set: os.umask can only read it by setting it, and a file that another
  thread creates in between would get the wrong mode. Linux reports it in /proc/self/status
  (read at every call, so a changed umask is seen); elsewhere a probe file tells the mode.
  """
  try:
    with open(_PROC_STATUS, encoding="ascii") as f:
      for line in f:
        if line.startswith("Umask:"):
          return 0o666 & ~int(line.split()[1], 8)
  except (OSError, ValueError, IndexError):
    pass
  return _probed_file_mode()


@functools.lru_cache(maxsize=None)
def _probed_file_mode() -> int:
  """The mode of a file created with mode 0o666 in a temporary folder.

  Probed once, at first use, and cached: without /proc a later change of the umask is not seen.
  """
  with tempfile.TemporaryDirectory(prefix=".mode-probe-") as folder:
    probe = os.path.join(folder, "probe")
    os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    return os.stat(probe).st_mode & 0o777


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
  """`data` becomes the whole content of `path` at once, or `path` is left as it was."""
  path = os.fspath(path)
  if is_remote(path):
    check_access(path)
    _fs(path).pipe_file(path, bytes(data))  # one upload: the object appears whole or not at all
    return
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.basename(path), dir=folder)
  try:
    os.fchmod(fd, _default_file_mode())
    with os.fdopen(fd, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
  write_bytes_atomic(path, text.encode("utf-8"))


def png_bytes(image: np.ndarray | Image.Image) -> bytes:
  """uint8 [H, W, 3] (or [H, W]) array, or a PIL image -> PNG file content."""
  if not isinstance(image, Image.Image):
    image = np.asarray(image)
    if image.dtype != np.uint8:
      raise ValueError(f"a PNG is written from uint8 pixels, got {image.dtype}")
    image = Image.fromarray(image)
  buf = io.BytesIO()
  image.save(buf, format="PNG")
  return buf.getvalue()


def save_png_atomic(path: str | os.PathLike, image: np.ndarray | Image.Image) -> None:
  """uint8 [H, W, 3] (or [H, W]) array, or a PIL image -> PNG file, atomically."""
  try:
    data = png_bytes(image)
  except ValueError as e:
    raise ValueError(f"{os.fspath(path)}: {e}") from e
  write_bytes_atomic(path, data)


class LineLog:
  """A text file that grows by whole lines (JSONL histories) and stays intact after a kill.

  Locally each line is one append of one whole line. In a bucket an object cannot be
  appended to: the log keeps its lines (those already there are read at start, so a resumed
  run continues the same object) and uploads the whole object again when `flush_secs` have
  passed since the last upload, and on flush() (the trainer flushes at every checkpoint, so a
  killed run loses only lines after its last checkpoint, which the resumed run logs again).
  """

  def __init__(self, path: str | os.PathLike, flush_secs: float = 0.0):
    self.path = os.fspath(path)
    self.flush_secs = float(flush_secs)
    self._lines: list[str] | None = None
    self._dirty, self._uploaded = False, time.monotonic()
    if is_remote(self.path):
      self._lines = read_text(self.path).splitlines(keepends=True) if exists(self.path) else []
      if self._lines and not self._lines[-1].endswith("\n"):
        self._lines[-1] += "\n"

  def append(self, line: str) -> None:
    line = line.rstrip("\n") + "\n"
    if self._lines is None:
      with open(self.path, "a", encoding="utf-8") as f:
        f.write(line)
      return
    self._lines.append(line)
    self._dirty = True
    if time.monotonic() - self._uploaded >= self.flush_secs:
      self.flush()

  def flush(self) -> None:
    if self._dirty:
      write_text_atomic(self.path, "".join(self._lines))
      self._dirty, self._uploaded = False, time.monotonic()
