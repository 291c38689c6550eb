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
import json
import sys
from typing import Sequence

import numpy as np

from imagebrush_jax.inference import batch as batch_lib
from imagebrush_jax.inference import editor as editor_lib
from imagebrush_jax.inference import images
from imagebrush_jax.inference import manifest as manifest_lib
from imagebrush_jax.inference import run_loading
from imagebrush_jax.infra import cli
from imagebrush_jax.infra import files

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
    return cli.fail(batch_lib.one_line(e))
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
    spec = batch_lib.tile_spec(run.config)
  except ValueError as e:
    return cli.fail(f"the run config of {args.workdir or args.params}: {e}")
  print(f"loaded {args.workdir or args.params} step {run.step} "
        f"({'raw' if args.raw_params else 'EMA'} parameters)", file=sys.stderr)
  try:  # the sampler settings, checked against the run (--steps <= diffusion.num_timesteps)
    editor = editor_lib.Editor(run, batch_size=1 if single_row else args.batch_size,
                               num_steps=args.steps, guidance_scale=args.guidance, eta=args.eta)
  except ValueError as e:
    return cli.fail(batch_lib.one_line(e))

  if single_row is not None:
    try:
      loaded = batch_lib.load_row(single_row, num_examples=int(run.config.data.num_examples), spec=spec)
    except (ValueError, OSError) as e:
      return cli.fail(batch_lib.one_line(e))
    batch = {k: v[None] for k, v in loaded.grid.items()}
    cell = editor.edit_grids(batch, editor_lib.rng_key(args.seed))[0]
    try:
      batch_lib.write_output(loaded, cell, spec.resize_method)
    except OSError as e:
      return cli.fail(f"cannot write {args.output}: {batch_lib.one_line(e)}")
    print(f"wrote {args.output}", file=sys.stderr)
    return 0

  try:
    files.makedirs(args.output_dir)
  except OSError as e:
    return cli.fail(f"cannot create --output_dir {args.output_dir}: {batch_lib.one_line(e)}")
  stats = batch_lib.edit_rows(editor, manifest_lib.read_manifest(args.manifest, args.output_dir),
                    files.join(args.output_dir, batch_lib.ERRORS_FILE), seed=args.seed,
                    skip_existing=not args.no_skip,
                    log=lambda m: print(m, file=sys.stderr))
  print(json.dumps(stats))
  return 1 if stats["failed"] else 0


if __name__ == "__main__":
  sys.exit(main())
