"""Paper scale (ImageBrush, Sun et al. 2023): 256-pixel tiles, SD-v1 UNet, ViT-B prompt encoder.

The base config's model at the paper's sizes, in the latent space of Stable Diffusion's frozen
KL autoencoder (f = 8, 4 channels: a 64x64x4 latent grid for K = 1), converted once from its
diffusers folder:
  python -m imagebrush_jax.convert --from sd_vae --input sd-vae-ft-mse/ --output sd_vae.safetensors
  ... --config.model.autoencoder.params=sd_vae.safetensors
"""
import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
  c = default.get_config()
  # ---------------------------------------------------------------- data
  # The paper's data: InstructPix2Pix pairs grouped by instruction and frame pairs of videos,
  # each built once into a data set folder (the README's paper-scale recipe, step 3; docs/data.md):
  #   python -m imagebrush_jax.build_data --source ip2p --input /data/ip2p --output /data/ip2p_256
  #   python -m imagebrush_jax.build_data --source video --input /data/DAVIS --output /data/video_256
  # and mixed in equal parts. Every task of their train splits is trained on (empty task
  # lists); their held-out tasks are evaluated. Give other folders with --config.data.mixture.
  c.data.source = "tfds"
  c.data.mixture = (("/data/ip2p_256", 1.0), ("/data/video_256", 1.0))
  c.data.train_tasks = ()
  c.data.heldout_tasks = ()
  c.data.eval_fraction = 0.0  # evaluation reads the held-out tasks, never trained on
  c.data.tile_size = 256  # the paper's tiles: a 512 x 512 grid for K = 1
  c.data.num_workers = 8
  c.data.prefetch_buffer = 8
  c.data.eval_batch_size = 16

  # ---------------------------------------------------------------- model + diffusion
  # The f=8 latent of SD's VAE (imagebrush_jax/core/latent.py): the UNet denoises 4-channel latents,
  # each grid cell encoded on its own inside the train step; the prompt encoder sees pixels.
  c.model.in_channels = 4
  c.model.latent_factor = 8
  c.model.autoencoder = ml_collections.ConfigDict()
  c.model.autoencoder.params = ""  # the converted SD VAE file (required to train or sample)
  c.model.autoencoder.scaling_factor = 0.18215  # SD's latent scale; 0 = the file's
  c.model.autoencoder.sample_posterior = True  # training latents are posterior samples (LDM)
  c.model.autoencoder.dtype = "float32"  # as SD's force_upcast; bfloat16 halves its cost
  c.model.dtype = "bfloat16"
  c.model.remat = True

  # SD v1 UNet; self-attention in the outer level, cross-attention to the prompt in the middle.
  c.model.unet.channels = (320, 640, 1280, 1280)
  c.model.unet.attention = ("self", "self+cross", "self+cross", "none")
  c.model.unet.num_res_blocks = 2
  c.model.unet.num_heads = 8

  # EVA-02-B-sized ViT-B/16 backbone at 224 pixels; 5-layer, width-768 prompt transformer.
  # vit_init: a converted ViT-B/16 file to start the backbone from (python -m
  # imagebrush_jax.convert --from vit ...); "" = random.
  c.model.prompt.image_size = 224
  c.model.prompt.vit.patch_size = 16
  c.model.prompt.vit.width = 768
  c.model.prompt.vit.depth = 12
  c.model.prompt.vit.num_heads = 12
  c.model.prompt.mixer.width = 768
  c.model.prompt.mixer.depth = 5
  c.model.prompt.mixer.num_heads = 12

  c.sampling.clip_x0 = False  # latents are not bounded to [-1, 1]

  # ---------------------------------------------------------------- train
  # The paper: AdamW, batch 288, 14k iterations (24 V100s there).
  c.train.batch_size = 288
  # Memory (docs/training.md: "Memory plan", benchmarks/memory_plan.py): on an 8x
  # A100-80GB / H100-80GB node, 288 = 36 grids per device per step, in 6 micro-batches of 6
  # (70.7 GiB per device, estimated, with fsdp over the node and every block rematerialised);
  # 36 at once would need 365 GiB. 24 GPUs: 12 per device, micro-batches of 2.
  c.train.grad_accum_steps = 6
  c.train.num_steps = 14_000
  c.train.learning_rate = 1e-4
  c.train.lr_schedule = "constant"
  c.train.warmup_steps = 500
  c.train.b2 = 0.999
  c.train.ema_decay = 0.9999
  c.train.log_every = 50
  c.train.eval_every = 1000
  c.train.eval_num_grids = 96
  c.train.sample_num_grids = 24
  c.checkpoint.every = 1000
  c.checkpoint.keep_every = 5000
  # Parameters, EMA and Adam moments (15.2 GiB in float32) sharded over every device ('fsdp'
  # fills the mesh: 1.9 GiB per device on 8); the batch is split over every device either way.
  # Several nodes: --config.mesh.data=<nodes> --config.mesh.fsdp=<devices per node> keeps the
  # parameter all-gathers inside a node.
  c.mesh.data = 1
  c.mesh.fsdp = -1
  c.sharding.min_fsdp_size = 2**18
  return c
