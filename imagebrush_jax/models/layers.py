"""Building blocks shared by the UNet and the prompt encoder.

Parameters are always float32; `dtype` is the compute dtype (float32 or bfloat16). Attention works
in the [batch, length, heads, head_dim] layout of `jax.nn.dot_product_attention`, so projections
need no transposes; on GPUs it goes through that function to cuDNN's fused kernel, elsewhere
through a leaner XLA formulation (see `dot_product_attention`).
"""
from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from imagebrush_jax.models import runtime as runtime_lib

Dtype = Any


def timestep_embedding(t: jax.Array, dim: int, max_period: float = 10000.0) -> jax.Array:
  """Sinusoidal embedding of (possibly fractional) timesteps [B] -> [B, dim], cos first (as SD)."""
  if dim % 2:
    raise ValueError(f"timestep embedding dim must be even, got {dim}")
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  args = t.astype(jnp.float32)[:, None] * freqs[None, :]
  return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


def fourier_features(x: jax.Array, num_freqs: int, temperature: float = 100.0) -> jax.Array:
  """GLIGEN Fourier features: [..., D] -> [..., D * 2 * num_freqs] (sin and cos per frequency)."""
  freqs = temperature ** (jnp.arange(num_freqs, dtype=jnp.float32) / num_freqs)
  args = x.astype(jnp.float32)[..., None, :] * freqs[:, None]  # [..., F, D]
  feats = jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-2)  # [..., 2F, D]
  return feats.reshape(*x.shape[:-1], -1)


GRID_POSITION_FREQS = 4  # Fourier frequencies of a token's position in its cell
MAX_GRID_ROWS = 9  # example rows + the query row a grid may have (the prompt's max_examples + 1)


def grid_position_features(height: int, width: int) -> jax.Array:
  """[height * width, F] features of each token of a [(K+1)t, 2t] grid map (row-major): Fourier
  features of its position inside its cell (both axes in [0, 1]), and one-hot its cell's row
  counted from the query row (0) upwards and its column (0: before / query, 1: after / target).
  The same place in E, E' and I gets the same in-cell features, so attention can match it."""
  if width % 2 or height % (width // 2):
    raise ValueError(f"a {height}x{width} map is no grid of square cells two wide")
  t = width // 2
  rows = height // t
  if rows > MAX_GRID_ROWS:
    raise ValueError(f"{rows} grid rows exceed {MAX_GRID_ROWS}")
  y, x = jnp.meshgrid(jnp.arange(height), jnp.arange(width), indexing="ij")
  inside = jnp.stack([(y % t + 0.5) / t, (x % t + 0.5) / t], axis=-1).reshape(-1, 2)
  cell_row = jax.nn.one_hot((rows - 1 - y // t).reshape(-1), MAX_GRID_ROWS)
  cell_col = jax.nn.one_hot((x // t).reshape(-1), 2)
  return jnp.concatenate([fourier_features(inside, GRID_POSITION_FREQS, 16.0), cell_row,
                          cell_col], axis=-1)


class GridPositions(nn.Module):
  """Adds a learned projection of grid_position_features to [B, H*W, C] tokens of an H x W grid
  map; the projection starts at zero, so a pretrained network starts unchanged."""
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, tokens: jax.Array, height: int, width: int) -> jax.Array:
    feats = grid_position_features(height, width).astype(self.dtype)
    pos = nn.Dense(tokens.shape[-1], dtype=self.dtype, param_dtype=jnp.float32,
                   kernel_init=nn.initializers.zeros, name="proj")(feats)
    return tokens + pos[None]


class AttentionPool(nn.Module):
  """[B, L, D] tokens -> [B, out_features]: a learned query attends over the tokens (CLIP's and
  SDXL's pooled embedding), then a projection that starts at zero. Heads of 64 channels where
  64 divides the token width, else one."""
  out_features: int
  implementation: str = "auto"
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, tokens: jax.Array) -> jax.Array:
    width = tokens.shape[-1]
    num_heads = width // 64 if width % 64 == 0 else 1
    query = self.param("query", nn.initializers.normal(0.02), (1, 1, width), jnp.float32)
    query = jnp.broadcast_to(query.astype(self.dtype), (tokens.shape[0], 1, width))
    pooled = Attention(num_heads, width // num_heads, implementation=self.implementation,
                       dtype=self.dtype, name="attn")(query, tokens)[:, 0]
    pooled = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, param_dtype=jnp.float32,
                          name="norm")(pooled)
    return nn.Dense(self.out_features, dtype=self.dtype, param_dtype=jnp.float32,
                    kernel_init=nn.initializers.zeros, name="proj")(pooled)


def _cudnn_supported(q: jax.Array, k: jax.Array) -> bool:
  """Whether cuDNN's fused attention can take these operands (GPU, half precision, head_dim)."""
  head_dim = q.shape[-1]
  return (jax.default_backend() == "gpu" and q.dtype in (jnp.bfloat16, jnp.float16)
          and head_dim % 8 == 0 and head_dim <= 128 and k.dtype == q.dtype)


def einsum_attention(q: jax.Array, k: jax.Array, v: jax.Array,
                     bias: jax.Array | None = None) -> jax.Array:
  """softmax(q k^T / sqrt(d) + bias) v for [B, T, N, H] operands in plain XLA ops, lean on
  memory; `bias` broadcasts to the [B, N, T, S] logits.

  The scale is folded into q and the softmax normalisation is applied to the [B, N, T, H] output
  instead of the [B, N, T, S] weights, which saves a full pass over the largest tensor (on CPU,
  about 2x faster than jax.nn.dot_product_attention's XLA path for long sequences).
  """
  q = q * jnp.asarray(q.shape[-1] ** -0.5, q.dtype)
  logits = jnp.einsum("btnh,bsnh->bnts", q, k, preferred_element_type=jnp.float32)
  if bias is not None:
    logits = logits + bias.astype(jnp.float32)
  weights = jnp.exp(logits - jax.lax.stop_gradient(logits.max(axis=-1, keepdims=True)))
  norm = weights.sum(axis=-1, keepdims=True)  # [B, N, T, 1]
  out = jnp.einsum("bnts,bsnh->btnh", weights.astype(v.dtype), v,
                   preferred_element_type=jnp.float32)
  return (out / jnp.transpose(norm, (0, 2, 1, 3))).astype(q.dtype)


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array,
                          implementation: str = "auto", bias: jax.Array | None = None
                          ) -> jax.Array:
  """softmax(q k^T / sqrt(d) + bias) v on [B, T, N, H] operands (`bias` broadcastable to the
  [B, N, T, S] logits, or None).

  'cudnn' and 'xla' call `jax.nn.dot_product_attention` with that implementation; 'einsum' is
  `einsum_attention`. 'auto' takes cuDNN's fused kernel through `jax.nn.dot_product_attention`
  where it applies (GPU, bf16/fp16, head_dim % 8 == 0, <= 128) and 'einsum' elsewhere
  (`implementation=None` itself always picks XLA in jax 0.10, hence the explicit choice).
  """
  if implementation not in runtime_lib.ATTENTION_IMPLS:
    raise ValueError(f"attention implementation must be one of {runtime_lib.ATTENTION_IMPLS}, "
                     f"got {implementation!r}")
  if implementation == "auto":
    if _cudnn_supported(q, k):
      try:
        return jax.nn.dot_product_attention(q, k, v, bias=_full_bias(bias, q.dtype),
                                            implementation="cudnn")
      except (NotImplementedError, ValueError, RuntimeError):
        pass  # cuDNN rejected the shapes or version at trace time: fall back.
    implementation = "einsum"
  if implementation == "einsum":
    return einsum_attention(q, k, v, bias)
  return jax.nn.dot_product_attention(q, k, v, bias=_full_bias(bias, q.dtype),
                                      implementation=implementation)


def _full_bias(bias: jax.Array | None, dtype: Any) -> jax.Array | None:
  """`bias` as the 4D array, broadcastable to [B, N, T, S], that jax.nn.dot_product_attention
  takes."""
  if bias is None:
    return None
  bias = jnp.asarray(bias, dtype)
  return bias.reshape((1,) * (4 - bias.ndim) + bias.shape)


class Attention(nn.Module):
  """Multi-head attention: self-attention when `context` is None, cross-attention otherwise.

  Self-attention uses one fused q/k/v projection (a single matmul); cross-attention one
  projection for q and one fused projection for k/v of the context. No biases on q/k/v, a bias on
  the output (the Stable Diffusion layout, so parameter counts match it).
  """
  num_heads: int
  head_dim: int
  out_features: int | None = None
  zero_init_out: bool = False
  implementation: str = "auto"
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, context: jax.Array | None = None,
               bias: jax.Array | None = None) -> jax.Array:
    """`bias`: added to the attention logits, broadcastable to [B, heads, len(x), len(ctx)]."""
    heads = (self.num_heads, self.head_dim)
    dense = lambda feats, name: nn.DenseGeneral(
        feats, use_bias=False, dtype=self.dtype, param_dtype=jnp.float32, name=name)
    if context is None:
      q, k, v = jnp.unstack(dense((3, *heads), "qkv")(x), axis=-3)
    else:
      q = dense(heads, "q")(x)
      k, v = jnp.unstack(dense((2, *heads), "kv")(context.astype(self.dtype)), axis=-3)
    out = dot_product_attention(q, k, v, self.implementation, bias)
    return nn.DenseGeneral(
        self.out_features or x.shape[-1], axis=(-2, -1), dtype=self.dtype,
        param_dtype=jnp.float32, name="out",
        kernel_init=nn.initializers.zeros if self.zero_init_out else nn.linear.default_kernel_init,
    )(out)


class FeedForward(nn.Module):
  """Position-wise MLP: 'gelu' (ViT) or 'geglu' (Stable Diffusion's gated GELU), hidden = mult*d."""
  mult: int = 4
  kind: str = "gelu"
  dropout: float = 0.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
    d = x.shape[-1]
    dense = lambda feats, name: nn.Dense(feats, dtype=self.dtype, param_dtype=jnp.float32,
                                         name=name)
    if self.kind == "geglu":
      h, gate = jnp.split(dense(2 * self.mult * d, "wi")(x), 2, axis=-1)
      h = h * nn.gelu(gate, approximate=False)
    elif self.kind == "gelu":
      h = nn.gelu(dense(self.mult * d, "wi")(x), approximate=False)
    else:
      raise ValueError(f"feed-forward kind must be 'gelu' or 'geglu', got {self.kind!r}")
    h = nn.Dropout(self.dropout)(h, deterministic=deterministic)
    return dense(d, "wo")(h)


class TransformerBlock(nn.Module):
  """Pre-norm bidirectional transformer block (ViT): x + MHSA(LN x), then x + MLP(LN x)."""
  num_heads: int
  mlp_ratio: int = 4
  dropout: float = 0.0
  runtime: runtime_lib.Runtime = runtime_lib.Runtime()

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
    width, dtype = x.shape[-1], self.runtime.dtype
    if width % self.num_heads:
      raise ValueError(f"transformer width {width} is not divisible by {self.num_heads} heads")
    norm = lambda name: nn.LayerNorm(epsilon=1e-6, dtype=dtype, param_dtype=jnp.float32,
                                     name=name)
    h = Attention(self.num_heads, width // self.num_heads,
                  implementation=self.runtime.attention_impl, dtype=dtype,
                  name="attn")(norm("norm1")(x))
    x = x + nn.Dropout(self.dropout)(h, deterministic=deterministic)
    h = FeedForward(self.mlp_ratio, "gelu", self.dropout, dtype, name="mlp")(
        norm("norm2")(x), deterministic)
    return x + nn.Dropout(self.dropout)(h, deterministic=deterministic)


class Transformer(nn.Module):
  """A stack of `depth` pre-norm blocks and a final LayerNorm, optionally rematerialised."""
  depth: int
  num_heads: int
  mlp_ratio: int = 4
  dropout: float = 0.0
  runtime: runtime_lib.Runtime = runtime_lib.Runtime()

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
    block_cls = self.runtime.maybe_remat(TransformerBlock, static_argnums=(2,))
    for i in range(self.depth):
      x = block_cls(self.num_heads, self.mlp_ratio, self.dropout, self.runtime,
                    name=f"block{i}")(x, deterministic)
    return nn.LayerNorm(epsilon=1e-6, dtype=self.runtime.dtype, param_dtype=jnp.float32,
                        name="norm")(x)
