"""Reading user images of any mode, bit depth and orientation, and mapping the generated tile
back to the query's size.

Every image is read by the project's one decoder (data.image_decode: EXIF orientation applied,
RGB uint8, alpha over white, 16-bit scaled), as training data is. Tiles are then
made exactly as in training (data.augment.TileSpec: resized to the run's render size with its
resize method, centred tile crop). Boxes are given in the (oriented) query's pixel coordinates.
Any failure to decode a file, a decompression bomb included, is an ImageLoadError naming it.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from PIL import Image

from imagebrush_jax.data.augment import RESAMPLE
from imagebrush_jax.data.image_decode import ImageLoadError, load_rgb  # pylint: disable=unused-import


def resize(image: np.ndarray, width: int, height: int, method: str = "bicubic") -> np.ndarray:
  """uint8 [H, W, 3] -> uint8 [height, width, 3] (no-op when the size already matches)."""
  if image.shape[:2] == (height, width):
    return image
  if method not in RESAMPLE:
    raise ValueError(f"resize method must be one of {sorted(RESAMPLE)}, got {method!r}")
  return np.asarray(Image.fromarray(image).resize((width, height), RESAMPLE[method]))


def normalize_box(box: Sequence[float], width: int, height: int) -> np.ndarray:
  """[x0, y0, x1, y1] in pixels of a width x height image -> float32 [0, 1] box; validated."""
  try:
    values = [float(v) for v in box]
  except (TypeError, ValueError) as e:
    raise ValueError(f"box must be four numbers [x0, y0, x1, y1], got {box!r}") from e
  if len(values) != 4 or not all(math.isfinite(v) for v in values):
    raise ValueError(f"box must be four finite numbers [x0, y0, x1, y1], got {box!r}")
  x0, y0, x1, y1 = values
  if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
    raise ValueError(f"box {values} must satisfy 0 <= x0 < x1 <= {width} and "
                     f"0 <= y0 < y1 <= {height} (the query's size in pixels)")
  return np.asarray([x0 / width, y0 / height, x1 / width, y1 / height], np.float32)


def parse_box(text: str) -> list[float]:
  """'x0,y0,x1,y1' (command line) -> four floats."""
  parts = [p.strip() for p in text.split(",")]
  if len(parts) != 4:
    raise ValueError(f"--box must be x0,y0,x1,y1, got {text!r}")
  try:
    return [float(p) for p in parts]
  except ValueError as e:
    raise ValueError(f"--box must be four numbers x0,y0,x1,y1, got {text!r}") from e
