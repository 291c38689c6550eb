"""The dihedral group of a square cell: its 8 flips, rotations and transposes.

Both the UNet's target-cell conditioning ('query_dihedral') and the prompt encoder's pair input
('concat_dihedral') stack these views as channels, so a geometric edit becomes a per-pixel choice.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

NUM_DIHEDRAL_VIEWS = 8  # identity, 3 rotations, 2 flips, 2 transposes


def dihedral_views(cell: jax.Array) -> list[jax.Array]:
  """The 7 non-identity dihedral views of square cells [..., T, T, C] (axes -3, -2 spatial)."""
  rot = lambda k: jnp.rot90(cell, k, axes=(-3, -2))
  return [cell[..., :, ::-1, :], cell[..., ::-1, :, :], rot(1), rot(2), rot(3),
          jnp.swapaxes(cell, -3, -2), jnp.swapaxes(rot(2), -3, -2)]


def stack_dihedral(cell: jax.Array) -> jax.Array:
  """[..., T, T, C] -> [..., T, T, 8C]: the cell followed by its 7 other views, channel-stacked."""
  return jnp.concatenate([cell, *dihedral_views(cell)], axis=-1)
