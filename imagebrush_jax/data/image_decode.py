"""The one image decoder: every image the project reads, for training, data builds or edits.

An image becomes what a viewer shows: its EXIF orientation applied, then RGB uint8 with alpha
composited over white, 16-bit and float images scaled to 8 bits, and palette, grayscale and
CMYK images converted. The data build, the folder source, the video reader and inference all
decode here, so one file gives the same pixels (and the same tile) to training and to `infer`.
Any failure to decode, a decompression bomb included, is an ImageLoadError naming the file.
"""
from __future__ import annotations

import io
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from imagebrush_jax.infra import files

_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N")
_ALPHA = ("RGBA", "LA", "PA", "RGBa", "La")


class ImageLoadError(ValueError):
  """An input image is missing, unreadable or of an unsupported kind; names the file."""


def to_rgb_uint8(img: Image.Image) -> np.ndarray:
  """uint8 [H, W, 3] of a decoded PIL image of any mode (no orientation applied here)."""
  mode = img.mode
  if mode in _SIXTEEN_BIT or mode in ("I", "F"):
    arr = np.asarray(img).astype(np.float64)
    if mode in _SIXTEEN_BIT:
      arr = arr / 257.0
    elif mode == "I":
      arr = arr / 257.0 if arr.max(initial=0) > 255 else arr
    else:  # float: [0, 1] images are common, else treat as 8-bit values
      arr = arr * 255.0 if arr.max(initial=0) <= 1.0 else arr
    arr = np.clip(np.round(arr), 0, 255).astype(np.uint8)
    return np.repeat(arr[..., None], 3, axis=-1)
  if mode in _ALPHA or (mode == "P" and "transparency" in img.info):
    rgba = img.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"))
  return np.asarray(img.convert("RGB"))


def decode_rgb(data: bytes | BinaryIO, name: str) -> np.ndarray:
  """uint8 [H, W, 3] as displayed, from encoded bytes or an open binary file; errors name
  `name` (the file, or the row the bytes came from)."""
  stream = io.BytesIO(data) if isinstance(data, (bytes, bytearray, memoryview)) else data
  try:
    with Image.open(stream) as img:
      img.load()
      image = to_rgb_uint8(ImageOps.exif_transpose(img))
  except Image.DecompressionBombError as e:
    raise ImageLoadError(f"image {name} is too large to decode safely: {e}") from e
  except Image.DecompressionBombWarning as e:  # raised when warnings are errors
    raise ImageLoadError(f"image {name} is too large to decode safely: {e}") from e
  except UnidentifiedImageError as e:
    raise ImageLoadError(f"cannot read image {name}: not an image format PIL knows") from e
  except MemoryError as e:
    raise ImageLoadError(f"image {name} does not fit in memory when decoded") from e
  except Exception as e:  # pylint: disable=broad-except  # PIL's decoders raise many types
    raise ImageLoadError(f"cannot read image {name}: {type(e).__name__}: "
                         f"{' '.join(str(e).split())}") from e
  if image.ndim != 3 or image.shape[-1] != 3 or min(image.shape[:2]) < 1:
    raise ImageLoadError(f"image {name} decodes to an unusable array of shape {image.shape}")
  return np.ascontiguousarray(image)


def load_rgb(path: str) -> np.ndarray:
  """uint8 [H, W, 3] as displayed, from an image file on disk or in a bucket.

  Every failure that belongs to the file (missing, unreadable, corrupt or truncated, an unknown
  format, more pixels than PIL.Image.MAX_IMAGE_PIXELS allows, out of memory while decoding) is
  an ImageLoadError naming `path`, so callers can reject one input and go on.
  """
  try:
    f = files.open_read(path)
  except FileNotFoundError as e:
    raise ImageLoadError(f"image not found: {path}") from e
  except IsADirectoryError as e:
    raise ImageLoadError(f"image path is a folder: {path}") from e
  except OSError as e:
    raise ImageLoadError(f"cannot read image {path}: {type(e).__name__}: {e}") from e
  with f:
    return decode_rgb(f, path)
