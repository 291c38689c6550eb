"""One preprocessing path: inference tiles equal the evaluation pipeline's tiles, bit for bit
(a box's region edit tiles its window instead: inference/regions.py)."""
import dataclasses
import json

import numpy as np
from PIL import Image
import pytest

from configs import tiny_test
from imagebrush_jax.inference import batch as batch_lib
from imagebrush_jax.data import augment
from imagebrush_jax.data import imageops
from imagebrush_jax.data import options
from imagebrush_jax.data import pipeline
from imagebrush_jax.core import grid as grid_lib
from imagebrush_jax.inference import images
from imagebrush_jax.inference import manifest as manifest_lib
from imagebrush_jax.inference import regions

WIDTH, HEIGHT = 37, 23  # odd and not square
BOX = [0.25, 0.125, 0.75, 0.875]  # of the image; exact in pixels of a 37 x 23 image too
NUM_PAIRS = 6  # per task: enough for any split into training and evaluation pairs


def _folder(root, rng):
  for task, op in (("hflip", imageops.hflip), ("invert", imageops.invert)):
    d = root / task
    d.mkdir(parents=True)
    for i in range(NUM_PAIRS):
      before = rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
      Image.fromarray(before).save(d / f"p{i}_before.png")
      Image.fromarray(op(before)).save(d / f"p{i}_after.png")
    (d / "boxes.json").write_text(json.dumps({f"p{i}": BOX for i in range(NUM_PAIRS)}))


def _config(root, resize_method, crop_scale):
  c = tiny_test.get_config()
  c.data.source = "folder"
  c.data.folder.root = str(root)
  c.data.train_tasks = ("hflip", "invert")
  c.data.heldout_tasks = ()
  c.data.resize_method = resize_method
  c.data.crop_scale = crop_scale
  return c


def _find(tiles, cell, what):
  """The file whose infer tile is `cell` (every image of the folder is different)."""
  found = [path for path, tile in tiles.items() if np.array_equal(tile, cell)]
  assert found, f"no image's inference tile equals the evaluation {what}"
  return found[0]


@pytest.mark.parametrize("resize_method,crop_scale", [("bilinear", 1.25), ("lanczos", 1.5),
                                                      ("bicubic", 1.0)])
def test_infer_feeds_the_tiles_evaluation_feeds(tmp_path, resize_method, crop_scale):
  root = tmp_path / "pairs"
  _folder(root, np.random.default_rng(0))
  config = _config(root, resize_method, crop_scale)
  batches = pipeline.make_eval_batches(config, num_grids=4, seed=3)
  got = {k: np.concatenate([b[k] for b in batches]) for k in ("grid", "mask", "box")}
  spec = batch_lib.tile_spec(config)
  num_examples = int(config.data.num_examples)
  tiles = {str(path): spec.to_tile(images.load_rgb(str(path)))
           for path in sorted(root.glob("*/*.png"))}
  cells = grid_lib.split_cells(got["grid"], num_examples)
  for i in range(len(got["grid"])):
    examples = tuple(
        (_find(tiles, cells.before[i, k], f"grid {i} example {k} before"),
         _find(tiles, cells.after[i, k], f"grid {i} example {k} after"))
        for k in range(num_examples))
    row = manifest_lib.Row(
        line=i + 1, examples=examples,
        query=_find(tiles, cells.query[i], f"grid {i} query"),
        output=str(tmp_path / "o.png"), box=None)
    loaded = batch_lib.load_row(row, num_examples=num_examples, spec=spec)
    expected = got["grid"][i].copy()
    expected[got["mask"][i][..., 0] == 1] = 0  # inference does not know the target cell
    np.testing.assert_array_equal(loaded.grid["grid"], expected)
    np.testing.assert_array_equal(loaded.grid["mask"], got["mask"][i])
    assert loaded.size == (WIDTH, HEIGHT)
    # With a box the query is a region edit (its window made the tile: test_region_edits.py);
    # the examples are still evaluation's tiles.
    pixels = tuple(np.multiply(BOX, [WIDTH, HEIGHT, WIDTH, HEIGHT]).tolist())
    boxed = batch_lib.load_row(dataclasses.replace(row, box=pixels), num_examples=num_examples,
                               spec=spec)
    t = spec.tile_size
    np.testing.assert_array_equal(boxed.grid["grid"][:-t], expected[:-t])
    window = regions.window_for_box(pixels, WIDTH, HEIGHT, min_side=t)
    np.testing.assert_array_equal(boxed.grid["grid"][-t:, :t], regions.crop_to_tile(
        images.load_rgb(row.query), window, t, spec.resize_method))
    np.testing.assert_array_equal(boxed.grid["box"], regions.box_in_window(pixels, window))


def test_tile_spec_from_config_matches_data_options():
  for tile_size in (4, 8, 15, 16, 256):
    for crop_scale in (1.0, 1.1, 1.125, 1.25, 1.5, 2.0):
      c = tiny_test.get_config()
      c.data.tile_size, c.data.crop_scale = tile_size, crop_scale
      assert (augment.TileSpec.from_config(c.data)
              == augment.TileSpec.from_options(options.from_config(c)))


def test_tile_spec_centred_tile_and_box():
  spec = augment.TileSpec(tile_size=8, render_size=12, resize_method="nearest")
  image = np.arange(12 * 12 * 3, dtype=np.uint8).reshape(12, 12, 3)
  np.testing.assert_array_equal(spec.to_tile(image), image[2:10, 2:10])
  np.testing.assert_allclose(spec.box_to_tile(np.array([0.25, 0.5, 0.5, 1.0])),
                             [0.125, 0.5, 0.5, 1.0])
  assert spec.box_to_tile(np.array([0.0, 0.0, 1 / 6, 1.0])) is None  # all in the border
  with pytest.raises(ValueError, match="config.data.crop_scale"):
    augment.TileSpec.from_config({"tile_size": 8, "crop_scale": 3.0, "resize_method": "box"})
  with pytest.raises(ValueError, match="config.data.resize_method is missing"):
    augment.TileSpec.from_config({"tile_size": 8, "crop_scale": 1.0})


def test_a_box_in_the_trimmed_border_is_edited_too(tmp_path):
  """A region edit's window is resized to the tile whole (no centred crop), so a box that the
  centred crop would trim is still edited."""
  query = np.random.default_rng(0).integers(0, 256, (20, 20, 3), dtype=np.uint8)
  Image.fromarray(query).save(tmp_path / "q.png")
  q = str(tmp_path / "q.png")
  spec = augment.TileSpec(tile_size=8, render_size=10, resize_method="bilinear")
  box = (0.0, 0.0, 1.5, 20.0)  # inside the left tenth, which the centred crop trims
  row = manifest_lib.Row(line=1, examples=((q, q),), query=q, output=str(tmp_path / "o.png"),
                         box=box)
  loaded = batch_lib.load_row(row, num_examples=1, spec=spec)
  assert loaded.window == regions.window_for_box(box, 20, 20, min_side=8)
  np.testing.assert_allclose(regions.box_from_window(loaded.grid["box"], loaded.window), box,
                             atol=1e-4)
  np.testing.assert_array_equal(loaded.grid["grid"][8:, :8], regions.crop_to_tile(
      query, loaded.window, 8, "bilinear"))
