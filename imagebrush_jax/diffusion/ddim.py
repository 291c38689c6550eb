"""DDIM sampling (Song et al. 2021) for grid inpainting, with batched classifier-free guidance.

`ddim_sample` is one jitted function: the step loop is a `lax.fori_loop`, the conditional and the
unconditional inputs go through the model in one batch, and the known cells are reset to their
forward-process value at every step (so they stay consistent with the context and the result holds
them exactly). Compiled once per (apply_fn, shapes, num_steps, spacing, clip_x0); guidance_scale and
eta are traced, so changing them does not recompile.
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from imagebrush_jax.diffusion import gaussian
from imagebrush_jax.diffusion.schedules import Schedule

SPACINGS = ("leading", "trailing", "linspace")
ApplyFn = Callable[[Any, jax.Array, jax.Array, Any], jax.Array]


def ddim_timesteps(num_train_timesteps: int, num_steps: int, spacing: str) -> np.ndarray:
  """The descending int32 timesteps of an N-step sampler (the spacings of diffusers' DDIM).

  'leading': 0, s, 2s, ... with s = T // N (diffusers' 'leading' with steps_offset=0; never visits
  t = T - 1). 'trailing': T - 1, T - 1 - T/N, ... rounded, N of them (starts at the noisiest
  step; 'Common Diffusion Noise Schedules and Sample Steps are Flawed', Lin et al. 2023).
  'linspace': N points from 0 to T - 1.

  'trailing' takes diffusers' values, round(np.arange(T, 0, -T/N)) - 1, but exactly N of them:
  where the float step T/N makes np.arange overshoot (N = 61 at T = 1000, for one), diffusers
  gets an extra point near 0 that becomes t = -1.
  """
  if not 1 <= num_steps <= num_train_timesteps:
    raise ValueError(f"sampling.num_steps must be in [1, {num_train_timesteps}], got {num_steps}")
  if spacing == "leading":
    ts = np.arange(num_steps) * (num_train_timesteps // num_steps)
  elif spacing == "trailing":
    # np.arange's length, ceil(T / (T/N)) in floats, is N or N + 1: keep the first N.
    ts = np.arange(num_train_timesteps, 0, -num_train_timesteps / num_steps)[:num_steps]
    ts = np.round(ts) - 1
  elif spacing == "linspace":
    ts = np.round(np.linspace(0, num_train_timesteps - 1, num_steps))
  else:
    raise ValueError(f"sampling.spacing must be one of {SPACINGS}, got {spacing!r}")
  return np.sort(ts.astype(np.int32))[::-1].copy()


def ddim_alphas(schedule: Schedule, num_steps: int,
                spacing: str) -> tuple[np.ndarray, jax.Array, jax.Array]:
  """(timesteps [N], alpha_bar at each [N], alpha_bar of the step's target [N]) of a DDIM run.

  Step i goes from timesteps[i] to the next visited timestep, timesteps[i + 1]; the last step goes
  to alpha_bar = 1 (clean data), so it returns its predicted x0 itself. diffusers' DDIMScheduler
  (with set_alpha_to_one=True) instead goes to t - T // N: the same timestep for 'leading', and for
  'trailing' when N divides T, but not for 'linspace' (or 'trailing' otherwise), where its target
  is not the timestep it visits next.
  """
  ts = ddim_timesteps(schedule.num_timesteps, num_steps, spacing)
  ts_prev = np.append(ts[1:], -1)
  alphas = schedule.alphas_cumprod
  alpha_t = alphas[jnp.asarray(ts)]
  alpha_prev = jnp.where(jnp.asarray(ts_prev) >= 0, alphas[jnp.asarray(np.maximum(ts_prev, 0))],
                         1.0)
  return ts, alpha_t, alpha_prev


def ddim_step(model_out: jax.Array, x_t: jax.Array, alpha_t: jax.Array, alpha_prev: jax.Array,
              eta: jax.Array | float, noise: jax.Array, *, prediction_type: str,
              clip_x0: bool = False, x0_offset: jax.Array | float = 0.0
              ) -> tuple[jax.Array, jax.Array]:
  """One DDIM update x_t -> x_prev (eq. 12 of the DDIM paper); returns (x_prev, predicted x0).

  sigma = eta * sqrt((1 - a_prev) / (1 - a_t)) * sqrt(1 - a_t / a_prev)
  x_prev = sqrt(a_prev) x0 + sqrt(1 - a_prev - sigma^2) eps + sigma * noise
  With clip_x0, x0 is clipped to [-1, 1] and eps recomputed from it (as in guided-diffusion;
  diffusers' clip_sample=True with use_clipped_model_output=True); with an `x0_offset` (data
  that is a residual to it), x0 + x0_offset is kept in [-1, 1] instead.
  """
  x0, eps = gaussian.x0_and_eps(prediction_type, model_out, x_t, alpha_t)
  if clip_x0:
    x0 = jnp.clip(x0 + x0_offset, -1.0, 1.0) - x0_offset
    eps = gaussian.eps_from_x0(x0, x_t, alpha_t)
  sigma = eta * jnp.sqrt((1.0 - alpha_prev) / (1.0 - alpha_t) * (1.0 - alpha_t / alpha_prev))
  # 1 - a_prev - sigma^2, factored so that no terms of order 1 cancel: with eta = 1 and
  # a_t << a_prev (the first 'trailing' step of the cosine schedule) it is ~1e-7, which the
  # plain difference would lose to float32 rounding.
  direction_var = (1.0 - alpha_prev) / (1.0 - alpha_t) * (
      (1.0 - eta**2) + alpha_t * (eta**2 / alpha_prev - 1.0))
  direction = jnp.sqrt(jnp.maximum(direction_var, 0.0)) * eps
  return jnp.sqrt(alpha_prev) * x0 + direction + sigma * noise, x0


def guide(cond_out: jax.Array, uncond_out: jax.Array, scale: jax.Array | float) -> jax.Array:
  """Classifier-free guidance: uncond + scale * (cond - uncond)."""
  return uncond_out + scale * (cond_out - uncond_out)


def _concat_batches(a: Any, b: Any) -> Any:
  return jax.tree.map(lambda x, y: jnp.concatenate([x, y], axis=0), a, b)


@functools.partial(jax.jit, static_argnames=("apply_fn", "num_steps", "spacing", "clip_x0"))
def ddim_sample(apply_fn: ApplyFn, params: Any, cond: Any, rng: jax.Array, *,
                schedule: Schedule, known: jax.Array, mask: jax.Array, num_steps: int,
                guidance_scale: jax.Array | float = 1.0, eta: jax.Array | float = 0.0,
                spacing: str = "trailing", uncond: Any = None,
                clip_x0: bool = False, x0_offset: jax.Array | float = 0.0) -> jax.Array:
  """Samples the masked cells of a grid; the known cells come back exactly as `known`.

  Args:
    apply_fn: (params, x_t [B,H,W,C], t [B] int32, cond) -> model output (epsilon or v per
      `schedule.prediction_type`). Static: pass the same function object to reuse the compilation.
    params: the model parameters (any pytree).
    cond: conditioning pytree with leading batch dimension B (e.g. known grid, mask, prompt tokens).
    rng: PRNG key; the result is a deterministic function of it.
    schedule: the training noise schedule.
    known: [B,H,W,C] grid whose unmasked cells are kept; mask: [B,H,W,1], 1 = generate.
    num_steps: number of DDIM steps (static).
    guidance_scale: CFG scale (used only with `uncond`; traced).
    eta: 0 = deterministic DDIM, 1 = DDPM-like ancestral noise (traced).
    spacing: timestep spacing, one of SPACINGS (static).
    uncond: unconditional conditioning pytree shaped like `cond`; None = no guidance. With it,
      each step runs the model once on the 2B batch [cond; uncond].
    clip_x0: clip the predicted x0 to [-1, 1] (pixel space) at every step (static).
    x0_offset: with clip_x0, x0 + x0_offset is clipped instead ([B,H,W,C] or a scalar), for
      data that is a residual to x0_offset.
  Returns:
    [B,H,W,C] float32 sample: generated where mask = 1, `known` elsewhere.
  """
  ts, alpha_t, alpha_prev = ddim_alphas(schedule, num_steps, spacing)
  known = known.astype(jnp.float32)
  mask = mask.astype(jnp.float32)
  batch = known.shape[0]
  rng_init, rng_steps = jax.random.split(rng)
  z = jax.random.normal(rng_init, known.shape, jnp.float32)

  def known_at(alpha):  # the forward-process value of the known cells, with the initial noise
    return jnp.sqrt(alpha) * known + jnp.sqrt(1.0 - alpha) * z

  model_cond = cond if uncond is None else _concat_batches(cond, uncond)
  timesteps = jnp.asarray(ts)

  def body(i, x):
    t = jnp.full((batch,), timesteps[i], jnp.int32)
    if uncond is None:
      out = apply_fn(params, x, t, model_cond)
    else:
      out = apply_fn(params, jnp.concatenate([x, x]), jnp.concatenate([t, t]), model_cond)
      out = guide(out[:batch], out[batch:], guidance_scale)
    noise = jax.random.normal(jax.random.fold_in(rng_steps, i), x.shape, jnp.float32)
    x_prev, _ = ddim_step(out.astype(jnp.float32), x, alpha_t[i], alpha_prev[i], eta, noise,
                          prediction_type=schedule.prediction_type, clip_x0=clip_x0,
                          x0_offset=x0_offset)
    return mask * x_prev + (1.0 - mask) * known_at(alpha_prev[i])

  x = mask * z + (1.0 - mask) * known_at(alpha_t[0])
  return jax.lax.fori_loop(0, num_steps, body, x)
