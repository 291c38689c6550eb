"""Resize and augment: one random crop and flip, applied identically to every cell of a grid.

Every image becomes a tile the same way (TileSpec): squashed to render_size x render_size with
the run's resize method, then a tile_size window is cropped (at a random offset in training,
centred at evaluation and inference) and maybe flipped. Training, evaluation and inference all
go through TileSpec, so a tile fed to a trained model is made exactly as its training tiles were.

Augmenting the cells alike keeps the example and query pairs showing the same edit, but only if
the edit commutes with the augmentation: a flip turns rot90 into rot270 and "move right" into
"move left", and an off-centre crop turns a mirror into a mirror plus a shift. Each task says what
it tolerates (tasks.Task.flip_safe / crop); tasks of a folder or TFDS source whose names are not
registered get the safe choice: a centred crop and no flip.
"""
import dataclasses
import numbers
from typing import Any

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


def box_in_crop(box: np.ndarray, aug: Augmentation, render_size: int,
                tile_size: int) -> np.ndarray | None:
  """A [0, 1] box of the render, in the augmented tile's coordinates; None if outside the crop."""
  x, y = aug.offset
  px = np.asarray(box, np.float64) * render_size - np.array([x, y, x, y])
  out = np.clip(px / tile_size, 0, 1)
  if out[2] <= out[0] or out[3] <= out[1]:
    return None
  if aug.flip:
    out = np.array([1 - out[2], out[1], 1 - out[0], out[3]])
  return out.astype(np.float32)


def crop_margin(tile_size: int, crop_scale: float) -> int:
  """Pixels added on each side of a tile before cropping (0 when crop_scale is 1)."""
  return round(tile_size * (crop_scale - 1) / 2)


@dataclasses.dataclass(frozen=True)
class TileSpec:
  """How any image becomes a model tile: resized (squashed) to render_size x render_size with
  resize_method, then a tile_size crop. Without an Augmentation the crop is the centred one,
  unflipped: the evaluation and inference tile."""
  tile_size: int
  render_size: int
  resize_method: str

  def __post_init__(self):
    if self.resize_method not in RESAMPLE:
      raise ValueError(f"resize method must be one of {', '.join(RESAMPLE)}, got "
                       f"{self.resize_method!r}")
    if self.render_size < self.tile_size or (self.render_size - self.tile_size) % 2:
      raise ValueError(f"render_size {self.render_size} must be tile_size {self.tile_size} plus "
                       f"an even margin")

  @classmethod
  def from_options(cls, opts: Any) -> "TileSpec":
    """From data.options.DataOptions (the training and evaluation pipeline)."""
    return cls(opts.tile_size, opts.render_size, opts.resize_method)

  @classmethod
  def from_config(cls, data: Any) -> "TileSpec":
    """From a run's `config.data` (tile_size, crop_scale, resize_method); errors name the key."""
    values = {}
    for key in ("tile_size", "crop_scale", "resize_method"):
      try:
        values[key] = data[key]
      except (KeyError, AttributeError):
        raise ValueError(f"config.data.{key} is missing") from None
    tile, scale = values["tile_size"], values["crop_scale"]
    if isinstance(tile, bool) or not isinstance(tile, numbers.Integral) or tile < 1:
      raise ValueError(f"config.data.tile_size must be a positive integer, got {tile!r}")
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real) or not 1 <= scale <= 2:
      raise ValueError(f"config.data.crop_scale must be a number in [1, 2], got {scale!r}")
    if values["resize_method"] not in RESAMPLE:
      raise ValueError(f"config.data.resize_method must be one of {', '.join(RESAMPLE)}; got "
                       f"{values['resize_method']!r}")
    tile = int(tile)
    return cls(tile, tile + 2 * crop_margin(tile, float(scale)), values["resize_method"])

  @property
  def margin(self) -> int:
    return (self.render_size - self.tile_size) // 2

  def centred(self) -> Augmentation:
    return Augmentation((self.margin, self.margin), False)

  def render(self, image: np.ndarray) -> np.ndarray:
    """Any-size uint8 image -> [render_size, render_size, 3]."""
    return resize(image, self.render_size, self.resize_method)

  def crop(self, rendered: np.ndarray, aug: Augmentation | None = None) -> np.ndarray:
    """A rendered image -> its tile (centred and unflipped when `aug` is None)."""
    return apply(rendered, self.centred() if aug is None else aug, self.tile_size)

  def to_tile(self, image: np.ndarray, aug: Augmentation | None = None) -> np.ndarray:
    """Any-size uint8 image -> uint8 [tile_size, tile_size, 3]: render, then crop."""
    return self.crop(self.render(image), aug)

  def box_to_tile(self, box: np.ndarray, aug: Augmentation | None = None) -> np.ndarray | None:
    """A [0, 1] box of the image -> the same region in tile coordinates; None if it lies wholly
    in the border the crop trims."""
    return box_in_crop(box, self.centred() if aug is None else aug, self.render_size,
                       self.tile_size)
