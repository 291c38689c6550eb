"""Dihedral views: exactly the 8 symmetries of a square, stacked on channels, any batch dims."""
import jax.numpy as jnp
import numpy as np

from imagebrush_jax.core.plugins import dihedral


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
