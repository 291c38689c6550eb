"""Atomic writes: whole file or the old one, no temporaries left, the usual file mode."""
import os
import stat

import numpy as np
import pytest

from imagebrush_jax import files


def test_write_replaces_whole_and_uses_the_umask_mode(tmp_path):
  path = tmp_path / "sub" / "metrics.json"
  files.write_text_atomic(path, "first")
  files.write_text_atomic(path, "second")
  assert path.read_text() == "second"
  old = os.umask(0o022)
  try:
    files.write_text_atomic(path, "third")
  finally:
    os.umask(old)
  assert stat.S_IMODE(os.stat(path).st_mode) == 0o644  # not mkstemp's 0o600
  assert os.listdir(path.parent) == ["metrics.json"]


def test_failed_write_keeps_the_old_file_and_no_temporary(tmp_path):
  path = tmp_path / "out.txt"
  files.write_text_atomic(path, "good")
  with pytest.raises(TypeError):
    files.write_bytes_atomic(path, "not bytes")  # fails inside the write
  assert path.read_text() == "good"
  assert os.listdir(tmp_path) == ["out.txt"]
  with pytest.raises(ValueError, match="uint8"):
    files.save_png_atomic(tmp_path / "img.png", np.zeros((2, 2, 3), np.float32))
  assert not (tmp_path / "img.png").exists()
