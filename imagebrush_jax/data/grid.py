"""The ImageBrush grid: K example rows (E_k | E'_k) over one query row (I | ?).

A batch is a dict of numpy arrays; B = grids in the batch, T = tile_size, K = num_examples:

  grid     uint8   [B, (K+1)*T, 2*T, 3]  row k < K is (E_k | E'_k); the last row is (I | I').
                                         At inference I' is unknown and its cell is zeros.
  mask     uint8   [B, (K+1)*T, 2*T, 1]  1 exactly on the cell to generate (bottom right).
  box      float32 [B, 4]                [x0, y0, x1, y1] in [0, 1] of the query tile: the region
                                         the edit touches; [0, 0, 1, 1] when there is no box.
  task_id  int32   [B]                   index into tuple(train_tasks) + tuple(heldout_tasks).

K = 1 is the paper's 2 x 2 grid {E, E'; I, M}; up to 8 example rows fit.
"""
from typing import Sequence

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


def split_grid(grid: np.ndarray, num_examples: int) -> dict[str, np.ndarray]:
  """Inverse of assemble_grid on [..., (K+1)T, 2T, C]: example_before/after [..., K, T, T, C],
  query_before / query_after [..., T, T, C]."""
  t = grid.shape[-3] // (num_examples + 1)
  if grid.shape[-3] != (num_examples + 1) * t or grid.shape[-2] != 2 * t:
    raise ValueError(f"grid of shape {list(grid.shape)} is not {num_examples + 1} rows of two "
                     f"square tiles")
  cells = grid.reshape(grid.shape[:-3] + (num_examples + 1, t, 2, t, grid.shape[-1]))
  cells = np.moveaxis(cells, -3, -4)  # [..., rows, 2, T, T, C]
  return {
      "example_before": cells[..., :-1, 0, :, :, :],
      "example_after": cells[..., :-1, 1, :, :, :],
      "query_before": cells[..., -1, 0, :, :, :],
      "query_after": cells[..., -1, 1, :, :, :],
  }
