"""One edit at a time for an interactive front end (the web editor): image files in, the edited
query and a picture of the grid the model saw out.

Each edit goes through infer's own steps (`batch.load_row`: the same decoding, tiling and, with
a box, the same region window of inference/regions.py; `batch.output_image`: the same resize
back, or paste inside the box with every pixel outside it kept), so an edit here equals
`infer`'s single edit for the same inputs, box, box padding, output size and seed. The grid
picture shows what the model saw: with a box, the window's tile with the box outlined. One
Editor (batch 1) serves every request: its sampler compiles once per (steps, guided or not) and
is reused while among the editor's most recently used. Sampler settings and seeds are checked
by the editor, as for `infer`; image files over `max_file_bytes` are refused before they are
decoded.
"""
from __future__ import annotations

import dataclasses
import os
import time
from typing import Sequence

import jax
import numpy as np
from PIL import Image, ImageDraw

from imagebrush_jax.inference import batch as batch_lib
from imagebrush_jax.inference import run_loading
from imagebrush_jax.core import grid as grid_lib
from imagebrush_jax.inference import editor as editor_lib
from imagebrush_jax.inference import manifest as manifest_lib
from imagebrush_jax.inference import regions

PREVIEW_MIN_TILE = 192  # grid pictures are scaled up (nearest) to at least this per tile
BOX_COLOUR = (255, 64, 32)


@dataclasses.dataclass(frozen=True)
class Edit:
  image: np.ndarray  # uint8: the edited query at its own size (or the tile, output_size 'tile')
  grid: np.ndarray  # uint8: the examples, the query and the result as the model saw them
  seconds: float


def grid_picture(grid: np.ndarray, cell: np.ndarray, box: np.ndarray, tile: int) -> np.ndarray:
  """The model's grid with the generated `cell` in the target place and, unless it is the whole
  tile, the box outlined on the query and the result; scaled up for display."""
  picture = np.array(grid, np.uint8)
  picture[-tile:, tile:] = cell
  scale = max(1, -(-PREVIEW_MIN_TILE // tile))
  image = Image.fromarray(picture).resize((picture.shape[1] * scale, picture.shape[0] * scale),
                                          Image.NEAREST)
  if not np.allclose(box, grid_lib.WHOLE_TILE_BOX):
    draw = ImageDraw.Draw(image)
    top = (picture.shape[0] - tile) * scale
    width = max(1, scale // 2)
    for left in (0, tile * scale):
      x0, y0, x1, y1 = (float(v) * tile * scale for v in box)
      draw.rectangle([left + x0, top + y0, left + x1 - 1, top + y1 - 1], outline=BOX_COLOUR,
                     width=width)
  return np.asarray(image)


class EditService:
  """A loaded run that edits one query at a time (thread-compatible: callers serialise)."""

  def __init__(self, run: run_loading.Run, *, max_file_bytes: int | None = None,
               max_samplers: int = editor_lib.DEFAULT_MAX_SAMPLERS):
    self.run = run
    self.config = run.config
    self.num_examples = int(run.config.data.num_examples)
    self.tile_size = int(run.config.data.tile_size)
    self.spec = batch_lib.tile_spec(run.config)
    self.editor = editor_lib.Editor(run, batch_size=1, max_samplers=max_samplers)
    self.max_file_bytes = max_file_bytes  # None: no limit
    self.num_timesteps = self.editor.num_timesteps
    self.default_steps = run.spec.sampling.num_steps
    self.default_guidance = run.spec.sampling.guidance_scale

  def warm_up(self) -> None:
    """Compiles the sampler at the default settings, so the first request does not wait."""
    tile = np.zeros((self.tile_size, self.tile_size, 3), np.uint8)
    grid = grid_lib.assemble_grid([(tile, tile)] * self.num_examples, tile)
    self.editor.edit_grids({k: v[None] for k, v in grid.items()}, jax.random.key(0))

  def edit(self, examples: Sequence[tuple[str, str]], query: str,
           box: Sequence[float] | None = None, *, steps: int | None = None,
           guidance: float | None = None, seed: int = 0, box_padding: float | None = None,
           output_size: str = "query") -> Edit:
    """Edits image file `query` as the (before, after) image files show; `box` in the query's
    pixels (None: the whole image), a region edit with `box_padding` query pixels of context
    around it (None: regions' default share); `output_size` 'query' (the query's size) or
    'tile' (the generated tile as it is). Bad input (settings, seed, files, box, padding,
    output size) raises ValueError with a one-line message."""
    start = time.time()
    settings = self.editor.check_settings(num_steps=steps, guidance_scale=guidance)
    key = editor_lib.rng_key(seed)
    box_padding = regions.check_padding(box_padding)
    regions.check_output_size(output_size)
    for path in [p for pair in examples for p in pair] + [query]:
      self._check_size(path)
    row = manifest_lib.Row(line=0, examples=tuple(examples), query=query, output="",
                           box=None if box is None else tuple(float(v) for v in box))
    loaded = batch_lib.load_row(row, num_examples=self.num_examples, spec=self.spec,
                                box_padding=box_padding)
    batch = {k: v[None] for k, v in loaded.grid.items()}
    cell = self.editor.edit_grids(batch, key, **settings)[0]
    return Edit(image=batch_lib.output_image(loaded, cell, self.spec.resize_method, output_size),
                grid=grid_picture(loaded.grid["grid"], cell, loaded.grid["box"],
                                  self.tile_size),
                seconds=time.time() - start)

  def _check_size(self, path: str) -> None:
    """Refuses a file over max_file_bytes (a missing one is left to the image reader)."""
    if self.max_file_bytes is None:
      return
    try:
      size = os.path.getsize(path)
    except OSError:
      return
    if size > self.max_file_bytes:
      raise ValueError(f"{path} is over the upload limit ({size:,} bytes > "
                       f"{self.max_file_bytes:,})")
