"""The forward process and the model's parameterisations (epsilon, v or x0), as pure functions.

`alpha` below is alpha_bar_t, the cumulative product; arrays broadcast against [B, H, W, C]
after `expand` to the data rank.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from imagebrush_jax.diffusion.schedules import Schedule


def expand(a: jax.Array, ndim: int) -> jax.Array:
  """[B] -> [B, 1, ..., 1] with `ndim` dimensions in all (scalars pass through)."""
  a = jnp.asarray(a, jnp.float32)
  return a.reshape(a.shape + (1,) * (ndim - a.ndim)) if a.ndim else a


def alpha_at(schedule: Schedule, t: jax.Array, ndim: int) -> jax.Array:
  """alpha_bar at integer timesteps t [B], shaped to broadcast over rank-`ndim` data."""
  return expand(schedule.alphas_cumprod[t], ndim)


def q_sample(schedule: Schedule, x0: jax.Array, t: jax.Array, noise: jax.Array) -> jax.Array:
  """x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) noise."""
  a = alpha_at(schedule, t, x0.ndim)
  return jnp.sqrt(a) * x0 + jnp.sqrt(1.0 - a) * noise


def prediction_target(prediction_type: str, x0: jax.Array, noise: jax.Array,
                      alpha: jax.Array) -> jax.Array:
  """What the model learns to output: noise ('epsilon'), v = sqrt(a) eps - sqrt(1-a) x0 ('v'),
  or the clean data itself ('sample', diffusers' name for x0 prediction)."""
  if prediction_type == "epsilon":
    return noise
  if prediction_type == "sample":
    return x0
  if prediction_type == "v":
    return jnp.sqrt(alpha) * noise - jnp.sqrt(1.0 - alpha) * x0
  raise ValueError(f"unknown prediction type {prediction_type!r}")


def x0_and_eps(prediction_type: str, model_out: jax.Array, x_t: jax.Array,
               alpha: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(x0, eps) implied by a model output at x_t with cumulative alpha `alpha`."""
  if prediction_type == "epsilon":
    eps = model_out
    return (x_t - jnp.sqrt(1.0 - alpha) * eps) / jnp.sqrt(alpha), eps
  if prediction_type == "v":
    return (jnp.sqrt(alpha) * x_t - jnp.sqrt(1.0 - alpha) * model_out,
            jnp.sqrt(1.0 - alpha) * x_t + jnp.sqrt(alpha) * model_out)
  if prediction_type == "sample":
    return model_out, eps_from_x0(model_out, x_t, alpha)
  raise ValueError(f"unknown prediction type {prediction_type!r}")


def eps_from_x0(x0: jax.Array, x_t: jax.Array, alpha: jax.Array) -> jax.Array:
  """The noise that takes x0 to x_t: (x_t - sqrt(a) x0) / sqrt(1 - a)."""
  return (x_t - jnp.sqrt(alpha) * x0) / jnp.sqrt(1.0 - alpha)
