"""The training objective: noise a grid, predict epsilon (or v), and weight the error per cell.

The generated cell (mask = 1) has weight 1; the known cells, which the model also sees clean in
its conditioning, get `known_cell_weight` (0 ignores them). edit_region_weights can weigh the
generated cell's pixels that differ from the query (what the edit changes) 1 + w against 1 for
the rest, rescaled so the cell's mean weight stays 1: a local edit's few changed pixels are not
drowned by the many it keeps. The loss is normalised by the total weight, so its scale does not
depend on the number of example rows.

Timesteps are drawn uniformly, or logit-normal (SD3's: t / T = sigmoid(N(mean, std)), a positive
mean favouring the noisier steps, where a deterministic edit is decided); min-SNR-gamma weighting
(Hang et al. 2023) caps the weight of the low-noise steps.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from imagebrush_jax.diffusion import gaussian
from imagebrush_jax.diffusion.schedules import Schedule


def cell_weights(mask: jax.Array, known_cell_weight: float) -> jax.Array:
  """Per-pixel loss weights: 1 where mask = 1, `known_cell_weight` elsewhere."""
  return mask + known_cell_weight * (1.0 - mask)


def edit_region_weights(x0: jax.Array, reference: jax.Array, mask: jax.Array,
                        edit_region_weight: float, threshold: float) -> jax.Array:
  """[B,H,W,1] weights on the generated cell: 1 + edit_region_weight where the clean grid `x0`
  differs from `reference` (the query under the target cell) by more than `threshold` in any
  channel, 1 elsewhere, divided by their mean over the cell; 0 outside the cell."""
  changed = jnp.abs(x0 - reference).max(axis=-1, keepdims=True)
  raw = mask * (1.0 + edit_region_weight * (changed > threshold).astype(jnp.float32))
  mean = raw.sum(axis=(1, 2, 3), keepdims=True) / jnp.maximum(
      mask.sum(axis=(1, 2, 3), keepdims=True), 1.0)
  return raw / jnp.maximum(mean, 1e-8)


def weighted_mse(pred: jax.Array, target: jax.Array, weights: jax.Array) -> jax.Array:
  """sum(w * (pred - target)^2) / (sum(w) * C) for [B,H,W,C] data and [B,H,W,1] weights."""
  se = jnp.square(pred.astype(jnp.float32) - target.astype(jnp.float32))
  total = jnp.sum(weights * jnp.ones_like(se))
  return jnp.sum(weights * se) / jnp.maximum(total, 1e-8)


TIMESTEP_SAMPLINGS = ("uniform", "logit_normal")


def sample_timesteps(rng: jax.Array, batch: int, num_timesteps: int, sampling: str = "uniform",
                     logit_mean: float = 0.0, logit_std: float = 1.0) -> jax.Array:
  """[batch] int32 timesteps in [0, num_timesteps): uniform, or logit-normal (t / T =
  sigmoid(N(logit_mean, logit_std)), binned to the integer steps)."""
  if sampling == "uniform":
    return jax.random.randint(rng, (batch,), 0, num_timesteps, dtype=jnp.int32)
  if sampling == "logit_normal":
    u = jax.nn.sigmoid(logit_mean + logit_std * jax.random.normal(rng, (batch,), jnp.float32))
    return jnp.clip(jnp.floor(u * num_timesteps), 0, num_timesteps - 1).astype(jnp.int32)
  raise ValueError(f"timestep sampling must be one of {TIMESTEP_SAMPLINGS}, got {sampling!r}")


def min_snr_weight(prediction_type: str, alpha_bar: jax.Array, gamma: float) -> jax.Array:
  """Min-SNR-gamma loss weight for the given prediction type, at alpha_bar (any shape):
  min(SNR, gamma) / SNR for epsilon, min(SNR, gamma) for x0, min(SNR, gamma) / (SNR + 1) for v."""
  snr = alpha_bar / jnp.maximum(1.0 - alpha_bar, 1e-8)
  capped = jnp.minimum(snr, gamma)
  if prediction_type == "epsilon":
    return capped / jnp.maximum(snr, 1e-8)
  if prediction_type == "sample":
    return capped
  if prediction_type == "v":
    return capped / (snr + 1.0)
  raise ValueError(f"unknown prediction type {prediction_type!r}")


def diffusion_loss(denoise: Callable[[jax.Array, jax.Array], jax.Array], schedule: Schedule,
                   x0: jax.Array, mask: jax.Array, rng: jax.Array, *,
                   known_cell_weight: float = 0.0,
                   target_weights: jax.Array | None = None,
                   example_weight: jax.Array | None = None,
                   timestep_sampling: str = "uniform", timestep_logit_mean: float = 0.0,
                   timestep_logit_std: float = 1.0, min_snr_gamma: float = 0.0
                   ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """One Monte-Carlo estimate of the weighted denoising loss.

  Args:
    denoise: (x_t [B,H,W,C], t [B] int32) -> prediction [B,H,W,C]; closes over params/conditioning.
    schedule: the noise schedule (its prediction_type sets the regression target).
    x0: [B,H,W,C] clean grid in diffusion space; mask: [B,H,W,1], 1 on the generated cell.
    rng: key for the timesteps and the noise.
    known_cell_weight: loss weight of the known cells.
    target_weights: optional [B,H,W,1] weights of the generated cell's pixels in place of the
      mask's 1 (edit_region_weights); 0 outside the cell.
    example_weight: optional [B] weight per grid (0 leaves a grid out, e.g. batch padding).
    timestep_sampling, timestep_logit_mean, timestep_logit_std: how t is drawn
      (sample_timesteps).
    min_snr_gamma: > 0 weighs each grid by min_snr_weight (0: all timesteps weigh 1).
  Returns:
    (loss, metrics): metrics hold the loss and the plain MSE on the target and the known cells.
  """
  rng_t, rng_noise = jax.random.split(rng)
  t = sample_timesteps(rng_t, x0.shape[0], schedule.num_timesteps, timestep_sampling,
                       timestep_logit_mean, timestep_logit_std)
  noise = jax.random.normal(rng_noise, x0.shape, jnp.float32)
  x_t = gaussian.q_sample(schedule, x0, t, noise)
  pred = denoise(x_t, t)
  target = gaussian.prediction_target(schedule.prediction_type, x0, noise,
                                      gaussian.alpha_at(schedule, t, x0.ndim))
  per_grid = 1.0 if example_weight is None else example_weight.reshape(-1, 1, 1, 1)
  step_weight = 1.0
  if min_snr_gamma > 0:  # relative weights: the loss is normalised by their sum
    step_weight = min_snr_weight(schedule.prediction_type,
                                 gaussian.alpha_at(schedule, t, x0.ndim), min_snr_gamma)
  weights = cell_weights(mask, known_cell_weight)
  if target_weights is not None:
    weights = weights - mask + target_weights
  loss = weighted_mse(pred, target, weights * per_grid * step_weight)
  metrics = dict(loss=loss, mse_target=weighted_mse(pred, target, mask * per_grid),
                 mse_known=weighted_mse(pred, target, (1.0 - mask) * per_grid))
  return loss, metrics
