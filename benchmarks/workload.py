"""The benchmarks' workload: a config's task on random weights and random batches, so a paper-scale
step can be measured on a bare accelerator machine without data sets or weight files."""
from __future__ import annotations

from typing import Any

import jax
import ml_collections
import numpy as np

from imagebrush_jax.infra import cli
from imagebrush_jax.core import latent
from imagebrush_jax.models import autoencoder as ae
from imagebrush_jax.training import objectives


def load_config(path: str) -> ml_collections.ConfigDict:
  """get_config() of a config file (as the training programs' --config reads it)."""
  return cli.load_config_file(path)


def random_batch(config: ml_collections.ConfigDict, batch_size: int, seed: int = 0
                 ) -> dict[str, np.ndarray]:
  """A data batch of random grids (uint8), the target cell masked, whole-image boxes."""
  k, tile = int(config.data.num_examples), int(config.data.tile_size)
  rng = np.random.default_rng(seed)
  grid = rng.integers(0, 256, (batch_size, (k + 1) * tile, 2 * tile, 3), dtype=np.uint8)
  mask = np.zeros((batch_size, (k + 1) * tile, 2 * tile, 1), np.uint8)
  mask[:, -tile:, tile:] = 1
  return dict(grid=grid, mask=mask, box=np.tile(np.float32([0, 0, 1, 1]), (batch_size, 1)))


def random_moments(config: ml_collections.ConfigDict, space: latent.LatentSpace,
                   batch_size: int, seed: int = 0) -> np.ndarray:
  """Cached posterior moments for a random batch (config.data.cached_latents): bfloat16
  [B, (K+1)t, 2t, 2C], means around 0 and log-variances around -5."""
  k, t = int(config.data.num_examples), int(config.data.tile_size) // space.factor
  rng = np.random.default_rng(seed)
  shape = (batch_size, (k + 1) * t, 2 * t, space.channels)
  moments = np.concatenate([rng.standard_normal(shape), rng.normal(-5.0, 1.0, shape)], axis=-1)
  import ml_dtypes  # pylint: disable=g-import-not-at-top
  return moments.astype(ml_dtypes.bfloat16)


def autoencoder(config: ml_collections.ConfigDict, seed: int = 0
                ) -> tuple[latent.LatentSpace, Any] | None:
  """The latent space and its weights: read from config.model.autoencoder.params when set, else
  random weights of the recorded architecture or of SD's VAE (AutoencoderConfig's defaults).
  None in pixel space."""
  if not latent.is_latent(config):
    return None
  if config.model.autoencoder.get("params"):
    return latent.load(config)
  config = ml_collections.ConfigDict(config.to_dict())
  if not config.model.autoencoder.get("arch"):
    config.model.autoencoder.arch = ae.AutoencoderConfig().to_dict()
  space = latent.from_config(config)
  return space, ae.init_params(space.model, jax.random.key(seed))


def build_task(config: ml_collections.ConfigDict, space: Any = False):
  """(the ImageBrush Trainable of `config`, its autoencoder architecture or None); `space`: what
  autoencoder(config) gives, if already made."""
  space = autoencoder(config) if space is False else space
  task = objectives.imagebrush_from_config(config, space)
  return task, (space[0].model.arch if space is not None else None)
