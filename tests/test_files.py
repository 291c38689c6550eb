"""Atomic writes: whole file or the old one, no temporaries left, the usual file mode."""
import os
import stat
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from imagebrush_jax.infra import files


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


_UMASK_SCRIPT = textwrap.dedent("""
    import os, stat, sys
    os.umask(0o027)
    def no_umask(mask):
      raise AssertionError("os.umask called")
    os.umask = no_umask  # the file layer must read the umask without setting it
    from imagebrush_jax.infra import files
    if sys.argv[2] == "probe":
      files._PROC_STATUS = os.path.join(sys.argv[1], "no-such-status")
    assert files._default_file_mode() == 0o640
    path = os.path.join(sys.argv[1], "out.txt")
    files.write_text_atomic(path, "data")
    print(oct(stat.S_IMODE(os.stat(path).st_mode)))
    """)


@pytest.mark.parametrize("source", ["proc", "probe"])
def test_file_mode_reads_the_umask_without_setting_it(tmp_path, source):
  """Setting the umask to read it would give files made meanwhile by other threads mode 0o666:
  the mode comes from /proc/self/status, or without it from a probe file."""
  if source == "proc" and not os.path.exists(files._PROC_STATUS):  # pylint: disable=protected-access
    pytest.skip("no /proc/self/status")
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  proc = subprocess.run([sys.executable, "-c", _UMASK_SCRIPT, str(tmp_path), source], cwd=root,
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stdout.split() == ["0o640"]
  assert os.listdir(tmp_path) == ["out.txt"]


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
