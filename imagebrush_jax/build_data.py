"""Builds a training data set folder from published edit data or your own pairs.

    python -m imagebrush_jax.build_data --source ip2p --input /data/ip2p --output /data/ip2p_256
    python -m imagebrush_jax.build_data --source video --input /data/DAVIS --output /data/davis_256

Sources: `ip2p` (InstructPix2Pix parquet shards or prompt folders; a task = one instruction),
`video` (clips or DAVIS frame folders; a task = one sequence, a pair = frames t and t + frame_gap),
`folder` (ROOT/<task>/<id>_before.png ...), `synthetic` (the built-in tasks of --config). Train
from it with --config.data.source=tfds --config.data.tfds.dir=OUTPUT. The last stdout line is a
JSON summary: tasks, pairs, skipped, heldout_tasks, shards, seconds, ...

With --autoencoder FILE the built data set also caches every pair's posterior moments under that
autoencoder (data/prepare/moments.py), for --config.data.cached_latents=True; given for a data
set already built (the same command again), it adds them.
"""
import dataclasses
import os
from typing import Sequence

from absl import flags

from imagebrush_jax.infra import cli
from imagebrush_jax.data.prepare import ip2p
from imagebrush_jax.data.prepare import moments
from imagebrush_jax.data.prepare import units
from imagebrush_jax.data.prepare import writer


def _options() -> writer.BuildOptions:
  read = units.SourceOptions(
      columns=ip2p.Columns(_BEFORE.value, _AFTER.value, _INSTRUCTION.value),
      frame_gap=_GAP.value, davis_resolution=_RESOLUTION.value)
  opts = writer.BuildOptions(
      source=_SOURCE.value, input=_INPUT.value, output=_OUTPUT.value, tile_size=_TILE.value,
      crop_scale=_CROP.value, resize_method=_RESIZE.value, image_format=_FORMAT.value,
      jpeg_quality=_QUALITY.value, heldout_fraction=_HELDOUT.value, shard_pairs=_SHARD.value,
      workers=_WORKERS.value, read=read)
  if _SOURCE.value != "synthetic":
    return opts
  from imagebrush_jax.data import options as options_lib  # pylint: disable=g-import-not-at-top
  data = options_lib.from_config(cli.load_config_file(_CONFIG.value))
  read = dataclasses.replace(read, synthetic_scene=data.scene, synthetic_size=opts.image_size,
                             seed=_SEED.value)
  return dataclasses.replace(opts, read=read, synthetic_tasks=data.all_tasks,
                             pairs_per_task=_PAIRS.value)


def main(argv: Sequence[str]) -> None:
  del argv
  opts = _options()
  summary = writer.build(opts, progress=True)
  if _AUTOENCODER.value:
    summary.update(moments.write(opts.output, _AUTOENCODER.value, dtype=_MOMENTS_DTYPE.value,
                                 progress=True))
  print(f"wrote {summary['pairs']} pairs of {summary['tasks']} tasks to {opts.output} "
        f"({summary['skipped']} inputs skipped, listed in "
        f"{os.path.join(opts.output, writer.ERRORS_FILE)})")
  cached = " --config.data.cached_latents=True" if _AUTOENCODER.value else ""
  print(f"train from it: --config.data.source=tfds --config.data.tfds.dir={opts.output}{cached}")
  print(writer.summary_line(summary))


if __name__ == "__main__":
  # Flags are defined only when run as a program: importing this module defines none.
  _SOURCE = flags.DEFINE_enum("source", None, units.SOURCES, "What --input holds.")
  _INPUT = flags.DEFINE_string("input", "", "The downloaded data set, or your pairs folder.")
  _OUTPUT = flags.DEFINE_string("output", None, "The data set folder to write (new or empty, or "
                                "an interrupted build of the same flags to finish).")
  _TILE = flags.DEFINE_integer("tile_size", 256, "Tile size the data set is for; images are "
                               "stored at crop_scale * tile_size.")
  _CROP = flags.DEFINE_float("crop_scale", 1.125, "As config.data.crop_scale.")
  _RESIZE = flags.DEFINE_string("resize_method", "bilinear", "As config.data.resize_method.")
  _FORMAT = flags.DEFINE_enum("image_format", "jpeg", writer.IMAGE_FORMATS, "Stored encoding.")
  _QUALITY = flags.DEFINE_integer("jpeg_quality", 95, "JPEG quality of the stored images.")
  _HELDOUT = flags.DEFINE_float("heldout_fraction", 0.0, "Fraction of the tasks (chosen by a hash "
                                "of their name) written to the held-out split.")
  _GAP = flags.DEFINE_integer("frame_gap", 4, "video: a pair is frames t and t + frame_gap.")
  _RESOLUTION = flags.DEFINE_string("davis_resolution", None, "video: the DAVIS JPEGImages "
                                    "resolution (default: the only one, else 480p).")
  _WORKERS = flags.DEFINE_integer("workers", writer.usable_cpus(), "Worker processes (default: "
                                   "the CPUs this process may run on).")
  _SHARD = flags.DEFINE_integer("shard_pairs", 1024, "Pairs per output shard.")
  _BEFORE = flags.DEFINE_string("before_column", ip2p.Columns.before, "ip2p parquet: before image.")
  _AFTER = flags.DEFINE_string("after_column", ip2p.Columns.after, "ip2p parquet: after image.")
  _INSTRUCTION = flags.DEFINE_string("instruction_column", ip2p.Columns.instruction,
                                     "ip2p parquet: the edit instruction.")
  _AUTOENCODER = flags.DEFINE_string(
      "autoencoder", "", "Also cache each pair's posterior moments under this autoencoder file "
      "(converted or trained), for config.data.cached_latents.")
  _MOMENTS_DTYPE = flags.DEFINE_enum("moments_dtype", "bfloat16", ["bfloat16", "float32"],
                                     "--autoencoder: how the moments are stored.")
  _PAIRS = flags.DEFINE_integer("pairs_per_task", 256, "synthetic: pairs per task.")
  _SEED = flags.DEFINE_integer("seed", 0, "synthetic: the scenes' seed.")
  _CONFIG = flags.DEFINE_string(
      "config", "configs/default.py", "synthetic: the config file whose data.synthetic scenes "
      "and train + held-out tasks are drawn.")
  flags.mark_flags_as_required(["source", "output"])
  cli.run(main)
