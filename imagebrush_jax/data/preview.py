"""Assembled grids as one sheet, each labelled with its task, to eyeball the pipeline; written by
`python -m imagebrush_jax.preview --config configs/default.py --num 16 --out grids.png`.

Grids come from the training stream of host 0 (collect(..., "train"), with its crops, flips and
box drops) or from make_eval_batches ("eval": every train and held-out task in turn). The query
box is drawn as a yellow frame on the target cell (omitted when it is the whole tile).
"""
from typing import Sequence

import numpy as np
from PIL import Image
from PIL import ImageDraw

from imagebrush_jax.data import pipeline


_LABEL_PX = 14
_GAP_PX = 6
_BOX_COLOR = (255, 230, 0)


def collect(config, num: int, split: str) -> dict[str, np.ndarray]:
  """`num` grids, concatenated over batches."""
  if split == "eval":
    batches = pipeline.make_eval_batches(config, num_grids=num, seed=config.seed)
  else:
    config = config.copy_and_resolve_references()
    config.data.num_workers = 0  # a few batches: workers would only add start-up time
    it = pipeline.make_train_iterator(config, process_index=0, process_count=1)
    batches, have = [], 0
    while have < num:
      batches.append(next(it))
      have += len(batches[-1]["grid"])
    it.close()
  return {k: np.concatenate([b[k] for b in batches])[:num] for k in batches[0]}


def render_sheet(batch: dict[str, np.ndarray], names: Sequence[str], *, columns: int,
                 min_tile_px: int) -> Image.Image:
  """One image: grids in rows of `columns`, each under its task name."""
  grids = batch["grid"]
  n, h, w, _ = grids.shape
  tile = w // 2
  scale = max(1, -(-min_tile_px // tile))
  cell_w, cell_h = w * scale, h * scale + _LABEL_PX
  cols = min(columns, n)
  rows = -(-n // cols)
  sheet = Image.new("RGB", (cols * cell_w + (cols + 1) * _GAP_PX,
                            rows * cell_h + (rows + 1) * _GAP_PX), (255, 255, 255))
  draw = ImageDraw.Draw(sheet)
  for i in range(n):
    x0 = _GAP_PX + (i % cols) * (cell_w + _GAP_PX)
    y0 = _GAP_PX + (i // cols) * (cell_h + _GAP_PX)
    draw.text((x0, y0), names[int(batch["task_id"][i])], fill=(0, 0, 0))
    gy = y0 + _LABEL_PX
    sheet.paste(Image.fromarray(grids[i]).resize((w * scale, h * scale), Image.NEAREST), (x0, gy))
    box = batch["box"][i]
    if not np.allclose(box, [0, 0, 1, 1]):
      tx, ty = x0 + tile * scale, gy + (h - tile) * scale  # the target cell
      bx = [tx + box[0] * tile * scale, ty + box[1] * tile * scale,
            tx + box[2] * tile * scale - 1, ty + box[3] * tile * scale - 1]
      draw.rectangle(bx, outline=_BOX_COLOR)
  return sheet

