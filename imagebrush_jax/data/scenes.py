"""Procedural scenes: a few plain-coloured shapes (1 to 4 by default) on a plain or textured
background.

A Scene is a small frozen description (vector geometry, colours), rendered at any tile size.
Coordinates: x to the right, y down, both in [-1, 1] over the tile; pixel (row i, column j) of a
T x T render samples the point ((2j + 1 - T) / T, (2i + 1 - T) / T). That grid is exactly
symmetric in floating point, so mirroring or rotating a scene (`transform_geometry`) renders
bit-for-bit the mirrored or rotated image: global tasks mean the same on scenes and on pixels.
"""
import dataclasses
import functools
import math
from typing import Sequence

import numpy as np

from imagebrush_jax.data import imageops

Color = tuple[int, int, int]
Extent = tuple[float, float, float, float]  # x0, y0, x1, y1 in scene coordinates

SHAPES = ("circle", "square", "triangle", "diamond", "cross", "ell")
BACKGROUNDS = ("plain", "stripes", "checker", "gradient", "noise")
# Object colours: saturated, and never red, white or black, which the object tasks paint with.
PALETTE: dict[str, Color] = {
    "green": (0, 200, 60),
    "blue": (30, 90, 255),
    "yellow": (255, 220, 0),
    "cyan": (0, 220, 230),
    "magenta": (230, 0, 230),
    "orange": (255, 140, 0),
    "purple": (150, 70, 240),
}
RED: Color = (255, 0, 0)
WHITE: Color = (255, 255, 255)
BLACK: Color = (0, 0, 0)
# Background colours are drawn per channel from this range: muted, so objects stand out.
_BACKGROUND_LEVELS = (16, 160)
STRIPE_PERIOD = (0.25, 0.7)  # stripes / checker period range, in scene units (tile = 2)
_NOISE_CELLS = (3, 7)  # noise backgrounds: random weights on 3 to 6 cells a side
_BAR = 0.4  # half-thickness of the bars of "cross" and "ell", in the shape's own [-1, 1] box
_PLACEMENT_TRIES = 10  # placements tried per object to avoid overlapping the ones already placed
IDENTITY_FRAME = (1, 0, 0, 1)
# The eight symmetries of the square, as row-major 2x2 matrices: the random orientation of a shape.
DIHEDRAL_FRAMES = ((1, 0, 0, 1), (0, 1, -1, 0), (-1, 0, 0, -1), (0, -1, 1, 0),
                   (-1, 0, 0, 1), (1, 0, 0, -1), (0, 1, 1, 0), (0, -1, -1, 0))


@dataclasses.dataclass(frozen=True)
class SceneObject:
  """One shape: canonical `shape` in [-1, 1]^2, mapped by `frame` and scaled by `size`."""
  shape: str
  center: tuple[float, float]
  size: float  # half of the width, in scene units (the tile is 2 wide)
  frame: tuple[int, int, int, int]  # row-major 2x2 matrix from shape to scene axes
  color: Color
  filled: bool  # False: only an outline `Scene.stroke` wide is painted

  @property
  def extent(self) -> Extent:
    """Axis-aligned bounds; every canonical shape spans its whole [-1, 1]^2 box."""
    (x, y), s = self.center, self.size
    return (x - s, y - s, x + s, y + s)


@dataclasses.dataclass(frozen=True)
class Background:
  """A parametric background; `ops` are image ops applied to it after rendering."""
  kind: str  # one of BACKGROUNDS
  colors: tuple[Color, Color]
  period: float  # stripes / checker period, in scene units
  direction: int  # 0: along x, 1: along y, 2: diagonal, 3: anti-diagonal
  seed: int  # for "noise"
  noise_cells: int  # "noise": random blend weights on this many cells a side, smoothed
  ops: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Scene:
  """Everything a render needs; tasks edit scenes by building new ones (it is immutable)."""
  background: Background
  objects: tuple[SceneObject, ...]  # in drawing order: later objects cover earlier ones
  stroke: float  # outline width of hollow objects, as a fraction of the tile width


@dataclasses.dataclass(frozen=True)
class SceneParams:
  """How scenes are drawn (config.data knobs, validated in options.py)."""
  num_objects: tuple[int, int] = (1, 4)  # inclusive range
  object_size: tuple[float, float] = (0.2, 0.5)  # object width as a fraction of the tile
  largest_margin: float = 1.25  # the largest object is this much wider than any other
  shapes: tuple[str, ...] = SHAPES
  backgrounds: tuple[str, ...] = BACKGROUNDS
  hollow_prob: float = 0.25
  stroke_width: float = 0.08  # fraction of the tile; at least one pixel when rendered


# ---------------------------------------------------------------- sampling


def _ints(rng: np.random.Generator, low, high) -> np.ndarray:
  """Uniform integers in [low, high) (broadcast), from one rng.random call: several times
  faster than rng.integers with array bounds, which dominates scene sampling otherwise."""
  low, high = np.asarray(low), np.asarray(high)
  return low + (rng.random(np.broadcast(low, high).shape) * (high - low)).astype(np.int64)


def sample_background(rng: np.random.Generator, kinds: Sequence[str]) -> Background:
  lo, hi = _BACKGROUND_LEVELS
  levels = _ints(rng, np.full((2, 3), lo), hi + 1)
  kind, direction, cells, seed = _ints(rng, (0, 0, _NOISE_CELLS[0], 0),
                                       (len(kinds), 4, _NOISE_CELLS[1], 2**31)).tolist()
  return Background(
      kind=kinds[kind],
      colors=tuple(map(tuple, levels.tolist())),
      period=float(rng.uniform(*STRIPE_PERIOD)),
      direction=direction,
      seed=seed,
      noise_cells=cells,
  )


def _widths(rng: np.random.Generator, n: int, params: SceneParams) -> np.ndarray:
  """Object widths with a unique largest one (first), `largest_margin` wider than the rest."""
  lo, hi = params.object_size
  margin = params.largest_margin
  largest = rng.uniform(lo * margin, hi)
  others = rng.uniform(lo, max(lo, largest / margin), size=n - 1)
  return np.concatenate([[largest], others])


def _clear_of(extents: np.ndarray, placed: list[Extent]) -> int:
  """Index of the first candidate extent overlapping none of `placed` (else the last one)."""
  if not placed:
    return 0
  p = np.asarray(placed)[None]  # [1, placed, 4]
  e = extents[:, None]  # [candidates, 1, 4]
  hit = ((e[..., 0] < p[..., 2]) & (p[..., 0] < e[..., 2]) &
         (e[..., 1] < p[..., 3]) & (p[..., 1] < e[..., 3])).any(axis=1)
  free = np.flatnonzero(~hit)
  return int(free[0]) if free.size else len(extents) - 1


def sample_scene(rng: np.random.Generator, params: SceneParams) -> Scene:
  """Draws a scene; all randomness comes from `rng` (seed it from (seed, index, ...))."""
  n = int(rng.integers(params.num_objects[0], params.num_objects[1], endpoint=True))
  # A width w (fraction of the tile) is a half-width of w scene units: the tile is 2 wide.
  sizes = _widths(rng, n, params)
  colors = list(PALETTE.values())
  color_ids = (rng.permutation(len(colors))[:n] if n <= len(colors)
               else _ints(rng, np.zeros(n, int), len(colors)))
  shape_ids, frame_ids = _ints(rng, np.zeros((n, 2), int),
                               (len(params.shapes), len(DIHEDRAL_FRAMES))).T
  filled = rng.random(n) >= params.hollow_prob
  # Candidate centres keep each object inside the tile; the first one clear of the objects
  # placed so far is taken (else the last).
  centers = rng.uniform(-1, 1, size=(n, _PLACEMENT_TRIES, 2)) * (1 - sizes[:, None, None])
  objects: list[SceneObject] = []
  for i in range(n):
    extents = np.concatenate([centers[i] - sizes[i], centers[i] + sizes[i]], axis=1)
    x, y = centers[i, _clear_of(extents, [o.extent for o in objects])]
    objects.append(SceneObject(
        shape=params.shapes[shape_ids[i]],
        center=(float(x), float(y)),
        size=float(sizes[i]),
        frame=DIHEDRAL_FRAMES[frame_ids[i]],
        color=colors[color_ids[i]],
        filled=bool(filled[i]),
    ))
  order = rng.permutation(n)
  return Scene(
      background=sample_background(rng, params.backgrounds),
      objects=tuple(objects[i] for i in order),
      stroke=params.stroke_width,
  )


# ---------------------------------------------------------------- rendering


@functools.lru_cache(maxsize=64)
def pixel_centers(tile_size: int) -> np.ndarray:
  """Scene coordinates of the pixel centres along one axis (exactly symmetric about 0)."""
  p = (2.0 * np.arange(tile_size) + 1.0 - tile_size) / tile_size
  p.flags.writeable = False  # cached and shared
  return p


def _inside(shape: str, qx: np.ndarray, qy: np.ndarray) -> np.ndarray:
  """Membership in the canonical shape, with q in the shape's own [-1, 1]^2 box."""
  ax, ay = np.abs(qx), np.abs(qy)
  box = (ax <= 1) & (ay <= 1)
  if shape == "square":
    return box
  if shape == "circle":
    return qx * qx + qy * qy <= 1
  if shape == "diamond":
    return ax + ay <= 1
  if shape == "triangle":  # apex at the top (y = -1), base at the bottom
    return box & (2 * ax <= qy + 1)
  if shape == "cross":
    return box & ((ax <= _BAR) | (ay <= _BAR))
  if shape == "ell":  # a bar down the left side and one along the bottom
    return box & ((qx <= 2 * _BAR - 1) | (qy >= 1 - 2 * _BAR))
  raise ValueError(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")


def object_masks(shape: str, frame: tuple[int, int, int, int], centers: np.ndarray,
                 sizes: np.ndarray, tile_size: int) -> np.ndarray:
  """Boolean [N, T, T] masks of one filled shape and frame at N centres [N, 2] and sizes [N]."""
  p = pixel_centers(tile_size)
  centers, sizes = np.asarray(centers, np.float64), np.asarray(sizes, np.float64)
  dx = p[None, None, :] - centers[:, 0, None, None]  # [N, 1, T]
  dy = p[None, :, None] - centers[:, 1, None, None]  # [N, T, 1]
  a, b, c, d = frame
  # q = frame^T (p - center) / size, exact: each column of the frame has one entry, +-1, so
  # qx and qy are each +-dx / size or +-dy / size (kept unbroadcast: cheap on many centres).
  s = sizes[:, None, None]
  qx = (a * dx if a else c * dy) / s
  qy = (b * dx if b else d * dy) / s
  return _inside(shape, qx, qy)


def object_mask(obj: SceneObject, tile_size: int) -> np.ndarray:
  """Boolean [T, T] mask of the filled shape."""
  return object_masks(obj.shape, obj.frame, np.array([obj.center]), np.array([obj.size]),
                      tile_size)[0]


def _erode(mask: np.ndarray) -> np.ndarray:
  """One step of 4-neighbour erosion of [..., T, T] masks; pixels outside the tile count as
  empty."""
  out = mask.copy()
  out[..., 1:, :] &= mask[..., :-1, :]
  out[..., :-1, :] &= mask[..., 1:, :]
  out[..., :, 1:] &= mask[..., :, :-1]
  out[..., :, :-1] &= mask[..., :, 1:]
  out[..., 0, :] = out[..., -1, :] = False
  out[..., :, 0] = out[..., :, -1] = False
  return out


def stroke_pixels(scene: Scene, tile_size: int) -> int:
  """Outline width in pixels at this tile size: scene.stroke of the tile, at least one."""
  return max(1, round(scene.stroke * tile_size))


def outline(mask: np.ndarray, stroke_px: int) -> np.ndarray:
  """The band `stroke_px` pixels wide inside the edge of [..., T, T] masks."""
  inner = mask
  for _ in range(stroke_px):
    inner = _erode(inner)
  return mask & ~inner


def paint_mask(obj: SceneObject, tile_size: int, stroke_px: int) -> np.ndarray:
  """The pixels an object paints: the whole shape, or a band `stroke_px` wide inside its edge."""
  mask = object_mask(obj, tile_size)
  return mask if obj.filled else outline(mask, stroke_px)


def _bilinear_weights(n_out: int, n_in: int) -> np.ndarray:
  """[n_out, n_in] weights interpolating n_in samples (at the tile's corners) at pixel centres."""
  u = (pixel_centers(n_out) + 1) / 2 * (n_in - 1)
  lo = np.clip(np.floor(u).astype(int), 0, n_in - 2)
  frac = u - lo
  w = np.zeros((n_out, n_in))
  w[np.arange(n_out), lo] = 1 - frac
  w[np.arange(n_out), lo + 1] += frac
  return w


def _along(x: np.ndarray, y: np.ndarray, direction: int) -> np.ndarray:
  """[T, T] coordinate along a background direction (see Background.direction)."""
  if direction == 0:
    return np.broadcast_to(x, (y.size, x.size))
  if direction == 1:
    return np.broadcast_to(y, (y.size, x.size))
  return (x + y if direction == 2 else x - y) / math.sqrt(2)


def render_background(bg: Background, tile_size: int) -> np.ndarray:
  """The background alone, as uint8 [T, T, 3], its `ops` applied."""
  p = pixel_centers(tile_size)
  x, y = p[None, :], p[:, None]
  c0, c1 = (np.array(c, np.float64) for c in bg.colors)
  if bg.kind == "plain":
    t = np.zeros((tile_size, tile_size))
  elif bg.kind == "stripes":
    t = np.floor(_along(x, y, bg.direction) / bg.period) % 2
  elif bg.kind == "checker":
    t = (np.floor(x / bg.period) + np.floor(y / bg.period)) % 2
  elif bg.kind == "gradient":
    t = np.clip((_along(x, y, bg.direction) + 1) / 2, 0, 1)
  elif bg.kind == "noise":
    cells = np.random.default_rng(bg.seed).uniform(size=(bg.noise_cells, bg.noise_cells))
    w = _bilinear_weights(tile_size, bg.noise_cells)
    t = w @ cells @ w.T
  else:
    raise ValueError(f"unknown background {bg.kind!r}; known: {', '.join(BACKGROUNDS)}")
  image = np.rint(c0 * (1 - t[..., None]) + c1 * t[..., None]).astype(np.uint8)
  for op in bg.ops:
    image = imageops.get_op(op)(image)
  return image


def render(scene: Scene, tile_size: int) -> np.ndarray:
  """The scene as a uint8 [T, T, 3] image."""
  if tile_size < 1:
    raise ValueError(f"tile_size must be positive, got {tile_size}")
  image = render_background(scene.background, tile_size)
  stroke = stroke_pixels(scene, tile_size)
  for obj in scene.objects:
    image[paint_mask(obj, tile_size, stroke)] = obj.color
  return image


# ---------------------------------------------------------------- editing


def largest_index(scene: Scene) -> int:
  """Index of the widest object (sampling makes it unique); the target of object tasks."""
  if not scene.objects:
    raise ValueError("scene has no objects")
  return int(np.argmax([o.size for o in scene.objects]))


def pixel_box(obj: SceneObject, tile_size: int) -> tuple[int, int, int, int]:
  """(x0, y0, x1, y1): the columns x0..x1-1 and rows y0..y1-1 that the filled shape covers at
  this tile size (what its pixels show, unlike `extent`); the pixel of its centre if none."""
  ys, xs = np.nonzero(object_mask(obj, tile_size))
  if not xs.size:
    col, row = (int(np.clip((v + 1) / 2 * tile_size, 0, tile_size - 1)) for v in obj.center)
    return col, row, col + 1, row + 1
  return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def fit_to_pixels(obj: SceneObject, box: tuple[int, int, int, int], width: int,
                  tile_size: int) -> SceneObject:
  """`obj` with its square box `width` pixels wide on pixel boundaries, centred on the pixel
  `box` (x0, y0, x1, y1), or half a pixel nearer the tile's middle where the parities differ
  (right / down at the middle): its pixels follow from `box` alone, and a left-right mirror
  commutes with it unless `box` is centred in the tile and `width` of the other parity."""

  def twice_centre(lo: int, hi: int) -> int:  # in pixels from the tile's top-left corner
    c2 = lo + hi
    if (c2 - width) % 2:
      c2 += -1 if c2 > tile_size else 1
    return c2

  cx2, cy2 = twice_centre(box[0], box[2]), twice_centre(box[1], box[3])
  # (c2 - T) / T is exact under a mirror (c2 -> 2T - c2), as pixel_centers is.
  center = ((cx2 - tile_size) / tile_size, (cy2 - tile_size) / tile_size)
  return dataclasses.replace(obj, center=center, size=width / tile_size)


def replace_object(scene: Scene, index: int, **changes) -> Scene:
  objects = list(scene.objects)
  objects[index] = dataclasses.replace(objects[index], **changes)
  return dataclasses.replace(scene, objects=tuple(objects))


def transform_geometry(scene: Scene, op: str) -> Scene:
  """The scene mirrored or rotated like the pixels of `imageops.GEOMETRIC_OPS[op]`."""
  _, (m00, m01, m10, m11) = imageops.GEOMETRIC_OPS[op]

  def move(obj: SceneObject) -> SceneObject:
    x, y = obj.center
    a, b, c, d = obj.frame
    frame = (m00 * a + m01 * c, m00 * b + m01 * d, m10 * a + m11 * c, m10 * b + m11 * d)
    return dataclasses.replace(obj, center=(m00 * x + m01 * y, m10 * x + m11 * y), frame=frame)

  bg = dataclasses.replace(scene.background, ops=scene.background.ops + (op,))
  return dataclasses.replace(scene, background=bg, objects=tuple(map(move, scene.objects)))


def transform_colors(scene: Scene, op: str) -> Scene:
  """The scene with every colour passed through the pixel op `imageops.COLOR_OPS[op]`."""
  fn = imageops.COLOR_OPS[op]

  def recolor(obj: SceneObject) -> SceneObject:
    pixel = fn(np.array([[obj.color]], np.uint8))[0, 0]
    return dataclasses.replace(obj, color=tuple(int(v) for v in pixel))

  bg = dataclasses.replace(scene.background, ops=scene.background.ops + (op,))
  return dataclasses.replace(scene, background=bg, objects=tuple(map(recolor, scene.objects)))


def union_box(extents: Sequence[Extent]) -> np.ndarray | None:
  """Union of extents as a float32 [x0, y0, x1, y1] box in [0, 1] tile units; None if empty."""
  if not extents:
    return None
  e = np.array(extents, np.float64)
  box = np.concatenate([e[:, :2].min(0), e[:, 2:].max(0)])
  return np.clip((box + 1) / 2, 0, 1).astype(np.float32)
