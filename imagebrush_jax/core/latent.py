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
EMA copy equals them up to float rounding), and saved in every checkpoint with the rest. The
run's saved config records the architecture and latent scale (model.autoencoder.arch,
`record_arch`), so inference and evaluation need the checkpoint alone, not the file.

config.model.autoencoder:
  params            converted (imagebrush_jax.convert --from sd_vae) or trained
                    (imagebrush_jax.train_autoencoder) autoencoder parameter file
  scaling_factor    latent scale; 0 takes the file's (0.18215 for the SD VAE)
  arch              written by training into the run's config: the file's architecture
  sample_posterior  training latents: a posterior sample (as LDM) or the posterior mean
  dtype             the autoencoder's compute dtype: float32 | bfloat16

With config.data.cached_latents the train step reads each cell's posterior moments from the
batch (stored by build_data --autoencoder, data/prepare/moments.py) instead of encoding its pixels
(grid_from_moments); evaluation and sampling still encode and decode here.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import ml_collections

from imagebrush_jax.converters import autoencoder_params
from imagebrush_jax.core import options as options_lib
from imagebrush_jax.models import autoencoder as ae
from imagebrush_jax.models import runtime as runtime_lib

PARAMS_KEY = "autoencoder"  # where the frozen autoencoder's parameters sit in the params tree


def is_latent(spec: Any) -> bool:
  """Whether the spec's (or config's) model works in an autoencoder's latent space."""
  return options_lib.as_spec(spec).is_latent


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

  # -------------------------------------------------------------- pixels <-> latents
  def encode(self, params: Any, pixels: jax.Array, rng: jax.Array | None = None) -> jax.Array:
    """Images [N, T, T, 3] in [-1, 1] -> scaled latents [N, T/f, T/f, C] (float32).

    A posterior sample when `rng` is given and sample_posterior is set, else its mean.
    """
    posterior = self.model.apply({"params": params}, pixels, method=ae.AutoencoderKL.encode)
    return self._latents(posterior, rng)

  def moments(self, params: Any, pixels: jax.Array) -> jax.Array:
    """Images [N, T, T, 3] in [-1, 1] -> the posterior's moments [N, T/f, T/f, 2C] (float32):
    mean, then log-variance, unscaled; what a data set's cached latents store."""
    posterior = self.model.apply({"params": params}, pixels, method=ae.AutoencoderKL.encode)
    return jnp.concatenate([posterior.mean, posterior.logvar], axis=-1)

  def _latents(self, posterior: ae.DiagonalGaussian, rng: jax.Array | None) -> jax.Array:
    z = posterior.sample(rng) if (rng is not None and self.sample_posterior) else posterior.mean
    return (z - self.shift_factor) * self.scaling_factor

  def decode(self, params: Any, latents: jax.Array) -> jax.Array:
    """Scaled latents [N, t, t, C] -> images [N, t*f, t*f, 3] in [-1, 1] (clipped)."""
    z = latents / self.scaling_factor + self.shift_factor
    x = self.model.apply({"params": params}, z, method=ae.AutoencoderKL.decode)
    return jnp.clip(x, -1.0, 1.0)

  def encode_grid(self, params: Any, grid: jax.Array, rng: jax.Array | None = None) -> jax.Array:
    """Pixel grid [B, R*T, 2T, 3] in [-1, 1] -> latent grid [B, R*t, 2t, C], cell by cell."""
    return cells_to_grid(self.encode(params, grid_cells(grid), rng), grid.shape[0])

  def grid_from_moments(self, moments: jax.Array, grid_shape: tuple[int, ...],
                        rng: jax.Array | None = None) -> jax.Array:
    """Cached moments [B, R*t, 2t, 2C] (data.cached_latents) -> latent grid [B, R*t, 2t, C]:
    what encode_grid gives for the pixel grid of `grid_shape` they were encoded from, with the
    same rng (the same noise, drawn per cell as there), without running the encoder."""
    b, h, w, _ = grid_shape
    want = (b, h // self.factor, w // self.factor, 2 * self.channels)
    if tuple(moments.shape) != want:
      raise ValueError(f"batch['moments'] {tuple(moments.shape)} does not match the grid "
                       f"{tuple(grid_shape)}: expected {want} (f = {self.factor}, "
                       f"{self.channels} latent channels)")
    posterior = ae.DiagonalGaussian.from_moments(grid_cells(moments))
    return cells_to_grid(self._latents(posterior, rng), b)


def grid_cells(grid: jax.Array) -> jax.Array:
  """[B, R*T, 2T, C] -> its cells [B*R*2, T, T, C], row by row."""
  b, h, w, c = grid.shape
  tile = w // 2
  rows = h // tile
  cells = grid.reshape(b, rows, tile, 2, tile, c).transpose(0, 1, 3, 2, 4, 5)
  return cells.reshape(b * rows * 2, tile, tile, c)


def cells_to_grid(cells: jax.Array, batch: int) -> jax.Array:
  """grid_cells' inverse: [B*R*2, t, t, C] -> [B, R*t, 2t, C]."""
  n, t, _, ch = cells.shape
  rows = n // (2 * batch)
  z = cells.reshape(batch, rows, 2, t, t, ch).transpose(0, 1, 3, 2, 4, 5)
  return z.reshape(batch, rows * t, 2 * t, ch)


def from_config(spec: Any) -> LatentSpace | None:
  """The latent space the spec's model asks for (None in pixel space), without reading weights.

  The architecture comes from config.model.autoencoder.arch when the config records it (every
  run's saved config does: see `record_arch`), else from the parameter file's header. `spec`:
  an options.ImageBrushSpec, or a config (parsed on the spot).
  """
  spec = options_lib.as_spec(spec)
  if not spec.is_latent:
    return None
  a = spec.model.autoencoder
  if a.arch:
    arch = ae.AutoencoderConfig.from_dict(a.arch.to_dict(), where="config.model.autoencoder.arch")
    return _space(spec, arch, f"the autoencoder recorded in the config ({a.params or 'no file'})")
  _, arch = autoencoder_params.load(_params_path(a))
  return _space(spec, arch, f"the autoencoder {a.params}")


def load(spec: Any) -> tuple[LatentSpace, dict[str, Any]] | None:
  """(latent space, its parameters as numpy) read once from config.model.autoencoder.params;
  None in pixel space. What training starts from; a trained run carries both in itself."""
  spec = options_lib.as_spec(spec)
  if not spec.is_latent:
    return None
  a = spec.model.autoencoder
  params, arch = autoencoder_params.load(_params_path(a))
  return _space(spec, arch, f"the autoencoder {a.params}"), params


def record_arch(config: ml_collections.ConfigDict, space: LatentSpace | None
                ) -> ml_collections.ConfigDict:
  """A copy of `config` whose model.autoencoder records the architecture and the latent scale
  in use, so that the run's saved config rebuilds the space without the parameter file."""
  if space is None:
    return config
  out = ml_collections.ConfigDict(config.to_dict())
  out.model.autoencoder.arch = space.model.arch.to_dict()
  out.model.autoencoder.scaling_factor = float(space.scaling_factor)
  return out


def _params_path(a: options_lib.AutoencoderOptions) -> str:
  if not a.params:
    raise ValueError("config.model.autoencoder.params must name an autoencoder parameter file "
                     "(python -m imagebrush_jax.convert --from sd_vae ..., or the "
                     "autoencoder.safetensors a train_autoencoder run exports)")
  return a.params


def _space(spec: options_lib.ImageBrushSpec, arch: ae.AutoencoderConfig,
           what: str) -> LatentSpace:
  """Checks `arch` against config.model and builds the space."""
  m, a = spec.model, spec.model.autoencoder
  factor = m.latent_factor
  if arch.downsample_factor != factor:
    raise ValueError(f"config.model.latent_factor = {factor}, but {what} downsamples by "
                     f"{arch.downsample_factor}")
  if arch.latent_channels != m.in_channels:
    raise ValueError(f"config.model.in_channels = {m.in_channels}, but {what} has "
                     f"{arch.latent_channels} latent channels")
  if arch.in_channels != 3 or arch.out_channels != 3:
    raise ValueError(f"{what} maps {arch.in_channels} -> {arch.out_channels} channels; "
                     f"ImageBrush needs an RGB one")
  return LatentSpace(
      model=ae.build(arch, runtime_lib.Runtime(dtype=a.dtype)),
      params_path=a.params,
      scaling_factor=a.scaling_factor or arch.scaling_factor,
      shift_factor=arch.shift_factor,
      sample_posterior=a.sample_posterior)


# ---------------------------------------------------------------------------- frozen parameters


def check_space(spec: Any, space: LatentSpace | None) -> None:
  """Refuses a missing latent space for a latent model (and one for a pixel-space model)."""
  spec = options_lib.as_spec(spec)
  if spec.is_latent and space is None:
    raise ValueError(f"config.model.latent_factor = {spec.model.latent_factor}: pass the "
                     f"latent space (latent.load(spec) or latent.from_config(spec))")
  if not spec.is_latent and space is not None:
    raise ValueError("a latent space was given for a pixel-space config "
                     "(config.model.latent_factor = 1)")


def split_params(params: Mapping[str, Any]) -> tuple[dict[str, Any], Any]:
  """(ImageBrush's own params, the frozen autoencoder's, gradient stopped)."""
  own = {k: v for k, v in params.items() if k != PARAMS_KEY}
  return own, jax.lax.stop_gradient(params[PARAMS_KEY])

