"""A diffusion transformer over patches of the grid, the alternative backbone to the UNet
(config.model.backbone = 'dit'): the interface of models/unet.UNet, x [B,H,W,Cin], timesteps [B],
prompt tokens [B,L,D] -> [B,H,W,out_channels].

Layout (DiT, Peebles & Xie 2023, with the prompt read as VisualCloze's Flux-Fill reads its
in-context grid): the grid is cut into p x p patches; each patch token gets a fixed 2D sin-cos
embedding of its place and the learned layers.GridPositions (its place in its cell, the cell's
row and column); every block modulates its norms by adaLN-zero from the timestep embedding plus
the attention-pooled prompt, and attends jointly over [patch tokens; prompt tokens] (one softmax:
the same place in E, E' and I and the example tokens are all one attention away); the output
layer starts at zero, so the network starts by predicting zero, as the UNet does.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from imagebrush_jax.models import layers
from imagebrush_jax.models import runtime as runtime_lib


def sincos_2d(height: int, width: int, dim: int) -> np.ndarray:
  """[height * width, dim] fixed 2D sin-cos position embedding (MAE's): half the channels for
  the row, half for the column."""
  if dim % 4:
    raise ValueError(f"2D sin-cos embedding width must divide by 4, got {dim}")
  quarter = dim // 4
  omega = 1.0 / 10000 ** (np.arange(quarter, dtype=np.float64) / quarter)
  y, x = np.meshgrid(np.arange(height, dtype=np.float64), np.arange(width, dtype=np.float64),
                     indexing="ij")
  parts = []
  for pos in (y.reshape(-1), x.reshape(-1)):
    args = pos[:, None] * omega[None]
    parts += [np.sin(args), np.cos(args)]
  return np.concatenate(parts, axis=1).astype(np.float32)


POSITION_BIAS_SCALE = 50.0  # the bias tables are this x their parameters: they learn this much faster


def grid_token_places(height: int, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """For the row-major tokens of a [(K+1)t, 2t] grid map: (row inside its cell, column inside
  its cell, both in [0, t), cell index row-major in [0, 2(K+1)))."""
  t = width // 2
  if width % 2 or height % t:
    raise ValueError(f"a {height}x{width} token map is no grid of square cells two wide")
  y, x = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
  cell = (y // t) * 2 + x // t
  return (y % t).reshape(-1), (x % t).reshape(-1), cell.reshape(-1)


class PositionPairBias(nn.Module):
  """A learned attention bias per head for each (query place, key place) pair of grid tokens,
  gained per head by the conditioning (1 + a zero-initialised projection); prompt tokens get none.

  The bias of a pair is a sum of small tables: one per (query axis, key axis) of the places
  inside the cells (row-row, row-column, column-row, column-column, each t x t) and one over
  (query cell, key cell). A flip, a quarter turn, a shift or a scaling maps each axis of the
  key's place from one axis of the query's, so such a fixed spatial map is two table rows a
  head, learned from every token that shares them in a few hundred steps, and the prompt turns
  it on or off (a Synthesizer-style fixed attention map, Tay et al. 2021, beside content
  attention, factored by axis). Tables start at zero: the block starts as plain attention.
  """
  num_heads: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, cond: jax.Array, height: int, width: int, num_prompt: int) -> jax.Array:
    """cond [B, D] -> bias [B, heads, N, N + num_prompt] for N = height * width tokens."""
    row, col, cell = grid_token_places(height, width)
    t = width // 2
    max_cells = 2 * layers.MAX_GRID_ROWS
    if cell.max() >= max_cells:
      raise ValueError(f"{height}x{width} tokens make more than {max_cells} cells")
    axes = self.param("axes", nn.initializers.zeros, (self.num_heads, 2, 2, t, t), jnp.float32)
    cells = self.param("cells", nn.initializers.zeros, (self.num_heads, max_cells, max_cells),
                       jnp.float32)
    places = (row, col)
    table = cells[:, cell[:, None], cell[None, :]]
    for a in range(2):
      for b in range(2):
        table = table + axes[:, a, b][:, places[a][:, None], places[b][None, :]]
    table = table * POSITION_BIAS_SCALE
    gain = 1.0 + nn.Dense(self.num_heads, dtype=self.dtype, param_dtype=jnp.float32,
                          kernel_init=nn.initializers.zeros, name="gain")(nn.silu(cond))
    bias = gain.astype(jnp.float32)[:, :, None, None] * table[None]
    return jnp.pad(bias, ((0, 0), (0, 0), (0, 0), (0, num_prompt))).astype(self.dtype)


def _modulate(x: jax.Array, shift: jax.Array, scale: jax.Array) -> jax.Array:
  return x * (1.0 + scale[:, None]) + shift[:, None]


class DiTBlock(nn.Module):
  """adaLN-zero transformer block: x + gate * Attn(mod(LN x) over [x; prompt]), then the MLP."""
  num_heads: int
  mlp_ratio: int = 4
  dropout: float = 0.0
  position_bias: bool = False
  runtime: runtime_lib.Runtime = runtime_lib.Runtime()

  @nn.compact
  def __call__(self, x: jax.Array, cond: jax.Array, prompt: jax.Array,
               grid_hw: tuple[int, int] | None = None,
               deterministic: bool = True) -> jax.Array:
    """x [B, N, D] grid tokens (row-major over grid_hw = (rows, columns) of tokens)."""
    width, dtype = x.shape[-1], self.runtime.dtype
    if width % self.num_heads:
      raise ValueError(f"DiT width {width} is not divisible by {self.num_heads} heads")
    mod = nn.Dense(6 * width, dtype=dtype, param_dtype=jnp.float32,
                   kernel_init=nn.initializers.zeros, name="adaln")(nn.silu(cond))
    shift1, scale1, gate1, shift2, scale2, gate2 = jnp.split(mod, 6, axis=-1)
    norm = lambda name: nn.LayerNorm(epsilon=1e-6, use_scale=False, use_bias=False, dtype=dtype,
                                     name=name)
    h = _modulate(norm("norm1")(x), shift1, scale1)
    joint = jnp.concatenate([h, prompt.astype(dtype)], axis=1)
    bias = None
    if self.position_bias:
      bias = PositionPairBias(self.num_heads, dtype, name="position_bias")(
          cond, *grid_hw, prompt.shape[1])
    h = layers.Attention(self.num_heads, width // self.num_heads,
                         implementation=self.runtime.attention_impl, dtype=dtype,
                         name="attn")(h, joint, bias)
    x = x + gate1[:, None] * h
    h = _modulate(norm("norm2")(x), shift2, scale2)
    h = layers.FeedForward(self.mlp_ratio, "gelu", self.dropout, dtype, name="mlp")(
        h, deterministic)
    return x + gate2[:, None] * h


class DiT(nn.Module):
  """Denoiser: x [B,H,W,Cin], timesteps [B], context [B,L,D] -> [B,H,W,out_channels].

  Built as DiT(**config.model.dit, out_channels=..., runtime=...).

  Attributes:
    out_channels: channels predicted (those of the diffusion space).
    patch_size: pixels (or latent cells) per patch side; must divide the tile.
    width, depth, num_heads, mlp_ratio: the transformer's size.
    dropout: in the MLPs (training only).
    position_bias: each block's attention adds a learned bias per (query place, key place)
      pair (PositionPairBias), so fixed spatial maps (flips, rotations, moves) are learned fast.
    runtime: dtype, rematerialisation (per block), kernels.
  """
  out_channels: int
  patch_size: int = 2
  width: int = 256
  depth: int = 6
  num_heads: int = 4
  mlp_ratio: int = 4
  dropout: float = 0.0
  position_bias: bool = False
  runtime: runtime_lib.Runtime = runtime_lib.Runtime()

  @nn.compact
  def __call__(self, x: jax.Array, timesteps: jax.Array, context: jax.Array | None = None,
               deterministic: bool = True) -> jax.Array:
    if context is None:
      raise ValueError("the DiT reads the prompt tokens; got None")
    b, height, width, cin = x.shape
    p, dtype, rt = self.patch_size, self.runtime.dtype, self.runtime
    if height % p or width % p:
      raise ValueError(f"DiT patch size {p} does not divide the {height}x{width} grid")
    hp, wp = height // p, width // p
    patches = x.reshape(b, hp, p, wp, p, cin).transpose(0, 1, 3, 2, 4, 5).reshape(
        b, hp * wp, p * p * cin)
    tokens = nn.Dense(self.width, dtype=dtype, param_dtype=jnp.float32, name="patch_embed")(
        patches.astype(dtype))
    tokens = tokens + jnp.asarray(sincos_2d(hp, wp, self.width), dtype)[None]
    tokens = layers.GridPositions(dtype, name="positions")(tokens, hp, wp)

    temb = layers.timestep_embedding(timesteps, self.width).astype(dtype)
    temb = nn.Dense(self.width, dtype=dtype, param_dtype=jnp.float32, name="temb1")(temb)
    cond = nn.Dense(self.width, dtype=dtype, param_dtype=jnp.float32, name="temb2")(
        nn.silu(temb))
    context = context.astype(dtype)
    cond = cond + layers.AttentionPool(self.width, implementation=rt.attention_impl,
                                       dtype=dtype, name="pooled_prompt")(context)
    prompt = nn.LayerNorm(epsilon=1e-6, dtype=dtype, param_dtype=jnp.float32,
                          name="prompt_norm")(
        nn.Dense(self.width, dtype=dtype, param_dtype=jnp.float32, name="prompt_proj")(context))

    block_cls = rt.maybe_remat(DiTBlock, static_argnums=(4, 5))
    for i in range(self.depth):
      tokens = block_cls(self.num_heads, self.mlp_ratio, self.dropout, self.position_bias, rt,
                         name=f"block{i}")(tokens, cond, prompt, (hp, wp), deterministic)

    shift, scale = jnp.split(nn.Dense(2 * self.width, dtype=dtype, param_dtype=jnp.float32,
                                      kernel_init=nn.initializers.zeros, name="final_adaln")(
        nn.silu(cond)), 2, axis=-1)
    h = _modulate(nn.LayerNorm(epsilon=1e-6, use_scale=False, use_bias=False, dtype=dtype,
                               name="final_norm")(tokens), shift, scale)
    out = nn.Dense(p * p * self.out_channels, dtype=dtype, param_dtype=jnp.float32,
                   kernel_init=nn.initializers.zeros, name="final")(h)
    out = out.reshape(b, hp, wp, p, p, self.out_channels).transpose(0, 1, 3, 2, 4, 5)
    return out.reshape(b, height, width, self.out_channels)
