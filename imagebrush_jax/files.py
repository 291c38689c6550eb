"""Atomic file writes: write to a temporary name in the same folder, then rename, so a
crash or a bad input never leaves a half-written file where a good one was expected."""
from __future__ import annotations

import io
import json
import os
import tempfile
from typing import Any

import numpy as np
from PIL import Image


def read_json_object(path: str | os.PathLike, error: type[Exception] = ValueError) -> dict[str, Any]:
  """The JSON object in `path`; an unreadable file, bad JSON or a non-object raises `error`
  with a message naming the file."""
  try:
    with open(path) as f:
      obj = json.load(f)
  except OSError as e:
    raise error(f"cannot read {os.fspath(path)}: {e}") from e
  except ValueError as e:
    raise error(f"{os.fspath(path)}: not valid JSON: {e}") from e
  if not isinstance(obj, dict):
    raise error(f"{os.fspath(path)}: expected a JSON object, got {type(obj).__name__}")
  return obj


def _default_file_mode() -> int:
  """0o666 less the process umask: the mode open() would give a new file (mkstemp gives 0o600)."""
  umask = os.umask(0)
  os.umask(umask)
  return 0o666 & ~umask


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
  path = os.fspath(path)
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


def save_png_atomic(path: str | os.PathLike, image: np.ndarray) -> None:
  """uint8 [H, W, 3] (or [H, W]) -> PNG file, atomically."""
  image = np.asarray(image)
  if image.dtype != np.uint8:
    raise ValueError(f"save_png_atomic expects uint8, got {image.dtype} for {path}")
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, format="PNG")
  write_bytes_atomic(path, buf.getvalue())
