"""KL autoencoder with the module layout of Stable Diffusion's AutoencoderKL (diffusers).

    x [B, H, W, 3] in [-1, 1] -> Encoder -> quant_conv -> posterior N(mean, exp(logvar))
    z [B, H/f, W/f, C] -> post_quant_conv -> Decoder -> x' [B, H, W, 3]

Every module and parameter is named after its diffusers counterpart, with a list index joined to
its name by '_' (`encoder.down_blocks.0.resnets.1.conv1.weight` is
`encoder/down_blocks_0/resnets_1/conv1/kernel` here), so SD VAE weights map one to one
(imagebrush_jax/converters/sd_vae.py). The sizes come from `AutoencoderConfig`, which reads a
diffusers config.json or `config.autoencoder`; f = 2 ** (len(block_out_channels) - 1), 8 for the
SD VAE. Images are NHWC. The numerics follow diffusers too (GroupNorm eps 1e-6, asymmetric
zero padding before each stride-2 convolution, nearest-neighbour upsampling, one-head mid-block
attention with biases), so outputs agree with the PyTorch model to float32 rounding.

The scale and shift that take latents to the diffusion model's unit-variance space are part of
the config (`scaling_factor`, `shift_factor`); this module itself works on unscaled latents.
"""
from __future__ import annotations

import dataclasses
import json
import numbers
from typing import Any, Mapping

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from imagebrush_jax.models import conv as conv_lib
from imagebrush_jax.models import layers
from imagebrush_jax.models import runtime as runtime_lib

NORM_EPS = 1e-6  # diffusers' resnet_eps for the VAE: every GroupNorm in it
LOGVAR_RANGE = (-30.0, 20.0)  # diffusers' DiagonalGaussianDistribution clamp


# ---------------------------------------------------------------------------- architecture


@dataclasses.dataclass(frozen=True)
class AutoencoderConfig:
  """The architecture: what a parameter file must agree with (runtime knobs are not here).

  The defaults are Stable Diffusion v1/v2's VAE (83.7M parameters, f = 8, 4 latent channels).
  """
  in_channels: int = 3
  out_channels: int = 3
  latent_channels: int = 4
  block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
  layers_per_block: int = 2
  norm_num_groups: int = 32
  mid_block_attention: bool = True
  use_quant_conv: bool = True
  use_post_quant_conv: bool = True
  scaling_factor: float = 0.18215  # latent * scaling_factor has about unit variance (SD)
  shift_factor: float = 0.0  # subtracted before scaling (0 for SD v1/v2, 0.1159 for SD3)

  def __post_init__(self):
    object.__setattr__(self, "block_out_channels", tuple(self.block_out_channels))
    self.validate()

  @property
  def downsample_factor(self) -> int:
    """Pixels per latent cell side: 2 per level but the last."""
    return 2 ** (len(self.block_out_channels) - 1)

  def validate(self, where: str = "autoencoder") -> None:
    """Raises ValueError naming `where.<key>` for the first bad value."""
    for key in ("in_channels", "out_channels", "latent_channels", "layers_per_block",
                "norm_num_groups"):
      value = getattr(self, key)
      if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{where}.{key} must be a positive integer, got {value!r}")
    if not self.block_out_channels:
      raise ValueError(f"{where}.block_out_channels must not be empty")
    for i, ch in enumerate(self.block_out_channels):
      if isinstance(ch, bool) or not isinstance(ch, numbers.Integral) or ch < 1:
        raise ValueError(f"{where}.block_out_channels[{i}] must be a positive integer, got {ch!r}")
      if ch % self.norm_num_groups:
        raise ValueError(f"{where}.block_out_channels[{i}] = {ch} is not divisible by "
                         f"{where}.norm_num_groups = {self.norm_num_groups}")
    for key in ("mid_block_attention", "use_quant_conv", "use_post_quant_conv"):
      if not isinstance(getattr(self, key), bool):
        raise ValueError(f"{where}.{key} must be True or False, got {getattr(self, key)!r}")
    if not isinstance(self.scaling_factor, numbers.Real) or not self.scaling_factor > 0:
      raise ValueError(f"{where}.scaling_factor must be a positive number, got "
                       f"{self.scaling_factor!r}")
    if isinstance(self.shift_factor, bool) or not isinstance(self.shift_factor, numbers.Real):
      raise ValueError(f"{where}.shift_factor must be a number, got {self.shift_factor!r}")

  def to_dict(self) -> dict[str, Any]:
    d = dataclasses.asdict(self)
    d["block_out_channels"] = list(self.block_out_channels)
    return d

  def to_json(self) -> str:
    return json.dumps(self.to_dict(), sort_keys=True)

  @classmethod
  def from_dict(cls, d: Mapping[str, Any], where: str = "autoencoder") -> "AutoencoderConfig":
    """From a dict (e.g. JSON or `config.autoencoder.arch`); unknown keys are an error."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
      raise ValueError(f"{where}: unknown key(s) {', '.join(unknown)}; known: "
                       f"{', '.join(sorted(names))}")
    try:
      return cls(**dict(d))
    except ValueError as e:
      raise ValueError(str(e).replace("autoencoder.", f"{where}.", 1)) from None


# ---------------------------------------------------------------------------- posterior


@flax.struct.dataclass
class DiagonalGaussian:
  """The encoder's posterior N(mean, exp(logvar)) per latent element, [B, h, w, C] each."""
  mean: jax.Array
  logvar: jax.Array

  @classmethod
  def from_moments(cls, moments: jax.Array) -> "DiagonalGaussian":
    mean, logvar = jnp.split(moments.astype(jnp.float32), 2, axis=-1)
    return cls(mean, jnp.clip(logvar, *LOGVAR_RANGE))

  @property
  def std(self) -> jax.Array:
    return jnp.exp(0.5 * self.logvar)

  def sample(self, rng: jax.Array) -> jax.Array:
    return self.mean + self.std * jax.random.normal(rng, self.mean.shape, self.mean.dtype)

  def mode(self) -> jax.Array:
    return self.mean

  def kl(self) -> jax.Array:
    """KL(posterior || N(0, 1)) per example, summed over the latent elements: [B]."""
    kl = 0.5 * (jnp.square(self.mean) + jnp.exp(self.logvar) - 1.0 - self.logvar)
    return kl.reshape(kl.shape[0], -1).sum(axis=-1)


# ---------------------------------------------------------------------------- blocks


class Conv2d(nn.Module):
  """Square NHWC convolution with explicit (symmetric or (low, high)) padding, float32 params.

  Kernels as conv.conv2d (runtime.conv_impl): 'auto' takes the matmul kernel gradient on CPU.
  """
  features: int
  kernel_size: int = 3
  stride: int = 1
  padding: int | tuple[int, int] | None = None  # None: kernel_size // 2 on every side
  runtime: runtime_lib.Runtime = runtime_lib.Runtime()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    k, dtype = self.kernel_size, self.runtime.dtype
    kernel = self.param("kernel", nn.linear.default_kernel_init, (k, k, x.shape[-1],
                                                                   self.features), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
    pad = k // 2 if self.padding is None else self.padding
    low, high = (pad, pad) if isinstance(pad, int) else pad
    x, kernel = x.astype(dtype), kernel.astype(dtype)
    if low != high:
      x = jnp.pad(x, ((0, 0), (low, high), (low, high), (0, 0)))
      low = 0
    y = conv_lib.conv2d(x, kernel, self.stride, low, self.runtime.conv_impl)
    return y + bias.astype(dtype)


def group_norm(groups: int, dtype: Any, name: str) -> nn.GroupNorm:
  """GroupNorm as torch's: two-pass variance, statistics in float32."""
  return nn.GroupNorm(num_groups=groups, epsilon=NORM_EPS, dtype=dtype, param_dtype=jnp.float32,
                      use_fast_variance=False, name=name)


class ResnetBlock2D(nn.Module):
  """diffusers ResnetBlock2D without a time embedding: norm1-SiLU-conv1-norm2-SiLU-conv2 + skip."""
  features: int
  norm_groups: int
  runtime: runtime_lib.Runtime = runtime_lib.Runtime()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    rt, dtype = self.runtime, self.runtime.dtype
    conv = lambda feats, k, name: Conv2d(feats, k, runtime=rt, name=name)
    h = conv(self.features, 3, "conv1")(nn.silu(group_norm(self.norm_groups, dtype, "norm1")(x)))
    h = conv(self.features, 3, "conv2")(nn.silu(group_norm(self.norm_groups, dtype, "norm2")(h)))
    if x.shape[-1] != self.features:
      x = conv(self.features, 1, "conv_shortcut")(x)
    return x + h


class AttentionBlock(nn.Module):
  """The VAE mid-block attention: GroupNorm, one-head self-attention over H*W, residual.

  Linear q/k/v/out with biases (diffusers `Attention` with heads = channels // head_dim, and the
  VAE sets head_dim = channels, so one head).
  """
  norm_groups: int
  runtime: runtime_lib.Runtime = runtime_lib.Runtime()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b, h, w, c = x.shape
    dtype = self.runtime.dtype
    dense = lambda name: nn.Dense(c, dtype=dtype, param_dtype=jnp.float32, name=name)
    t = group_norm(self.norm_groups, dtype, "group_norm")(x).reshape(b, h * w, 1, c)
    q, k, v = dense("to_q")(t), dense("to_k")(t), dense("to_v")(t)
    out = layers.dot_product_attention(q, k, v, self.runtime.attention_impl).reshape(b, h * w, c)
    return x + dense("to_out_0")(out).reshape(b, h, w, c)


class MidBlock(nn.Module):
  """ResnetBlock, [AttentionBlock], ResnetBlock at the lowest resolution (UNetMidBlock2D)."""
  norm_groups: int
  attention: bool = True
  runtime: runtime_lib.Runtime = runtime_lib.Runtime()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c, rt = x.shape[-1], self.runtime
    x = ResnetBlock2D(c, self.norm_groups, rt, name="resnets_0")(x)
    if self.attention:
      x = AttentionBlock(self.norm_groups, rt, name="attentions_0")(x)
    return ResnetBlock2D(c, self.norm_groups, rt, name="resnets_1")(x)


class Downsample2D(nn.Module):
  """Zero padding of one pixel at the bottom and right, then a stride-2 3x3 conv (diffusers)."""
  runtime: runtime_lib.Runtime = runtime_lib.Runtime()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return Conv2d(x.shape[-1], 3, stride=2, padding=(0, 1), runtime=self.runtime,
                  name="conv")(x)


class Upsample2D(nn.Module):
  """Nearest-neighbour 2x (broadcast and reshape), then a 3x3 conv."""
  runtime: runtime_lib.Runtime = runtime_lib.Runtime()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b, h, w, c = x.shape
    x = jnp.broadcast_to(x[:, :, None, :, None, :], (b, h, 2, w, 2, c)).reshape(b, 2 * h, 2 * w, c)
    return Conv2d(c, 3, runtime=self.runtime, name="conv")(x)


# ---------------------------------------------------------------------------- encoder / decoder


class DownEncoderBlock2D(nn.Module):
  """`num_layers` ResnetBlocks, then a Downsample unless it is the last level."""
  features: int
  num_layers: int
  add_downsample: bool
  norm_groups: int
  runtime: runtime_lib.Runtime = runtime_lib.Runtime()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    resnet = self.runtime.maybe_remat(ResnetBlock2D, static_argnums=())
    for j in range(self.num_layers):
      x = resnet(self.features, self.norm_groups, self.runtime, name=f"resnets_{j}")(x)
    if self.add_downsample:
      x = Downsample2D(self.runtime, name="downsamplers_0")(x)
    return x


class UpDecoderBlock2D(nn.Module):
  """`num_layers` ResnetBlocks, then an Upsample unless it is the last (full-size) level."""
  features: int
  num_layers: int
  add_upsample: bool
  norm_groups: int
  runtime: runtime_lib.Runtime = runtime_lib.Runtime()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    resnet = self.runtime.maybe_remat(ResnetBlock2D, static_argnums=())
    for j in range(self.num_layers):
      x = resnet(self.features, self.norm_groups, self.runtime, name=f"resnets_{j}")(x)
    if self.add_upsample:
      x = Upsample2D(self.runtime, name="upsamplers_0")(x)
    return x


class Encoder(nn.Module):
  """conv_in; per level `layers_per_block` ResnetBlocks and a Downsample (not at the last level);
  the mid block; GroupNorm, SiLU, conv_out to 2 * latent_channels (mean and log-variance)."""
  arch: AutoencoderConfig
  runtime: runtime_lib.Runtime = runtime_lib.Runtime()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    a, rt = self.arch, self.runtime
    x = Conv2d(a.block_out_channels[0], 3, runtime=rt, name="conv_in")(x)
    last = len(a.block_out_channels) - 1
    for i, ch in enumerate(a.block_out_channels):
      x = DownEncoderBlock2D(ch, a.layers_per_block, i != last, a.norm_num_groups, rt,
                             name=f"down_blocks_{i}")(x)
    x = MidBlock(a.norm_num_groups, a.mid_block_attention, rt, name="mid_block")(x)
    x = nn.silu(group_norm(a.norm_num_groups, rt.dtype, "conv_norm_out")(x))
    return Conv2d(2 * a.latent_channels, 3, runtime=rt, name="conv_out")(x)


class Decoder(nn.Module):
  """conv_in; the mid block; per level (deepest first) `layers_per_block + 1` ResnetBlocks and an
  Upsample (not at the last level); GroupNorm, SiLU, conv_out to out_channels."""
  arch: AutoencoderConfig
  runtime: runtime_lib.Runtime = runtime_lib.Runtime()

  @nn.compact
  def __call__(self, z: jax.Array) -> jax.Array:
    a, rt = self.arch, self.runtime
    channels = tuple(reversed(a.block_out_channels))
    x = Conv2d(channels[0], 3, runtime=rt, name="conv_in")(z)
    x = MidBlock(a.norm_num_groups, a.mid_block_attention, rt, name="mid_block")(x)
    last = len(channels) - 1
    for i, ch in enumerate(channels):
      x = UpDecoderBlock2D(ch, a.layers_per_block + 1, i != last, a.norm_num_groups, rt,
                           name=f"up_blocks_{i}")(x)
    x = nn.silu(group_norm(a.norm_num_groups, rt.dtype, "conv_norm_out")(x))
    return Conv2d(a.out_channels, 3, runtime=rt, name="conv_out")(x)


class AutoencoderKL(nn.Module):
  """The KL autoencoder: `encode` -> DiagonalGaussian, `decode` latents -> images, float32 out.

  Images are [B, H, W, in_channels] in [-1, 1] with H and W divisible by the downsample factor.
  `__call__` (training) encodes, samples the posterior (rng stream 'posterior') or takes its
  mean, and decodes.
  """
  arch: AutoencoderConfig = AutoencoderConfig()
  runtime: runtime_lib.Runtime = runtime_lib.Runtime()

  @property
  def dtype(self) -> Any:
    return self.runtime.dtype

  def setup(self):
    self.encoder = Encoder(self.arch, self.runtime)
    self.decoder = Decoder(self.arch, self.runtime)
    lc = self.arch.latent_channels
    if self.arch.use_quant_conv:
      self.quant_conv = Conv2d(2 * lc, 1, runtime=self.runtime)
    if self.arch.use_post_quant_conv:
      self.post_quant_conv = Conv2d(lc, 1, runtime=self.runtime)

  def _check_input(self, x: jax.Array) -> None:
    f = self.arch.downsample_factor
    if x.ndim != 4 or x.shape[-1] != self.arch.in_channels:
      raise ValueError(f"autoencoder input must be [B, H, W, {self.arch.in_channels}], got "
                       f"{tuple(x.shape)}")
    if x.shape[1] % f or x.shape[2] % f:
      raise ValueError(f"autoencoder input {x.shape[1]}x{x.shape[2]} is not divisible by its "
                       f"downsample factor {f}")

  def encode(self, x: jax.Array) -> DiagonalGaussian:
    self._check_input(x)
    moments = self.encoder(x)
    if self.arch.use_quant_conv:
      moments = self.quant_conv(moments)
    return DiagonalGaussian.from_moments(moments)

  def decode(self, z: jax.Array) -> jax.Array:
    if z.ndim != 4 or z.shape[-1] != self.arch.latent_channels:
      raise ValueError(f"latents must be [B, h, w, {self.arch.latent_channels}], got "
                       f"{tuple(z.shape)}")
    z = z.astype(self.dtype)
    if self.arch.use_post_quant_conv:
      z = self.post_quant_conv(z)
    return self.decoder(z).astype(jnp.float32)

  def __call__(self, x: jax.Array, sample_posterior: bool = False
               ) -> tuple[jax.Array, DiagonalGaussian]:
    posterior = self.encode(x)
    z = posterior.sample(self.make_rng("posterior")) if sample_posterior else posterior.mode()
    return self.decode(z), posterior


# ---------------------------------------------------------------------------- helpers


def build(arch: AutoencoderConfig,
          runtime: runtime_lib.Runtime = runtime_lib.Runtime()) -> AutoencoderKL:
  """The module for `arch`, run with `runtime` (compute dtype, remat, kernels)."""
  return AutoencoderKL(arch=arch, runtime=runtime)


def init_params(model: AutoencoderKL, rng: jax.Array, image_size: int | None = None
                ) -> dict[str, Any]:
  """Random 'params' for `model` (shapes do not depend on the image size; the smallest is used).

  As imagebrush.build.init_params, the initializers draw from an 'unsafe_rbg' key derived from
  `rng`: deterministic per key and much cheaper to compile on CPU than threefry. Traceable.
  """
  size = image_size or model.arch.downsample_factor
  x = jnp.zeros((1, size, size, model.arch.in_channels), jnp.float32)
  bits = jax.random.bits(rng, (4,), jnp.uint32)
  init_key = jax.random.wrap_key_data(bits, impl="unsafe_rbg")
  return model.init({"params": init_key}, x)["params"]


def param_shapes(model: AutoencoderKL) -> dict[str, Any]:
  """The 'params' tree as ShapeDtypeStructs (jax.eval_shape, nothing allocated)."""
  return jax.eval_shape(lambda: init_params(model, jax.random.key(0)))
