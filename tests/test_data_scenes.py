"""Procedural scenes: sampling follows the knobs, is deterministic per seed, and renders at any
tile size with shapes of the right geometry."""
import collections
import math

import numpy as np
import pytest

from imagebrush_jax.data import scenes
from imagebrush_jax.data.scenes import SceneObject

PARAMS = scenes.SceneParams()


def draw(seed, params=PARAMS):
  return scenes.sample_scene(np.random.default_rng(seed), params)


def test_sampling_is_deterministic_per_seed():
  assert draw([4, 2]) == draw([4, 2])
  assert draw([4, 2]) != draw([4, 3])
  np.testing.assert_array_equal(scenes.render(draw([4, 2]), 16), scenes.render(draw([4, 2]), 16))


def test_sampling_follows_the_knobs():
  params = scenes.SceneParams(num_objects=(2, 3), object_size=(0.2, 0.4), largest_margin=1.5,
                              shapes=("circle", "ell"), backgrounds=("checker", "noise"),
                              hollow_prob=0.0)
  drawn = [draw([0, i], params) for i in range(300)]
  assert collections.Counter(len(s.objects) for s in drawn).keys() == {2, 3}
  assert {o.shape for s in drawn for o in s.objects} == {"circle", "ell"}
  assert {s.background.kind for s in drawn} == {"checker", "noise"}
  assert all(o.filled for s in drawn for o in s.objects)
  for s in drawn:
    sizes = sorted((o.size for o in s.objects), reverse=True)
    assert 0.2 <= sizes[-1] and sizes[0] <= 0.4
    assert sizes[0] >= 1.5 * sizes[1] - 1e-9  # a unique, clearly largest object
    assert scenes.largest_index(s) == [o.size for o in s.objects].index(sizes[0])
    for o in s.objects:  # inside the tile
      assert -1 <= min(o.extent) and max(o.extent) <= 1
    colors = [o.color for o in s.objects]
    assert len(set(colors)) == len(colors) and scenes.RED not in colors


def test_default_sampling_covers_every_shape_and_background_and_1_to_4_objects():
  drawn = [draw([1, i]) for i in range(400)]
  assert {len(s.objects) for s in drawn} == {1, 2, 3, 4}
  assert {o.shape for s in drawn for o in s.objects} == set(scenes.SHAPES)
  assert {s.background.kind for s in drawn} == set(scenes.BACKGROUNDS)
  hollow = np.mean([not o.filled for s in drawn for o in s.objects])
  assert 0.15 < hollow < 0.35


@pytest.mark.parametrize("tile", [4, 7, 16, 33, 64])
def test_renders_at_any_tile_size(tile):
  image = scenes.render(draw([2, 0]), tile)
  assert image.shape == (tile, tile, 3) and image.dtype == np.uint8


def only(obj, background=scenes.Background("plain", ((0, 0, 0), (0, 0, 0)), 1, 0, 0, 2)):
  return scenes.Scene(background, (obj,), stroke=0.1)


def shape_mask(shape, tile=64, size=1.0, frame=(1, 0, 0, 1)):
  return scenes.object_mask(SceneObject(shape, (0.0, 0.0), size, frame, (0, 0, 0), True), tile)


@pytest.mark.parametrize("shape,area", [
    ("square", 1.0), ("circle", math.pi / 4), ("diamond", 0.5), ("triangle", 0.5),
    ("cross", 2 * 0.4 - 0.16), ("ell", 2 * 0.4 - 0.16)])
def test_shape_areas(shape, area):
  """Fraction of its box each canonical shape covers (bars 0.4 of the half-width thick)."""
  assert shape_mask(shape).mean() == pytest.approx(area, abs=0.02)


def test_shape_orientation_and_frames():
  triangle = shape_mask("triangle")
  assert triangle[0].sum() < triangle[-1].sum()  # apex up
  ell = shape_mask("ell")
  assert ell[:, 0].all() and ell[-1].all() and not ell[0, -1]  # left and bottom bars
  # A frame maps the shape like an image op: (0, 1, -1, 0) is rot90, (-1, 0, 0, 1) hflip.
  np.testing.assert_array_equal(shape_mask("ell", frame=(0, 1, -1, 0)), np.rot90(ell))
  np.testing.assert_array_equal(shape_mask("ell", frame=(-1, 0, 0, 1)), ell[:, ::-1])


def test_small_object_placement_and_size():
  mask = scenes.object_mask(SceneObject("square", (-0.5, 0.5), 0.25, (1, 0, 0, 1),
                                        (0, 0, 0), True), 16)
  ys, xs = np.nonzero(mask)
  assert (xs.min(), xs.max(), ys.min(), ys.max()) == (2, 5, 10, 13)


@pytest.mark.parametrize("tile,stroke", [(8, 1), (16, 2), (32, 3), (64, 6)])
def test_hollow_objects_are_outlines_of_the_stroke_width(tile, stroke):
  obj = SceneObject("square", (0.0, 0.0), 0.75, (1, 0, 0, 1), (255, 255, 255), False)
  paint = scenes.paint_mask(obj, tile, scenes.stroke_pixels(only(obj), tile))
  filled = scenes.object_mask(obj, tile)
  ys, xs = np.nonzero(filled)
  top, left = ys.min(), xs.min()
  band = filled.copy()
  band[top + stroke:ys.max() + 1 - stroke, left + stroke:xs.max() + 1 - stroke] = False
  np.testing.assert_array_equal(paint, band)


def test_later_objects_cover_earlier_ones():
  a = SceneObject("square", (0.0, 0.0), 0.5, (1, 0, 0, 1), (0, 200, 60), True)
  b = SceneObject("circle", (0.0, 0.0), 0.3, (1, 0, 0, 1), (30, 90, 255), True)
  image = scenes.render(scenes.Scene(only(a).background, (a, b), 0.1), 16)
  assert tuple(image[8, 8]) == b.color and tuple(image[8, 5]) == a.color
  assert tuple(image[0, 0]) == (0, 0, 0)


@pytest.mark.parametrize("kind", scenes.BACKGROUNDS)
def test_backgrounds_use_their_two_colours(kind):
  bg = scenes.Background(kind, ((20, 40, 60), (150, 100, 30)), 0.5, 2, 7, 4)
  image = scenes.render_background(bg, 16).reshape(-1, 3).astype(int)
  colors = {tuple(c) for c in image}
  if kind == "plain":
    assert colors == {(20, 40, 60)}
  elif kind in ("stripes", "checker"):
    assert colors == {(20, 40, 60), (150, 100, 30)}
  else:  # a blend between the two colours
    assert len(colors) > 4
    assert (image >= [20, 40, 30]).all() and (image <= [150, 100, 60]).all()
  with_ops = scenes.render_background(scenes.Background(kind, bg.colors, 0.5, 2, 7, 4,
                                                        ("invert",)), 16)
  np.testing.assert_array_equal(with_ops, 255 - scenes.render_background(bg, 16))


def test_union_box():
  assert scenes.union_box([]) is None
  box = scenes.union_box([(-1.0, -0.5, 0.0, 0.0), (-0.2, 0.2, 0.6, 1.4)])
  np.testing.assert_allclose(box, [0.0, 0.25, 0.8, 1.0])
  assert box.dtype == np.float32
