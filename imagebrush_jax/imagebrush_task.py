"""ImageBrush as a Trainable for the generic loop: model, diffusion loss, optimizer, sampler.

In latent space (config.model.latent_factor > 1) the parameters also hold the frozen autoencoder
(params[latent.PARAMS_KEY], read once from config.model.autoencoder.params by latent.load and
handed to `build`), which the optimizer leaves unchanged; see latent.py.
config.model.prompt.vit_init, if set, names a converted ViT file
(python -m imagebrush_jax.convert --from vit) that initialises the prompt encoder's backbone.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from imagebrush_jax import latent
from imagebrush_jax import train_state
from imagebrush_jax.converters import params_file
from imagebrush_jax.converters import vit as vit_conv
from imagebrush_jax.diffusion import pipeline as diffusion_pipeline
from imagebrush_jax.models import imagebrush as ib


def build(config: ml_collections.ConfigDict,
          autoencoder: tuple[latent.LatentSpace, dict] | None = None) -> train_state.Trainable:
  """The Trainable of `config`; `autoencoder` = latent.load(config) in latent space."""
  model = ib.build_model(config)
  optimizer, schedule = train_state.make_optimizer(config.train)
  space, frozen = autoencoder if autoencoder is not None else (None, None)
  latent.check_space(config, space)
  if space is not None:
    optimizer = latent.freeze(optimizer)
  vit_init = config.model.prompt.get("vit_init", "")
  vit_start = None
  if vit_init:
    vit_start = vit_conv.params_for_config(vit_init, config.model.prompt, config.data.tile_size)
    params_file.check_tree(vit_start, ib.param_shapes(model, config)["prompt_encoder"]["vit"],
                           f"config.model.prompt.vit_init = {vit_init}")

  def init_params(rng: jax.Array):
    params = ib.init_params(model, config, rng)
    if vit_start is not None:
      prompt = {**params["prompt_encoder"], "vit": jax.tree.map(jnp.asarray, vit_start)}
      params = {**params, "prompt_encoder": prompt}
    if frozen is not None:
      params = {**params, latent.PARAMS_KEY: jax.tree.map(jnp.asarray, frozen)}
    return params

  return train_state.Trainable(
      init_params=init_params,
      loss_fn=diffusion_pipeline.make_loss_fn(model, config, space),
      optimizer=optimizer,
      lr_schedule=schedule,
      train_config=config.train,
      seed=int(config.seed),
      model=model,
      extras={"sample_fn": diffusion_pipeline.make_sample_fn(model, config, space)},
  )
