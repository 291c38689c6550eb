"""Grid geometry: assembly, layout, mask and box exactly as documented in grid.py; cells and
pixel conversions on numpy and jax arrays alike."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from imagebrush_jax.core import grid as grid_lib


def tiles(n, t=4, seed=0):
  return list(np.random.default_rng(seed).integers(0, 256, (n, t, t, 3), dtype=np.uint8))


@pytest.mark.parametrize("k", [1, 3, 8])
def test_layout_mask_and_box(k):
  t = 4
  cells = tiles(2 * k + 2, t)
  examples = [(cells[2 * i], cells[2 * i + 1]) for i in range(k)]
  out = grid_lib.assemble_grid(examples, cells[-2], cells[-1], box=(0.25, 0.5, 0.75, 1.0))
  assert out["grid"].shape == ((k + 1) * t, 2 * t, 3) and out["grid"].dtype == np.uint8
  for i in range(k + 1):  # reference: row i is (cells[2i] | cells[2i + 1])
    np.testing.assert_array_equal(out["grid"][i * t:(i + 1) * t, :t], cells[2 * i])
    np.testing.assert_array_equal(out["grid"][i * t:(i + 1) * t, t:], cells[2 * i + 1])
  expected_mask = np.zeros(((k + 1) * t, 2 * t, 1), np.uint8)
  expected_mask[k * t:, t:] = 1
  np.testing.assert_array_equal(out["mask"], expected_mask)
  np.testing.assert_array_equal(out["box"], np.array([0.25, 0.5, 0.75, 1.0], np.float32))
  assert out["box"].dtype == np.float32
  parts = grid_lib.split_cells(out["grid"], k)
  np.testing.assert_array_equal(parts.before, np.stack(cells[0:-2:2]))
  np.testing.assert_array_equal(parts.after, np.stack(cells[1:-2:2]))
  np.testing.assert_array_equal(parts.query, cells[-2])
  np.testing.assert_array_equal(parts.target, cells[-1])


def test_unknown_target_is_zeros_and_no_box_is_the_whole_tile():
  cells = tiles(3)
  out = grid_lib.assemble_grid([(cells[0], cells[1])], cells[2])
  assert not out["grid"][4:, 4:].any()
  np.testing.assert_array_equal(out["grid"][4:, :4], cells[2])
  np.testing.assert_array_equal(out["box"], [0, 0, 1, 1])


def test_split_cells_works_on_batches():
  cells = tiles(4)
  one = grid_lib.assemble_grid([(cells[0], cells[1])], cells[2], cells[3])["grid"]
  parts = grid_lib.split_cells(np.stack([one, one[::-1]]), 1)
  assert parts.before.shape == (2, 1, 4, 4, 3)
  np.testing.assert_array_equal(parts.target[0], cells[3])


@pytest.mark.parametrize("call,message", [
    (lambda c: grid_lib.assemble_grid([], c[0]), "1 to 8 example pairs, got 0"),
    (lambda c: grid_lib.assemble_grid([(c[0], c[1])] * 9, c[2]), "1 to 8 example pairs, got 9"),
    (lambda c: grid_lib.assemble_grid([(c[0], c[1][:2])], c[2]), "example 0 after must be uint8"),
    (lambda c: grid_lib.assemble_grid([(c[0], c[1])], c[2].astype(np.float32)),
     "query_before must be uint8"),
    (lambda c: grid_lib.assemble_grid([(c[0], c[1])], c[2][:, :3]), "query_before must be a "
     "square"),
    (lambda c: grid_lib.assemble_grid([(c[0], c[1])], c[2], box=(0.5, 0, 0.4, 1)),
     "0 <= x0 < x1 <= 1"),
])
def test_bad_inputs_get_clear_errors(call, message):
  with pytest.raises(ValueError, match=message):
    call(tiles(3))


def test_split_cells_matches_slicing_on_numpy_and_jax():
  k, t = 2, 4
  grid = np.arange(2 * (k + 1) * t * 2 * t * 3).reshape(2, (k + 1) * t, 2 * t, 3)
  for array in (grid, jnp.asarray(grid)):
    before, after, query, target = (np.asarray(a) for a in grid_lib.split_cells(array, k, t))
    for i in range(k):
      np.testing.assert_array_equal(before[:, i], grid[:, i * t:(i + 1) * t, :t])
      np.testing.assert_array_equal(after[:, i], grid[:, i * t:(i + 1) * t, t:])
    np.testing.assert_array_equal(query, grid[:, k * t:, :t])
    np.testing.assert_array_equal(target, grid[:, k * t:, t:])
    np.testing.assert_array_equal(np.asarray(grid_lib.target_cell(array, k)), target)
  with pytest.raises(ValueError, match="K=1"):
    grid_lib.split_cells(grid, 1, t)


def test_unit_pixel_round_trip_keeps_the_array_kind():
  pixels = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1)
  unit = grid_lib.pixels_to_unit(pixels)
  assert isinstance(unit, np.ndarray) and unit.dtype == np.float32
  assert unit.min() == -1.0 and unit.max() == 1.0
  np.testing.assert_array_equal(grid_lib.unit_to_pixels(unit), pixels)
  on_device = grid_lib.unit_to_pixels(jnp.asarray(unit) + 0.001)
  assert isinstance(on_device, jax.Array)
  np.testing.assert_array_equal(np.asarray(on_device), pixels)
  np.testing.assert_array_equal(grid_lib.unit_to_pixels(np.float32([-2.0, 2.0])), [0, 255])
