"""Rows of edits to edited images: each row's images read and tiled as the run's evaluation tiles
were, batched for the editor, and written atomically; a row that fails goes to errors.jsonl while
the others proceed (`python -m imagebrush_jax.infer` is its command line).

Every image becomes a tile as the run's evaluation tiles did (data.augment.TileSpec): resized
(squashed) to config.data.tile_size * crop_scale pixels a side with config.data.resize_method,
then the centred tile is cropped. A box (query pixels) is mapped onto the tile the same way.
The generated tile is resized back to the query's size with the same resize method.
"""
from __future__ import annotations

import dataclasses
import json
import queue
import threading
import time
from typing import Callable, Iterable

import jax
import numpy as np

from imagebrush_jax.core import grid as grid_lib
from imagebrush_jax.data import augment
from imagebrush_jax.inference import editor as editor_lib
from imagebrush_jax.inference import images
from imagebrush_jax.inference import manifest as manifest_lib
from imagebrush_jax.infra import files

ERRORS_FILE = "errors.jsonl"


@dataclasses.dataclass
class LoadedRow:
  row: manifest_lib.Row
  grid: dict[str, np.ndarray]  # assemble_grid output (no batch axis)
  size: tuple[int, int]  # the query's (width, height), the output size


def tile_spec(config) -> augment.TileSpec:
  """How the run made its tiles (config.data.tile_size, crop_scale, resize_method)."""
  return augment.TileSpec.from_config(config.data)


def load_row(row: manifest_lib.Row, *, num_examples: int, spec: augment.TileSpec) -> LoadedRow:
  """Reads, validates and tiles one row's images; raises ValueError naming the problem.

  Tiles are made as the run's evaluation tiles are (`spec`: resize to the render size, centred
  crop, no flip), and the box is mapped the same way; a box wholly inside the trimmed border
  is an error.
  """
  if len(row.examples) != num_examples:
    raise ValueError(f"{len(row.examples)} example pair(s) given, but the model was trained "
                     f"with data.num_examples = {num_examples}")
  query = images.load_rgb(row.query)
  height, width = query.shape[:2]
  box = None
  if row.box is not None:
    try:
      box = spec.box_to_tile(images.normalize_box(row.box, width, height))
    except ValueError as e:
      raise ValueError(f"{row.query}: {e}") from e
    if box is None:
      raise ValueError(
          f"box {list(row.box)} of {row.query} lies wholly in the border that the centred "
          f"crop trims ({spec.margin} of every {spec.render_size} pixels on each side)")
  pairs = [(spec.to_tile(images.load_rgb(b)), spec.to_tile(images.load_rgb(a)))
           for b, a in row.examples]
  grid = grid_lib.assemble_grid(pairs, spec.to_tile(query), box=box)
  return LoadedRow(row=row, grid=grid, size=(width, height))


def output_image(loaded: LoadedRow, cell: np.ndarray, resize_method: str = "bicubic"
                 ) -> np.ndarray:
  """The generated cell resized to the query's size (the cell shows the centred crop, so the
  trimmed border is stretched back in, not kept from the query)."""
  width, height = loaded.size
  return images.resize(cell, width, height, resize_method)


def write_output(loaded: LoadedRow, cell: np.ndarray, resize_method: str = "bicubic") -> None:
  """Writes output_image to the row's output file (PNG, atomically)."""
  files.save_png_atomic(loaded.row.output, output_image(loaded, cell, resize_method))


def one_line(error: BaseException) -> str:
  return " ".join(str(error).split()) or type(error).__name__


# ---------------------------------------------------------------------------- batch inference


class ErrorLog:
  """errors.jsonl, rewritten atomically whenever an error is added (a crash keeps them)."""

  def __init__(self, path: str):
    self.path = path
    self.entries: list[dict] = []

  def add(self, line: int, error: str) -> None:
    self.entries.append({"line": int(line), "error": str(error)})
    self.flush()

  def flush(self) -> None:
    entries = sorted(self.entries, key=lambda e: e["line"])
    files.write_text_atomic(self.path, "".join(json.dumps(e) + "\n" for e in entries))


_DONE = object()


def _loader(items: Iterable, out: queue.Queue, *, batch_size: int, num_examples: int,
            spec: augment.TileSpec, skip_existing: bool, stats: dict) -> None:
  """Background thread: rows -> ('error', line, msg) | ('batch', [LoadedRow]) on `out`.

  A row's own failures (its images, sizes or box: ValueError, ImageLoadError included, or
  OSError) become its error; anything else stops the job as ('fatal', exception).
  """
  try:
    pending: list[LoadedRow] = []
    for item in items:
      if not isinstance(item, manifest_lib.Row):
        out.put(("error",) + tuple(item))
        continue
      if skip_existing and files.exists(item.output):
        stats["skipped"] += 1
        continue
      try:
        pending.append(load_row(item, num_examples=num_examples, spec=spec))
      except (ValueError, OSError) as e:
        out.put(("error", item.line, one_line(e)))
        continue
      if len(pending) == batch_size:
        out.put(("batch", pending))
        pending = []
    if pending:
      out.put(("batch", pending))
  except BaseException as e:  # pylint: disable=broad-except
    out.put(("fatal", e))
  finally:
    out.put(_DONE)


def edit_rows(editor: editor_lib.Editor, items: Iterable, errors_path: str, *, seed: int = 0,
              prefetch_batches: int = 2, skip_existing: bool = True,
              log: Callable[[str], None] = print) -> dict[str, int]:
  """Edits manifest rows (Row, or (line, error) for rows that failed to parse).

  Returns counts {done, skipped, failed}. Batch i is sampled with fold_in(key(seed), i).
  """
  key = editor_lib.rng_key(seed)
  spec = tile_spec(editor.config)
  errors = ErrorLog(errors_path)
  errors.flush()  # a rerun starts a fresh error list
  stats = {"done": 0, "skipped": 0, "failed": 0}
  q: queue.Queue = queue.Queue(maxsize=max(1, prefetch_batches))
  thread = threading.Thread(
      target=_loader, args=(items, q),
      kwargs=dict(batch_size=editor.batch_size, num_examples=editor.num_examples,
                  spec=spec, skip_existing=skip_existing, stats=stats),
      daemon=True, name="imagebrush-infer-loader")
  thread.start()
  batch_index = 0
  start = time.time()
  while True:
    item = q.get()
    if item is _DONE:
      break
    if item[0] == "fatal":
      raise item[1]
    if item[0] == "error":
      _, line, message = item
      log(f"line {line}: {message}")
      errors.add(line, message)
      stats["failed"] += 1
      continue
    rows: list[LoadedRow] = item[1]
    batch = {k: np.stack([r.grid[k] for r in rows]) for k in ("grid", "mask", "box")}
    cells = editor.edit_grids(batch, jax.random.fold_in(key, batch_index))
    batch_index += 1
    for loaded, cell in zip(rows, cells):
      try:
        write_output(loaded, cell, spec.resize_method)
        stats["done"] += 1
      except OSError as e:
        message = f"cannot write {loaded.row.output}: {one_line(e)}"
        log(f"line {loaded.row.line}: {message}")
        errors.add(loaded.row.line, message)
        stats["failed"] += 1
    log(f"batch {batch_index}: {stats['done']} written, {stats['skipped']} skipped, "
        f"{stats['failed']} failed, {time.time() - start:.1f}s")
  thread.join()
  return stats
