"""ImageBrush as a Trainable for the generic loop: model, diffusion loss, optimizer, sampler."""
from __future__ import annotations

import jax
import ml_collections

from imagebrush_jax import train_state
from imagebrush_jax.diffusion import pipeline as diffusion_pipeline
from imagebrush_jax.models import imagebrush as ib


def build(config: ml_collections.ConfigDict) -> train_state.Trainable:
  model = ib.build_model(config)
  optimizer, schedule = train_state.make_optimizer(config.train)

  def init_params(rng: jax.Array):
    return ib.init_params(model, config, rng)

  return train_state.Trainable(
      init_params=init_params,
      loss_fn=diffusion_pipeline.make_loss_fn(model, config),
      optimizer=optimizer,
      lr_schedule=schedule,
      train_config=config.train,
      seed=int(config.seed),
      model=model,
      extras={"sample_fn": diffusion_pipeline.make_sample_fn(model, config)},
  )
