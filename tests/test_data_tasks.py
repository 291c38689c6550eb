"""The task registry: every task is a deterministic, shape-keeping, real edit that means what
its name says; global tasks obey their algebra and mean the same on scenes and on pixels."""
import dataclasses
import itertools
import subprocess
import sys

import numpy as np
import pytest

from imagebrush_jax.data import imageops
from imagebrush_jax.data import scenes
from imagebrush_jax.data import tasks
from imagebrush_jax.data.scenes import SceneObject

GLOBAL = ("hflip", "vflip", "rot90", "invert", "grayscale", "swap_red_blue")
COMPOSITIONS = ("hflip+invert", "rot90+grayscale", "recolor+hflip", "vflip+delete",
                "scale_up+swap_red_blue")


def generic_scene() -> scenes.Scene:
  """Three objects of different shapes, colours and fill on a gradient: every task changes it."""
  bg = scenes.Background("gradient", ((20, 40, 60), (120, 100, 30)), 0.5, 2, 0, 4)
  return scenes.Scene(bg, (
      SceneObject("triangle", (-0.35, -0.2), 0.5, (1, 0, 0, 1), (0, 200, 60), True),
      SceneObject("circle", (0.55, 0.55), 0.4, (1, 0, 0, 1), (30, 90, 255), False),
      SceneObject("ell", (0.55, -0.6), 0.25, (0, 1, -1, 0), (255, 220, 0), True),
  ), stroke=0.1)


def random_scenes(n: int, seed: int = 0):
  return [scenes.sample_scene(np.random.default_rng([seed, i]), scenes.SceneParams())
          for i in range(n)]


def test_registry_has_the_global_tasks_and_at_least_16_in_all():
  names = tasks.task_names()
  assert len(names) >= 16
  assert names[:6] == GLOBAL
  assert len(set(names)) == len(names)
  assert all("+" not in n for n in names)
  assert all(tasks.get_task(n).is_global == (n in GLOBAL) for n in names)


def test_cli_lists_exactly_the_registered_names():
  out = subprocess.run([sys.executable, "-m", "imagebrush_jax.tasks", "--list"],
                       capture_output=True, text=True, check=True).stdout
  assert out.splitlines() == list(tasks.task_names())
  table = subprocess.run([sys.executable, "-m", "imagebrush_jax.tasks"], capture_output=True,
                         text=True, check=True).stdout.splitlines()
  assert [line.split()[:2] for line in table] == [
      [n, "global" if n in GLOBAL else "object"] for n in tasks.task_names()]
  assert table[0].endswith(tasks.get_task("hflip").doc)


@pytest.mark.parametrize("name", tasks.task_names() + COMPOSITIONS)
@pytest.mark.parametrize("tile", [8, 16])
def test_task_keeps_shape_is_deterministic_and_changes_the_scene(name, tile):
  task = tasks.get_task(name)
  before, after, box = task.make_pair(generic_scene(), tile)
  before2, after2, box2 = task.make_pair(generic_scene(), tile)
  assert before.dtype == after.dtype == np.uint8
  assert before.shape == after.shape == (tile, tile, 3)
  np.testing.assert_array_equal(after, after2)
  np.testing.assert_array_equal(before, before2)
  assert not np.array_equal(before, after), f"{name} is the identity on a generic scene"
  if box is not None:
    assert box.dtype == np.float32 and box.shape == (4,)
    assert 0 <= box[0] < box[2] <= 1 and 0 <= box[1] < box[3] <= 1
    np.testing.assert_array_equal(box, box2)


@pytest.mark.parametrize("name", GLOBAL + ("hflip+invert", "rot90+swap_red_blue+vflip"))
@pytest.mark.parametrize("tile", [8, 13, 16])
def test_global_task_on_a_scene_equals_it_on_the_pixels(name, tile):
  task = tasks.get_task(name)
  for scene in random_scenes(12):
    moved, box = task.scene_fn(scene, tile)
    assert box is None
    np.testing.assert_array_equal(scenes.render(moved, tile),
                                  task.image_fn(scenes.render(scene, tile)))


def photo() -> np.ndarray:
  return np.random.default_rng(3).integers(0, 256, (5, 7, 3), dtype=np.uint8)


def test_global_tasks_match_reference_pixels():
  x = photo()
  np.testing.assert_array_equal(tasks.apply_global_task("hflip", x), x[:, ::-1])
  np.testing.assert_array_equal(tasks.apply_global_task("vflip", x), x[::-1])
  rotated = tasks.apply_global_task("rot90", x)
  assert rotated.shape == (7, 5, 3)
  np.testing.assert_array_equal(rotated[0], x[:, -1])  # the right column becomes the top row
  np.testing.assert_array_equal(tasks.apply_global_task("invert", x), 255 - x.astype(int))
  np.testing.assert_array_equal(tasks.apply_global_task("swap_red_blue", x), x[..., [2, 1, 0]])
  pixels = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255], [10, 20, 30]]],
                    np.uint8)
  gray = tasks.apply_global_task("grayscale", pixels)
  np.testing.assert_array_equal(gray[0, :, 0], [76, 150, 29, 255, 18])  # Rec. 601, rounded
  assert (gray == gray[..., :1]).all()


def test_inverse_laws_on_a_non_square_photo():
  x = photo()
  for name in ("hflip", "vflip", "invert", "swap_red_blue"):
    once = tasks.apply_global_task(name, x)
    assert not np.array_equal(once, x)
    np.testing.assert_array_equal(tasks.apply_global_task(name, once), x)
  np.testing.assert_array_equal(tasks.apply_global_task("rot90+rot90+rot90+rot90", x), x)
  np.testing.assert_array_equal(tasks.apply_global_task("rot90+rot90", x),
                                tasks.apply_global_task("hflip+vflip", x))
  gray = tasks.apply_global_task("grayscale", x)
  np.testing.assert_array_equal(tasks.apply_global_task("grayscale", gray), gray)


def test_composition_applies_left_to_right():
  x = photo()
  np.testing.assert_array_equal(tasks.apply_global_task("rot90+hflip", x),
                                imageops.hflip(imageops.rot90(x)))
  assert not np.array_equal(tasks.apply_global_task("hflip+rot90", x),
                            tasks.apply_global_task("rot90+hflip", x))
  scene = generic_scene()
  task = tasks.get_task("recolor+hflip")
  assert not task.is_global and task.name == "recolor+hflip"
  moved, box = task.scene_fn(scene, 16)
  np.testing.assert_array_equal(scenes.render(moved, 16),
                                imageops.hflip(tasks.get_task("recolor").make_pair(scene, 16)[1]))
  assert box is None  # hflip touches the whole tile
  _, box = tasks.get_task("recolor+delete").scene_fn(scene, 16)
  np.testing.assert_allclose(box, scenes.union_box([scene.objects[0].extent]), atol=1e-6)


def test_lookup_and_apply_errors_are_clear():
  with pytest.raises(KeyError, match="unknown task 'sepia' in 'hflip\\+sepia'"):
    tasks.get_task("hflip+sepia")
  with pytest.raises(ValueError, match="'recolor' edits objects"):
    tasks.apply_global_task("recolor", photo())
  with pytest.raises(ValueError, match="uint8 array of shape"):
    tasks.apply_global_task("hflip", photo().astype(np.float32))


# ---------------------------------------------------------------- object tasks mean what they say

T = 32


def masks(scene):
  return [scenes.object_mask(o, T) for o in scene.objects]


def centroid(mask):
  ys, xs = np.nonzero(mask)
  return xs.mean(), ys.mean()


def box_center(mask):
  ys, xs = np.nonzero(mask)
  return (xs.min() + xs.max()) / 2, (ys.min() + ys.max()) / 2


def test_recolor_paints_exactly_the_largest_object_red():
  scene = generic_scene()
  before, after, box = tasks.get_task("recolor").make_pair(scene, T)
  largest = scenes.paint_mask(scene.objects[0], T, scenes.stroke_pixels(scene, T))
  assert (after[largest] == scenes.RED).all()
  np.testing.assert_array_equal(after[~largest], before[~largest])
  np.testing.assert_allclose(box, [(-0.85 + 1) / 2, (-0.7 + 1) / 2, (0.15 + 1) / 2, 0.65],
                             atol=1e-6)


def test_move_shifts_the_largest_object_a_quarter_tile_right():
  scene = generic_scene()
  moved, box = tasks.move(scene, T)
  (x0, y0), (x1, y1) = centroid(masks(scene)[0]), centroid(masks(moved)[0])
  assert abs(x1 - x0 - T / 4) <= 0.5 and abs(y1 - y0) <= 0.5
  # The box covers the object before and after: x from -0.85 to 0.65 in scene units.
  np.testing.assert_allclose(box, [0.075, 0.15, 0.825, 0.65], atol=1e-6)
  at_border = scenes.replace_object(scene, 0, center=(0.5, -0.2))
  assert tasks.move(at_border, T)[0].objects[0].center == (0.5, -0.2)  # stops at the border


@pytest.mark.parametrize("name,ratio", [("scale_up", 1.5**2), ("scale_down", 0.5**2)])
def test_scaling_changes_the_area_about_the_centre(name, ratio):
  scene = generic_scene()
  out, box = tasks.get_task(name).scene_fn(scene, T)
  before, after = masks(scene)[0], masks(out)[0]
  assert after.sum() / before.sum() == pytest.approx(ratio, rel=0.15)
  np.testing.assert_allclose(box_center(after), box_center(before), atol=1.0)
  expected = out.objects[0].extent if name == "scale_up" else scene.objects[0].extent
  np.testing.assert_allclose(box, scenes.union_box([expected]))


def test_delete_and_keep_largest_reveal_the_background():
  scene = generic_scene()
  background = scenes.render_background(scene.background, T)
  before, after, _ = tasks.get_task("delete").make_pair(scene, T)
  gone = masks(scene)[0]
  np.testing.assert_array_equal(after[gone], background[gone])
  np.testing.assert_array_equal(after[~gone], before[~gone])
  _, after, box = tasks.get_task("keep_largest").make_pair(scene, T)
  others = masks(scene)[1] | masks(scene)[2]
  np.testing.assert_array_equal(after[others], background[others])
  np.testing.assert_allclose(box, scenes.union_box([o.extent for o in scene.objects[1:]]))


def test_hollow_and_fill():
  scene = generic_scene()
  background = scenes.render_background(scene.background, T)
  _, after, _ = tasks.get_task("hollow").make_pair(scene, T)
  triangle = masks(scene)[0]
  outline = scenes.paint_mask(dataclasses.replace(scene.objects[0], filled=False), T,
                              scenes.stroke_pixels(scene, T))
  inside = triangle & ~outline
  assert inside.sum() > 10 and outline.sum() > 10
  np.testing.assert_array_equal(after[inside], background[inside])
  assert (after[outline] == scene.objects[0].color).all()
  _, after, box = tasks.get_task("fill").make_pair(scene, T)
  circle = masks(scene)[1]
  assert (after[circle] == scene.objects[1].color).all()
  np.testing.assert_allclose(box, scenes.union_box([scene.objects[1].extent]))


def test_segment_and_edges_are_white_on_black():
  scene = generic_scene()
  union = np.any(masks(scene), axis=0)
  _, seg, box = tasks.get_task("segment").make_pair(scene, T)
  assert box is None
  expected = np.where(union[..., None], 255, 0).astype(np.uint8).repeat(3, axis=-1)
  np.testing.assert_array_equal(seg, expected)
  _, edges, _ = tasks.get_task("edges").make_pair(scene, T)
  white = (edges == 255).all(-1)
  assert ((edges == 0).all(-1) | white).all()
  assert white.any() and (white <= union).all() and white.sum() < union.sum()


@pytest.mark.parametrize("tile", [16, 18, 32])
def test_bbox_frames_the_largest_object_with_a_clear_gap(tile):
  """A white square band, one outline wide, around the object's pixels, with at least
  BBOX_MIN_GAP pixels of the scene left as they were in between; the box covers it."""
  obj = SceneObject("circle", (0.1, -0.05), 0.3, (1, 0, 0, 1), (0, 200, 60), True)
  scene = scenes.Scene(generic_scene().background, (obj,), stroke=0.1)
  before, after, box = tasks.get_task("bbox").make_pair(scene, tile)
  x0, y0, x1, y1 = scenes.pixel_box(obj, tile)
  stroke = scenes.stroke_pixels(scene, tile)
  white = (after == 255).all(-1)
  ys, xs = np.nonzero(white)
  fx0, fy0, fx1, fy1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
  assert fx1 - fx0 == fy1 - fy0
  band = np.zeros_like(white)
  band[fy0:fy1, fx0:fx1] = True
  band[fy0 + stroke:fy1 - stroke, fx0 + stroke:fx1 - stroke] = False
  np.testing.assert_array_equal(white, band)
  gaps = (x0 - fx0 - stroke, y0 - fy0 - stroke, fx1 - stroke - x1, fy1 - stroke - y1)
  assert min(gaps) >= tasks.BBOX_MIN_GAP, gaps
  np.testing.assert_array_equal(after[~band], before[~band])
  np.testing.assert_allclose(box * tile, [fx0, fy0, fx1, fy1], atol=1e-4)


@pytest.mark.parametrize("name", ["move", "scale_up", "scale_down", "bbox"])
@pytest.mark.parametrize("tile", [16, 18])
def test_placed_edits_follow_from_the_pixels(name, tile):
  """Moving or resizing the object by less than a pixel, its pixels as they were, leaves the
  target as it was: these edits work from the object's pixels and land on whole pixels."""
  task = tasks.get_task(name)
  px = 2 / tile
  checked = 0
  for scene in random_scenes(10):
    i = scenes.largest_index(scene)
    obj = scene.objects[i]
    after = task.make_pair(scene, tile)[1]
    for dx, dy, ds in itertools.product((-0.2, 0.1), (-0.1, 0.2), (-0.15, 0.1)):
      nudged = dataclasses.replace(obj, center=(obj.center[0] + dx * px,
                                                obj.center[1] + dy * px), size=obj.size + ds * px)
      if np.array_equal(scenes.object_mask(nudged, tile), scenes.object_mask(obj, tile)):
        other = scenes.replace_object(scene, i, center=nudged.center, size=nudged.size)
        np.testing.assert_array_equal(task.make_pair(other, tile)[1], after)
        checked += 1
  assert checked >= 10


def test_move_and_scale_work_in_whole_pixels():
  """move shifts the object's pixels by round(T / 4) columns; scaling sets its columns to the
  nearest whole number of pixels to factor x its columns, about the same centre."""
  obj = SceneObject("ell", (-0.31, 0.07), 0.33, (0, 1, -1, 0), (0, 200, 60), True)
  scene = scenes.Scene(generic_scene().background, (obj,), stroke=0.1)
  tile = 18
  before = scenes.object_mask(obj, tile)
  moved, _ = tasks.move(scene, tile)
  np.testing.assert_array_equal(scenes.object_mask(moved.objects[0], tile),
                                np.roll(before, round(tile / 4), axis=1))
  x0, y0, x1, y1 = scenes.pixel_box(obj, tile)
  for name, factor in (("scale_up", tasks.SCALE_UP), ("scale_down", tasks.SCALE_DOWN)):
    out, _ = tasks.get_task(name).scene_fn(scene, tile)
    nx0, ny0, nx1, ny1 = scenes.pixel_box(out.objects[0], tile)
    assert abs((nx1 - nx0) - factor * (x1 - x0)) <= 0.5
    assert abs((nx0 + nx1) - (x0 + x1)) <= 1 and abs((ny0 + ny1) - (y0 + y1)) <= 1


# ---------------------------------------------------------------- augmentation policy


@pytest.mark.parametrize("name", tasks.task_names())
def test_flip_safe_tasks_commute_with_a_left_right_flip(name):
  """What flip_safe promises: flipping every cell keeps the edit; others really break."""
  task = tasks.get_task(name)
  commutes = True
  for scene in [generic_scene()] + random_scenes(6):
    mirrored = scenes.transform_geometry(scene, "hflip")
    flipped_after = imageops.hflip(task.make_pair(scene, 16)[1])
    commutes &= np.array_equal(task.make_pair(mirrored, 16)[1], flipped_after)
  assert commutes == task.flip_safe


def test_augmentation_flags_of_compositions():
  assert not tasks.get_task("rot90").flip_safe
  assert tasks.get_task("hflip").crop == tasks.CROP_CENTER
  assert tasks.get_task("invert").crop == tasks.CROP_ANY
  combo = tasks.get_task("invert+move")
  assert not combo.flip_safe and combo.crop == tasks.CROP_ANY
  combo = tasks.get_task("recolor+vflip")
  assert combo.flip_safe and combo.crop == tasks.CROP_CENTER


def test_scene_transforms_leave_the_input_untouched():
  scene = generic_scene()
  copy = dataclasses.replace(scene)
  for name in tasks.task_names():
    tasks.get_task(name).scene_fn(scene, 16)
  assert scene == copy
