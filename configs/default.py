"""The base config: the paper's ImageBrush (Sun et al. 2023) at CPU scale, on the synthetic tasks.

Every knob of a run lives here; the other configs are variants that change a few fields
(paper_256: the paper's sizes in SD's latent space; cpu_demo: the demo's plug-ins; tiny_test,
latent_tiny). Override any knob on the command line, e.g.
  python -m imagebrush_jax.train --config configs/default.py --config.train.batch_size=64
"""
import ml_collections

GLOBAL_TASKS = ("hflip", "vflip", "rot90", "invert", "grayscale", "swap_red_blue")


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0

  # ---------------------------------------------------------------- data
  c.data = ml_collections.ConfigDict()
  c.data.source = "synthetic"  # synthetic | folder | tfds
  c.data.tile_size = 16  # pixels per grid cell (before any latent encoding)
  c.data.num_examples = 1  # K example rows in the grid; K=1 is the paper's 2x2 grid
  c.data.train_tasks = GLOBAL_TASKS  # names from `python -m imagebrush_jax.tasks --list`
  # Never trained on; evaluated to measure generalisation (here: unseen compositions 'a+b').
  c.data.heldout_tasks = ("hflip+invert", "vflip+grayscale")
  # Source-specific options, one sub-dict per source.
  c.data.synthetic = ml_collections.ConfigDict()  # the built-in scenes (and their TFDS config)
  c.data.synthetic.num_objects = (1, 4)  # objects per scene, inclusive range
  c.data.synthetic.object_size = (0.2, 0.5)  # object width as a fraction of the tile, (min, max)
  c.data.synthetic.largest_margin = 1.25  # the largest object (of object tasks) is this much wider
  c.data.synthetic.shapes = ("circle", "square", "triangle", "diamond", "cross", "ell")
  c.data.synthetic.backgrounds = ("plain", "stripes", "checker", "gradient", "noise")
  c.data.synthetic.hollow_prob = 0.25  # chance that an object is drawn as an outline
  c.data.synthetic.stroke_width = 0.08  # outline width, fraction of the tile (>= one pixel)
  # Folder source: ROOT/<task>/<pair_id>_before.<ext>, <pair_id>_after.<ext>, boxes.json.
  c.data.folder = ml_collections.ConfigDict()
  c.data.folder.root = ""
  c.data.folder.check_images = True  # open every image header when the folder is indexed
  # TFDS source: a data set folder written by `python -m imagebrush_jax.build_data` (array_record
  # shards; its train and heldout splits). Empty train_tasks / heldout_tasks take its tasks.
  c.data.tfds = ml_collections.ConfigDict()
  c.data.tfds.dir = ""
  # Several built data sets at once: ((folder, weight), ...), with source tfds and tfds.dir "".
  # Training grids come from each in proportion to its weight (grain's mixing).
  c.data.mixture = ()
  # Train from the posterior moments `build_data --autoencoder` cached beside the pixels (the
  # frozen encoder then runs once per pair, not in every step); docs/data.md: "Cached latents".
  c.data.cached_latents = False
  # Folder / TFDS pairs held out for evaluation, per task, by a hash of task/pair_id (at least
  # num_examples + 1 per task; never trained on). 0: evaluate on training pairs. Synthetic
  # evaluation draws fresh scenes from another seed instead.
  c.data.eval_fraction = 0.1
  # Decode and augment (the same crop and flip for every cell of a grid).
  c.data.resize_method = "bilinear"  # folder / TFDS images: nearest|bilinear|bicubic|lanczos|box
  c.data.crop_scale = 1.125  # render / resize to this x tile_size, crop a tile; 1.0 = no crop
  c.data.flip_prob = 0.5  # left-right flip, only for tasks that keep their meaning when flipped
  # Chance a training grid keeps its task box (else the whole tile). 1.0: the model drops boxes
  # itself (config.model.box_drop_rate); lower it to drop boxes in the data as well.
  c.data.box_prob = 1.0
  # Loader (per host).
  c.data.num_workers = 1  # grain worker processes; 0 = in the main process
  c.data.prefetch_buffer = 4  # batches buffered per worker
  c.data.read_threads = 1  # threads per process computing batches
  c.data.eval_batch_size = 32  # grids per batch from make_eval_batches

  # ---------------------------------------------------------------- model
  # The paper's model: the UNet inpaints the zeroed target cell of the grid, reading the prompt
  # tokens (ViT over E, E', I + box token, mixed by a bidirectional transformer) through
  # cross-attention. Sizes here are the CPU scale; configs/paper_256.py has the paper's.
  c.model = ml_collections.ConfigDict()
  c.model.in_channels = 3  # diffusion-space channels: 3 = pixels; 4 = an f=8 KL latent
  c.model.latent_factor = 1  # pixels per diffusion-space cell side: 1 = pixel space, 8 = KL latent
  c.model.cfg_drop_rate = 0.05  # prompt -> null tokens in training (classifier-free guidance)
  c.model.box_drop_rate = 0.1  # box -> whole image in training
  # What the UNet's conditioning holds in the target cell: "zeros" (the paper's, SD inpainting)
  # or "query" (I itself, as InstructPix2Pix conditions on its input image).
  c.model.target_cell_fill = "zeros"
  # Plug-ins beside the paper's model (imagebrush_jax/core/plugins): "" = none, or "cpu_demo" with
  # its options in variant_options (configs/cpu_demo.py).
  c.model.variant = ""
  c.model.variant_options = ml_collections.ConfigDict()
  # Diagnostic only, never for a model meant to edit: the true task's id as a prompt token, to
  # measure what the editing network learns when reading the examples costs nothing
  # (benchmarks/ladder.py --oracle).
  c.model.task_oracle = False
  # Runtime: how the model runs, not what it computes.
  c.model.dtype = "float32"  # compute dtype: float32 | bfloat16 (parameters stay float32)
  c.model.remat = False  # rematerialise each UNet/transformer block in the backward pass
  c.model.remat_policy = ""  # a jax.checkpoint_policies name; "" saves nothing
  c.model.attention_impl = "auto"  # auto (cuDNN on GPU in bf16, else einsum) | einsum | xla
  c.model.conv_impl = "auto"  # auto (matmul kernel gradient on CPU, else xla) | xla

  # UNet(**model.unet): per level attention none | self | cross | self+cross (the up path
  # mirrors it). The paper: self-attention in the outer level, cross-attention to the prompt in
  # the middle ones (configs/paper_256.py). On 2 CPU cores at batch 32 the outer level's
  # self-attention (1024 tokens) takes a train step from 2.2 s to 3.9 s, so at this scale the
  # UNet attends from the 16x16 level down.
  c.model.unet = ml_collections.ConfigDict()
  c.model.unet.channels = (32, 64, 64)  # one entry per level
  c.model.unet.attention = ("none", "self+cross", "self+cross")
  c.model.unet.mid_attention = "self+cross"
  c.model.unet.num_res_blocks = 1  # ResBlocks per down level (up levels get one more)
  c.model.unet.num_heads = 4
  c.model.unet.head_dim = 0  # > 0: heads = channels // head_dim per level, overriding num_heads
  c.model.unet.transformer_depth = 1
  c.model.unet.norm_groups = 32
  c.model.unet.dropout = 0.0
  # Attention tokens know their place in the grid (position in the cell, the cell's row and
  # column), so "the same place in E, E' and I" is one lookup; SD's UNet has no positions.
  c.model.unet.grid_positions = False
  # The prompt attention-pooled into the timestep embedding: every ResBlock sees the prompt.
  c.model.unet.pooled_prompt = False
  # The denoiser: "unet" (the paper's, model.unet) or "dit", a diffusion transformer over
  # patches of the grid that attends jointly to the prompt (models/dit.py; DiT(**model.dit)).
  c.model.backbone = "unet"
  c.model.dit = ml_collections.ConfigDict()
  c.model.dit.patch_size = 2  # diffusion-space cells per patch side (must divide the tile)
  c.model.dit.width = 128
  c.model.dit.depth = 4
  c.model.dit.num_heads = 4
  c.model.dit.mlp_ratio = 4
  c.model.dit.dropout = 0.0
  # A learned attention bias per (query place, key place) pair in every block, gained per head by
  # the prompt: fixed spatial maps (flips, rotations) are one table entry away.
  c.model.dit.position_bias = False
  # A converted UNet to start from (python -m imagebrush_jax.convert --from sd_unet): its
  # architecture must be model.unet's, its cross-attention width model.prompt.mixer.width; the
  # input convolution is widened with zeros for the known grid and mask. "" = random.
  c.model.unet_init = ""

  c.model.prompt = ml_collections.ConfigDict()
  c.model.prompt.image_size = 0  # resize prompt tiles to this before the ViT; 0 = tile size
  c.model.prompt.max_examples = 8  # size of the example-index embedding
  c.model.prompt.box_fourier_freqs = 8
  c.model.prompt.dropout = 0.0
  c.model.prompt.pair_difference = False  # the ViT also reads each pair's change E' - E
  c.model.prompt.vit_init = ""  # a converted ViT (python -m imagebrush_jax.convert --from vit)
  c.model.prompt.vit = ml_collections.ConfigDict()  # ViT(**prompt.vit): shared by E, E' and I
  c.model.prompt.vit.patch_size = 4
  c.model.prompt.vit.width = 128
  c.model.prompt.vit.depth = 2
  c.model.prompt.vit.num_heads = 4
  c.model.prompt.vit.mlp_ratio = 4
  c.model.prompt.mixer = ml_collections.ConfigDict()  # bidirectional transformer over all tokens
  c.model.prompt.mixer.width = 128  # = the UNet's cross-attention context width
  c.model.prompt.mixer.depth = 2
  c.model.prompt.mixer.num_heads = 4
  c.model.prompt.mixer.mlp_ratio = 4

  # ---------------------------------------------------------------- diffusion + sampling
  c.diffusion = ml_collections.ConfigDict()
  c.diffusion.schedule = "scaled_linear"  # linear | scaled_linear (SD's) | cosine
  c.diffusion.num_timesteps = 1000
  c.diffusion.beta_start = 0.00085  # linear / scaled_linear only
  c.diffusion.beta_end = 0.012
  c.diffusion.prediction_type = "epsilon"  # epsilon | v | sample (x0)
  # Loss weight of the known cells (the target cell has 1); 0: all capacity on the edit.
  c.diffusion.known_cell_weight = 0.1
  # Extra loss weight of the target pixels that differ from the query by more than the
  # threshold (diffusion-space units), the cell's mean weight kept at 1; 0 = uniform.
  c.diffusion.edit_region_weight = 0.0
  c.diffusion.edit_region_threshold = 0.1
  # Diffuse the target cell as I' - I, its residual to the query (what stays is zero), and add
  # I back after sampling; else I' itself.
  c.diffusion.residual_target = False
  # Training timesteps: uniform, or logit_normal (t/T = sigmoid(N(mean, std)); mean > 0 favours
  # the noisier steps, where a deterministic edit is decided). min_snr_gamma > 0 weighs each
  # step by min(SNR, gamma) against its SNR (Min-SNR weighting); 0 weighs all alike.
  c.diffusion.timestep_sampling = "uniform"
  c.diffusion.timestep_logit_mean = 0.0
  c.diffusion.timestep_logit_std = 1.0
  c.diffusion.min_snr_gamma = 0.0

  c.sampling = ml_collections.ConfigDict()
  c.sampling.num_steps = 50  # DDIM steps
  c.sampling.guidance_scale = 7.5  # classifier-free guidance on the prompt; 1.0 = none
  c.sampling.eta = 0.0  # 0 = deterministic DDIM; 1 = ancestral noise
  c.sampling.spacing = "leading"  # leading (SD's DDIM) | trailing | linspace
  c.sampling.clip_x0 = True  # clip predicted x0 to [-1, 1] (pixel space; off for latents)

  # ---------------------------------------------------------------- training
  c.train = ml_collections.ConfigDict()
  c.train.batch_size = 32  # global batch, over all hosts and devices
  c.train.num_steps = 250  # length of the LR schedule and of the run
  c.train.stop_at_step = -1  # stop early at this step (keeps the schedule); -1: num_steps
  c.train.learning_rate = 1e-3
  c.train.lr_schedule = "cosine"  # cosine | constant (both after linear warmup)
  c.train.warmup_steps = 50
  c.train.end_lr_fraction = 0.05  # cosine ends at this fraction of learning_rate
  c.train.weight_decay = 0.01  # AdamW, on kernels only
  c.train.b1 = 0.9
  c.train.b2 = 0.99
  c.train.eps = 1e-8
  c.train.grad_clip_norm = 1.0  # global-norm clipping; 0 disables
  c.train.grad_accum_steps = 1  # micro-batches per step (batch_size must divide by it)
  c.train.ema_decay = 0.999  # EMA of the parameters, used for sampling and evaluation
  c.train.ema_warmup = True  # decay = min(ema_decay, (1 + step) / (10 + step))
  c.train.log_every = 10
  # Multi-host runs agree on a SIGTERM (one collective) every this many steps and at every
  # checkpoint step; a single process stops at the next step boundary.
  c.train.stop_check_every = 10
  c.train.eval_every = 25  # held-out loss, samples (PNG + TensorBoard), accuracy and PSNR
  c.train.eval_at_end = True  # also evaluate after the last step
  c.train.eval_num_grids = 32
  c.train.sample_num_grids = 8
  # Fresh grids of the training tasks sampled at each eval for task-identification accuracy and
  # PSNR (WORKDIR/eval_metrics.jsonl); 0 disables. Sampled with config.sampling.
  c.train.accuracy_num_grids = 48
  c.train.profile_steps = ()  # (start, stop): jax.profiler trace into WORKDIR/profile

  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.every = 100  # steps between checkpoints (also at the end and on SIGTERM)
  c.checkpoint.keep = 3  # the last N are kept ...
  c.checkpoint.keep_every = 0  # ... plus every step divisible by this (0: none)
  c.checkpoint.async_save = True
  # Resume from this step instead of the latest (e.g. past a damaged checkpoint); newer
  # checkpoints are moved to WORKDIR/checkpoints_set_aside. For one start only: every start
  # with it goes back to that step. -1: the latest.
  c.checkpoint.restore_step = -1

  # Mesh ('data', 'fsdp'): -1 fills an axis with the remaining devices.
  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1
  c.mesh.fsdp = 1
  # Parameter sharding: (regex on the '/'-joined param path, 'fsdp' | 'replicate'); the first
  # match wins; unmatched arrays use 'fsdp' (largest dim divisible by the fsdp axis size)
  # when they hold at least min_fsdp_size elements, else they are replicated.
  c.sharding = ml_collections.ConfigDict()
  c.sharding.rules = ()
  c.sharding.min_fsdp_size = 2**14
  return c
