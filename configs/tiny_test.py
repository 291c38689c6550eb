"""Seconds-long runs for the test suite: the default layout at the smallest sizes."""
import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
  c = default.get_config()
  # ---------------------------------------------------------------- data
  c.data.tile_size = 8
  # END data
  # ---------------------------------------------------------------- model + diffusion
  # END model
  # ---------------------------------------------------------------- train
  c.train.batch_size = 8
  # END train
  return c
