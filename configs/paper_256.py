"""Paper scale (ImageBrush, Sun et al. 2023): 256-pixel tiles, SD-v1 UNet, ViT-B prompt encoder.

Model, diffusion and sampling follow the paper; data and training shapes are filled in by their
own blocks below. Diffusion runs in pixel space until the KL autoencoder lands (then
model.in_channels = 4 and model.latent_factor = 8: a 64x64x4 latent grid for K = 1).
"""
import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
  c = default.get_config()
  # ---------------------------------------------------------------- data
  # Your before/after pairs, written once as array_record shards (README: "Your own pairs"):
  #   python -m imagebrush_jax.data.tfds_builder --config configs/paper_256.py \
  #       --config.data.folder_root=/data/pairs --config.data.tfds_dir=/data/tfds
  # then train with --config.data.tfds_dir=/data/tfds (and the task lists of your data set).
  c.data.source = "tfds"
  c.data.tfds_name = "image_brush_pairs/folder"
  c.data.tile_size = 256  # the paper's tiles: a 512 x 512 grid for K = 1
  c.data.num_examples = 1
  c.data.crop_scale = 1.125
  c.data.num_workers = 8
  c.data.prefetch_buffer = 8
  c.data.eval_batch_size = 16
  # END data

  # ---------------------------------------------------------------- model + diffusion
  # Pixel space for now (3 channels, a 512x512 grid: it builds and counts, but self-attention at
  # 512x512 is only practical in the f=8 latent): in_channels = 4 and latent_factor = 8 there.
  c.model.in_channels = 3
  c.model.latent_factor = 1
  c.model.dtype = "bfloat16"
  c.model.remat = True
  c.model.cfg_drop_rate = 0.05
  c.model.box_drop_rate = 0.1

  # SD v1 UNet; self-attention in the outer level, cross-attention to the prompt in the middle.
  c.model.unet.channels = (320, 640, 1280, 1280)
  c.model.unet.attention = ("self", "self+cross", "self+cross", "none")
  c.model.unet.mid_attention = "self+cross"
  c.model.unet.num_res_blocks = 2
  c.model.unet.num_heads = 8
  c.model.unet.head_dim = 0
  c.model.unet.norm_groups = 32

  # EVA-02-B-sized ViT-B/16 backbone at 224 pixels; 5-layer, width-768 prompt transformer.
  c.model.prompt.image_size = 224
  c.model.prompt.vit.patch_size = 16
  c.model.prompt.vit.width = 768
  c.model.prompt.vit.depth = 12
  c.model.prompt.vit.num_heads = 12
  c.model.prompt.vit.mlp_ratio = 4
  c.model.prompt.mixer.width = 768
  c.model.prompt.mixer.depth = 5
  c.model.prompt.mixer.num_heads = 12
  c.model.prompt.mixer.mlp_ratio = 4

  c.diffusion.schedule = "scaled_linear"
  c.diffusion.num_timesteps = 1000
  c.diffusion.beta_start = 0.00085
  c.diffusion.beta_end = 0.012
  c.diffusion.prediction_type = "epsilon"

  c.sampling.num_steps = 50
  c.sampling.guidance_scale = 7.5
  c.sampling.eta = 0.0
  c.sampling.spacing = "leading"  # as SD's DDIM
  c.sampling.clip_x0 = True  # pixel space; set False in latent space
  # END model

  # ---------------------------------------------------------------- train
  # The paper: AdamW, batch 288, 14k iterations (24 V100s there).
  c.train.batch_size = 288
  c.train.num_steps = 14_000
  c.train.learning_rate = 1e-4
  c.train.lr_schedule = "constant"
  c.train.warmup_steps = 500
  c.train.weight_decay = 0.01
  c.train.b2 = 0.999
  c.train.grad_clip_norm = 1.0
  c.train.ema_decay = 0.9999
  c.train.log_every = 50
  c.train.eval_every = 1000
  c.train.eval_num_grids = 96
  c.train.sample_num_grids = 24
  c.checkpoint.every = 1000
  c.checkpoint.keep = 3
  c.checkpoint.keep_every = 5000
  # GPUs: one host, all its devices on 'data' (pure data parallel); params replicated unless
  # fsdp > 1. 24 GPUs: batch 288 = 12 per device.
  c.mesh.data = -1
  c.mesh.fsdp = 1
  c.sharding.min_fsdp_size = 2**18
  # END train
  return c
