"""Edit images by example with a trained ImageBrush run.

Single edit (latest checkpoint of WORKDIR, EMA parameters):
  python -m imagebrush_jax.infer --workdir DIR --before a.png --after b.png --query q.png \
      --output out.png [--box x0,y0,x1,y1] [--steps 50] [--guidance 7.5] [--seed 0]
(--before / --after repeat, in order, for several example pairs; --params model.safetensors, a
run exported by `python -m imagebrush_jax.export`, stands in for --workdir.)

Batch edit from a JSON-lines manifest (see inference/manifest.py for the row format):
  python -m imagebrush_jax.infer --workdir DIR --manifest rows.jsonl --output_dir OUT \
      [--batch_size 32]

Every image becomes a tile as the run's evaluation tiles did (data.augment.TileSpec): resized
(squashed) to config.data.tile_size * crop_scale pixels a side with config.data.resize_method,
then the centred tile is cropped, so a crop_scale above 1 trims a thin border of each input
(round(tile_size * (crop_scale - 1) / 2) render pixels a side). A --box / "box" (query pixels)
is mapped onto the tile the same way. The generated tile is resized back to the query's size
with the same resize method: it shows the query's centre region, border trimmed, stretched to
the full size.

Rows are loaded in a background thread while the device samples, batched to one fixed shape
(the last batch padded, so one compilation serves the whole run) and sharded over this host's
devices. Outputs are written atomically; rows whose output exists are skipped, so a rerun
finishes what an interrupted run left. A row whose inputs fail (missing, corrupt, truncated or
oversized image, decompression bomb, wrong number of pairs, bad box, bad JSON) goes to
OUT/errors.jsonl as {"line": N, "error": "..."} while the others proceed.

Exit status: 0 on success; 1 when a batch run finished but some rows failed; 2 for usage,
input and config errors (a bad argument, an unreadable single-edit image, a missing manifest,
workdir or checkpoint), printed as one line "error: ..." naming the file or key. Sampler
settings are checked as the web editor checks them (inference/editor.py): --seed in
[0, 2**63), --steps in [1, diffusion.num_timesteps], --guidance and --eta finite.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import queue
import sys
import threading
import time
from typing import Callable, Iterable, Sequence

import jax
import numpy as np

from imagebrush_jax import cli
from imagebrush_jax import files
from imagebrush_jax import run_loading
from imagebrush_jax.data import augment
from imagebrush_jax.imagebrush import grid as grid_lib
from imagebrush_jax.inference import editor as editor_lib
from imagebrush_jax.inference import images
from imagebrush_jax.inference import manifest as manifest_lib

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


def _one_line(error: BaseException) -> str:
  return " ".join(str(error).split()) or type(error).__name__


# ---------------------------------------------------------------------------- batch inference


class _ErrorLog:
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
        out.put(("error", item.line, _one_line(e)))
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
  errors = _ErrorLog(errors_path)
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
        message = f"cannot write {loaded.row.output}: {_one_line(e)}"
        log(f"line {loaded.row.line}: {message}")
        errors.add(loaded.row.line, message)
        stats["failed"] += 1
    log(f"batch {batch_index}: {stats['done']} written, {stats['skipped']} skipped, "
        f"{stats['failed']} failed, {time.time() - start:.1f}s")
  thread.join()
  return stats


# ---------------------------------------------------------------------------- command line


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m imagebrush_jax.infer",
                              description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  run = p.add_mutually_exclusive_group(required=True)
  run.add_argument("--workdir", help="training run folder (latest checkpoint)")
  run.add_argument("--params", help="a run exported by python -m imagebrush_jax.export")
  p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
  p.add_argument("--raw_params", action="store_true",
                 help="use the raw parameters instead of the EMA ones")
  single = p.add_argument_group("single edit")
  single.add_argument("--before", action="append", default=[], help="example input (repeat)")
  single.add_argument("--after", action="append", default=[], help="example output (repeat)")
  single.add_argument("--query", help="image to edit")
  single.add_argument("--output", help="output PNG, the query's size")
  single.add_argument("--box", help="x0,y0,x1,y1 region of the query to edit, in its pixels")
  batch = p.add_argument_group("batch edit")
  batch.add_argument("--manifest", help="JSON-lines file of edits")
  batch.add_argument("--output_dir", help="folder for outputs and errors.jsonl")
  batch.add_argument("--batch_size", type=int, default=None,
                     help="grids per device batch (default 8 x local devices)")
  batch.add_argument("--no_skip", action="store_true", help="redo rows whose output exists")
  s = p.add_argument_group("sampling (defaults: the run's config.sampling)")
  s.add_argument("--steps", type=int, default=None,
                 help="DDIM steps, 1 to the run's diffusion.num_timesteps")
  s.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale")
  s.add_argument("--eta", type=float, default=None, help="DDIM eta (0 = deterministic)")
  s.add_argument("--seed", type=int, default=0)
  return p


def _check_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
  single = [args.before, args.after, args.query, args.output, args.box]
  if args.manifest:
    if any(single):
      p.error("--manifest cannot be combined with --before/--after/--query/--output/--box")
    if not args.output_dir:
      p.error("--manifest needs --output_dir")
  else:
    if args.output_dir:
      p.error("--output_dir goes with --manifest")
    if not (args.query and args.output and args.before and args.after):
      p.error("a single edit needs --before, --after, --query and --output "
              "(or use --manifest and --output_dir)")
    if len(args.before) != len(args.after):
      p.error(f"--before given {len(args.before)} time(s) but --after {len(args.after)}: "
              f"they pair up in order")
  if args.batch_size is not None and args.batch_size < 1:
    p.error(f"--batch_size must be positive, got {args.batch_size}")


def main(argv: Sequence[str] | None = None) -> int:
  p = _parser()
  args = p.parse_args(argv)
  _check_args(p, args)
  try:  # a bucket that cannot be used stops the job here (load_run checks --workdir's)
    for path in (args.manifest, args.output, args.output_dir):
      if path:
        files.check_access(path)
  except files.StorageAccessError as e:
    return cli.report(e)
  try:
    editor_lib.check_seed(args.seed)
  except ValueError as e:
    return cli.fail(_one_line(e))
  if args.manifest and not files.isfile(args.manifest):
    return cli.fail(f"manifest not found: {args.manifest}")
  single_row = None
  if not args.manifest:
    try:
      box = None if args.box is None else tuple(images.parse_box(args.box))
    except ValueError as e:
      p.error(str(e))
    single_row = manifest_lib.Row(
        line=0, examples=tuple(zip(args.before, args.after)), query=args.query,
        output=files.absolute(args.output), box=box)

  try:  # the messages name the folder, the checkpoint or the parameter that is wrong
    run = run_loading.load(args.workdir, args.params, args.step, use_ema=not args.raw_params)
  except cli.USER_ERRORS as e:  # pylint: disable=catching-non-exception
    return cli.report(e)
  try:
    spec = tile_spec(run.config)
  except ValueError as e:
    return cli.fail(f"the run config of {args.workdir or args.params}: {e}")
  print(f"loaded {args.workdir or args.params} step {run.step} "
        f"({'raw' if args.raw_params else 'EMA'} parameters)", file=sys.stderr)
  try:  # the sampler settings, checked against the run (--steps <= diffusion.num_timesteps)
    editor = editor_lib.Editor(run, batch_size=1 if single_row else args.batch_size,
                               num_steps=args.steps, guidance_scale=args.guidance, eta=args.eta)
  except ValueError as e:
    return cli.fail(_one_line(e))

  if single_row is not None:
    try:
      loaded = load_row(single_row, num_examples=int(run.config.data.num_examples), spec=spec)
    except (ValueError, OSError) as e:
      return cli.fail(_one_line(e))
    batch = {k: v[None] for k, v in loaded.grid.items()}
    cell = editor.edit_grids(batch, editor_lib.rng_key(args.seed))[0]
    try:
      write_output(loaded, cell, spec.resize_method)
    except OSError as e:
      return cli.fail(f"cannot write {args.output}: {_one_line(e)}")
    print(f"wrote {args.output}", file=sys.stderr)
    return 0

  try:
    files.makedirs(args.output_dir)
  except OSError as e:
    return cli.fail(f"cannot create --output_dir {args.output_dir}: {_one_line(e)}")
  stats = edit_rows(editor, manifest_lib.read_manifest(args.manifest, args.output_dir),
                    files.join(args.output_dir, ERRORS_FILE), seed=args.seed,
                    skip_existing=not args.no_skip,
                    log=lambda m: print(m, file=sys.stderr))
  print(json.dumps(stats))
  return 1 if stats["failed"] else 0


if __name__ == "__main__":
  sys.exit(main())
