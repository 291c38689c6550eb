"""Reading user images of any mode, bit depth and orientation, and mapping the generated tile
back to the query's size.

Every image is read with its EXIF orientation applied (what a viewer shows) and converted to RGB
uint8 (alpha composited over white; 16-bit and float images scaled to 8 bits). Tiles are then
made exactly as in training (data.augment.TileSpec: resized to the run's render size with its
resize method, centred tile crop). Boxes are given in the (oriented) query's pixel coordinates.
Any failure to decode a file, a decompression bomb included, is an ImageLoadError naming it.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from imagebrush_jax import files
from imagebrush_jax.data.augment import RESAMPLE


class ImageLoadError(ValueError):
  """An input image is missing, unreadable or of an unsupported kind; names the file."""


def _to_rgb_uint8(img: Image.Image) -> np.ndarray:
  mode = img.mode
  if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
    arr = np.asarray(img).astype(np.float64)
    if mode.startswith("I;16"):
      arr = arr / 257.0
    elif mode == "I":
      arr = arr / 257.0 if arr.max(initial=0) > 255 else arr
    else:  # float: [0, 1] images are common, else treat as 8-bit values
      arr = arr * 255.0 if arr.max(initial=0) <= 1.0 else arr
    arr = np.clip(np.round(arr), 0, 255).astype(np.uint8)
    return np.repeat(arr[..., None], 3, axis=-1)
  if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in img.info):
    rgba = img.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"))
  return np.asarray(img.convert("RGB"))


def load_rgb(path: str) -> np.ndarray:
  """uint8 [H, W, 3] as displayed (EXIF orientation applied), from any PIL-readable file.

  Every failure that belongs to the file (missing, unreadable, corrupt or truncated, an unknown
  format, more pixels than PIL.Image.MAX_IMAGE_PIXELS allows, out of memory while decoding) is
  an ImageLoadError naming `path`, so callers can reject one input and go on.
  """
  try:
    with files.open_read(path) as f, Image.open(f) as img:
      img.load()
      img = ImageOps.exif_transpose(img)
      image = _to_rgb_uint8(img)
  except FileNotFoundError as e:
    raise ImageLoadError(f"image not found: {path}") from e
  except IsADirectoryError as e:
    raise ImageLoadError(f"image path is a folder: {path}") from e
  except Image.DecompressionBombError as e:
    raise ImageLoadError(f"image {path} is too large to decode safely: {e}") from e
  except Image.DecompressionBombWarning as e:  # raised when warnings are errors
    raise ImageLoadError(f"image {path} is too large to decode safely: {e}") from e
  except UnidentifiedImageError as e:
    raise ImageLoadError(f"cannot read image {path}: not an image format PIL knows") from e
  except MemoryError as e:
    raise ImageLoadError(f"image {path} does not fit in memory when decoded") from e
  except Exception as e:  # pylint: disable=broad-except  # PIL's decoders raise many types
    raise ImageLoadError(f"cannot read image {path}: {type(e).__name__}: {e}") from e
  if image.ndim != 3 or image.shape[-1] != 3 or min(image.shape[:2]) < 1:
    raise ImageLoadError(f"image {path} decodes to an unusable array of shape {image.shape}")
  return np.ascontiguousarray(image)


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
