"""Writes assembled grids as one PNG, each labelled with its task, to eyeball the pipeline.

    python -m imagebrush_jax.preview --config configs/default.py --num 16 --out grids.png

Grids come from the training stream of host 0 (--split train, with its crops, flips and box
drops) or from make_eval_batches (--split eval: every train and held-out task in turn). The query
box is drawn as a yellow frame on the target cell (omitted when it is the whole tile); the sheet
is data/preview.py's.
"""
from __future__ import annotations

from absl import app
from absl import flags
from ml_collections import config_flags

from imagebrush_jax.data import pipeline
from imagebrush_jax.data import preview
from imagebrush_jax.infra import cli
from imagebrush_jax.infra import files


def define_flags(flag_values: flags.FlagValues) -> None:
  """The flags of `python -m imagebrush_jax.preview` (defined when it runs, never at import)."""
  config_flags.DEFINE_config_file("config", None, "Config file (.py).", lock_config=True,
                                  flag_values=flag_values)
  flags.DEFINE_integer("num", 16, "Number of grids.", flag_values=flag_values)
  flags.DEFINE_string("out", "grids.png", "Output PNG.", flag_values=flag_values)
  flags.DEFINE_enum("split", "train", ["train", "eval"], "Training stream or eval set.",
                    flag_values=flag_values)
  flags.DEFINE_integer("columns", 8, "Grids per row of the sheet.", flag_values=flag_values)
  flags.DEFINE_integer("min_tile_px", 48, "Upscale (nearest) until a tile is this big.",
                       flag_values=flag_values)
  flags.mark_flags_as_required(["config"], flag_values=flag_values)


def program(args: flags.FlagValues) -> None:
  """Writes the sheet the parsed flags `args` describe."""
  config = args.config
  if args.num < 1:
    raise app.UsageError(f"--num must be positive, got {args.num}")
  batch = preview.collect(config, args.num, args.split)
  sheet = preview.render_sheet(batch, pipeline.task_vocabulary(config), columns=args.columns,
                               min_tile_px=args.min_tile_px)
  files.save_png_atomic(args.out, sheet)
  print(f"wrote {len(batch['grid'])} grids to {args.out}")


if __name__ == "__main__":
  cli.run_program(define_flags, program)
