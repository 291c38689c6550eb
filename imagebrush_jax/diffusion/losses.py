"""The training objective: noise a grid, predict epsilon (or v), and weight the error per cell.

The generated cell (mask = 1) has weight 1; the known cells, which the model also sees clean in
its conditioning, get `known_cell_weight` (0 ignores them). edit_region_weights can weigh the
generated cell's pixels that differ from the query (what the edit changes) 1 + w against 1 for
the rest, rescaled so the cell's mean weight stays 1: a local edit's few changed pixels are not
drowned by the many it keeps. The loss is normalised by the total weight, so its scale does not
depend on the number of example rows.
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


def diffusion_loss(denoise: Callable[[jax.Array, jax.Array], jax.Array], schedule: Schedule,
                   x0: jax.Array, mask: jax.Array, rng: jax.Array, *,
                   known_cell_weight: float = 0.0,
                   target_weights: jax.Array | None = None,
                   example_weight: jax.Array | None = None
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
  Returns:
    (loss, metrics): metrics hold the loss and the plain MSE on the target and the known cells.
  """
  rng_t, rng_noise = jax.random.split(rng)
  t = jax.random.randint(rng_t, (x0.shape[0],), 0, schedule.num_timesteps, dtype=jnp.int32)
  noise = jax.random.normal(rng_noise, x0.shape, jnp.float32)
  x_t = gaussian.q_sample(schedule, x0, t, noise)
  pred = denoise(x_t, t)
  target = gaussian.prediction_target(schedule.prediction_type, x0, noise,
                                      gaussian.alpha_at(schedule, t, x0.ndim))
  per_grid = 1.0 if example_weight is None else example_weight.reshape(-1, 1, 1, 1)
  weights = cell_weights(mask, known_cell_weight)
  if target_weights is not None:
    weights = weights - mask + target_weights
  loss = weighted_mse(pred, target, weights * per_grid)
  metrics = dict(loss=loss, mse_target=weighted_mse(pred, target, mask * per_grid),
                 mse_known=weighted_mse(pred, target, (1.0 - mask) * per_grid))
  return loss, metrics
