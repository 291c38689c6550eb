"""ImageBrush from its spec: modules built with the config's keyword arguments, then initialised.

    spec = options.ImageBrushSpec.from_config(config)  # checked once, where a program starts
    model = build_model(spec)        # the paper's model, plus config.model.variant's plug-ins
    params = init_params(model, spec, rng)

Each function also takes the ConfigDict itself (parsed on the spot), for tools and tests.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from imagebrush_jax.core import model as model_lib
from imagebrush_jax.core import options as options_lib
from imagebrush_jax.core import plugins as plugins_lib
from imagebrush_jax.models import dit as dit_lib
from imagebrush_jax.models import prompt_encoder as prompt_lib
from imagebrush_jax.models import unet as unet_lib


def build_model(spec: options_lib.ImageBrushSpec | Any) -> model_lib.ImageBrush:
  """ImageBrush from `config.model`: UNet(**model.unet) (or DiT(**model.dit) with
  model.backbone 'dit'), PromptEncoder(ViT(**prompt.vit),
  **prompt.mixer, ...), one Runtime for all, the conditioning of `model.target_cell_fill`, and
  the plug-ins of `model.variant` ('' = none)."""
  spec = options_lib.as_spec(spec)
  m, p = spec.model, spec.model.prompt
  runtime = m.runtime
  plugins = plugins_lib.plugins(spec, runtime)
  vit = prompt_lib.ViT(**p.vit, dropout=p.dropout, runtime=runtime)
  encoder = prompt_lib.PromptEncoder(
      vit=vit, **p.mixer, max_examples=p.max_examples, box_fourier_freqs=p.box_fourier_freqs,
      box_drop_rate=m.box_drop_rate, image_size=p.image_size, dropout=p.dropout,
      pair_difference=p.pair_difference, task_oracle_vocab=m.task_oracle_vocab,
      extra_tokens=plugins.extra_tokens, runtime=runtime)
  if m.backbone == "dit":
    denoiser = dit_lib.DiT(**m.dit, out_channels=m.in_channels, runtime=runtime)
  else:
    denoiser = unet_lib.UNet(**m.unet, out_channels=m.in_channels, runtime=runtime)
  return model_lib.ImageBrush(unet=denoiser, prompt_encoder=encoder,
                              conditioning=_conditioning(spec, plugins),
                              extra_inputs=plugins.extra_inputs)


def _conditioning(spec: options_lib.ImageBrushSpec,
                  plugins: model_lib.Plugins) -> model_lib.Conditioning:
  """config.model.target_cell_fill's conditioning, or the variant's (then the fill must be the
  default 'zeros': a variant that conditions the grid itself replaces it)."""
  fill = spec.model.target_cell_fill
  if plugins.conditioning is None:
    return model_lib.TARGET_CELL_FILLS[fill]()
  if fill != "zeros":
    raise ValueError(f"config.model.target_cell_fill = {fill!r} and variant "
                     f"{spec.model.variant!r} both set the conditioning; the variant's "
                     f"config.model.variant_options choose it")
  return plugins.conditioning


def dummy_inputs(model: model_lib.ImageBrush, spec: options_lib.ImageBrushSpec | Any,
                 batch_size: int = 1) -> dict[str, jax.Array]:
  """Zero arguments of ImageBrush.__call__ at the shapes the config implies (init, eval_shape)."""
  spec = options_lib.as_spec(spec)
  k, tile = spec.grid.num_examples, spec.grid.tile_size
  t = tile // spec.model.latent_factor
  c = spec.model.in_channels
  grid = jnp.zeros((batch_size, (k + 1) * t, 2 * t, c), jnp.float32)
  return dict(
      x_t=grid, timesteps=jnp.zeros((batch_size,), jnp.int32),
      cond=jnp.zeros((*grid.shape[:3], model.conditioning.channels(c)), jnp.float32),
      mask=jnp.zeros((*grid.shape[:3], 1), jnp.float32),
      before=jnp.zeros((batch_size, k, tile, tile, 3), jnp.float32),
      after=jnp.zeros((batch_size, k, tile, tile, 3), jnp.float32),
      query=jnp.zeros((batch_size, tile, tile, 3), jnp.float32),
      box=jnp.tile(jnp.asarray(prompt_lib.WHOLE_IMAGE_BOX), (batch_size, 1)),
      drop_prompt=jnp.zeros((batch_size,), bool),
      **({"task_id": jnp.zeros((batch_size,), jnp.int32)}
         if model.prompt_encoder.task_oracle_vocab else {}))


def init_params(model: model_lib.ImageBrush, spec: options_lib.ImageBrushSpec | Any,
                rng: jax.Array) -> dict[str, Any]:
  """Initialises the 'params' collection (float32) for the shapes in `config`.

  The initializers draw from an 'unsafe_rbg' key derived from `rng` (XLA's RngBitGenerator):
  deterministic per key, and one cheap kernel per parameter shape where threefry compiles a large
  one (init then compiles ~3x faster on CPU). Called with a concrete key on CPU, the init is also
  compiled at backend optimisation level 0: it runs once, its compile time is what counts.
  Traceable, so it can run inside a jitted, sharded state initialisation.
  """

  inputs = dummy_inputs(model, spec)

  def init(key):
    bits = jax.random.bits(key, (4,), jnp.uint32)
    init_key = jax.random.wrap_key_data(bits, impl="unsafe_rbg")
    return model.init({"params": init_key}, **inputs)["params"]

  if isinstance(rng, jax.core.Tracer) or jax.default_backend() != "cpu":
    return init(rng)
  return jax.jit(init).lower(rng).compile({"xla_backend_optimization_level": 0})(rng)


def param_shapes(model: model_lib.ImageBrush, spec: options_lib.ImageBrushSpec | Any
                 ) -> dict[str, Any]:
  """The 'params' tree as ShapeDtypeStructs, without allocating (jax.eval_shape)."""
  inputs = dummy_inputs(model, spec)
  return jax.eval_shape(lambda: model.init({"params": jax.random.key(0)}, **inputs))["params"]
