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

import functools
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from imagebrush_jax.models import layers

ATTENTION_TYPES = ("none", "self", "cross", "self+cross")


def _conv_nhwc(x: jax.Array, w: jax.Array, stride: int, pad: int) -> jax.Array:
  return jax.lax.conv_general_dilated(x, w, (stride, stride), ((pad, pad), (pad, pad)),
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv2d_matmul_grad(x: jax.Array, w: jax.Array, stride: int, pad: int) -> jax.Array:
  """A conv whose kernel gradient is kh*kw matmuls of shifted inputs with the output gradient.

  Forward and input gradient are XLA's convolutions; XLA:CPU computes the kernel gradient as a
  convolution with a window the size of the image, which runs several times slower than the same
  contraction written as matmuls (e.g. 0.87 s vs 0.16 s for a 128->128 3x3 conv at 32x32, batch
  32, on 2 cores).
  """
  return _conv_nhwc(x, w, stride, pad)


def _conv_fwd(x, w, stride, pad):
  return _conv_nhwc(x, w, stride, pad), (x, w)


def _conv_bwd(stride, pad, res, g):
  x, w = res
  _, vjp_x = jax.vjp(lambda x: _conv_nhwc(x, w, stride, pad), x)
  (dx,) = vjp_x(g)
  kh, kw, cin, cout = w.shape
  ho, wo = g.shape[1:3]
  xp = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  g2 = g.reshape(-1, cout)
  taps = []
  for i in range(kh):
    for j in range(kw):
      xs = xp[:, i:i + stride * (ho - 1) + 1:stride, j:j + stride * (wo - 1) + 1:stride]
      taps.append(jax.lax.dot_general(xs.reshape(-1, cin), g2, (((0,), (0,)), ((), ())),
                                      preferred_element_type=jnp.float32))
  return dx, jnp.stack(taps).reshape(w.shape).astype(w.dtype)


conv2d_matmul_grad.defvjp(_conv_fwd, _conv_bwd)
CONV_IMPLS = ("auto", "xla", "matmul_grad")


class Conv(nn.Module):
  """'Same'-padded square NHWC convolution with float32 parameters named as nn.Conv's.

  impl: 'xla' (lax.conv and its own gradient), 'matmul_grad' (conv2d_matmul_grad), or 'auto':
  matmul_grad on CPU, xla elsewhere (GPU and TPU convolution gradients are fast as they are).
  """
  features: int
  kernel_size: int = 3
  stride: int = 1
  zero_init: bool = False
  impl: str = "auto"
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if self.impl not in CONV_IMPLS:
      raise ValueError(f"conv implementation must be one of {CONV_IMPLS}, got {self.impl!r}")
    k = self.kernel_size
    init = nn.initializers.zeros if self.zero_init else nn.linear.default_kernel_init
    kernel = self.param("kernel", init, (k, k, x.shape[-1], self.features), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
    x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
    impl = self.impl
    if impl == "auto":
      impl = "matmul_grad" if jax.default_backend() == "cpu" else "xla"
    conv = conv2d_matmul_grad if impl == "matmul_grad" else _conv_nhwc
    return conv(x, kernel, self.stride, k // 2) + bias.astype(self.dtype)


def _group_norm(groups: int, dtype, name: str) -> nn.GroupNorm:
  """GroupNorm whose statistics are computed in float32 whatever the compute dtype."""
  return nn.GroupNorm(num_groups=groups, epsilon=1e-5, dtype=dtype, param_dtype=jnp.float32,
                      name=name)


class ResBlock(nn.Module):
  """GroupNorm-SiLU-Conv twice, the timestep embedding added in between (LDM/SD ResBlock).

  With `scale_shift` the embedding instead scales and shifts the second GroupNorm's output
  (ADM's use_scale_shift_norm): a per-sample gain on every channel, which lets a conditioning
  vector in the embedding switch features on and off. The second conv starts at zero (LDM), so
  each block starts as the identity (1x1 skip if the channel count changes).
  """
  features: int
  norm_groups: int = 32
  dropout: float = 0.0
  conv_impl: str = "auto"
  scale_shift: bool = False
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, temb: jax.Array, deterministic: bool = True) -> jax.Array:
    h = nn.silu(_group_norm(self.norm_groups, self.dtype, "norm1")(x))
    h = Conv(self.features, impl=self.conv_impl, dtype=self.dtype, name="conv1")(h)
    emb = nn.Dense(self.features * (2 if self.scale_shift else 1), dtype=self.dtype,
                   param_dtype=jnp.float32, name="temb")(nn.silu(temb))[:, None, None, :]
    if self.scale_shift:
      scale, shift = jnp.split(emb, 2, axis=-1)
      h = _group_norm(self.norm_groups, self.dtype, "norm2")(h) * (1 + scale) + shift
      h = nn.silu(h)
    else:
      h = nn.silu(_group_norm(self.norm_groups, self.dtype, "norm2")(h + emb))
    h = nn.Dropout(self.dropout)(h, deterministic=deterministic)
    h = Conv(self.features, zero_init=True, impl=self.conv_impl, dtype=self.dtype,
             name="conv2")(h)
    if x.shape[-1] != self.features:
      x = Conv(self.features, 1, impl=self.conv_impl, dtype=self.dtype, name="skip")(x)
    return x + h


class SpatialBlock(nn.Module):
  """One transformer block on image tokens: [self-attn] [cross-attn to context] GEGLU MLP."""
  attention: str
  num_heads: int
  dropout: float = 0.0
  attention_impl: str = "auto"
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, context: jax.Array | None,
               deterministic: bool = True) -> jax.Array:
    width = x.shape[-1]
    head_dim = width // self.num_heads
    norm = lambda name: nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, param_dtype=jnp.float32,
                                     name=name)
    attn = lambda name: layers.Attention(self.num_heads, head_dim,
                                         implementation=self.attention_impl, dtype=self.dtype,
                                         name=name)
    if "self" in self.attention:
      x = x + attn("attn_self")(norm("norm_self")(x))
    if "cross" in self.attention:
      if context is None:
        raise ValueError(f"attention {self.attention!r} needs context tokens, got None")
      x = x + attn("attn_cross")(norm("norm_cross")(x), context)
    return x + layers.FeedForward(4, "geglu", self.dropout, self.dtype, name="ff")(
        norm("norm_ff")(x), deterministic)


class SpatialTransformer(nn.Module):
  """GroupNorm, linear in, `depth` SpatialBlocks on the H*W tokens, linear out (zero), residual."""
  attention: str
  num_heads: int
  depth: int = 1
  norm_groups: int = 32
  dropout: float = 0.0
  attention_impl: str = "auto"
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, context: jax.Array | None,
               deterministic: bool = True) -> jax.Array:
    b, hgt, wid, c = x.shape
    if c % self.num_heads:
      raise ValueError(f"UNet attention: {c} channels are not divisible by {self.num_heads} heads")
    h = _group_norm(self.norm_groups, self.dtype, "norm")(x).reshape(b, hgt * wid, c)
    h = nn.Dense(c, dtype=self.dtype, param_dtype=jnp.float32, name="proj_in")(h)
    for i in range(self.depth):
      h = SpatialBlock(self.attention, self.num_heads, self.dropout, self.attention_impl,
                       self.dtype, name=f"block{i}")(h, context, deterministic)
    h = nn.Dense(c, dtype=self.dtype, param_dtype=jnp.float32,
                 kernel_init=nn.initializers.zeros, name="proj_out")(h)
    return x + h.reshape(b, hgt, wid, c)


class Downsample(nn.Module):
  """Stride-2 3x3 convolution."""
  conv_impl: str = "auto"
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return Conv(x.shape[-1], stride=2, impl=self.conv_impl, dtype=self.dtype, name="conv")(x)


class Upsample(nn.Module):
  """Nearest-neighbour 2x (a broadcast and reshape, no gather) followed by a 3x3 convolution."""
  conv_impl: str = "auto"
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b, h, w, c = x.shape
    x = jnp.broadcast_to(x[:, :, None, :, None, :], (b, h, 2, w, 2, c)).reshape(b, 2 * h, 2 * w, c)
    return Conv(c, impl=self.conv_impl, dtype=self.dtype, name="conv")(x)


class UNet(nn.Module):
  """Denoiser: x [B,H,W,Cin], timesteps [B], context [B,L,D] -> [B,H,W,out_channels].

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
    attention_impl: 'auto' | 'einsum' | 'xla' | 'cudnn' (see layers.dot_product_attention).
    conv_impl: 'auto' | 'xla' | 'matmul_grad' (see Conv).
    remat: rematerialise each ResBlock and SpatialTransformer in the backward pass.
    remat_policy: name of a jax.checkpoint_policies entry ('' saves nothing).
    pooled_prompt: also add the mean of the context tokens (through a Dense) to the timestep
      embedding, so every ResBlock, not only the attention layers, sees the prompt.
    scale_shift_norm: the embedding scales and shifts the ResBlocks' features (ResBlock).
    dtype: compute dtype; parameters are float32.
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
  attention_impl: str = "auto"
  conv_impl: str = "auto"
  remat: bool = False
  remat_policy: str = ""
  pooled_prompt: bool = False
  scale_shift_norm: bool = False
  dtype: jnp.dtype = jnp.float32

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
    res_cls = layers.maybe_remat(ResBlock, self.remat, self.remat_policy, static_argnums=(3,))
    attn_cls = layers.maybe_remat(SpatialTransformer, self.remat, self.remat_policy,
                                  static_argnums=(3,))
    if context is not None:
      context = context.astype(self.dtype)

    def res(ch, name):
      return res_cls(ch, self.norm_groups, self.dropout, self.conv_impl, self.scale_shift_norm,
                     self.dtype, name=name)

    def spatial(kind, ch, name):
      return attn_cls(kind, self._heads(ch), self.transformer_depth, self.norm_groups,
                      self.dropout, self.attention_impl, self.dtype, name=name)

    temb_dim = 4 * self.channels[0]
    temb = layers.timestep_embedding(timesteps, self.channels[0]).astype(self.dtype)
    temb = nn.Dense(temb_dim, dtype=self.dtype, param_dtype=jnp.float32, name="temb1")(temb)
    temb = nn.Dense(temb_dim, dtype=self.dtype, param_dtype=jnp.float32,
                    name="temb2")(nn.silu(temb))
    if self.pooled_prompt:
      if context is None:
        raise ValueError("model.unet.pooled_prompt needs context tokens, got None")
      temb = temb + nn.Dense(temb_dim, dtype=self.dtype, param_dtype=jnp.float32,
                             name="prompt_emb")(context.mean(axis=1))

    h = Conv(self.channels[0], impl=self.conv_impl, dtype=self.dtype, name="conv_in")(x)
    skips = [h]
    last = len(self.channels) - 1
    for lvl, (ch, kind) in enumerate(zip(self.channels, self.attention)):
      for i in range(self.num_res_blocks):
        h = res(ch, f"down{lvl}_res{i}")(h, temb, deterministic)
        if kind != "none":
          h = spatial(kind, ch, f"down{lvl}_attn{i}")(h, context, deterministic)
        skips.append(h)
      if lvl != last:
        h = Downsample(self.conv_impl, self.dtype, name=f"down{lvl}_downsample")(h)
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
        h = Upsample(self.conv_impl, self.dtype, name=f"up{lvl}_upsample")(h)

    h = nn.silu(_group_norm(self.norm_groups, self.dtype, "norm_out")(h))
    return Conv(self.out_channels, zero_init=True, impl=self.conv_impl, dtype=self.dtype,
                name="conv_out")(h)


def unet_from_config(cfg: ml_collections.ConfigDict, out_channels: int, dtype: str,
                     remat: bool, remat_policy: str) -> UNet:
  """Builds the UNet from `config.model.unet` (dtype/remat are model-wide knobs)."""
  return UNet(
      out_channels=out_channels,
      channels=tuple(cfg.channels),
      attention=tuple(cfg.attention),
      mid_attention=cfg.mid_attention,
      num_res_blocks=cfg.num_res_blocks,
      num_heads=cfg.num_heads,
      head_dim=cfg.head_dim,
      transformer_depth=cfg.transformer_depth,
      norm_groups=cfg.norm_groups,
      dropout=cfg.dropout,
      attention_impl=cfg.attention_impl,
      conv_impl=cfg.conv_impl,
      remat=remat,
      remat_policy=remat_policy,
      pooled_prompt=cfg.get("pooled_prompt", False),
      scale_shift_norm=cfg.get("scale_shift_norm", False),
      dtype=layers.resolve_dtype(dtype),
  )
