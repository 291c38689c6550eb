"""Lookalike scenes: scenes that render to the same pixels as a given one, drawn near-uniformly.

A rendered tile does not pin its scene down: sub-pixel centres and sizes, the shape or frame of
a hidden part, a stripe period all leave the pixels as they are. These samples say what an image
leaves open, which measures how well posed a task is (metrics/ceiling.py).

Each object is jittered alone: centre and size uniformly within `jitter_px` pixels of the truth
(a box that shrinks about what is kept while little is), shape, frame and fill from the scene
prior; a proposal is kept when, the other objects as they are, the pixels inside the window are
unchanged. Stripe and checker periods are jittered alike. Kept proposals are combined at random,
and a combination kept when it renders the same window and is a scene `sample_scene` could draw
(sizes in range, the largest `largest_margin` wider than the rest, inside the tile). Scenes with
the same pixels differ by less than a pixel in each value, so a box one pixel either side of the
truth holds them all: the kept combinations are close to uniform over them (a flat prior),
narrowed a little where objects overlap. Noise backgrounds are kept as they are (their hidden
pixels are smooth blends of the visible ones), and so is the drawing order.
"""
from __future__ import annotations

import dataclasses
import functools

import numpy as np

from imagebrush_jax.data import scenes as scenes_lib
from imagebrush_jax.data.scenes import Scene, SceneObject, SceneParams

_ROUNDS = 4  # proposal rounds (shrinking boxes) for an object; none kept: its true values
_TRIES_PER_SAMPLE = 16  # combinations tried per lookalike wanted


@dataclasses.dataclass(frozen=True)
class _Options:
  """The kept proposals of one object: values [K] each, and prior weights [K]."""
  shapes: list[str]
  frames: list[tuple[int, int, int, int]]
  filled: np.ndarray
  centers: np.ndarray  # [K, 2]
  sizes: np.ndarray
  weights: np.ndarray

  def pick(self, rng: np.random.Generator, obj: SceneObject) -> SceneObject:
    """`obj` with one kept proposal's values, drawn by weight."""
    k = int(rng.choice(len(self.weights), p=self.weights / self.weights.sum()))
    return dataclasses.replace(obj, shape=self.shapes[k], frame=self.frames[k],
                               filled=bool(self.filled[k]), center=tuple(self.centers[k]),
                               size=float(self.sizes[k]))


@functools.lru_cache(maxsize=None)
def frame_classes(shape: str) -> tuple[tuple[tuple[int, int, int, int], int], ...]:
  """(frame, how many of the 8 frames draw the same pixels) for the frames that draw `shape`
  differently: 1 class for the shapes with every symmetry of the square, 4 for the others."""
  probe = np.array([[0.13, -0.29]])
  classes: dict[bytes, list] = {}
  for frame in scenes_lib.DIHEDRAL_FRAMES:
    key = scenes_lib.object_masks(shape, frame, probe, np.array([0.61]), 97).tobytes()
    classes.setdefault(key, [frame, 0])[1] += 1
  return tuple((frame, count) for frame, count in classes.values())


def window_mask(tile_size: int, margin: int) -> np.ndarray:
  """[T, T] bool: the centred window `margin` pixels inside each side (what a crop keeps)."""
  keep = np.zeros((tile_size, tile_size), bool)
  keep[margin:tile_size - margin, margin:tile_size - margin] = True
  return keep


def _kept(points: np.ndarray, truth: np.ndarray, free: np.ndarray, params: SceneParams,
          tile_size: int, stroke_px: int) -> _Options:
  """The proposals (points [N, 3]: centre x, y and size, times every shape, frame class and
  fill) that paint `truth` [T, T] wherever `free` [T, T] is set."""
  centers, sizes = points[:, :2], points[:, 2]
  lo, hi = params.object_size
  prior = ((sizes >= lo) & (sizes <= hi) & np.all(np.abs(centers) <= 1 - sizes[:, None], -1))
  fills = [(f, p) for f, p in ((True, 1 - params.hollow_prob), (False, params.hollow_prob))
           if p > 0]
  shapes, frames, filled, index, weights = [], [], [], [], []
  for shape in params.shapes:
    for frame, count in frame_classes(shape):
      mask = scenes_lib.object_masks(shape, frame, centers, sizes, tile_size)
      for fill, p_fill in fills:
        paint = mask if fill else scenes_lib.outline(mask, stroke_px)
        kept = np.flatnonzero(prior & ~np.any((paint != truth) & free, axis=(1, 2)))
        shapes += [shape] * kept.size
        frames += [frame] * kept.size
        filled += [fill] * kept.size
        index.append(kept)
        weights.append(np.full(kept.size, count * p_fill / len(params.shapes)))
  index = np.concatenate(index)
  return _Options(shapes, frames, np.array(filled, bool), centers[index], sizes[index],
                  np.concatenate(weights))


def _object_options(rng, obj: SceneObject, below: np.ndarray, free: np.ndarray,
                    params: SceneParams, tile_size: int, stroke_px: int, num: int,
                    jitter_px: float) -> _Options | None:
  """Proposals for `obj` that paint the same pixels where they show: `free` [T, T] (inside the
  window, under no later object); `below` is the image under `obj`. Drawn uniformly in a box
  about the truth; while few are kept, the box shrinks about the kept ones and the truth (half
  their spread again on each side), and the last box's draws are the answer."""
  truth = scenes_lib.paint_mask(obj, tile_size, stroke_px)
  # Where `below` already has the object's colour, painting there or not looks the same.
  free = free & ~np.all(below == obj.color, axis=-1)
  center = np.array([*obj.center, obj.size])
  r = jitter_px * 2.0 / tile_size
  low, high = center - r, center + r
  for round_ in range(_ROUNDS):
    options = _kept(rng.uniform(low, high, (num, 3)), truth, free, params, tile_size, stroke_px)
    if len(options.weights) >= num // 8 or round_ == _ROUNDS - 1:
      break
    points = np.concatenate([np.c_[options.centers, options.sizes], center[None]])
    pad = np.maximum(np.ptp(points, axis=0) / 2, r / 16)
    low = np.maximum(low, points.min(0) - pad)
    high = np.minimum(high, points.max(0) + pad)
  return options if len(options.weights) else None


def _period_options(rng, scene: Scene, free: np.ndarray, tile_size: int, num: int,
                    jitter_px: float) -> np.ndarray:
  """Stripe / checker periods (within jitter_px pixels) showing the same visible background."""
  bg = scene.background
  if bg.kind not in ("stripes", "checker"):
    return np.array([bg.period])
  r = jitter_px * 2.0 / tile_size
  periods = bg.period + rng.uniform(-r, r, num)
  lo, hi = scenes_lib.STRIPE_PERIOD
  periods = periods[(periods >= lo) & (periods <= hi)]
  truth = scenes_lib.render_background(bg, tile_size)[free]
  kept = [p for p in periods if np.array_equal(
      scenes_lib.render_background(dataclasses.replace(bg, period=float(p)), tile_size)[free],
      truth)]
  return np.array(kept or [bg.period])


def in_prior(scene: Scene, params: SceneParams) -> bool:
  """Whether `sample_scene(., params)` could draw these sizes and centres."""
  sizes = np.sort([o.size for o in scene.objects])[::-1]
  lo, hi = params.object_size
  if sizes[0] > hi or sizes[-1] < lo:
    return False
  if len(sizes) > 1 and (sizes[0] < lo * params.largest_margin
                         or sizes[1] > max(lo, sizes[0] / params.largest_margin)):
    return False
  return all(abs(c) <= 1 - o.size for o in scene.objects for c in o.center)


def lookalike_scenes(scene: Scene, params: SceneParams, tile_size: int, *,
                     rng: np.random.Generator, num: int, margin: int = 0,
                     proposals: int = 512, jitter_px: float = 1.0) -> list[Scene]:
  """Up to `num` scenes (the truth not among them unless drawn) that render to the same pixels
  as `scene` at `tile_size`, inside the window `margin` pixels in from each side."""
  window = window_mask(tile_size, margin)
  stroke = scenes_lib.stroke_pixels(scene, tile_size)
  paints = [scenes_lib.paint_mask(o, tile_size, stroke) for o in scene.objects]
  options = []
  for i, obj in enumerate(scene.objects):
    below = scenes_lib.render(dataclasses.replace(scene, objects=scene.objects[:i]), tile_size)
    free = window & ~np.any(paints[i + 1:], axis=0) if i + 1 < len(paints) else window
    options.append(_object_options(rng, obj, below, free, params, tile_size, stroke, proposals,
                                   jitter_px))
  shown = window & ~np.any(paints, axis=0) if paints else window
  periods = _period_options(rng, scene, shown, tile_size, proposals, jitter_px)
  truth = scenes_lib.render(scene, tile_size)[window]
  out = []
  for _ in range(_TRIES_PER_SAMPLE * num):
    if len(out) == num:
      break
    objects = tuple(obj if opts is None else opts.pick(rng, obj)
                    for obj, opts in zip(scene.objects, options))
    bg = dataclasses.replace(scene.background, period=float(rng.choice(periods)))
    candidate = dataclasses.replace(scene, background=bg, objects=objects)
    if in_prior(candidate, params) and np.array_equal(
        scenes_lib.render(candidate, tile_size)[window], truth):
      out.append(candidate)
  return out
