"""The CPU demo: a small pixel-space ImageBrush that learns the synthetic tasks in minutes.

Every knob of a run lives here; override any of them on the command line, e.g.
  python -m imagebrush_jax.train --config configs/default.py --config.train.batch_size=64
"""
import ml_collections

GLOBAL_TASKS = ("hflip", "vflip", "rot90", "invert", "grayscale", "swap_red_blue")


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0

  # ---------------------------------------------------------------- data (issue 2)
  c.data = ml_collections.ConfigDict()
  c.data.source = "synthetic"  # synthetic | folder | tfds
  c.data.tile_size = 16  # pixels per grid cell (before any latent encoding)
  c.data.num_examples = 1  # K example rows in the grid; K=1 is the paper's 2x2 grid
  c.data.train_tasks = GLOBAL_TASKS
  c.data.heldout_tasks = ()  # e.g. compositions never seen in training
  # END data

  # ---------------------------------------------------------------- model (issue 3)
  c.model = ml_collections.ConfigDict()
  # END model

  # ---------------------------------------------------------------- diffusion + sampling (issue 3)
  c.diffusion = ml_collections.ConfigDict()
  c.sampling = ml_collections.ConfigDict()
  # END diffusion

  # ---------------------------------------------------------------- training (issue 4)
  c.train = ml_collections.ConfigDict()
  c.train.batch_size = 32  # global batch, over all hosts and devices
  # END train
  return c
