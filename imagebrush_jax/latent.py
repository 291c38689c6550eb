"""ImageBrush in the latent space of a frozen KL autoencoder (the paper's setting).

With config.model.latent_factor > 1 the UNet denoises a grid of latents while the prompt encoder
still sees the pixel cells:

  pixel grid [B, (K+1)T, 2T, 3] -> cells [B*(K+1)*2, T, T, 3] -> Encoder -> posterior mean (or
  a sample) -> (z - shift_factor) * scaling_factor -> latent grid [B, (K+1)t, 2t, C], t = T / f
  sampled latent target cell [B, t, t, C] -> z / scaling_factor + shift_factor -> Decoder ->
  pixels [B, T, T, 3]

Each cell is encoded on its own, not the grid as one image: the autoencoder's convolutions and its
global mid-block attention would otherwise let the unknown target cell (zeros at inference, the
true edit in training) leak into the latents of the known cells, and the known cells' latents
would differ between training and inference. Encoding happens on device inside the jitted train
step and sampler.

The frozen autoencoder's parameters travel with the model's: `params[PARAMS_KEY]` next to
`unet` and `prompt_encoder`, loaded from config.model.autoencoder.params when the state is
initialised, never updated (`freeze` zeroes their updates, and the loss stops their gradient; the
EMA copy equals them up to float rounding), and saved in every checkpoint with the rest.

config.model.autoencoder:
  params            converted (imagebrush_jax.convert --from sd_vae) or trained
                    (imagebrush_jax.train_autoencoder) autoencoder parameter file
  scaling_factor    latent scale; 0 takes the file's (0.18215 for the SD VAE)
  sample_posterior  training latents: a posterior sample (as LDM) or the posterior mean
  dtype             the autoencoder's compute dtype: float32 | bfloat16
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import optax

from imagebrush_jax.converters import autoencoder_params
from imagebrush_jax.models import autoencoder as ae

PARAMS_KEY = "autoencoder"  # where the frozen autoencoder's parameters sit in the params tree


def is_latent(config: ml_collections.ConfigDict) -> bool:
  return int(config.model.latent_factor) != 1


@dataclasses.dataclass(frozen=True)
class LatentSpace:
  """A frozen autoencoder and the scale that maps its latents to the diffusion space."""
  model: ae.AutoencoderKL
  params_path: str
  scaling_factor: float
  shift_factor: float
  sample_posterior: bool

  @property
  def factor(self) -> int:
    return self.model.arch.downsample_factor

  @property
  def channels(self) -> int:
    return self.model.arch.latent_channels

  def load_params(self) -> dict[str, Any]:
    """The autoencoder's parameters (numpy) from params_path, shape-checked."""
    return autoencoder_params.load(self.params_path)[0]

  # -------------------------------------------------------------- pixels <-> latents
  def encode(self, params: Any, pixels: jax.Array, rng: jax.Array | None = None) -> jax.Array:
    """Images [N, T, T, 3] in [-1, 1] -> scaled latents [N, T/f, T/f, C] (float32).

    A posterior sample when `rng` is given and sample_posterior is set, else its mean.
    """
    posterior = self.model.apply({"params": params}, pixels, method=ae.AutoencoderKL.encode)
    z = posterior.sample(rng) if (rng is not None and self.sample_posterior) else posterior.mean
    return (z - self.shift_factor) * self.scaling_factor

  def decode(self, params: Any, latents: jax.Array) -> jax.Array:
    """Scaled latents [N, t, t, C] -> images [N, t*f, t*f, 3] in [-1, 1] (clipped)."""
    z = latents / self.scaling_factor + self.shift_factor
    x = self.model.apply({"params": params}, z, method=ae.AutoencoderKL.decode)
    return jnp.clip(x, -1.0, 1.0)

  def encode_grid(self, params: Any, grid: jax.Array, rng: jax.Array | None = None) -> jax.Array:
    """Pixel grid [B, R*T, 2T, 3] in [-1, 1] -> latent grid [B, R*t, 2t, C], cell by cell."""
    b, h, w, c = grid.shape
    tile = w // 2
    rows = h // tile
    cells = grid.reshape(b, rows, tile, 2, tile, c).transpose(0, 1, 3, 2, 4, 5)
    z = self.encode(params, cells.reshape(b * rows * 2, tile, tile, c), rng)
    t, ch = z.shape[1], z.shape[-1]
    z = z.reshape(b, rows, 2, t, t, ch).transpose(0, 1, 3, 2, 4, 5)
    return z.reshape(b, rows * t, 2 * t, ch)


def from_config(config: ml_collections.ConfigDict) -> LatentSpace | None:
  """The latent space config.model asks for (None in pixel space); checks keys against the file."""
  m = config.model
  factor = int(m.latent_factor)
  if factor == 1:
    return None
  if "autoencoder" not in m:
    raise ValueError(f"config.model.latent_factor = {factor} needs config.model.autoencoder "
                     f"(params file, scaling_factor, sample_posterior, dtype); see "
                     f"configs/latent_tiny.py")
  a = m.autoencoder
  if not a.params:
    raise ValueError("config.model.autoencoder.params must name an autoencoder parameter file "
                     "(python -m imagebrush_jax.convert --from sd_vae ..., or the "
                     "autoencoder.safetensors a train_autoencoder run exports)")
  _, arch = autoencoder_params.load(a.params)
  if arch.downsample_factor != factor:
    raise ValueError(f"config.model.latent_factor = {factor}, but the autoencoder {a.params} "
                     f"downsamples by {arch.downsample_factor}")
  if arch.latent_channels != int(m.in_channels):
    raise ValueError(f"config.model.in_channels = {m.in_channels}, but the autoencoder "
                     f"{a.params} has {arch.latent_channels} latent channels")
  if arch.in_channels != 3 or arch.out_channels != 3:
    raise ValueError(f"the autoencoder {a.params} maps {arch.in_channels} -> "
                     f"{arch.out_channels} channels; ImageBrush needs an RGB one")
  tile = int(config.data.tile_size)
  if tile % factor:
    raise ValueError(f"config.data.tile_size = {tile} is not divisible by "
                     f"config.model.latent_factor = {factor}")
  if a.dtype not in ("float32", "bfloat16"):
    raise ValueError(f"config.model.autoencoder.dtype must be float32 or bfloat16, got "
                     f"{a.dtype!r}")
  scale = float(a.scaling_factor)
  if scale < 0:
    raise ValueError(f"config.model.autoencoder.scaling_factor must be >= 0 (0: the file's), "
                     f"got {scale}")
  return LatentSpace(
      model=ae.build(arch, dtype=a.dtype),
      params_path=str(a.params),
      scaling_factor=scale or arch.scaling_factor,
      shift_factor=arch.shift_factor,
      sample_posterior=bool(a.sample_posterior))


# ---------------------------------------------------------------------------- frozen parameters


def split_params(params: Mapping[str, Any]) -> tuple[dict[str, Any], Any]:
  """(ImageBrush's own params, the frozen autoencoder's, gradient stopped)."""
  own = {k: v for k, v in params.items() if k != PARAMS_KEY}
  return own, jax.lax.stop_gradient(params[PARAMS_KEY])


def freeze(optimizer: optax.GradientTransformation) -> optax.GradientTransformation:
  """`optimizer` on everything but params[PARAMS_KEY], whose updates are zero (no state kept)."""
  def labels(params):
    return {k: jax.tree.map(lambda _: "frozen" if k == PARAMS_KEY else "train", v)
            for k, v in params.items()}

  return optax.multi_transform({"train": optimizer, "frozen": optax.set_to_zero()}, labels)
