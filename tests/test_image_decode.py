"""One decoder for every image the project reads: a file gives the same pixels, and the same
tile, to a data build, the folder source and `infer`, whatever its orientation, alpha, bit
depth or palette."""
import numpy as np
from PIL import Image
import pytest

from imagebrush_jax.inference import batch as batch_lib
from imagebrush_jax.data import augment
from imagebrush_jax.data import image_decode
from imagebrush_jax.data import sources
from imagebrush_jax.data.prepare import writer
from imagebrush_jax.inference import images
from imagebrush_jax.inference import manifest as manifest_lib

SPEC = augment.TileSpec(tile_size=16, render_size=18, resize_method="bilinear")
H, W = 14, 22  # a non-square original: orientation matters


def _pixels(seed: int) -> np.ndarray:
  """Smooth colour ramps (JPEG keeps them close) with a seed-dependent offset."""
  y, x = np.mgrid[0:H, 0:W]
  return np.stack([x * 11 + seed * 7, y * 17 + seed * 3, (x + y) * 5 + seed * 13],
                  -1).astype(np.uint8)


def _write_kinds(folder, seed: int, role: str) -> dict[str, np.ndarray]:
  """The four kinds of file, each {kind: the RGB image a viewer shows}."""
  rgb = _pixels(seed)
  shown = {}
  exif = Image.Exif()
  exif[0x0112] = 6  # a phone photo: stored landscape, shown rotated 90 degrees clockwise
  Image.fromarray(rgb).save(folder / f"exif{seed}_{role}.jpg", quality=100, subsampling=0,
                             exif=exif)
  shown["exif"] = np.rot90(rgb, k=-1)
  alpha = np.where(np.arange(W)[None, :] < W // 2, 0, 255).astype(np.uint8) * np.ones((H, 1),
                                                                                      np.uint8)
  rgba = np.concatenate([rgb, alpha[..., None]], -1)
  Image.fromarray(rgba, "RGBA").save(folder / f"rgba{seed}_{role}.png")
  shown["rgba"] = np.where(alpha[..., None] == 0, 255, rgb).astype(np.uint8)
  gray16 = (np.arange(H * W).reshape(H, W) * 211 + seed * 1000).astype(np.uint16)
  Image.fromarray(gray16).save(folder / f"gray16{seed}_{role}.png")
  assert Image.open(folder / f"gray16{seed}_{role}.png").mode.startswith("I")
  shown["gray16"] = np.repeat(np.round(gray16 / 257.0).astype(np.uint8)[..., None], 3, -1)
  palette = Image.fromarray(rgb).quantize(colors=16)
  palette.save(folder / f"palette{seed}_{role}.png")
  shown["palette"] = np.asarray(palette.convert("RGB"))
  return shown


@pytest.fixture(scope="module")
def pairs_folder(tmp_path_factory):
  root = tmp_path_factory.mktemp("pairs")
  (root / "kinds").mkdir()
  shown = {}
  for seed in (1, 2):
    for role in ("before", "after"):
      for kind, image in _write_kinds(root / "kinds", seed, role).items():
        shown[f"{kind}{seed}_{role}"] = image
  return root, shown


def test_each_kind_decodes_to_what_a_viewer_shows(pairs_folder):
  root, shown = pairs_folder
  for name, expected in shown.items():
    ext = "jpg" if name.startswith("exif") else "png"
    got = image_decode.load_rgb(str(root / "kinds" / f"{name}.{ext}"))
    assert got.shape == expected.shape and got.dtype == np.uint8, name
    tolerance = 3 if ext == "jpg" else 0
    assert np.abs(got.astype(int) - expected).max() <= tolerance, name


def test_a_file_gives_the_same_tile_to_training_and_to_infer(pairs_folder, tmp_path):
  root, _ = pairs_folder
  folder = sources.FolderSource(str(root))
  out = tmp_path / "built"
  writer.build(writer.BuildOptions(
      source="folder", input=str(root), output=str(out), tile_size=SPEC.tile_size,
      crop_scale=1.125, resize_method=SPEC.resize_method, image_format="png"))
  built = sources.TfdsSource(str(out))
  assert built.tasks == ("kinds",)
  assert len(built) == len(folder) == 8
  for i in range(len(folder)):
    before_file, after_file, _ = folder.pair_files(i)
    assert built.pair_id(i) == folder.pair_id(i)
    row = manifest_lib.Row(line=1, examples=((after_file, before_file),), query=before_file,
                           output=str(tmp_path / "o.png"), box=None)
    loaded = batch_lib.load_row(row, num_examples=1, spec=SPEC)
    t = SPEC.tile_size
    infer_tiles = {"before": loaded.grid["grid"][t:, :t], "after": loaded.grid["grid"][:t, :t]}
    for role, from_folder, from_build in (("before", folder[i].before, built[i].before),
                                          ("after", folder[i].after, built[i].after)):
      name = f"{folder.pair_id(i)} {role}"
      assert from_build.shape == (SPEC.render_size,) * 2 + (3,), name
      np.testing.assert_array_equal(SPEC.to_tile(from_build), infer_tiles[role], err_msg=name)
      np.testing.assert_array_equal(SPEC.to_tile(from_folder), infer_tiles[role], err_msg=name)
    np.testing.assert_array_equal(images.load_rgb(before_file), folder[i].before)
