"""Resize and augment: one random crop and flip, applied identically to every cell of a grid.

Augmenting the cells alike keeps the example and query pairs showing the same edit, but only if
the edit commutes with the augmentation: a flip turns rot90 into rot270 and "move right" into
"move left", and an off-centre crop turns a mirror into a mirror plus a shift. Each task says what
it tolerates (tasks.Task.flip_safe / crop); tasks of a folder or TFDS source whose names are not
registered get the safe choice: a centred crop and no flip.
"""
import dataclasses

import numpy as np
from PIL import Image

from imagebrush_jax.data import tasks as tasks_lib

RESAMPLE = {  # resize method names -> PIL filters (also used by inference)
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
}
WHOLE_TILE = np.array([0, 0, 1, 1], np.float32)


@dataclasses.dataclass(frozen=True)
class Augmentation:
  """Crop a tile_size window at `offset` (x, y) of a render_size image, then maybe flip it."""
  offset: tuple[int, int]
  flip: bool


def policy(task: str) -> tuple[bool, str]:
  """(flip_safe, crop) for a task name; conservative for names that are not registered."""
  if tasks_lib.is_known(task):
    t = tasks_lib.get_task(task)
    return t.flip_safe, t.crop
  return False, tasks_lib.CROP_CENTER


def sample(rng: np.random.Generator, task: str, *, margin: int, flip_prob: float,
           random: bool = True) -> Augmentation:
  """Draws the augmentation of one grid; `random=False` gives the centred crop, no flip."""
  flip_safe, crop = policy(task)
  if random and crop == tasks_lib.CROP_ANY:
    offset = tuple(int(v) for v in rng.integers(0, 2 * margin, size=2, endpoint=True))
  else:
    offset = (margin, margin)
  flip = bool(random and flip_safe and rng.random() < flip_prob)
  return Augmentation(offset, flip)


def resize(image: np.ndarray, size: int, method: str) -> np.ndarray:
  """Squashes an image to size x size (no-op when it already is); normalised boxes still hold."""
  if image.shape[:2] == (size, size):
    return image
  resized = Image.fromarray(image).resize((size, size), RESAMPLE[method])
  return np.asarray(resized, dtype=np.uint8)


def apply(image: np.ndarray, aug: Augmentation, tile_size: int) -> np.ndarray:
  x, y = aug.offset
  tile = image[y:y + tile_size, x:x + tile_size]
  return np.ascontiguousarray(tile[:, ::-1] if aug.flip else tile)


def apply_to_box(box: np.ndarray | None, aug: Augmentation, render_size: int,
                 tile_size: int) -> np.ndarray:
  """A [0, 1] box of the render, in the augmented tile's coordinates (whole tile if None)."""
  if box is None:
    return WHOLE_TILE.copy()
  x, y = aug.offset
  px = np.asarray(box, np.float64) * render_size - np.array([x, y, x, y])
  out = np.clip(px / tile_size, 0, 1)
  if out[2] <= out[0] or out[3] <= out[1]:  # the box fell outside the crop
    return WHOLE_TILE.copy()
  if aug.flip:
    out = np.array([1 - out[2], out[1], 1 - out[0], out[3]])
  return out.astype(np.float32)
