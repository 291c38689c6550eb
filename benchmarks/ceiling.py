"""The ceiling of each synthetic task: the best edit success any predictor can reach from the
rendered pixels, with no training (imagebrush_jax/metrics/ceiling.py).

    python benchmarks/ceiling.py [--config configs/objects.py] [--tile_size 16]
        [--crop_scale 1.125] [--num_scenes 200] [--tasks move,bbox] [--seed 0]

Scenes are drawn with the config's scene knobs (config.data.synthetic), rendered at the tile size
plus the crop margin of --crop_scale (both the config's by default) and cropped to the centred
tile, as evaluation's grids are. One JSON line per task (ceiling, its 95% Wilson interval,
scored scenes, the share of scenes whose lookalikes all give the true target, and the success
of the hedged guess, which paints every change some lookalike makes), then a summary JSON line,
last. Deterministic given --seed.
"""
import json
import os
import sys
import time
from typing import Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=g-import-not-at-top,wrong-import-position
from absl import flags

from imagebrush_jax.data import augment
from imagebrush_jax.data import options
from imagebrush_jax.data import tasks as tasks_lib
from imagebrush_jax.infra import cli
from imagebrush_jax.metrics import ceiling
# pylint: enable=g-import-not-at-top,wrong-import-position

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                              "configs", "objects.py")
WELL_POSED = 0.9  # a task whose ceiling is below this asks for what its pixels do not show


def define_flags(flag_values: flags.FlagValues) -> None:
  """The benchmark's flags (defined when it runs)."""
  fv = dict(flag_values=flag_values)
  flags.DEFINE_string("config", DEFAULT_CONFIG, "Config file: its scene knobs, tile size and "
                      "crop scale.", **fv)
  flags.DEFINE_integer("tile_size", 0, "Tile size in pixels (0: the config's).", **fv)
  flags.DEFINE_float("crop_scale", None, "Render at this x tile size and crop the centre (the "
                     "config's by default; 1: no crop).", **fv)
  flags.DEFINE_integer("num_scenes", 200, "Fresh scenes per task.", **fv)
  flags.DEFINE_list("tasks", [], "Tasks (default: every registered one).", **fv)
  flags.DEFINE_integer("seed", 0, "Seed of the scenes and of their lookalikes.", **fv)
  flags.DEFINE_integer("lookalikes", 24, "Lookalike scenes drawn per scene.", **fv)
  flags.DEFINE_integer("proposals", 512, "Jittered centre-and-size proposals per object.", **fv)
  flags.DEFINE_float("jitter_px", 1.0, "Jitter of centres, sizes and periods, in pixels.", **fv)


def program(args: flags.FlagValues) -> None:
  """Prints one JSON line per task, then the summary line."""
  start = time.perf_counter()
  config = cli.load_config_file(args.config)
  params = options.scene_params(config.data)
  tile = args.tile_size or int(config.data.tile_size)
  crop_scale = config.data.crop_scale if args.crop_scale is None else args.crop_scale
  if tile < 4 or crop_scale < 1 or args.num_scenes < 1 or args.lookalikes < 1:
    raise ValueError("need --tile_size >= 4, --crop_scale >= 1, --num_scenes >= 1 and "
                     "--lookalikes >= 1")
  names = list(args.tasks) or list(tasks_lib.task_names())
  for name in names:
    tasks_lib.get_task(name)  # an unknown name fails here, naming the registered ones
  margin = augment.crop_margin(tile, crop_scale)
  rows = []
  for result in ceiling.task_ceilings(
      names, params, tile, num_scenes=args.num_scenes, seed=args.seed, margin=margin,
      num_lookalikes=args.lookalikes, proposals=args.proposals, jitter_px=args.jitter_px):
    rows.append(result.as_dict())
    print(json.dumps(rows[-1]), flush=True)
  rates = {r["task"]: r["ceiling"] for r in rows}
  print(json.dumps({
      "benchmark": "ceiling",
      "tile_size": tile,
      "render_size": tile + 2 * margin,
      "crop_scale": crop_scale,
      "num_scenes": args.num_scenes,
      "seed": args.seed,
      "ceiling": rates,
      "hedged": {r["task"]: r["hedged"] for r in rows},
      "min_ceiling": min(rates.values()),
      "below_well_posed": sorted(t for t, r in rates.items() if r < WELL_POSED),
      "well_posed_threshold": WELL_POSED,
      "seconds": round(time.perf_counter() - start, 1),
  }), flush=True)


def main(argv: Sequence[str]) -> int:
  """The benchmark in this process on `argv` (its flags, without the program's name)."""
  return cli.call_program(define_flags, program, argv, name="benchmarks/ceiling.py")


if __name__ == "__main__":
  cli.run_program(define_flags, program)
