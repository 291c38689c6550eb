"""ImageBrush's diffusion objective: the training loss and the editing sampler on a data batch,
and the ImageBrushObjective that the training loop and the samplers take.

    objective = build(spec, autoencoder)  # autoencoder = latent.load(spec) in latent space
    loss_fn = make_loss_fn(model, spec, space)  # (params, batch, rng, train) -> (loss, metrics)
    sample_fn = make_sample_fn(model, spec, space)  # (params, batch, rng, **overrides) -> dict

`spec` is the options.ImageBrushSpec parsed where the program starts (a ConfigDict is parsed on
the spot).

`space` is the frozen autoencoder's latent space (latent.load / latent.from_config), built once
by the caller and shared by both; None in pixel space.

`params` is the model's 'params' collection. Batches follow the data contract: grid and mask
uint8 [B, (K+1)T, 2T, 3|1], box float32 [B, 4], and for the loss an optional per-grid weight
float32 [B] (0 for padding rows), and in latent space optional moments [B, (K+1)t, 2t, 2C]
(config.data.cached_latents: the cells' cached posterior moments, used instead of encoding the
grid); other keys are ignored. With
config.model.latent_factor > 1 the UNet works on the latents of a frozen autoencoder whose
parameters are params[latent.PARAMS_KEY] (see imagebrush_jax/core/latent.py); the prompt encoder still
sees pixels.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp

from imagebrush_jax.core import latent
from imagebrush_jax.core import options as options_lib
from imagebrush_jax.converters import params_file
from imagebrush_jax.converters import sd_unet
from imagebrush_jax.converters import vit as vit_conv
from imagebrush_jax.diffusion import ddim
from imagebrush_jax.diffusion import losses
from imagebrush_jax.diffusion.schedules import Schedule, make_schedule
from imagebrush_jax.core import build as build_lib
from imagebrush_jax.core import grid as grid_lib
from imagebrush_jax.core import model as model_lib

LossFn = Callable[..., tuple[jax.Array, dict[str, jax.Array]]]
_POSTERIOR_STREAM = 0x1A7E  # folded into the step's rng for posterior samples (latent space)


def _inputs(batch: Mapping[str, Any], model: model_lib.ImageBrush,
            spec: options_lib.ImageBrushSpec,
            encode: Callable[[jax.Array], jax.Array] | None = None) -> model_lib.ModelInputs:
  return model_lib.grid_to_model_inputs(batch, num_examples=spec.grid.num_examples,
                                        tile_size=spec.grid.tile_size,
                                        conditioning=model.conditioning, encode=encode)


def _query_under_target(inputs: model_lib.ModelInputs) -> jax.Array:
  """The query's diffusion-space cell under the target cell, zero elsewhere [B, H, W, C]."""
  return inputs.mask * grid_lib.query_under_target(inputs.x0)


def make_loss_fn(model: model_lib.ImageBrush, spec: options_lib.ImageBrushSpec | Any,
                 space: latent.LatentSpace | None = None, schedule: Schedule | None = None
                 ) -> LossFn:
  """The training objective on a uint8 batch: (params, batch, rng, train=True) -> (loss, metrics).

  In training, prompts are replaced by the null tokens at `model.cfg_drop_rate` (classifier-free
  guidance) and boxes by the whole image at `model.box_drop_rate`; dropout uses the same rng.
  Pure and jittable; call it inside the train step. `schedule`: config.diffusion's, if built.
  """
  spec = options_lib.as_spec(spec)
  d = spec.diffusion
  schedule = make_schedule(d) if schedule is None else schedule
  cfg_drop_rate = spec.model.cfg_drop_rate
  latent.check_space(spec, space)

  def loss_fn(params: Any, batch: Mapping[str, Any], rng: jax.Array,
              train: bool = True) -> tuple[jax.Array, dict[str, jax.Array]]:
    encode = None
    if space is not None:  # latents of the frozen autoencoder, made here on device
      params, ae_params = latent.split_params(params)
      posterior_rng = jax.random.fold_in(rng, _POSTERIOR_STREAM) if train else None
      encode = lambda grid: space.encode_grid(ae_params, grid, posterior_rng)
      if "moments" in batch:  # cached posterior moments (config.data.cached_latents): no encoder
        encode = lambda grid: space.grid_from_moments(batch["moments"], grid.shape,
                                                      posterior_rng)
    inputs = _inputs(batch, model, spec, encode)
    rng_loss, rng_drop, rng_dropout = jax.random.split(rng, 3)
    b = inputs.x0.shape[0]
    if train:
      drop_prompt = jax.random.bernoulli(rng_drop, cfg_drop_rate, (b,))
    else:
      drop_prompt = jnp.zeros((b,), bool)

    x0 = inputs.x0 - _query_under_target(inputs) if d.residual_target else inputs.x0
    target_weights = None
    if d.edit_region_weight:
      target_weights = losses.edit_region_weights(
          inputs.x0, _query_under_target(inputs), inputs.mask, d.edit_region_weight,
          d.edit_region_threshold)

    def denoise(x_t, t):
      return model.apply({"params": params}, x_t, t, inputs.cond, inputs.mask, inputs.before,
                         inputs.after, inputs.query, inputs.box, drop_prompt, train=train,
                         task_id=inputs.task_id,
                         rngs={"dropout": rng_dropout} if train else None)

    weight = batch.get("weight")  # optional [B]: 0 for padding rows of an evaluation batch
    return losses.diffusion_loss(denoise, schedule, x0, inputs.mask, rng_loss,
                                 known_cell_weight=d.known_cell_weight,
                                 timestep_sampling=d.timestep_sampling,
                                 timestep_logit_mean=d.timestep_logit_mean,
                                 timestep_logit_std=d.timestep_logit_std,
                                 min_snr_gamma=d.min_snr_gamma,
                                 target_weights=target_weights,
                                 example_weight=None if weight is None else
                                 jnp.asarray(weight, jnp.float32))

  return loss_fn


def make_denoise_fn(model: model_lib.ImageBrush) -> ddim.ApplyFn:
  """The sampler's apply_fn: (params, x_t, t, cond dict with cond/mask/context) -> prediction."""

  def denoise_fn(params, x_t, t, cond):
    return model.apply({"params": params}, x_t, t, cond["cond"], cond["mask"], cond["context"],
                       method=model_lib.ImageBrush.denoise)

  return denoise_fn


def make_sample_fn(model: model_lib.ImageBrush, spec: options_lib.ImageBrushSpec | Any,
                   space: latent.LatentSpace | None = None, schedule: Schedule | None = None
                   ) -> Callable[..., dict]:
  """Edits a uint8 batch: (params, batch, rng, *, num_steps, guidance_scale, eta, spacing) -> dict.

  Unset keyword arguments come from `config.sampling`. The prompt is encoded once; the DDIM loop
  then runs the UNet on [conditional; unconditional] per step (guidance_scale == 1 skips the
  unconditional half). One compilation per (batch shape, num_steps, spacing), kept across calls.
  Returns dict(grid=[B,H,W,C] the completed grid in diffusion space, target=[B,T,T,3] its target
  cell as pixels in [-1, 1]); in latent space target is the decoded latent target cell, which is
  also returned as target_latent [B,T/f,T/f,C]. `schedule`: config.diffusion's, if built.
  """
  spec = options_lib.as_spec(spec)
  schedule = make_schedule(spec.diffusion) if schedule is None else schedule
  denoise_fn = make_denoise_fn(model)
  residual = spec.diffusion.residual_target
  num_examples = spec.grid.num_examples
  clip_x0 = spec.sampling.clip_x0
  latent.check_space(spec, space)

  @functools.partial(jax.jit, static_argnames=("num_steps", "spacing", "guided"))
  def _sample(params, batch, rng, guidance_scale, eta, *, num_steps, spacing, guided):
    encode = ae_params = None
    if space is not None:
      params, ae_params = latent.split_params(params)
      encode = lambda grid: space.encode_grid(ae_params, grid)
    inputs = _inputs(batch, model, spec, encode)
    variables = {"params": params}
    context = model.apply(variables, inputs.before, inputs.after, inputs.query, inputs.box,
                          task_id=inputs.task_id, method=model_lib.ImageBrush.encode_prompt)
    cond = dict(cond=inputs.cond, mask=inputs.mask, context=context)
    uncond = None
    if guided:
      null = model.apply(variables, context, method=model_lib.ImageBrush.null_context)
      uncond = dict(cond=inputs.cond, mask=inputs.mask, context=null)
    offset = _query_under_target(inputs) if residual else 0.0  # diffused: x0 - offset
    grid = ddim.ddim_sample(denoise_fn, params, cond, rng, schedule=schedule,
                            known=inputs.x0 - offset, mask=inputs.mask, num_steps=num_steps,
                            guidance_scale=guidance_scale, eta=eta, spacing=spacing,
                            uncond=uncond, clip_x0=clip_x0, x0_offset=offset) + offset
    target = grid_lib.target_cell(grid, num_examples)
    if space is None:
      return dict(grid=grid, target=target)
    return dict(grid=grid, target=space.decode(ae_params, target), target_latent=target)

  def sample_fn(params: Any, batch: Mapping[str, Any], rng: jax.Array, *,
                num_steps: int | None = None, guidance_scale: float | None = None,
                eta: float | None = None, spacing: str | None = None) -> dict[str, jax.Array]:
    s = spec.sampling
    scale = s.guidance_scale if guidance_scale is None else guidance_scale
    arrays = {k: batch[k] for k in ("grid", "mask", "box", "task_id") if k in batch}
    return _sample(params, arrays, rng, jnp.float32(scale),
                   jnp.float32(s.eta if eta is None else eta),
                   num_steps=int(s.num_steps if num_steps is None else num_steps),
                   spacing=s.spacing if spacing is None else spacing,
                   guided=float(scale) != 1.0)

  sample_fn.jitted = _sample  # exposes the compilation cache (e.g. jitted._cache_size())
  return sample_fn


def _pretrained_starts(model: model_lib.ImageBrush, spec: options_lib.ImageBrushSpec
                       ) -> tuple[dict | None, dict | None]:
  """(ViT params, UNet params) from config.model.prompt.vit_init / config.model.unet_init, each
  None where unset; read and checked against the model's shapes before anything is compiled."""
  vit_init = spec.model.prompt.vit_init
  unet_init = spec.model.unet_init
  if not (vit_init or unet_init):
    return None, None
  shapes = build_lib.param_shapes(model, spec)
  vit_start = unet_start = None
  if vit_init:
    vit_start = vit_conv.params_for_config(vit_init, spec.model.prompt, spec.grid.tile_size)
    params_file.check_tree(vit_start, shapes["prompt_encoder"]["vit"],
                           f"config.model.prompt.vit_init = {vit_init}")
  if unet_init:
    unet_start = sd_unet.params_for_config(
        unet_init, spec, shapes["unet"]["conv_in"]["kernel"].shape[2])
    params_file.check_tree(unet_start, shapes["unet"], f"config.model.unet_init = {unet_init}")
  return vit_start, unet_start


@dataclasses.dataclass(frozen=True)
class ImageBrushObjective:
  """The paper's model as the training loop (training/train_state.Objective's fields) and the
  samplers use it.

  init_params(rng) -> params (with the frozen autoencoder's under latent.PARAMS_KEY in latent
  space, a key the optimizer leaves unchanged: frozen_keys); loss_fn(params, batch, rng, train)
  -> (loss, metrics); sample_fn(params, batch, rng, **overrides) -> {'target', ...}, jitted.
  """
  model: model_lib.ImageBrush
  space: latent.LatentSpace | None
  init_params: Callable[[jax.Array], Any]
  loss_fn: LossFn
  sample_fn: Callable[..., dict[str, jax.Array]]
  frozen_keys: tuple[str, ...]
  compute_dtype: str


def build(spec: options_lib.ImageBrushSpec | Any,
          autoencoder: tuple[latent.LatentSpace, dict] | None = None) -> ImageBrushObjective:
  """The ImageBrushObjective of `spec`; `autoencoder` = latent.load(spec) in latent space.

  config.model.prompt.vit_init, if set, names a converted ViT file
  (python -m imagebrush_jax.convert --from vit) that initialises the prompt encoder's backbone;
  config.model.unet_init a converted UNet (--from sd_unet) that initialises the UNet, its input
  convolution widened with zeros for the known grid and the mask (sd_unet.params_for_config).
  """
  spec = options_lib.as_spec(spec)
  model = build_lib.build_model(spec)
  space, frozen = autoencoder if autoencoder is not None else (None, None)
  latent.check_space(spec, space)
  vit_start, unet_start = _pretrained_starts(model, spec)

  def init_params(rng: jax.Array):
    params = build_lib.init_params(model, spec, rng)
    if vit_start is not None:
      prompt = {**params["prompt_encoder"], "vit": jax.tree.map(jnp.asarray, vit_start)}
      params = {**params, "prompt_encoder": prompt}
    if unet_start is not None:
      params = {**params, "unet": jax.tree.map(jnp.asarray, unet_start)}
    if frozen is not None:
      params = {**params, latent.PARAMS_KEY: jax.tree.map(jnp.asarray, frozen)}
    return params

  schedule = make_schedule(spec.diffusion)
  return ImageBrushObjective(
      model=model, space=space, init_params=init_params,
      loss_fn=make_loss_fn(model, spec, space, schedule),
      sample_fn=make_sample_fn(model, spec, space, schedule),
      frozen_keys=(latent.PARAMS_KEY,) if space is not None else (),
      compute_dtype=spec.model.dtype)
