"""Stable Diffusion's VAE architecture (AutoencoderKL, f=8, 4 latent channels, 83.7M parameters),
trained or fine-tuned on the ImageBrush data's 256-pixel tiles.

  python -m imagebrush_jax.train_autoencoder --config configs/autoencoder_sd.py --workdir DIR \
      [--config.autoencoder.init_from=sd_vae.safetensors]

A converted SD VAE (`python -m imagebrush_jax.convert --from sd_vae ...`) has exactly this
architecture, so it can be fine-tuned from (init_from) or used frozen by configs/paper_256.py.
SD trained its VAE with LPIPS and a patch discriminator as well; this trainer uses the
reconstruction + KL objective only.
"""
import ml_collections

from configs import autoencoder_tiny


def get_config() -> ml_collections.ConfigDict:
  c = autoencoder_tiny.get_config()
  # ---------------------------------------------------------------- data
  c.data.tile_size = 256
  c.data.num_workers = 8
  c.data.prefetch_buffer = 4

  a = c.autoencoder
  a.arch.block_out_channels = (128, 256, 512, 512)
  a.arch.layers_per_block = 2
  a.arch.norm_num_groups = 32
  a.arch.scaling_factor = 0.18215  # SD's; re-measured at export when measure_scaling_factor
  a.remat = True
  a.measure_scaling_factor = False  # keep SD's latent scale (fine-tuning keeps it about right)

  # ---------------------------------------------------------------- train
  c.train.batch_size = 64
  c.train.num_steps = 50_000
  c.train.learning_rate = 1e-4
  c.train.warmup_steps = 1000
  c.train.b2 = 0.999
  c.train.log_every = 100
  c.train.eval_every = 2000
  c.train.eval_num_grids = 64
  c.train.sample_num_grids = 8
  c.checkpoint.every = 2000
  c.mesh.fsdp = 1
  return c
