"""Rows of edits to edited images: each row's images read and tiled, batched for the editor, and
written atomically; a row that fails goes to errors.jsonl while the others proceed
(`python -m imagebrush_jax.infer` is its command line; the web editor edits through the same
load_row and output_image).

Example pairs, and a query without a box, become tiles as the run's evaluation tiles did
(data.augment.TileSpec): resized (squashed) to config.data.tile_size * crop_scale pixels a side
with config.data.resize_method, then the centred tile is cropped. The generated tile is resized
back to the query's size with the same method (output_size 'query') or kept as it is ('tile').

A query with a box (query pixels) is a region edit (inference/regions.py): the model edits a
padded, square-ish window around the box, resized straight to the tile (no centred crop, which
would trim the window), given the box in the window tile's coordinates; the generated tile is
resized back to the window and blended into the query inside the box only (a feathered edge of
regions.FEATHER_PIXELS inside the box), every pixel outside the box kept bit for bit
(output_size 'query'), or kept as the window's tile ('tile'). Example pairs are used whole
(rows carry no example boxes).

The row on manifest line N is sampled from its own key, fold_in(key(seed), N): its output does
not depend on the batch it falls in, on which rows were skipped or failed, or on how many
processes share the manifest (bit for bit at the same per-device batch shape on the same kind
of device).

The files of a batch run in OUTPUT_DIR: one process writes errors.jsonl ({"line", "error"} per
failed row, in line order) and summary.json ({"done", "failed", "skipped", "processes",
"seconds"}). Process i of several writes errors.process-<i>.jsonl and summary.process-<i>.json
(its rows only; the summary part says "finished": false until its rows are all handled), and
process 0 merges the parts into errors.jsonl and summary.json (merge_parts) once every process
has finished.
"""
from __future__ import annotations

import dataclasses
import json
import queue
import threading
import time
from typing import Callable, Iterable

import numpy as np

from imagebrush_jax.core import grid as grid_lib
from imagebrush_jax.data import augment
from imagebrush_jax.inference import editor as editor_lib
from imagebrush_jax.inference import images
from imagebrush_jax.inference import manifest as manifest_lib
from imagebrush_jax.inference import regions
from imagebrush_jax.infra import files

ERRORS_FILE = "errors.jsonl"
SUMMARY_FILE = "summary.json"
COUNTS = ("done", "failed", "skipped")


def errors_part(process_index: int) -> str:
  """The file name of process `process_index`'s errors in a run of several processes."""
  return f"errors.process-{int(process_index)}.jsonl"


def summary_part(process_index: int) -> str:
  """The file name of process `process_index`'s summary in a run of several processes."""
  return f"summary.process-{int(process_index)}.json"


@dataclasses.dataclass
class LoadedRow:
  row: manifest_lib.Row
  grid: dict[str, np.ndarray]  # assemble_grid output (no batch axis)
  size: tuple[int, int]  # the query's (width, height), the output size
  query: np.ndarray | None = None  # a region edit's query pixels, pasted into
  window: regions.Window | None = None  # a region edit's window (query pixels)


def tile_spec(config) -> augment.TileSpec:
  """How the run made its tiles (config.data.tile_size, crop_scale, resize_method)."""
  return augment.TileSpec.from_config(config.data)


def load_row(row: manifest_lib.Row, *, num_examples: int, spec: augment.TileSpec,
             box_padding: float | None = None) -> LoadedRow:
  """Reads, validates and tiles one row's images; raises ValueError naming the problem.

  Example pairs, and a query without a box, are tiled as the run's evaluation tiles are
  (`spec`: resize to the render size, centred crop, no flip). A query with a box is a region
  edit: its window (regions.window_for_box, `box_padding` query pixels around the box, None:
  the default share) resized to the tile, the box given in the window tile's coordinates.
  """
  if len(row.examples) != num_examples:
    raise ValueError(f"{len(row.examples)} example pair(s) given, but the model was trained "
                     f"with data.num_examples = {num_examples}")
  query = images.load_rgb(row.query)
  height, width = query.shape[:2]
  window = None
  if row.box is not None:
    try:
      window = regions.window_for_box(row.box, width, height, padding=box_padding,
                                      min_side=spec.tile_size)
    except ValueError as e:
      raise ValueError(f"{row.query}: {e}") from e
  pairs = [(spec.to_tile(images.load_rgb(b)), spec.to_tile(images.load_rgb(a)))
           for b, a in row.examples]
  if window is None:
    grid = grid_lib.assemble_grid(pairs, spec.to_tile(query))
    return LoadedRow(row=row, grid=grid, size=(width, height))
  tile = regions.crop_to_tile(query, window, spec.tile_size, spec.resize_method)
  grid = grid_lib.assemble_grid(pairs, tile, box=regions.box_in_window(row.box, window))
  return LoadedRow(row=row, grid=grid, size=(width, height), query=query, window=window)


def output_image(loaded: LoadedRow, cell: np.ndarray, resize_method: str = "bicubic",
                 output_size: str = "query") -> np.ndarray:
  """The edited image of a generated cell. output_size 'tile': the cell as generated (a region
  edit's: its window's tile). 'query': the query's size; a region edit is the query with the
  cell pasted inside the box (regions.paste, outside untouched); otherwise the cell resized to
  the query's size (it shows the centred crop, so the trimmed border is stretched back in)."""
  if regions.check_output_size(output_size) == "tile":
    return np.asarray(cell, np.uint8)
  if loaded.window is not None:
    return regions.paste(loaded.query, cell, loaded.window, loaded.row.box, resize_method)
  width, height = loaded.size
  return images.resize(cell, width, height, resize_method)


def write_output(loaded: LoadedRow, cell: np.ndarray, resize_method: str = "bicubic",
                 output_size: str = "query") -> None:
  """Writes output_image to the row's output file (PNG, atomically)."""
  files.save_png_atomic(loaded.row.output,
                        output_image(loaded, cell, resize_method, output_size))


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
            spec: augment.TileSpec, skip_existing: bool, stats: dict,
            box_padding: float | None = None) -> None:
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
        pending.append(load_row(item, num_examples=num_examples, spec=spec,
                                box_padding=box_padding))
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
              box_padding: float | None = None, output_size: str = "query",
              log: Callable[[str], None] = print) -> dict[str, int]:
  """Edits manifest rows (Row, or (line, error) for rows that failed to parse).

  Returns counts {done, skipped, failed}. The row on line N is sampled with its own key,
  fold_in(key(seed), N) (editor_lib.row_keys), whatever batch it is in.
  `box_padding` (query pixels around each row's box, None: the default share) and
  `output_size` ('query' or 'tile') are as for load_row and output_image.
  """
  key = editor_lib.rng_key(seed)
  box_padding = regions.check_padding(box_padding)
  regions.check_output_size(output_size)
  spec = tile_spec(editor.config)
  errors = ErrorLog(errors_path)
  errors.flush()  # a rerun starts a fresh error list
  stats = {"done": 0, "skipped": 0, "failed": 0}
  q: queue.Queue = queue.Queue(maxsize=max(1, prefetch_batches))
  thread = threading.Thread(
      target=_loader, args=(items, q),
      kwargs=dict(batch_size=editor.batch_size, num_examples=editor.num_examples,
                  spec=spec, skip_existing=skip_existing, stats=stats,
                  box_padding=box_padding),
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
    cells = editor.edit_grids(batch, editor_lib.row_keys(key, [r.row.line for r in rows]))
    batch_index += 1
    for loaded, cell in zip(rows, cells):
      try:
        write_output(loaded, cell, spec.resize_method, output_size)
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


# ---------------------------------------------------------------------------- summaries


def write_summary(path: str, summary: dict) -> None:
  """A summary as one JSON object, written atomically."""
  files.write_text_atomic(path, json.dumps(summary) + "\n")


def merge_parts(output_dir: str, parts: list[dict]) -> dict:
  """Process 0's last step of a run of several processes, once all have finished: `parts`, each
  process's {done, failed, skipped, seconds} in process order, become OUTPUT_DIR/summary.json
  (totals, the slowest process's seconds) and their errors files (errors_part) one
  OUTPUT_DIR/errors.jsonl in line order; returns the summary. An errors part that cannot be
  read raises ValueError naming it, and nothing is written."""
  merged = ErrorLog(files.join(output_dir, ERRORS_FILE))
  for i in range(len(parts)):
    path = files.join(output_dir, errors_part(i))
    try:
      text = files.read_text(path)
    except (OSError, UnicodeDecodeError) as e:
      raise ValueError(f"cannot read {path}: {one_line(e)}") from e
    for number, line in enumerate(text.splitlines(), start=1):
      try:
        entry = json.loads(line)
      except ValueError as e:
        raise ValueError(f"{path} line {number}: not valid JSON: {one_line(e)}") from e
      if not isinstance(entry, dict) or not {"line", "error"} <= set(entry):
        raise ValueError(f'{path} line {number}: not {{"line": N, "error": "..."}}')
      merged.entries.append({"line": int(entry["line"]), "error": str(entry["error"])})
  summary = {k: sum(int(p[k]) for p in parts) for k in COUNTS}
  summary.update(processes=len(parts), seconds=max(float(p["seconds"]) for p in parts))
  merged.flush()  # the same file, sorted by line, as one process's ErrorLog writes
  write_summary(files.join(output_dir, SUMMARY_FILE), summary)
  return summary
