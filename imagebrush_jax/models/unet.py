"""Stable-Diffusion-style UNet with per-level attention: 'none' | 'self' | 'cross' | 'self+cross'.

Layout (as SD v1 / LDM): conv_in; per level `num_res_blocks` x (ResBlock [+ SpatialTransformer]) and
a stride-2 downsample except at the last level; a middle ResBlock, SpatialTransformer, ResBlock;
the mirrored up path with `num_res_blocks + 1` blocks per level, each taking one skip connection,
and a nearest-neighbour 2x upsample except at the top level; GroupNorm, SiLU, conv_out.
With attention ('self+cross', 'self+cross', 'none') and mid 'self+cross' it is SD's layout exactly;
ImageBrush's (self-attention in the outer level, cross-attention to the prompt in the middle ones)
is ('self', 'self+cross', ..., 'none'). Images are NHWC.
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from imagebrush_jax.models import layers
from imagebrush_jax.models import runtime as runtime_lib
from imagebrush_jax.models.conv import Conv

ATTENTION_TYPES = ("none", "self", "cross", "self+cross")


def _group_norm(groups: int, dtype, name: str, epsilon: float = 1e-5) -> nn.GroupNorm:
  """GroupNorm whose statistics are computed in float32 whatever the compute dtype."""
  return nn.GroupNorm(num_groups=groups, epsilon=epsilon, dtype=dtype, param_dtype=jnp.float32,
                      name=name)


class ResBlock(nn.Module):
  """GroupNorm-SiLU-Conv twice, the timestep embedding added in between (LDM/SD ResBlock).

  The second conv starts at zero (LDM), so each block starts as the identity (1x1 skip if the
  channel count changes).
  """
  features: int
  norm_groups: int = 32
  dropout: float = 0.0
  runtime: runtime_lib.Runtime = runtime_lib.Runtime()

  @nn.compact
  def __call__(self, x: jax.Array, temb: jax.Array, deterministic: bool = True) -> jax.Array:
    rt, dtype = self.runtime, self.runtime.dtype
    h = nn.silu(_group_norm(self.norm_groups, dtype, "norm1")(x))
    h = Conv(self.features, runtime=rt, name="conv1")(h)
    emb = nn.Dense(self.features, dtype=dtype, param_dtype=jnp.float32,
                   name="temb")(nn.silu(temb))[:, None, None, :]
    h = nn.silu(_group_norm(self.norm_groups, dtype, "norm2")(h + emb))
    h = nn.Dropout(self.dropout)(h, deterministic=deterministic)
    h = Conv(self.features, zero_init=True, runtime=rt, name="conv2")(h)
    if x.shape[-1] != self.features:
      x = Conv(self.features, 1, runtime=rt, name="skip")(x)
    return x + h


class SpatialBlock(nn.Module):
  """One transformer block on image tokens: [self-attn] [cross-attn to context] GEGLU MLP."""
  attention: str
  num_heads: int
  dropout: float = 0.0
  runtime: runtime_lib.Runtime = runtime_lib.Runtime()

  @nn.compact
  def __call__(self, x: jax.Array, context: jax.Array | None,
               deterministic: bool = True) -> jax.Array:
    width, dtype = x.shape[-1], self.runtime.dtype
    head_dim = width // self.num_heads
    norm = lambda name: nn.LayerNorm(epsilon=1e-5, dtype=dtype, param_dtype=jnp.float32,
                                     name=name)
    attn = lambda name: layers.Attention(self.num_heads, head_dim,
                                         implementation=self.runtime.attention_impl, dtype=dtype,
                                         name=name)
    if "self" in self.attention:
      x = x + attn("attn_self")(norm("norm_self")(x))
    if "cross" in self.attention:
      if context is None:
        raise ValueError(f"attention {self.attention!r} needs context tokens, got None")
      x = x + attn("attn_cross")(norm("norm_cross")(x), context)
    return x + layers.FeedForward(4, "geglu", self.dropout, dtype, name="ff")(
        norm("norm_ff")(x), deterministic)


class SpatialTransformer(nn.Module):
  """GroupNorm, linear in, `depth` SpatialBlocks on the H*W tokens, linear out (zero), residual.

  The GroupNorm's epsilon is 1e-6, as SD's Transformer2DModel (its ResBlocks use 1e-5). With
  `grid_positions` the tokens get layers.GridPositions after the linear in.
  """
  attention: str
  num_heads: int
  depth: int = 1
  norm_groups: int = 32
  dropout: float = 0.0
  grid_positions: bool = False
  runtime: runtime_lib.Runtime = runtime_lib.Runtime()

  @nn.compact
  def __call__(self, x: jax.Array, context: jax.Array | None,
               deterministic: bool = True) -> jax.Array:
    b, hgt, wid, c = x.shape
    dtype = self.runtime.dtype
    if c % self.num_heads:
      raise ValueError(f"UNet attention: {c} channels are not divisible by {self.num_heads} heads")
    h = _group_norm(self.norm_groups, dtype, "norm", 1e-6)(x).reshape(b, hgt * wid, c)
    h = nn.Dense(c, dtype=dtype, param_dtype=jnp.float32, name="proj_in")(h)
    if self.grid_positions:
      h = layers.GridPositions(dtype, name="positions")(h, hgt, wid)
    for i in range(self.depth):
      h = SpatialBlock(self.attention, self.num_heads, self.dropout, self.runtime,
                       name=f"block{i}")(h, context, deterministic)
    h = nn.Dense(c, dtype=dtype, param_dtype=jnp.float32,
                 kernel_init=nn.initializers.zeros, name="proj_out")(h)
    return x + h.reshape(b, hgt, wid, c)


class Downsample(nn.Module):
  """Stride-2 3x3 convolution."""
  runtime: runtime_lib.Runtime = runtime_lib.Runtime()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return Conv(x.shape[-1], stride=2, runtime=self.runtime, name="conv")(x)


class Upsample(nn.Module):
  """Nearest-neighbour 2x (a broadcast and reshape, no gather) followed by a 3x3 convolution."""
  runtime: runtime_lib.Runtime = runtime_lib.Runtime()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b, h, w, c = x.shape
    x = jnp.broadcast_to(x[:, :, None, :, None, :], (b, h, 2, w, 2, c)).reshape(b, 2 * h, 2 * w, c)
    return Conv(c, runtime=self.runtime, name="conv")(x)


class UNet(nn.Module):
  """Denoiser: x [B,H,W,Cin], timesteps [B], context [B,L,D] -> [B,H,W,out_channels].

  Built as UNet(**config.model.unet, out_channels=..., runtime=...).

  Attributes:
    out_channels: channels predicted (those of the diffusion space).
    channels: width of each level, e.g. (320, 640, 1280, 1280).
    attention: per level, one of ATTENTION_TYPES; the up path mirrors it.
    mid_attention: attention type of the middle block.
    num_res_blocks: ResBlocks per down level (up levels have one more).
    num_heads: attention heads (used when head_dim is 0).
    head_dim: if > 0, heads = channels // head_dim per level (SD 2 style).
    transformer_depth: SpatialBlocks per SpatialTransformer.
    norm_groups: GroupNorm groups; must divide every level's channels.
    dropout: dropout in ResBlocks and feed-forwards (training only).
    grid_positions: every attention layer's tokens know their place in the grid: position in
      their cell and the cell's row and column (layers.GridPositions; SD has none).
    pooled_prompt: the prompt tokens attention-pooled (layers.AttentionPool) into the timestep
      embedding, so every ResBlock is conditioned on the prompt (as SDXL adds its pooled text).
    runtime: dtype, rematerialisation (per ResBlock and SpatialTransformer), kernels.
  """
  out_channels: int
  channels: Sequence[int] = (64, 128, 128)
  attention: Sequence[str] = ("self", "self+cross", "self+cross")
  mid_attention: str = "self+cross"
  num_res_blocks: int = 1
  num_heads: int = 8
  head_dim: int = 0
  transformer_depth: int = 1
  norm_groups: int = 32
  dropout: float = 0.0
  grid_positions: bool = False
  pooled_prompt: bool = False
  runtime: runtime_lib.Runtime = runtime_lib.Runtime()

  def _check(self) -> None:
    if len(self.attention) != len(self.channels):
      raise ValueError(f"model.unet.attention has {len(self.attention)} entries for "
                       f"{len(self.channels)} levels (model.unet.channels)")
    for kind in (*self.attention, self.mid_attention):
      if kind not in ATTENTION_TYPES:
        raise ValueError(f"UNet attention type must be one of {ATTENTION_TYPES}, got {kind!r}")
    for c in self.channels:
      if c % self.norm_groups:
        raise ValueError(f"model.unet.norm_groups={self.norm_groups} does not divide {c} channels")

  def _heads(self, channels: int) -> int:
    return channels // self.head_dim if self.head_dim > 0 else self.num_heads

  @nn.compact
  def __call__(self, x: jax.Array, timesteps: jax.Array, context: jax.Array | None = None,
               deterministic: bool = True) -> jax.Array:
    self._check()
    rt, dtype = self.runtime, self.runtime.dtype
    res_cls = rt.maybe_remat(ResBlock, static_argnums=(3,))
    attn_cls = rt.maybe_remat(SpatialTransformer, static_argnums=(3,))
    if context is not None:
      context = context.astype(dtype)

    def res(ch, name):
      return res_cls(ch, self.norm_groups, self.dropout, rt, name=name)

    def spatial(kind, ch, name):
      return attn_cls(kind, self._heads(ch), self.transformer_depth, self.norm_groups,
                      self.dropout, self.grid_positions, rt, name=name)

    temb_dim = 4 * self.channels[0]
    temb = layers.timestep_embedding(timesteps, self.channels[0]).astype(dtype)
    temb = nn.Dense(temb_dim, dtype=dtype, param_dtype=jnp.float32, name="temb1")(temb)
    temb = nn.Dense(temb_dim, dtype=dtype, param_dtype=jnp.float32, name="temb2")(nn.silu(temb))
    if self.pooled_prompt:
      if context is None:
        raise ValueError("model.unet.pooled_prompt needs the prompt tokens, got None")
      temb = temb + layers.AttentionPool(temb_dim, implementation=rt.attention_impl,
                                         dtype=dtype, name="pooled_prompt")(context)

    h = Conv(self.channels[0], runtime=rt, name="conv_in")(x)
    skips = [h]
    last = len(self.channels) - 1
    for lvl, (ch, kind) in enumerate(zip(self.channels, self.attention)):
      for i in range(self.num_res_blocks):
        h = res(ch, f"down{lvl}_res{i}")(h, temb, deterministic)
        if kind != "none":
          h = spatial(kind, ch, f"down{lvl}_attn{i}")(h, context, deterministic)
        skips.append(h)
      if lvl != last:
        h = Downsample(rt, name=f"down{lvl}_downsample")(h)
        skips.append(h)

    h = res(self.channels[-1], "mid_res0")(h, temb, deterministic)
    if self.mid_attention != "none":
      h = spatial(self.mid_attention, self.channels[-1], "mid_attn")(h, context, deterministic)
    h = res(self.channels[-1], "mid_res1")(h, temb, deterministic)

    for lvl in reversed(range(len(self.channels))):
      ch, kind = self.channels[lvl], self.attention[lvl]
      for i in range(self.num_res_blocks + 1):
        h = jnp.concatenate([h, skips.pop()], axis=-1)
        h = res(ch, f"up{lvl}_res{i}")(h, temb, deterministic)
        if kind != "none":
          h = spatial(kind, ch, f"up{lvl}_attn{i}")(h, context, deterministic)
      if lvl != 0:
        h = Upsample(rt, name=f"up{lvl}_upsample")(h)

    h = nn.silu(_group_norm(self.norm_groups, dtype, "norm_out")(h))
    return Conv(self.out_channels, zero_init=True, runtime=rt, name="conv_out")(h)
