"""What a user sees when a command is given a bad config or input: one line naming the key or
file, exit status 2, no traceback."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*args, cwd=ROOT):
  return subprocess.run([sys.executable, "-m", *args], cwd=cwd, capture_output=True, text=True,
                        timeout=300, env={**os.environ, "PYTHONPATH": ROOT})


@pytest.mark.parametrize("module, args, message", [
    ("imagebrush_jax.train", ["--config.data.tile_size=7"],
     "error: config.data.tile_size = 7 (the prompt encoder's image size) is not divisible by "
     "config.model.prompt.vit.patch_size = 4"),
    ("imagebrush_jax.train", ["--config.train.batch_size=0"],
     "error: config.train.batch_size must be > 0, got 0"),
    ("imagebrush_jax.train", ["--config.data.source=folder", "--config.data.folder.root=/no/such"],
     "error: folder source root '/no/such' is not a directory"),
    ("imagebrush_jax.train", ["--config.model.variant=sepia"],
     "error: config.model.variant must be '' (the paper's model) or one of ['cpu_demo'], got "
     "'sepia'"),
    ("imagebrush_jax.train", ["--config.model.conv_impl=fft"],
     "error: config.model.conv_impl must be one of ('auto', 'xla', 'matmul_grad'), got 'fft'"),
    ("imagebrush_jax.train_autoencoder", ["--config.data.eval_fraction=2.0"],
     "error: config.data.eval_fraction must be in [0.0, 0.9], got 2.0"),
])
def test_config_errors_are_one_line(tmp_path, module, args, message):
  config = "configs/autoencoder_tiny.py" if "autoencoder" in module else "configs/tiny_test.py"
  proc = _run(module, "--config", config, "--workdir", str(tmp_path / "run"), *args)
  assert proc.returncode == 2, proc.stderr[-3000:]
  lines = [l for l in proc.stderr.splitlines() if l.strip()]
  assert lines == [message] and "Traceback" not in proc.stdout
  if "model." in message:  # refused before anything is written
    assert not os.path.exists(tmp_path / "run")


def test_data_build_input_errors_are_one_line(tmp_path):
  proc = _run("imagebrush_jax.build_data", "--source", "folder", "--output", str(tmp_path))
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines() == ["error: --input is required for --source folder"]
