"""The ImageBrush grid: K example rows (E_k | E'_k) over one query row (I | ?).

A batch is a dict of numpy arrays; B = grids in the batch, T = tile_size, K = num_examples:

  grid     uint8   [B, (K+1)*T, 2*T, 3]  row k < K is (E_k | E'_k); the last row is (I | I').
                                         At inference I' is unknown and its cell is zeros.
  mask     uint8   [B, (K+1)*T, 2*T, 1]  1 exactly on the cell to generate (bottom right).
  box      float32 [B, 4]                [x0, y0, x1, y1] in [0, 1] of the query tile: the region
                                         the edit touches; [0, 0, 1, 1] when there is no box.
  task_id  int32   [B]                   index into tuple(train_tasks) + tuple(heldout_tasks).

K = 1 is the paper's 2 x 2 grid {E, E'; I, M}; up to 8 example rows fit. Every function that
reads a grid works on numpy and jax arrays alike (host code and jitted code share this geometry);
in diffusion space a cell is T / latent_factor wide.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import jax.numpy as jnp
import numpy as np

KEYS = ("grid", "mask", "box", "task_id")
WHOLE_TILE_BOX = (0.0, 0.0, 1.0, 1.0)


def _tile(image: np.ndarray, tile_size: int, what: str) -> np.ndarray:
  image = np.asarray(image)
  if image.dtype != np.uint8 or image.shape != (tile_size, tile_size, 3):
    raise ValueError(f"{what} must be uint8 [{tile_size}, {tile_size}, 3] like the query, got "
                     f"{image.dtype} {list(image.shape)}")
  return image


def assemble_grid(example_pairs: Sequence[tuple[np.ndarray, np.ndarray]],
                  query_before: np.ndarray, query_after: np.ndarray | None = None, *,
                  box: Sequence[float] | np.ndarray | None = None) -> dict[str, np.ndarray]:
  """One grid (no batch axis): {'grid', 'mask', 'box'} from K (E, E') pairs and the query.

  Every image is uint8 [T, T, 3], T taken from `query_before`. `query_after` None (inference)
  leaves the target cell zero. `box` None means the whole tile.
  """
  query_before = np.asarray(query_before)
  if query_before.ndim != 3 or query_before.shape[0] != query_before.shape[1]:
    raise ValueError(f"query_before must be a square uint8 [T, T, 3] tile, got "
                     f"{query_before.dtype} {list(query_before.shape)}")
  t = query_before.shape[0]
  _tile(query_before, t, "query_before")
  if not 1 <= len(example_pairs) <= 8:
    raise ValueError(f"a grid holds 1 to 8 example pairs, got {len(example_pairs)}")
  rows = []
  for k, (before, after) in enumerate(example_pairs):
    rows.append((_tile(before, t, f"example {k} before"), _tile(after, t, f"example {k} after")))
  target = (np.zeros_like(query_before) if query_after is None
            else _tile(query_after, t, "query_after"))
  rows.append((query_before, target))
  grid = np.concatenate([np.concatenate(row, axis=1) for row in rows], axis=0)
  mask = np.zeros(grid.shape[:2] + (1,), np.uint8)
  mask[-t:, t:] = 1
  box = np.asarray(WHOLE_TILE_BOX if box is None else box, np.float32)
  if box.shape != (4,) or not (0 <= box[0] < box[2] <= 1 and 0 <= box[1] < box[3] <= 1):
    raise ValueError(f"box must be [x0, y0, x1, y1] with 0 <= x0 < x1 <= 1 and "
                     f"0 <= y0 < y1 <= 1, got {box.tolist()}")
  return {"grid": grid, "mask": mask, "box": box}


class Cells(NamedTuple):
  """The cells of grids [..., (K+1)T, 2T, C]: before/after [..., K, T, T, C], query/target."""
  before: np.ndarray
  after: np.ndarray
  query: np.ndarray
  target: np.ndarray


def check_grid(grid, num_examples: int, tile: int | None = None, what: str = "grid") -> int:
  """The tile size T of grids [..., (K+1)T, 2T, C]; refuses other shapes (naming `what`)."""
  t = grid.shape[-2] // 2 if tile is None else tile
  if t < 1 or tuple(grid.shape[-3:-1]) != ((num_examples + 1) * t, 2 * t):
    raise ValueError(f"{what}: grid of shape {list(grid.shape)} is not {num_examples + 1} rows "
                     f"of two square {t if tile else 'T'}-pixel tiles (K={num_examples})")
  return t


def split_cells(grid, num_examples: int, tile: int | None = None) -> Cells:
  """Inverse of assemble_grid on [..., (K+1)T, 2T, C] (numpy or jax): the grid's Cells."""
  t = check_grid(grid, num_examples, tile, "split_cells")
  cells = grid.reshape(*grid.shape[:-3], num_examples + 1, t, 2, t, grid.shape[-1])
  cells = cells.swapaxes(-4, -3)  # [..., rows, 2, T, T, C]
  return Cells(before=cells[..., :-1, 0, :, :, :], after=cells[..., :-1, 1, :, :, :],
               query=cells[..., -1, 0, :, :, :], target=cells[..., -1, 1, :, :, :])


def target_cell(grid, num_examples: int):
  """The bottom-right cell (I') of grids [..., (K+1)T, 2T, C] -> [..., T, T, C]."""
  t = check_grid(grid, num_examples, None, "target_cell")
  return grid[..., -t:, t:, :]


def query_under_target(grid):
  """Grids [B, (K+1)T, 2T, C] shifted right by one tile: the target cell holds the query I
  (and the left column wraps around; callers keep only the target cell)."""
  return _xp(grid).roll(grid, grid.shape[-2] // 2, axis=-2)


def resize_mask(mask, height: int, width: int):
  """Block-max downsampling of a [B, H, W, 1] mask to [B, height, width, 1] (integer factors)."""
  b, h, w, c = mask.shape
  if h % height or w % width:
    raise ValueError(f"mask of size {h}x{w} cannot be reduced to {height}x{width}")
  return mask.reshape(b, height, h // height, width, w // width, c).max(axis=(2, 4))


def _xp(x):
  return np if isinstance(x, (np.ndarray, np.generic)) else jnp


def pixels_to_unit(x):
  """uint8 pixels [0, 255] -> float32 in [-1, 1] (the diffusion range); numpy stays numpy."""
  xp = _xp(x)
  return xp.asarray(x, xp.float32) / 127.5 - 1.0


def unit_to_pixels(x):
  """float in [-1, 1] -> uint8 pixels, rounded and clipped; numpy stays numpy."""
  xp = _xp(x)
  return xp.clip(xp.round((xp.asarray(x, xp.float32) + 1.0) * 127.5), 0, 255).astype(xp.uint8)
