"""A small f=8 KL autoencoder that trains on the CPU in minutes, on the synthetic tiles.

  python -m imagebrush_jax.train_autoencoder --config configs/autoencoder_tiny.py --workdir DIR

Each evaluation exports DIR/autoencoder.safetensors, which configs/latent_tiny.py reads
(config.model.autoencoder.params) and `python -m imagebrush_jax.autoencode` checks by eye.
The layout is SD's AutoencoderKL at a fraction of the width (configs/autoencoder_sd.py is SD's).
"""
import ml_collections

from configs import default


def autoencoder_block() -> ml_collections.ConfigDict:
  """config.autoencoder: architecture, runtime knobs, loss and export. Shared by the AE configs."""
  a = ml_collections.ConfigDict()
  # Architecture (a parameter file must agree with it); the names are diffusers' AutoencoderKL's.
  a.arch = ml_collections.ConfigDict()
  a.arch.in_channels = 3
  a.arch.out_channels = 3
  a.arch.latent_channels = 4
  a.arch.block_out_channels = (32, 64, 64, 64)  # one level each; f = 2 ** (levels - 1) = 8
  a.arch.layers_per_block = 1  # ResnetBlocks per encoder level (the decoder has one more)
  a.arch.norm_num_groups = 8
  a.arch.mid_block_attention = True
  a.arch.use_quant_conv = True
  a.arch.use_post_quant_conv = True
  a.arch.scaling_factor = 1.0  # replaced at export when measure_scaling_factor is True
  a.arch.shift_factor = 0.0
  # Runtime.
  a.dtype = "float32"  # compute dtype: float32 | bfloat16 (parameters stay float32)
  a.remat = False  # rematerialise each ResnetBlock in the backward pass
  a.remat_policy = ""  # a jax.checkpoint_policies name; "" saves nothing
  a.conv_impl = "auto"  # auto (matmul kernel gradient on CPU, else xla) | xla
  a.attention_impl = "auto"  # auto | einsum | xla | cudnn
  a.init_from = ""  # a parameter file to fine-tune from (e.g. a converted SD VAE); "" = random
  # Loss: reconstruction + kl_weight * KL (both per pixel value, see train_autoencoder.py).
  a.reconstruction_loss = "l1"  # l1 | l2
  a.kl_weight = 1e-6  # SD's VAE value
  a.sample_posterior = True  # decode a posterior sample in training (the mean in evaluation)
  # Export at every evaluation: WORKDIR/<export_name>, EMA parameters.
  a.export_name = "autoencoder.safetensors"
  a.measure_scaling_factor = True  # scaling_factor = 1 / std of the held-out tiles' latents
  return a


def get_config() -> ml_collections.ConfigDict:
  base = default.get_config()
  c = ml_collections.ConfigDict()
  c.seed = 0

  # ---------------------------------------------------------------- data
  # Tiles of the ImageBrush data (config.data as in default.py): each training tile is the
  # before or after image of a pair of a train task, cropped and flipped like a grid cell.
  c.data = base.data
  c.data.tile_size = 32  # must divide by the autoencoder's factor f
  c.data.num_workers = 1

  c.autoencoder = autoencoder_block()

  # ---------------------------------------------------------------- train
  c.train = base.train
  c.train.batch_size = 32
  c.train.num_steps = 2000
  c.train.learning_rate = 1e-3
  c.train.warmup_steps = 100
  c.train.weight_decay = 0.0
  c.train.ema_decay = 0.999
  c.train.log_every = 50
  c.train.eval_every = 500
  c.train.eval_num_grids = 64  # held-out tiles for PSNR / SSIM / the latent scale (tiles here)
  c.train.sample_num_grids = 8  # of them shown in WORKDIR/reconstructions/step_N.png
  c.checkpoint = base.checkpoint
  c.mesh = base.mesh
  c.sharding = base.sharding
  return c
