"""Region edits: with a box, the model edits a padded window around it at the tile's own
resolution, and only the box is pasted back into the query; every pixel outside it stays the
query's own, bit for bit.

    window = window_for_box(box, width, height, padding=None, min_side=tile_size)
    tile = crop_to_tile(query, window, tile_size, resize_method)   # what the model sees
    tile_box = box_in_window(box, window)                          # the box it is given
    edited = paste(query, cell, window, box, resize_method)        # the query, box edited

The window (integer query pixels, [x0, x1) x [y0, y1)) is the box grown by `padding` pixels on
every side (default: DEFAULT_PADDING_SHARE of the box's larger side, at least MIN_PADDING
pixels), then grown to a square of at least `min_side` (the tile size: a window is never
smaller than the tile where the photo allows, so the model works at its full resolution), kept
inside the image by shifting it and clipped where the image is smaller than the square. The box
stays wholly inside the window, so the tile-space box maps back exactly onto the drawn one.

The window is made into the tile by resizing it straight to tile_size x tile_size with the
run's resize method, not by TileSpec's render-and-centre-crop: the window already is the crop
(its padding is the context around the region), and the centred crop of crop_scale would trim
a border off it, cutting into the padding or the box. The generated tile is resized back to
the window's size with the same method and blended into the query inside the box only: alpha
is 1 inside the box, falling off linearly over the FEATHER_PIXELS pixels along the box's border
(distance of each pixel's centre from the edge / feather; no fall-off along a side that lies on
the image's border), and 0 outside, so the outside is untouched. A box of the whole image thus
replaces the whole image by the window's tile resized back.

Every function is pure numpy (and PIL resizing), shared by infer, its manifest batches and the
web editor, so they give the same image for the same inputs.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import numpy as np

from imagebrush_jax.inference import images

DEFAULT_PADDING_SHARE = 0.25  # of the box's larger side
MIN_PADDING = 4  # pixels, the least default padding
FEATHER_PIXELS = 2.0  # the blend's soft edge, inside the box
OUTPUT_SIZES = ("query", "tile")  # the query's own size, or the model's tile as generated


@dataclasses.dataclass(frozen=True)
class Window:
  """A region of the query in whole pixels: columns x0..x1-1, rows y0..y1-1."""
  x0: int
  y0: int
  x1: int
  y1: int

  @property
  def width(self) -> int:
    return self.x1 - self.x0

  @property
  def height(self) -> int:
    return self.y1 - self.y0

  def crop(self, image: np.ndarray) -> np.ndarray:
    return image[self.y0:self.y1, self.x0:self.x1]


def check_padding(padding: Any, name: str = "box_padding") -> float | None:
  """`padding` (None: the default share of the box) as a finite number >= 0 of query pixels,
  else a one-line ValueError naming `name`."""
  if padding is None:
    return None
  try:
    value = float(padding)
  except (TypeError, ValueError):
    raise ValueError(f"{name} must be a number of pixels, got {padding!r}") from None
  if not math.isfinite(value) or value < 0:
    raise ValueError(f"{name} must be a finite number of pixels >= 0, got {padding!r}")
  return value


def check_output_size(output_size: Any, name: str = "output_size") -> str:
  """'query' or 'tile', else a one-line ValueError naming `name`."""
  if output_size not in OUTPUT_SIZES:
    raise ValueError(f"{name} must be one of {', '.join(OUTPUT_SIZES)}, got {output_size!r}")
  return output_size


def default_padding(box: Sequence[float]) -> float:
  """DEFAULT_PADDING_SHARE of the box's larger side, at least MIN_PADDING pixels."""
  x0, y0, x1, y1 = (float(v) for v in box)
  return max(float(MIN_PADDING), DEFAULT_PADDING_SHARE * max(x1 - x0, y1 - y0))


def _grow(lo: int, hi: int, length: int, limit: int) -> tuple[int, int]:
  """[lo, hi) grown about its centre to `length` (>= hi - lo, <= limit), shifted into
  [0, limit); it still holds [lo, hi)."""
  extra = length - (hi - lo)
  if extra <= 0:
    return lo, hi
  start = min(max(lo - extra // 2, 0), limit - length)
  return start, start + length


def window_for_box(box: Sequence[float], width: int, height: int, *,
                   padding: float | None = None, min_side: int = 0) -> Window:
  """The window the model edits for `box` (query pixels [x0, y0, x1, y1], validated by
  images.normalize_box) on a width x height query: the box and `padding` pixels around it
  (None: default_padding), squared up to at least `min_side`, inside the image."""
  images.normalize_box(box, width, height)  # raises on a box outside the image
  x0, y0, x1, y1 = (float(v) for v in box)
  pad = default_padding(box) if padding is None else check_padding(padding)
  wx0, wy0 = max(0, math.floor(x0 - pad)), max(0, math.floor(y0 - pad))
  wx1, wy1 = min(width, math.ceil(x1 + pad)), min(height, math.ceil(y1 + pad))
  side = max(wx1 - wx0, wy1 - wy0, int(min_side))
  wx0, wx1 = _grow(wx0, wx1, min(side, width), width)
  wy0, wy1 = _grow(wy0, wy1, min(side, height), height)
  return Window(wx0, wy0, wx1, wy1)


def box_in_window(box: Sequence[float], window: Window) -> np.ndarray:
  """A box in query pixels -> float32 [0, 1] coordinates of the window's tile (the box the
  model is given)."""
  x0, y0, x1, y1 = (float(v) for v in box)
  w, h = window.width, window.height
  out = np.array([(x0 - window.x0) / w, (y0 - window.y0) / h,
                  (x1 - window.x0) / w, (y1 - window.y0) / h])
  return np.clip(out, 0.0, 1.0).astype(np.float32)


def box_from_window(tile_box: Sequence[float], window: Window) -> np.ndarray:
  """The inverse of box_in_window: a [0, 1] box of the window's tile -> query pixels."""
  b = np.asarray(tile_box, np.float64)
  scale = np.array([window.width, window.height] * 2, np.float64)
  return b * scale + np.array([window.x0, window.y0] * 2, np.float64)


def crop_to_tile(image: np.ndarray, window: Window, tile_size: int,
                 resize_method: str) -> np.ndarray:
  """The window of `image` resized (squashed where the image forced a non-square window) to
  uint8 [tile_size, tile_size, 3] with the run's resize method; no centred crop."""
  return images.resize(np.ascontiguousarray(window.crop(image)), tile_size, tile_size,
                       resize_method)


def feather_alpha(box: Sequence[float], window: Window, feather: float = FEATHER_PIXELS,
                  size: tuple[int, int] | None = None) -> np.ndarray:
  """float64 [window.height, window.width]: how much of the edit each window pixel takes.

  d = how far a pixel's centre lies inside the box (<= 0 outside); alpha = clip(d / f, 0, 1)
  with f = min(feather, half the box's smaller side), so pixels outside the box get exactly 0
  and the box's middle 1; feather 0 is a hard edge (every pixel centred inside the box). With
  the image's `size` (width, height), a box side on the image's border is not feathered: there
  is nothing outside it to blend into.
  """
  x0, y0, x1, y1 = (float(v) for v in box)
  xs = window.x0 + np.arange(window.width, dtype=np.float64) + 0.5
  ys = window.y0 + np.arange(window.height, dtype=np.float64) + 0.5
  width, height = (math.inf, math.inf) if size is None else size
  dx = np.minimum(np.where(x0 <= 0, np.inf, xs - x0), np.where(x1 >= width, np.inf, x1 - xs))
  dy = np.minimum(np.where(y0 <= 0, np.inf, ys - y0), np.where(y1 >= height, np.inf, y1 - ys))
  inside = ((ys > y0) & (ys < y1))[:, None] & ((xs > x0) & (xs < x1))[None, :]
  d = np.minimum(dy[:, None], dx[None, :])
  f = min(float(feather), (x1 - x0) / 2, (y1 - y0) / 2)
  if f <= 0:
    return inside.astype(np.float64)
  return np.where(inside, np.clip(d / f, 0.0, 1.0), 0.0)


def paste(query: np.ndarray, cell: np.ndarray, window: Window, box: Sequence[float],
          resize_method: str, feather: float = FEATHER_PIXELS) -> np.ndarray:
  """The query with the generated `cell` (the window's tile, edited) resized back to the
  window and blended in inside `box` (feather_alpha; no feather along the image's border);
  every pixel outside the box is the query's, unchanged."""
  out = np.array(query, np.uint8, copy=True)
  edited = images.resize(np.asarray(cell, np.uint8), window.width, window.height,
                         resize_method).astype(np.float64)
  height, width = out.shape[:2]
  alpha = feather_alpha(box, window, feather, (width, height))[..., None]
  region = window.crop(out)
  blended = np.rint(region + alpha * (edited - region)).clip(0, 255).astype(np.uint8)
  region[...] = np.where(alpha > 0, blended, region)
  return out
