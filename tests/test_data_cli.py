"""The programs over the data package: the preview sheet (imagebrush_jax.preview) and the data
set builder (imagebrush_jax.build_data)."""
import os
import subprocess
import sys

import numpy as np
from PIL import Image

from configs import tiny_test
from imagebrush_jax.data import pipeline
from imagebrush_jax.data import sources

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(*args):
  return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True,
                        check=True)


def test_preview_writes_the_training_grids_labelled(tmp_path):
  out = tmp_path / "sub" / "grids.png"
  run("imagebrush_jax.preview", "--config", "configs/tiny_test.py", "--num", "4",
      "--out", str(out))
  sheet = np.asarray(Image.open(out).convert("RGB"))
  # Tiles of 8 pixels are upscaled 6x (to at least 48); 4 grids of 16 x 16 in one row, each
  # under a 14-pixel label, with 6-pixel gaps.
  assert sheet.shape == (6 + 14 + 96 + 6, 6 + 4 * (96 + 6), 3)
  batch = next(pipeline.make_train_iterator(tiny_test.get_config(), process_index=0,
                                            process_count=1))
  for i in range(4):
    x0 = 6 + i * 102
    shown = sheet[20:116, x0:x0 + 96]
    expected = batch["grid"][i].repeat(6, axis=0).repeat(6, axis=1)
    assert (batch["box"][i] == [0, 0, 1, 1]).all()  # global tasks: no box frame drawn
    np.testing.assert_array_equal(shown, expected)
    assert (sheet[6:20, x0:x0 + 96] < 128).any()  # some dark label text
  assert os.listdir(out.parent) == ["grids.png"]  # no temporary file left behind


def test_data_build_cli_writes_a_data_set_training_reads(tmp_path):
  run("imagebrush_jax.build_data", "--source", "synthetic", "--config", "configs/tiny_test.py",
      "--output", str(tmp_path / "built"), "--tile_size", "8", "--crop_scale", "1.25",
      "--pairs_per_task", "2", "--workers", "1")
  src = sources.TfdsSource(str(tmp_path / "built"))
  config = tiny_test.get_config()
  assert src.tasks == pipeline.task_vocabulary(config)
  assert len(src) == 2 * len(src.tasks)
  assert src[0].before.shape == (10, 10, 3)  # the render size: tile 8 plus the crop margin
