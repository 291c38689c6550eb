"""ImageBrush in a small KL autoencoder's f=8 latent space, trainable on the CPU (the paper's
setting at toy scale: 32-pixel tiles, a 4x4x4 latent per cell, an 8x8x4 latent grid for K = 1).

First train the autoencoder (its export is what this config reads), then ImageBrush:
  python -m imagebrush_jax.train_autoencoder --config configs/autoencoder_tiny.py \
      --workdir runs/autoencoder_tiny
  python -m imagebrush_jax.train --config configs/latent_tiny.py --workdir runs/latent_tiny
A converted SD VAE works too (--config.model.autoencoder.params=sd_vae.safetensors), at a
higher cost per step.
"""
import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
  c = default.get_config()
  # ---------------------------------------------------------------- data
  c.data.tile_size = 32  # pixels per cell; the latent cell is tile_size / latent_factor = 4
  c.data.crop_scale = 1.125

  # ---------------------------------------------------------------- model + diffusion
  c.model.in_channels = 4  # the autoencoder's latent channels
  c.model.latent_factor = 8  # its downsample factor
  c.model.autoencoder = ml_collections.ConfigDict()
  c.model.autoencoder.params = "runs/autoencoder_tiny/autoencoder.safetensors"
  c.model.autoencoder.scaling_factor = 0.0  # 0 = the file's (measured when it was exported)
  c.model.autoencoder.sample_posterior = True  # training latents: posterior samples (LDM)
  c.model.autoencoder.dtype = "float32"

  c.model.unet.channels = (64, 128)  # 8x8 and 4x4 latent levels
  c.model.unet.attention = ("self+cross", "self+cross")
  c.model.unet.mid_attention = "self+cross"
  c.model.prompt.vit.patch_size = 8  # 16 tokens per 32-pixel tile
  c.sampling.clip_x0 = False  # latents are not bounded to [-1, 1]

  # ---------------------------------------------------------------- train
  c.train.batch_size = 32
  c.train.num_steps = 3000
  c.train.learning_rate = 5e-4
  return c
