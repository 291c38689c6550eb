"""ImageBrush: the prompt encoder and the UNet in one module, and the grid <-> model-input helpers.

The grid is {E_1, E'_1; ...; E_K, E'_K; I, I'}: K+1 rows of two cells, the target I' bottom right.
Two resolutions are kept apart: the pixel tile T (config.data.tile_size), which the prompt encoder
sees, and the diffusion-space tile T // model.latent_factor, the cell size of the grid the UNet
denoises (pixels now, factor 1; a KL autoencoder at f=8 later). All cell geometry lives here.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from imagebrush_jax.models import layers
from imagebrush_jax.models import prompt_encoder as prompt_lib
from imagebrush_jax.models import unet as unet_lib
from imagebrush_jax.models.dihedral import NUM_DIHEDRAL_VIEWS, dihedral_views

TARGET_CELL_FILLS = ("zeros", "query", "query_dihedral")


# ---------------------------------------------------------------------------- grid geometry


def pixels_to_unit(x: jax.Array) -> jax.Array:
  """uint8 pixels [0, 255] -> float32 in [-1, 1] (the diffusion range)."""
  return jnp.asarray(x, jnp.float32) / 127.5 - 1.0


def unit_to_pixels(x: jax.Array) -> jax.Array:
  """float in [-1, 1] -> uint8 pixels, rounded and clipped."""
  return jnp.clip(jnp.round((x + 1.0) * 127.5), 0, 255).astype(jnp.uint8)


def _check_grid(grid: jax.Array, num_examples: int, tile: int, what: str) -> None:
  expected = ((num_examples + 1) * tile, 2 * tile)
  if tuple(grid.shape[1:3]) != expected:
    raise ValueError(f"{what}: grid of shape {tuple(grid.shape)} is not (K+1)*T x 2*T = "
                     f"{expected[0]}x{expected[1]} for K={num_examples}, T={tile}")


def split_cells(grid: jax.Array, num_examples: int, tile: int
                ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """Grid [B, (K+1)T, 2T, C] -> (before, after) [B, K, T, T, C], (query, target) [B, T, T, C]."""
  _check_grid(grid, num_examples, tile, "split_cells")
  b, c = grid.shape[0], grid.shape[-1]
  cells = grid.reshape(b, num_examples + 1, tile, 2, tile, c).transpose(0, 1, 3, 2, 4, 5)
  return cells[:, :-1, 0], cells[:, :-1, 1], cells[:, -1, 0], cells[:, -1, 1]


def target_cell(grid: jax.Array, num_examples: int) -> jax.Array:
  """The bottom-right cell (I') of a grid [B, (K+1)T, 2T, C] -> [B, T, T, C]."""
  tile = grid.shape[2] // 2
  _check_grid(grid, num_examples, tile, "target_cell")
  return grid[:, -tile:, tile:]


def resize_mask(mask: jax.Array, height: int, width: int) -> jax.Array:
  """Block-max downsampling of a [B, H, W, 1] mask to [B, height, width, 1] (integer factors)."""
  b, h, w, c = mask.shape
  if h % height or w % width:
    raise ValueError(f"mask of size {h}x{w} cannot be reduced to {height}x{width}")
  return mask.reshape(b, height, h // height, width, w // width, c).max(axis=(2, 4))


def make_conditioning(x0: jax.Array, mask: jax.Array, target_cell_fill: str) -> jax.Array:
  """The known grid for the UNet: masked cells blanked ('zeros', SD inpainting) or the query's.

  With 'query' the target cell holds the query cell I (its left neighbour), so the UNet starts from
  the image it must edit instead of having to carry it across the grid. 'query_dihedral' also
  stacks the query's 7 other dihedral views (flips, rotations, transposes; zero outside the target
  cell) as extra channels [B, H, W, 8C]: an inductive bias that makes the geometric edits
  (hflip, vflip, rot90) as local as the per-pixel ones, which the UNet then picks per the prompt.
  """
  if target_cell_fill == "zeros":
    return x0 * (1.0 - mask)
  if target_cell_fill in ("query", "query_dihedral"):
    tile = x0.shape[2] // 2
    shifted = jnp.roll(x0, tile, axis=2)  # column x holds column x - T: the query under I'.
    base = x0 * (1.0 - mask) + shifted * mask
    if target_cell_fill == "query":
      return base
  if target_cell_fill == "query_dihedral":
    tile = x0.shape[2] // 2
    views = [jnp.zeros_like(x0).at[:, -tile:, tile:].set(v)
             for v in dihedral_views(x0[:, -tile:, :tile])]
    return jnp.concatenate([base, *views], axis=-1)
  raise ValueError(f"model.target_cell_fill must be one of {TARGET_CELL_FILLS}, "
                   f"got {target_cell_fill!r}")


def conditioning_channels(target_cell_fill: str, channels: int) -> int:
  """Channels of make_conditioning's output for a diffusion space of `channels` channels."""
  return channels * NUM_DIHEDRAL_VIEWS if target_cell_fill == "query_dihedral" else channels


@flax.struct.dataclass
class ModelInputs:
  """Everything the model needs from a batch; arrays, so it passes through jit.

  x0:    [B, H, W, C] the grid in diffusion space (the target cell is the training target).
  cond:  [B, H, W, C'] the known grid with the target cell blanked or filled (make_conditioning;
         C' = 8C for 'query_dihedral', else C).
  mask:  [B, H, W, 1] float32, 1 on the cell to generate, at diffusion resolution.
  before, after: [B, K, T, T, 3] example pixels in [-1, 1]; query: [B, T, T, 3]; box: [B, 4].
  """
  x0: jax.Array
  cond: jax.Array
  mask: jax.Array
  before: jax.Array
  after: jax.Array
  query: jax.Array
  box: jax.Array


def grid_to_model_inputs(batch: Mapping[str, Any], *, num_examples: int, tile_size: int,
                         target_cell_fill: str = "zeros",
                         encode: Callable[[jax.Array], jax.Array] | None = None) -> ModelInputs:
  """Maps a uint8 data batch (grid, mask, box) to ModelInputs.

  `encode` maps the pixel grid in [-1, 1] to diffusion space (default: identity, pixel space);
  the mask is block-max reduced to the encoded grid's resolution. Jittable.
  """
  for key in ("grid", "mask", "box"):
    if key not in batch:
      raise KeyError(f"batch lacks {key!r} (has {sorted(batch)})")
  grid = pixels_to_unit(batch["grid"])
  _check_grid(grid, num_examples, tile_size, "batch['grid']")
  if tuple(batch["mask"].shape[:3]) != tuple(grid.shape[:3]):
    raise ValueError(f"batch['mask'] {tuple(batch['mask'].shape)} does not match batch['grid'] "
                     f"{tuple(grid.shape)}")
  before, after, query, _ = split_cells(grid, num_examples, tile_size)
  x0 = grid if encode is None else encode(grid)
  mask = resize_mask(jnp.asarray(batch["mask"], jnp.float32), x0.shape[1], x0.shape[2])
  return ModelInputs(x0=x0, cond=make_conditioning(x0, mask, target_cell_fill), mask=mask,
                     before=before, after=after, query=query,
                     box=jnp.asarray(batch["box"], jnp.float32))


# ---------------------------------------------------------------------------- the model


class EditProposal(nn.Module):
  """A per-sample linear map of each pixel's conditioning, its weights read from the prompt.

  The mean prompt token gives a [C' + 1, C] matrix (and bias) per sample, applied to every pixel
  of `cond` and kept on the target cell: with 'query_dihedral' conditioning that spans every
  dihedral view of the query followed by any affine colour map, so a global edit recognised by
  the prompt encoder reaches the UNet's input as a ready draft instead of a gating pattern the
  UNet must learn. Local edits still come from the UNet, which may ignore the draft.
  """
  out_channels: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, cond: jax.Array, mask: jax.Array, context: jax.Array) -> jax.Array:
    b, c = cond.shape[0], cond.shape[-1]
    weights = nn.Dense(self.out_channels * (c + 1), param_dtype=jnp.float32,
                       name="weights")(context.mean(axis=1).astype(jnp.float32))
    weights = weights.reshape(b, c + 1, self.out_channels)
    draft = jnp.einsum("bhwc,bco->bhwo", cond.astype(jnp.float32), weights[:, :c])
    return ((draft + weights[:, c][:, None, None]) * mask).astype(self.dtype)


class ImageBrush(nn.Module):
  """Exemplar-based editing denoiser: UNet([x_t, cond, mask], t, PromptEncoder(E, E', I, box)).

  The prompt does not depend on the timestep, so samplers call `encode_prompt` once and
  `denoise` at every step; `__call__` chains the two (training). With `edit_proposal` the UNet
  also reads EditProposal's draft of the target cell as extra input channels.
  """
  unet: unet_lib.UNet
  prompt_encoder: prompt_lib.PromptEncoder
  edit_proposal: EditProposal | None = None

  def encode_prompt(self, before: jax.Array, after: jax.Array, query: jax.Array,
                    box: jax.Array, drop_prompt: jax.Array | None = None,
                    train: bool = False) -> jax.Array:
    """Prompt tokens [B, L, D] from pixels in [-1, 1]; `drop_prompt` rows get the null tokens."""
    return self.prompt_encoder(before, after, query, box, drop_prompt, deterministic=not train)

  def null_context(self, context: jax.Array) -> jax.Array:
    """The unconditional prompt, shaped like `context` (classifier-free guidance)."""
    return self.prompt_encoder.null_tokens(context.shape[0], context.shape[1]).astype(
        context.dtype)

  def denoise(self, x_t: jax.Array, timesteps: jax.Array, cond: jax.Array, mask: jax.Array,
              context: jax.Array, train: bool = False) -> jax.Array:
    """The UNet on [x_t, cond, mask] (channel concat) -> prediction [B, H, W, C], float32."""
    inputs = [x_t, cond]
    if self.edit_proposal is not None:
      inputs.append(self.edit_proposal(cond, mask, context).astype(x_t.dtype))
    x = jnp.concatenate([*inputs, mask.astype(x_t.dtype)], axis=-1)
    return self.unet(x, timesteps, context, deterministic=not train).astype(jnp.float32)

  def __call__(self, x_t: jax.Array, timesteps: jax.Array, cond: jax.Array, mask: jax.Array,
               before: jax.Array, after: jax.Array, query: jax.Array, box: jax.Array,
               drop_prompt: jax.Array | None = None, *, train: bool = False) -> jax.Array:
    """Predicts the noise (or v) of the whole grid.

    Args:
      x_t: [B, H, W, C] noisy grid in diffusion space.
      timesteps: [B] int32 diffusion steps.
      cond: [B, H, W, C'] known grid, target cell blanked or filled (make_conditioning).
      mask: [B, H, W, 1] 1 on the cell to generate, at diffusion resolution.
      before, after: [B, K, T, T, 3] example pixels in [-1, 1]; query: [B, T, T, 3] pixels.
      box: [B, 4] normalised [x0, y0, x1, y1] in the query tile; [0, 0, 1, 1] = whole image.
      drop_prompt: [B] bool; True replaces the prompt by the null tokens (CFG).
      train: enables dropout and box dropping (needs the 'dropout' rng).
    Returns:
      [B, H, W, C] float32 prediction (epsilon or v, per config.diffusion.prediction_type).
    """
    context = self.encode_prompt(before, after, query, box, drop_prompt, train)
    return self.denoise(x_t, timesteps, cond, mask, context, train)


def check_sizes(config: ml_collections.ConfigDict) -> None:
  """Refuses tile, latent, patch and UNet-level sizes that do not divide, naming the keys."""
  m, tile = config.model, int(config.data.tile_size)
  factor = int(m.latent_factor)
  if factor < 1 or tile % factor:
    raise ValueError(f"config.data.tile_size = {tile} is not divisible by "
                     f"config.model.latent_factor = {factor}")
  prompt_size = int(m.prompt.image_size) or tile
  patch = int(m.prompt.vit.patch_size)
  if patch < 1 or prompt_size % patch:
    key = "config.model.prompt.image_size" if m.prompt.image_size else "config.data.tile_size"
    raise ValueError(f"{key} = {prompt_size} (the prompt encoder's image size) is not divisible "
                     f"by config.model.prompt.vit.patch_size = {patch}")
  levels = len(m.unet.channels)
  step = 2 ** (levels - 1)
  if (tile // factor) % step:
    raise ValueError(f"config.data.tile_size = {tile} gives {tile // factor}-cell tiles in "
                     f"diffusion space, not divisible by {step}, the downsampling of the "
                     f"{levels} levels of config.model.unet.channels")


def build_model(config: ml_collections.ConfigDict) -> ImageBrush:
  """ImageBrush from `config.model`."""
  check_sizes(config)
  m = config.model
  if m.target_cell_fill not in TARGET_CELL_FILLS:
    raise ValueError(f"model.target_cell_fill must be one of {TARGET_CELL_FILLS}, "
                     f"got {m.target_cell_fill!r}")
  if m.get("edit_proposal", False) and m.target_cell_fill == "zeros":
    raise ValueError("model.edit_proposal maps the query in the target cell's conditioning: it "
                     "needs model.target_cell_fill 'query' or 'query_dihedral', not 'zeros'")
  return ImageBrush(
      unet=unet_lib.unet_from_config(m.unet, m.in_channels, m.dtype, m.remat, m.remat_policy),
      prompt_encoder=prompt_lib.prompt_encoder_from_config(
          m.prompt, m.dtype, m.remat, m.remat_policy, m.box_drop_rate),
      edit_proposal=(EditProposal(m.in_channels, layers.resolve_dtype(m.dtype))
                     if m.get("edit_proposal", False) else None))


def dummy_inputs(config: ml_collections.ConfigDict, batch_size: int = 1) -> dict[str, jax.Array]:
  """Zero arguments of ImageBrush.__call__ at the shapes the config implies (init, eval_shape)."""
  k, tile = config.data.num_examples, config.data.tile_size
  if tile % config.model.latent_factor:
    raise ValueError(f"data.tile_size={tile} is not divisible by "
                     f"model.latent_factor={config.model.latent_factor}")
  t = tile // config.model.latent_factor
  c = config.model.in_channels
  grid = jnp.zeros((batch_size, (k + 1) * t, 2 * t, c), jnp.float32)
  cond = jnp.zeros((*grid.shape[:3], conditioning_channels(config.model.target_cell_fill, c)),
                   jnp.float32)
  return dict(
      x_t=grid, timesteps=jnp.zeros((batch_size,), jnp.int32), cond=cond,
      mask=jnp.zeros((*grid.shape[:3], 1), jnp.float32),
      before=jnp.zeros((batch_size, k, tile, tile, 3), jnp.float32),
      after=jnp.zeros((batch_size, k, tile, tile, 3), jnp.float32),
      query=jnp.zeros((batch_size, tile, tile, 3), jnp.float32),
      box=jnp.tile(jnp.asarray(prompt_lib.WHOLE_IMAGE_BOX), (batch_size, 1)),
      drop_prompt=jnp.zeros((batch_size,), bool))


def init_params(model: ImageBrush, config: ml_collections.ConfigDict,
                rng: jax.Array) -> dict[str, Any]:
  """Initialises the 'params' collection (float32) for the shapes in `config`.

  The initializers draw from an 'unsafe_rbg' key derived from `rng` (XLA's RngBitGenerator):
  deterministic per key, and one cheap kernel per parameter shape where threefry compiles a large
  one (init then compiles ~3x faster on CPU). Called with a concrete key on CPU, the init is also
  compiled at backend optimisation level 0: it runs once, its compile time is what counts.
  Traceable, so it can run inside a jitted, sharded state initialisation.
  """

  def init(key):
    bits = jax.random.bits(key, (4,), jnp.uint32)
    init_key = jax.random.wrap_key_data(bits, impl="unsafe_rbg")
    return model.init({"params": init_key}, **dummy_inputs(config))["params"]

  if isinstance(rng, jax.core.Tracer) or jax.default_backend() != "cpu":
    return init(rng)
  return jax.jit(init).lower(rng).compile({"xla_backend_optimization_level": 0})(rng)


def param_shapes(model: ImageBrush, config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The 'params' tree as ShapeDtypeStructs, without allocating (jax.eval_shape)."""
  return jax.eval_shape(
      lambda: model.init({"params": jax.random.key(0)}, **dummy_inputs(config)))["params"]
