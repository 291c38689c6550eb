"""The synthetic task family: named, pure edits, looked up in a registry.

Global tasks (hflip, vflip, rot90, invert, grayscale, swap_red_blue) change every pixel the same
way and apply to any RGB image, real photos included (`apply_global_task`). Object tasks edit a
Scene: they act on "the largest object" (the widest one; scene sampling makes it unique) or on all
objects. Any two tasks compose left to right as 'a+b' (apply a, then b), resolved by `get_task`.

A task edits a scene for the tile size it is rendered at: edits that place geometry (move,
scale_up, scale_down, bbox) work from the pixels the object covers and land on whole pixels, so
that the target follows from the before-image (benchmarks/ceiling.py measures how well it does).

Each task also says which augmentations keep its meaning: `flip_safe` when it commutes with a
left-right flip of every cell (rot90 does not: flipped, it becomes rot270), and `crop` "any" when
it commutes with cropping the same window out of every cell, "center" when only a centred window
does (mirrors and rotations).

`python -m imagebrush_jax.tasks` lists the registered tasks (`--list`: their names, one a line).
"""
import dataclasses
import math
from typing import Callable, Sequence

import numpy as np

from imagebrush_jax.data import imageops
from imagebrush_jax.data import scenes as scenes_lib
from imagebrush_jax.data.scenes import Extent, Scene

Box = np.ndarray | None  # float32 [x0, y0, x1, y1] in [0, 1]; None: the whole tile
SceneFn = Callable[[Scene, int], tuple[Scene, Box]]  # (scene, tile size) -> (edited scene, box)

GLOBAL_TASKS = ("hflip", "vflip", "rot90", "invert", "grayscale", "swap_red_blue")
CROP_ANY, CROP_CENTER = "any", "center"
# A quarter of the tile (which is 2 scene units wide): how far "move" shifts the largest object
# (rounded to whole pixels).
MOVE_DISTANCE = 0.5
SCALE_UP, SCALE_DOWN = 1.5, 0.5  # width factors, rounded to whole pixels
# "bbox": the gap between the object's pixels and its frame, on each side: this fraction of the
# object's width in pixels, and at least BBOX_MIN_GAP pixels (a clear gap at any tile size).
BBOX_GAP = 0.075
BBOX_MIN_GAP = 1


@dataclasses.dataclass(frozen=True)
class Task:
  """A named edit. `image_fn` is set for global tasks only (they need no scene)."""
  name: str
  scene_fn: SceneFn
  image_fn: Callable[[np.ndarray], np.ndarray] | None
  flip_safe: bool
  crop: str  # CROP_ANY | CROP_CENTER
  doc: str

  @property
  def is_global(self) -> bool:
    return self.image_fn is not None

  def make_pair(self, scene: Scene, tile_size: int) -> tuple[np.ndarray, np.ndarray, Box]:
    """(before, after, box) for `scene` rendered at `tile_size`."""
    before = scenes_lib.render(scene, tile_size)
    if self.is_global:  # Same pixels as rendering scene_fn(scene, tile_size), and cheaper.
      return before, self.image_fn(before), None
    after_scene, box = self.scene_fn(scene, tile_size)
    return before, scenes_lib.render(after_scene, tile_size), box


_REGISTRY: dict[str, Task] = {}


def register(name: str, *, flip_safe: bool = True, crop: str = CROP_ANY):
  """Decorator: registers a (Scene, tile size) -> (Scene, box) function as an object task."""

  def wrap(fn: SceneFn) -> SceneFn:
    _add(Task(name, fn, None, flip_safe, crop, (fn.__doc__ or "").strip()))
    return fn

  return wrap


def _add(task: Task) -> None:
  if task.name in _REGISTRY:
    raise ValueError(f"task {task.name!r} is registered twice")
  if "+" in task.name:
    raise ValueError(f"task name {task.name!r} must not contain '+' (it means composition)")
  _REGISTRY[task.name] = task


# ---------------------------------------------------------------- global tasks


def _register_global(name: str, doc: str) -> None:
  if name in imageops.GEOMETRIC_OPS:
    scene_fn = lambda s, _: (scenes_lib.transform_geometry(s, name), None)
    flip_safe = name != "rot90"
    crop = CROP_CENTER
  else:
    scene_fn = lambda s, _: (scenes_lib.transform_colors(s, name), None)
    flip_safe, crop = True, CROP_ANY
  _add(Task(name, scene_fn, imageops.get_op(name), flip_safe, crop, doc))


_register_global("hflip", "Mirror left-right.")
_register_global("vflip", "Mirror top-bottom.")
_register_global("rot90", "Rotate 90 degrees counter-clockwise.")
_register_global("invert", "Photographic negative (255 - value).")
_register_global("grayscale", "Rec. 601 luma in all three channels.")
_register_global("swap_red_blue", "Exchange the red and blue channels.")

# ---------------------------------------------------------------- object tasks


def _box(*extents) -> Box:
  return scenes_lib.union_box(list(extents))


def _nearest(target: float, parity: int) -> int:
  """The integer of this parity (0 even, 1 odd) nearest `target`, at least 1; the larger on a
  tie."""
  n = 2 * math.floor((target - parity) / 2 + 0.5) + parity
  return max(n, 2 - parity)


@register("recolor")
def recolor(scene: Scene, tile_size: int) -> tuple[Scene, Box]:
  """Paint the largest object red."""
  del tile_size
  i = scenes_lib.largest_index(scene)
  return scenes_lib.replace_object(scene, i, color=scenes_lib.RED), _box(scene.objects[i].extent)


@register("move", flip_safe=False)
def move(scene: Scene, tile_size: int) -> tuple[Scene, Box]:
  """Move the largest object right by a quarter of the tile in whole pixels (up to the border)."""
  i = scenes_lib.largest_index(scene)
  obj = scene.objects[i]
  step = round(MOVE_DISTANCE / 2 * tile_size)
  step = max(0, min(step, tile_size - scenes_lib.pixel_box(obj, tile_size)[2]))
  x, y = obj.center
  moved = scenes_lib.replace_object(scene, i, center=(x + 2 * step / tile_size, y))
  return moved, _box(obj.extent, moved.objects[i].extent)


def _scale(scene: Scene, tile_size: int, factor: float) -> tuple[Scene, Extent, Extent]:
  """The largest object `factor` times as wide as its columns of pixels, about their centre, its
  box on whole pixels: (scene, extent before, extent after)."""
  i = scenes_lib.largest_index(scene)
  obj = scene.objects[i]
  box = scenes_lib.pixel_box(obj, tile_size)
  columns = box[2] - box[0]
  width = max(1, math.floor(factor * columns + 0.5))
  if box[0] + box[2] == tile_size and (width - columns) % 2:  # centred: stay mirror-symmetric
    width = _nearest(factor * columns, columns % 2)
  scaled = scenes_lib.fit_to_pixels(obj, box, width, tile_size)
  return scenes_lib.replace_object(scene, i, center=scaled.center, size=scaled.size), \
      obj.extent, scaled.extent


@register("scale_up")
def scale_up(scene: Scene, tile_size: int) -> tuple[Scene, Box]:
  """Make the largest object 1.5 times wider, about its centre (in whole pixels)."""
  out, _, after = _scale(scene, tile_size, SCALE_UP)
  return out, _box(after)


@register("scale_down")
def scale_down(scene: Scene, tile_size: int) -> tuple[Scene, Box]:
  """Make the largest object half as wide, about its centre (in whole pixels)."""
  out, before, _ = _scale(scene, tile_size, SCALE_DOWN)
  return out, _box(before)


@register("delete")
def delete(scene: Scene, tile_size: int) -> tuple[Scene, Box]:
  """Remove the largest object."""
  del tile_size
  i = scenes_lib.largest_index(scene)
  objects = scene.objects[:i] + scene.objects[i + 1:]
  return dataclasses.replace(scene, objects=objects), _box(scene.objects[i].extent)


@register("keep_largest")
def keep_largest(scene: Scene, tile_size: int) -> tuple[Scene, Box]:
  """Remove every object except the largest."""
  del tile_size
  i = scenes_lib.largest_index(scene)
  removed = [o.extent for j, o in enumerate(scene.objects) if j != i]
  return dataclasses.replace(scene, objects=(scene.objects[i],)), _box(*removed)


@register("hollow")
def hollow(scene: Scene, tile_size: int) -> tuple[Scene, Box]:
  """Draw every object as an outline."""
  del tile_size
  changed = [o.extent for o in scene.objects if o.filled]
  objects = tuple(dataclasses.replace(o, filled=False) for o in scene.objects)
  return dataclasses.replace(scene, objects=objects), _box(*changed)


@register("fill")
def fill(scene: Scene, tile_size: int) -> tuple[Scene, Box]:
  """Fill every outlined object."""
  del tile_size
  changed = [o.extent for o in scene.objects if not o.filled]
  objects = tuple(dataclasses.replace(o, filled=True) for o in scene.objects)
  return dataclasses.replace(scene, objects=objects), _box(*changed)


def _on_black(scene: Scene, *, filled: bool) -> Scene:
  bg = scenes_lib.Background("plain", (scenes_lib.BLACK, scenes_lib.BLACK), 1.0, 0, 0, 2)
  objects = tuple(
      dataclasses.replace(o, color=scenes_lib.WHITE, filled=filled) for o in scene.objects)
  return dataclasses.replace(scene, background=bg, objects=objects)


@register("edges")
def edges(scene: Scene, tile_size: int) -> tuple[Scene, Box]:
  """Edge map: object outlines in white on black."""
  del tile_size
  return _on_black(scene, filled=False), None


@register("segment")
def segment(scene: Scene, tile_size: int) -> tuple[Scene, Box]:
  """Segmentation mask: objects in white on black."""
  del tile_size
  return _on_black(scene, filled=True), None


@register("bbox")
def bbox(scene: Scene, tile_size: int) -> tuple[Scene, Box]:
  """Draw a white square frame around the largest object, a clear gap outside its pixels."""
  obj = scene.objects[scenes_lib.largest_index(scene)]
  box = x0, y0, x1, y1 = scenes_lib.pixel_box(obj, tile_size)
  gap = max(BBOX_MIN_GAP, round(BBOX_GAP * max(x1 - x0, y1 - y0)))
  margin = gap + scenes_lib.stroke_pixels(scene, tile_size)  # the frame is drawn inside its box
  # Columns' parity, and at least `margin` free rows above and below too.
  width = x1 - x0 + 2 * margin + 2 * math.ceil(max(0, (y1 - y0) - (x1 - x0)) / 2)
  frame = scenes_lib.fit_to_pixels(
      scenes_lib.SceneObject("square", obj.center, obj.size, scenes_lib.IDENTITY_FRAME,
                             scenes_lib.WHITE, filled=False), box, width, tile_size)
  return dataclasses.replace(scene, objects=scene.objects + (frame,)), _box(frame.extent)


# ---------------------------------------------------------------- lookup and composition


def task_names() -> tuple[str, ...]:
  """Every registered task name, in registration order (global ones first); no compositions."""
  return tuple(_REGISTRY)


def _compose(parts: Sequence[Task]) -> Task:
  def scene_fn(scene: Scene, tile_size: int) -> tuple[Scene, Box]:
    boxes = []
    for part in parts:
      scene, box = part.scene_fn(scene, tile_size)
      boxes.append(box)
    if any(b is None for b in boxes):  # some step changes the whole tile
      return scene, None
    return scene, scenes_lib.union_box([tuple(b * 2 - 1) for b in boxes])

  image_fn = None
  if all(p.is_global for p in parts):
    def image_fn(image: np.ndarray) -> np.ndarray:
      for part in parts:
        image = part.image_fn(image)
      return image

  return Task(
      name="+".join(p.name for p in parts),
      scene_fn=scene_fn,
      image_fn=image_fn,
      flip_safe=all(p.flip_safe for p in parts),
      crop=CROP_CENTER if any(p.crop == CROP_CENTER for p in parts) else CROP_ANY,
      doc=" Then: ".join(p.doc for p in parts),
  )


def get_task(name: str) -> Task:
  """A registered task, or the composition 'a+b' (a first, then b) of registered tasks."""
  parts = name.split("+")
  unknown = [p for p in parts if p not in _REGISTRY]
  if unknown:
    raise KeyError(f"unknown task {unknown[0]!r} in {name!r}; registered tasks: "
                   f"{', '.join(_REGISTRY)} (compose them as 'a+b')")
  if len(parts) == 1:
    return _REGISTRY[name]
  return _compose([_REGISTRY[p] for p in parts])


def is_known(name: str) -> bool:
  return all(p in _REGISTRY for p in name.split("+"))


def apply_global_task(name: str, image: np.ndarray) -> np.ndarray:
  """Applies a global task (or a composition of global tasks) to any uint8 RGB image."""
  task = get_task(name)
  if not task.is_global:
    raise ValueError(f"task {name!r} edits objects of a synthetic scene; only global tasks "
                     f"({', '.join(GLOBAL_TASKS)}) and their compositions apply to images")
  return task.image_fn(imageops.check_image(image))

