"""Dihedral views: exactly the 8 symmetries of a square, stacked on channels, any batch dims."""
import jax.numpy as jnp
import numpy as np

from imagebrush_jax.models import dihedral


def _group(x: np.ndarray) -> list[np.ndarray]:
  """The 8 symmetries of a square array by numpy: 4 rotations of x and 4 of its transpose."""
  return [np.rot90(y, k) for y in (x, x.T) for k in range(4)]


def test_views_are_the_eight_symmetries_of_the_square():
  cell = np.arange(16, dtype=np.float32).reshape(4, 4)
  views = [np.asarray(v)[..., 0] for v in dihedral.dihedral_views(jnp.asarray(cell)[..., None])]
  assert len(views) == dihedral.NUM_DIHEDRAL_VIEWS - 1
  expected = {y.tobytes() for y in _group(cell)}
  got = {cell.tobytes()} | {v.tobytes() for v in views}
  assert got == expected  # all 8, none repeated, identity excluded from dihedral_views
  np.testing.assert_array_equal(views[0], cell[:, ::-1])  # first: the left-right flip
  np.testing.assert_array_equal(views[1], cell[::-1])  # then the up-down flip


def test_stack_dihedral_channels_and_leading_dims():
  rng = np.random.default_rng(0)
  cells = rng.standard_normal((2, 3, 5, 5, 2)).astype(np.float32)  # [B, K, T, T, C]
  stacked = np.asarray(dihedral.stack_dihedral(jnp.asarray(cells)))
  assert stacked.shape == (2, 3, 5, 5, 16)
  np.testing.assert_array_equal(stacked[..., :2], cells)
  np.testing.assert_array_equal(stacked[..., 2:4], cells[:, :, :, ::-1])
  np.testing.assert_array_equal(stacked[1, 2, ..., 6:8], np.rot90(cells[1, 2], 1, axes=(0, 1)))
