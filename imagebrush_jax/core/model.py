"""The ImageBrush denoiser: UNet([x_t, known grid, mask], t, PromptEncoder(E, E', I, box)).

The grid is {E_1, E'_1; ...; E_K, E'_K; I, I'}: K+1 rows of two cells, the target I' bottom right
(core/grid.py). The UNet inpaints the target cell of the noisy grid; it reads the known grid
with the target cell zeroed and the mask as extra input channels (SD inpainting), and the visual
prompt through cross-attention. config.model.target_cell_fill = 'query' puts I under the target
cell instead (QueryInTarget), as InstructPix2Pix concatenates its input image. Two resolutions
are kept apart: the pixel tile T, which the prompt encoder sees, and the diffusion-space tile
T // latent_factor, the cell size the UNet denoises.

Extension points (imagebrush_jax/core/plugins plugs into them; the paper uses none):
  Plugins.conditioning  how the known grid is conditioned, and how many channels that gives
                        (None: config.model.target_cell_fill's);
  Plugins.extra_tokens  more prompt tokens (PromptEncoder.extra_tokens);
  Plugins.extra_inputs  more UNet input channels, from (cond, mask, prompt tokens).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Protocol

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from imagebrush_jax.core import grid as grid_lib
from imagebrush_jax.models import prompt_encoder as prompt_lib


class Conditioning(Protocol):
  """How the known grid enters the UNet: (x0, mask) -> cond [B, H, W, channels(C)]."""

  def __call__(self, x0: jax.Array, mask: jax.Array) -> jax.Array:
    ...

  def channels(self, channels: int) -> int:
    ...


@dataclasses.dataclass(frozen=True)
class BlankTarget:
  """The paper's conditioning (SD inpainting): the known grid with the target cell zeroed."""

  def __call__(self, x0: jax.Array, mask: jax.Array) -> jax.Array:
    return x0 * (1.0 - mask)

  def channels(self, channels: int) -> int:
    return channels


@dataclasses.dataclass(frozen=True)
class QueryInTarget:
  """The known grid with the query I under the target cell (InstructPix2Pix's conditioning on
  its input image): the UNet starts from the image it edits, and copying what stays is free."""

  def __call__(self, x0: jax.Array, mask: jax.Array) -> jax.Array:
    return x0 * (1.0 - mask) + grid_lib.query_under_target(x0) * mask

  def channels(self, channels: int) -> int:
    return channels


TARGET_CELL_FILLS = {"zeros": BlankTarget, "query": QueryInTarget}


@dataclasses.dataclass(frozen=True)
class Plugins:
  """What a variant plugs into the core model (see the module docstring)."""
  conditioning: Conditioning | None = None
  extra_tokens: nn.Module | None = None
  extra_inputs: nn.Module | None = None


@flax.struct.dataclass
class ModelInputs:
  """Everything the model needs from a batch; arrays, so it passes through jit.

  x0:    [B, H, W, C] the grid in diffusion space (the target cell is the training target).
  cond:  [B, H, W, C'] the known grid as the model's Conditioning makes it.
  mask:  [B, H, W, 1] float32, 1 on the cell to generate, at diffusion resolution.
  before, after: [B, K, T, T, 3] example pixels in [-1, 1]; query: [B, T, T, 3]; box: [B, 4].
  task_id: [B] int32 where the batch has it (read only by the diagnostic task oracle), else None.
  """
  x0: jax.Array
  cond: jax.Array
  mask: jax.Array
  before: jax.Array
  after: jax.Array
  query: jax.Array
  box: jax.Array
  task_id: jax.Array | None = None


def grid_to_model_inputs(batch: Mapping[str, Any], *, num_examples: int, tile_size: int,
                         conditioning: Conditioning = BlankTarget(),
                         encode: Callable[[jax.Array], jax.Array] | None = None) -> ModelInputs:
  """Maps a uint8 data batch (grid, mask, box) to ModelInputs.

  `encode` maps the pixel grid in [-1, 1] to diffusion space (default: identity, pixel space);
  the mask is block-max reduced to the encoded grid's resolution. Jittable.
  """
  for key in ("grid", "mask", "box"):
    if key not in batch:
      raise KeyError(f"batch lacks {key!r} (has {sorted(batch)})")
  grid = grid_lib.pixels_to_unit(jnp.asarray(batch["grid"]))
  grid_lib.check_grid(grid, num_examples, tile_size, "batch['grid']")
  if tuple(batch["mask"].shape[:3]) != tuple(grid.shape[:3]):
    raise ValueError(f"batch['mask'] {tuple(batch['mask'].shape)} does not match batch['grid'] "
                     f"{tuple(grid.shape)}")
  before, after, query, _ = grid_lib.split_cells(grid, num_examples, tile_size)
  x0 = grid if encode is None else encode(grid)
  mask = grid_lib.resize_mask(jnp.asarray(batch["mask"], jnp.float32), x0.shape[1], x0.shape[2])
  task_id = batch.get("task_id")
  return ModelInputs(x0=x0, cond=conditioning(x0, mask), mask=mask, before=before, after=after,
                     query=query, box=jnp.asarray(batch["box"], jnp.float32),
                     task_id=None if task_id is None else jnp.asarray(task_id, jnp.int32))


class ImageBrush(nn.Module):
  """Exemplar-based editing denoiser: UNet([x_t, cond, mask], t, PromptEncoder(E, E', I, box)).

  The prompt does not depend on the timestep, so samplers call `encode_prompt` once and
  `denoise` at every step; `__call__` chains the two (training). `conditioning` makes `cond`
  from the grid (grid_to_model_inputs); `extra_inputs`, if set, adds UNet input channels.
  """
  unet: nn.Module  # the denoiser: unet.UNet, or dit.DiT (model.backbone); "unet" in params
  prompt_encoder: prompt_lib.PromptEncoder
  conditioning: Conditioning = BlankTarget()
  extra_inputs: nn.Module | None = None

  def encode_prompt(self, before: jax.Array, after: jax.Array, query: jax.Array,
                    box: jax.Array, drop_prompt: jax.Array | None = None,
                    train: bool = False, task_id: jax.Array | None = None) -> jax.Array:
    """Prompt tokens [B, L, D] from pixels in [-1, 1]; `drop_prompt` rows get the null tokens.
    `task_id` is read only by the diagnostic task oracle."""
    return self.prompt_encoder(before, after, query, box, drop_prompt, deterministic=not train,
                               task_id=task_id)

  def null_context(self, context: jax.Array) -> jax.Array:
    """The unconditional prompt, shaped like `context` (classifier-free guidance)."""
    return self.prompt_encoder.null_tokens(context.shape[0], context.shape[1]).astype(
        context.dtype)

  def denoise(self, x_t: jax.Array, timesteps: jax.Array, cond: jax.Array, mask: jax.Array,
              context: jax.Array, train: bool = False) -> jax.Array:
    """The UNet on [x_t, cond, (extra inputs), mask] (channel concat) -> [B, H, W, C] float32."""
    inputs = [x_t, cond]
    if self.extra_inputs is not None:
      inputs.append(self.extra_inputs(cond, mask, context).astype(x_t.dtype))
    x = jnp.concatenate([*inputs, mask.astype(x_t.dtype)], axis=-1)
    return self.unet(x, timesteps, context, deterministic=not train).astype(jnp.float32)

  def __call__(self, x_t: jax.Array, timesteps: jax.Array, cond: jax.Array, mask: jax.Array,
               before: jax.Array, after: jax.Array, query: jax.Array, box: jax.Array,
               drop_prompt: jax.Array | None = None, *, train: bool = False,
               task_id: jax.Array | None = None) -> jax.Array:
    """Predicts the noise (or v) of the whole grid.

    Args:
      x_t: [B, H, W, C] noisy grid in diffusion space.
      timesteps: [B] int32 diffusion steps.
      cond: [B, H, W, C'] the known grid (grid_to_model_inputs with this model's conditioning).
      mask: [B, H, W, 1] 1 on the cell to generate, at diffusion resolution.
      before, after: [B, K, T, T, 3] example pixels in [-1, 1]; query: [B, T, T, 3] pixels.
      box: [B, 4] normalised [x0, y0, x1, y1] in the query tile; [0, 0, 1, 1] = whole image.
      drop_prompt: [B] bool; True replaces the prompt by the null tokens (CFG).
      train: enables dropout and box dropping (needs the 'dropout' rng).
      task_id: [B] int32, read only by the diagnostic task oracle.
    Returns:
      [B, H, W, C] float32 prediction (epsilon, v or x0, per config.diffusion.prediction_type).
    """
    context = self.encode_prompt(before, after, query, box, drop_prompt, train, task_id)
    return self.denoise(x_t, timesteps, cond, mask, context, train)
