"""The dihedral group of a square cell: its 8 flips, rotations and transposes.

The CPU demo's conditioning and pair statistics (core/plugins/cpu_demo.py) stack these views,
so a geometric edit becomes a per-pixel choice.
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
