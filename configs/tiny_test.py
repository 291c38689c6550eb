"""Seconds-long runs for the test suite: the base (paper) model at the smallest sizes."""
import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
  c = default.get_config()
  # ---------------------------------------------------------------- data
  c.data.tile_size = 8
  c.data.crop_scale = 1.25  # 8-pixel tiles cropped from 10-pixel renders
  c.data.num_workers = 0  # no worker processes in unit tests
  c.data.prefetch_buffer = 2
  c.data.eval_batch_size = 8
  # ---------------------------------------------------------------- model + diffusion
  c.model.unet.channels = (16, 32)
  c.model.unet.attention = ("self", "self+cross")
  c.model.unet.num_heads = 2
  c.model.unet.norm_groups = 8
  c.model.prompt.vit.width = 32
  c.model.prompt.vit.depth = 1
  c.model.prompt.vit.num_heads = 2
  c.model.prompt.mixer.width = 32
  c.model.prompt.mixer.depth = 1
  c.model.prompt.mixer.num_heads = 2
  c.sampling.num_steps = 4
  # ---------------------------------------------------------------- train
  c.train.batch_size = 8
  c.train.num_steps = 40
  c.train.warmup_steps = 5
  c.train.log_every = 10
  c.train.eval_every = 1000
  c.train.eval_num_grids = 8
  c.train.sample_num_grids = 8  # the accuracy grids' shape: one sampler compilation
  c.train.accuracy_num_grids = 8  # task accuracy / PSNR grids per eval
  c.checkpoint.every = 20
  c.sharding.min_fsdp_size = 256
  return c
