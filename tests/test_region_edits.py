"""Region edits (inference/regions.py): with a box the model edits a padded window around it at
the tile's resolution and only the box is pasted back, every pixel outside it kept bit for bit;
the window maps back onto the drawn box near every edge and corner; the web editor and `infer`
give the same image; --output_size tile keeps the model's own pixels."""
import itertools
import json

import numpy as np
from PIL import Image
import pytest

from imagebrush_jax import infer
from imagebrush_jax.inference import batch as batch_lib
from imagebrush_jax.inference import editor as editor_lib
from imagebrush_jax.inference import images
from imagebrush_jax.inference import manifest as manifest_lib
from imagebrush_jax.inference import regions
from imagebrush_jax.inference import run_loading
from imagebrush_jax.inference import service as service_lib

from _tiny_run import tiny_workdir  # pylint: disable=g-bad-import-order

WIDTH, HEIGHT = 1000, 700
TILE = 16


def _outside(box, width, height) -> np.ndarray:
  """bool [height, width]: the pixels whose centre is not strictly inside `box`."""
  x0, y0, x1, y1 = box
  xs, ys = np.arange(width) + 0.5, np.arange(height) + 0.5
  inside = ((ys > y0) & (ys < y1))[:, None] & ((xs > x0) & (xs < x1))[None, :]
  return ~inside


def _boxes(width, height):
  """Boxes at every edge and corner and in the middle, small and large, whole and fractional."""
  for w, h in ((3, 3), (40, 25), (10, 300), (600, 50), (333.5, 421.25)):
    for ax, ay in itertools.product((0.0, 0.5, 1.0), repeat=2):
      x0, y0 = ax * (width - w), ay * (height - h)
      yield (x0, y0, x0 + w, y0 + h)
  yield (0, 0, width, height)


# ---------------------------------------------------------------------------- numpy only


@pytest.mark.parametrize("padding", [None, 0, 7, 120.5, 5000])
def test_the_window_maps_back_onto_the_drawn_box_near_every_edge_and_corner(padding):
  for box in _boxes(WIDTH, HEIGHT):
    window = regions.window_for_box(box, WIDTH, HEIGHT, padding=padding, min_side=TILE)
    # Inside the image, holding the box and its padding (where the image has room).
    assert 0 <= window.x0 < window.x1 <= WIDTH and 0 <= window.y0 < window.y1 <= HEIGHT
    pad = regions.default_padding(box) if padding is None else padding
    assert window.x0 <= max(0, box[0] - pad) and window.x1 >= min(WIDTH, box[2] + pad), box
    assert window.y0 <= max(0, box[1] - pad) and window.y1 >= min(HEIGHT, box[3] + pad), box
    # Square where the image allows, and never smaller than the tile.
    side = max(window.width, window.height)
    assert window.width in (side, WIDTH) and window.height in (side, HEIGHT), (box, window)
    assert min(window.width, window.height) >= TILE
    # The box the model is given (tile coordinates), mapped back, is the drawn box.
    tile_box = regions.box_in_window(box, window)
    assert tile_box.dtype == np.float32 and 0 <= tile_box.min() and tile_box.max() <= 1
    back = regions.box_from_window(tile_box, window)
    assert np.abs(back - np.asarray(box, np.float64)).max() < 1.0, (box, window, back)
    # And in tile pixels, the box's edges fall where the window's pixels put them.
    scale = np.array([TILE / window.width, TILE / window.height] * 2)
    offset = np.array([window.x0, window.y0] * 2)
    np.testing.assert_allclose(tile_box * TILE, (np.asarray(box) - offset) * scale, atol=1e-3)


def test_the_default_padding_is_a_share_of_the_box_and_at_least_a_few_pixels():
  assert regions.default_padding((10, 10, 410, 110)) == 100
  assert regions.default_padding((10, 10, 12, 13)) == regions.MIN_PADDING
  window = regions.window_for_box((400, 300, 480, 340), WIDTH, HEIGHT)  # pad 20: 120 x 80
  assert (window.width, window.height) == (120, 120)
  assert (window.x0, window.x1) == (380, 500) and window.y0 <= 280 and window.y1 >= 360


@pytest.mark.parametrize("box", [(100, 200, 180, 260), (0, 0, 57, 33), (950.5, 640.25, 1000, 700),
                                 (0, 350, 1000, 351)])
def test_pixels_outside_the_box_are_the_query_bit_for_bit(box):
  rng = np.random.default_rng(0)
  query = rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
  window = regions.window_for_box(box, WIDTH, HEIGHT, min_side=TILE)
  cell = rng.integers(0, 256, (TILE, TILE, 3), dtype=np.uint8)
  out = regions.paste(query, cell, window, box, "bicubic")
  assert out.shape == query.shape and out.dtype == np.uint8
  outside = _outside(box, WIDTH, HEIGHT)
  diff = np.abs(out.astype(int) - query.astype(int)).max(axis=-1)
  assert diff[outside].max() == 0
  assert diff[~outside].max() > 0
  # Beyond the feather, the box is the generated tile resized back to the window.
  alpha = regions.feather_alpha(box, window, size=(WIDTH, HEIGHT))
  edited = images.resize(cell, window.width, window.height, "bicubic")
  np.testing.assert_array_equal(window.crop(out)[alpha == 1], edited[alpha == 1])
  # The feather: inside the box, alpha falls from 1 to 0 over FEATHER_PIXELS at the border.
  assert 0 < alpha.max() <= 1 and alpha[window.crop(outside)].max() == 0


def test_feather_falls_off_inside_the_border():
  alpha = regions.feather_alpha((2, 2, 12, 12), regions.Window(0, 0, 14, 14), feather=2)
  np.testing.assert_allclose(alpha[7, :], [0, 0, .25, .75, 1, 1, 1, 1, 1, 1, .75, .25, 0, 0])
  hard = regions.feather_alpha((2, 2, 12, 12), regions.Window(0, 0, 14, 14), feather=0)
  assert set(np.unique(hard)) == {0.0, 1.0} and hard.sum() == 100
  thin = regions.feather_alpha((5, 0, 6, 14), regions.Window(0, 0, 14, 14))  # one pixel wide
  assert thin[:, 5].min() == 1 and thin.sum() == 14
  # No fall-off along the image's own border: nothing lies outside it to blend into.
  corner = regions.feather_alpha((0, 0, 6, 6), regions.Window(0, 0, 14, 14), size=(14, 14))
  np.testing.assert_allclose(corner[0, :8], [1, 1, 1, 1, .75, .25, 0, 0])
  np.testing.assert_allclose(corner[:8, 0], [1, 1, 1, 1, .75, .25, 0, 0])
  whole = regions.feather_alpha((0, 0, 14, 14), regions.Window(0, 0, 14, 14), size=(14, 14))
  assert whole.min() == 1


def test_a_box_of_the_whole_image_is_the_window_tile_resized_back():
  rng = np.random.default_rng(2)
  query = rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
  box = (0, 0, WIDTH, HEIGHT)
  window = regions.window_for_box(box, WIDTH, HEIGHT, min_side=TILE)
  assert window == regions.Window(0, 0, WIDTH, HEIGHT)
  cell = rng.integers(0, 256, (TILE, TILE, 3), dtype=np.uint8)
  np.testing.assert_array_equal(regions.paste(query, cell, window, box, "bilinear"),
                                images.resize(cell, WIDTH, HEIGHT, "bilinear"))


def test_the_window_is_resized_to_the_tile_without_a_centred_crop():
  rng = np.random.default_rng(1)
  query = rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
  window = regions.Window(100, 50, 164, 114)
  tile = regions.crop_to_tile(query, window, TILE, "box")
  want = query[50:114, 100:164].reshape(TILE, 4, TILE, 4, 3).mean(axis=(1, 3))
  assert np.abs(tile.astype(float) - want).max() <= 1  # the whole window, box-filtered


def test_bad_padding_and_output_size_are_one_line_errors():
  for bad in (-1, float("nan"), float("inf"), "x"):
    with pytest.raises(ValueError, match="box_padding must be"):
      regions.check_padding(bad)
  with pytest.raises(ValueError, match="output_size must be one of query, tile, got 'big'"):
    regions.check_output_size("big")
  with pytest.raises(ValueError, match="must satisfy"):
    regions.window_for_box((0, 0, 1001, 5), WIDTH, HEIGHT)


# ---------------------------------------------------------------------------- a trained run


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  folder = tmp_path_factory.mktemp("region_inputs")
  rng = np.random.default_rng(0)
  out = {}
  for name, (h, w) in (("a", (30, 40)), ("b", (30, 40)), ("q", (HEIGHT, WIDTH))):
    out[name] = str(folder / f"{name}.png")
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(out[name])
  return out


@pytest.fixture(scope="module")
def service():
  return service_lib.EditService(run_loading.load(tiny_workdir()))


def _infer(files, out, *flags):
  argv = ["--workdir", tiny_workdir(), "--before", files["a"], "--after", files["b"],
          "--query", files["q"], "--output", str(out), "--steps", "2", *flags]
  assert infer.main(argv) == 0
  return np.asarray(Image.open(out))


BOX = (612, 455, 700, 530)


def test_infer_edits_the_box_and_keeps_every_other_pixel(files, tmp_path):
  query = images.load_rgb(files["q"])
  edited = _infer(files, tmp_path / "o.png", "--box", ",".join(map(str, BOX)), "--seed", "1")
  assert edited.shape == query.shape
  diff = np.abs(edited.astype(int) - query.astype(int)).max(axis=-1)
  assert diff[_outside(BOX, WIDTH, HEIGHT)].max() == 0
  x0, y0, x1, y1 = BOX
  assert diff[y0:y1, x0:x1].max() > 0


def test_the_editor_and_infer_give_the_same_image(service, files, tmp_path):
  pairs = [(files["a"], files["b"])]
  box_flag = ["--box", ",".join(map(str, BOX))]
  for flags, kwargs in (
      ([*box_flag, "--box_padding", "30", "--seed", "2"], dict(box=BOX, box_padding=30, seed=2)),
      ([*box_flag, "--output_size", "tile"], dict(box=BOX, output_size="tile")),
      (["--seed", "3"], dict(seed=3))):
    edit = service.edit(pairs, files["q"], kwargs.pop("box", None), steps=2, **kwargs)
    np.testing.assert_array_equal(edit.image, _infer(files, tmp_path / "o.png", *flags))
  # The grid picture shows what the model saw: the box's window as a tile, the box outlined.
  edit = service.edit(pairs, files["q"], BOX, steps=2, box_padding=30)
  tile = service.tile_size
  scale = -(-service_lib.PREVIEW_MIN_TILE // tile)
  window = regions.window_for_box(BOX, WIDTH, HEIGHT, padding=30, min_side=tile)
  want = regions.crop_to_tile(images.load_rgb(files["q"]), window, tile,
                              service.spec.resize_method)
  shown = edit.grid[tile * scale::scale, ::scale][:tile, :tile]  # the query cell, unscaled
  drawn = np.all(shown == service_lib.BOX_COLOUR, axis=-1)
  np.testing.assert_array_equal(shown[~drawn], want[~drawn])
  assert np.all(edit.grid == service_lib.BOX_COLOUR, axis=-1).sum() > 0


def test_output_size_tile_keeps_the_models_pixels(files, tmp_path):
  tile = int(run_loading.load_config(tiny_workdir()).data.tile_size)
  for flags in ([], ["--box", "0,0,10,10"]):
    out = _infer(files, tmp_path / "t.png", "--output_size", "tile", *flags)
    assert out.shape == (tile, tile, 3)
  # A manifest likewise; and with query-sized outputs, its boxed rows keep their outside.
  manifest = tmp_path / "rows.jsonl"
  ex = [{"before": files["a"], "after": files["b"]}]
  manifest.write_text("".join(json.dumps(r) + "\n" for r in (
      {"examples": ex, "query": files["q"], "output": "whole.png"},
      {"examples": ex, "query": files["q"], "output": "boxed.png", "box": list(BOX)})))
  assert infer.main(["--workdir", tiny_workdir(), "--manifest", str(manifest), "--output_dir",
                     str(tmp_path / "tiles"), "--output_size", "tile", "--steps", "2"]) == 0
  for name in ("whole.png", "boxed.png"):
    assert np.asarray(Image.open(tmp_path / "tiles" / name)).shape == (tile, tile, 3)
  editor = editor_lib.Editor(run_loading.load_run(tiny_workdir()), batch_size=2, num_steps=2)
  out = tmp_path / "full"
  stats = batch_lib.edit_rows(editor, manifest_lib.read_manifest(str(manifest), str(out)),
                              str(out / "errors.jsonl"), box_padding=0, log=lambda m: None)
  assert stats == {"done": 2, "skipped": 0, "failed": 0}
  query = images.load_rgb(files["q"])
  boxed = np.asarray(Image.open(out / "boxed.png"))
  assert np.asarray(Image.open(out / "whole.png")).shape == boxed.shape == query.shape
  assert np.abs(boxed.astype(int) - query.astype(int)).max(axis=-1)[
      _outside(BOX, WIDTH, HEIGHT)].max() == 0


def test_bad_box_padding_is_a_one_line_usage_error(files, tmp_path, capsys):
  run = str(tmp_path / "run")  # refused before any run is read
  with pytest.raises(SystemExit) as e:
    infer.main(["--workdir", run, "--before", files["a"], "--after", files["b"],
                "--query", files["q"], "--output", str(tmp_path / "o.png"), "--box_padding",
                "-3"])
  assert e.value.code == 2
  lines = [l for l in capsys.readouterr().err.splitlines() if l.strip()]
  assert lines == ["error: --box_padding must be a finite number of pixels >= 0, got -3.0"]
  with pytest.raises(SystemExit):
    infer.main(["--workdir", run, "--before", files["a"], "--after", files["b"],
                "--query", files["q"], "--output", str(tmp_path / "o.png"), "--output_size",
                "big"])
