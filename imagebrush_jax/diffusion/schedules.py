"""Noise schedules: linear (DDPM), scaled_linear (Stable Diffusion) and cosine (improved DDPM).

A `Schedule` holds the betas and the cumulative alphas as float32 arrays; it is a pytree, so it
passes into jitted functions as an argument, with the prediction type as static metadata.
"""
from __future__ import annotations

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

SCHEDULES = ("linear", "scaled_linear", "cosine")
PREDICTION_TYPES = ("epsilon", "v", "sample")


def linear_betas(num_timesteps: int, beta_start: float, beta_end: float) -> np.ndarray:
  """DDPM: betas evenly spaced from beta_start to beta_end."""
  return np.linspace(beta_start, beta_end, num_timesteps, dtype=np.float64)


def scaled_linear_betas(num_timesteps: int, beta_start: float, beta_end: float) -> np.ndarray:
  """Stable Diffusion: sqrt(beta) evenly spaced, then squared."""
  return np.linspace(beta_start**0.5, beta_end**0.5, num_timesteps, dtype=np.float64) ** 2


def cosine_alphas_cumprod(num_timesteps: int, s: float = 0.008) -> np.ndarray:
  """Improved DDPM: alpha_bar(t) = f(t) / f(0), f(t) = cos^2(((t / N) + s) / (1 + s) * pi / 2).

  Returns alpha_bar at t = 0..N (N + 1 values; index 0 is 1).
  """
  t = np.arange(num_timesteps + 1, dtype=np.float64) / num_timesteps
  f = np.cos((t + s) / (1 + s) * np.pi / 2) ** 2
  return f / f[0]


def cosine_betas(num_timesteps: int, max_beta: float = 0.999) -> np.ndarray:
  """Betas of the cosine schedule, 1 - alpha_bar(t+1) / alpha_bar(t), clipped at `max_beta`."""
  abar = cosine_alphas_cumprod(num_timesteps)
  return np.minimum(1.0 - abar[1:] / abar[:-1], max_beta)


def make_betas(name: str, num_timesteps: int, beta_start: float = 0.00085,
               beta_end: float = 0.012) -> np.ndarray:
  """float64 betas of the named schedule (beta_start/end are unused by 'cosine')."""
  if name == "linear":
    return linear_betas(num_timesteps, beta_start, beta_end)
  if name == "scaled_linear":
    return scaled_linear_betas(num_timesteps, beta_start, beta_end)
  if name == "cosine":
    return cosine_betas(num_timesteps)
  raise ValueError(f"diffusion.schedule must be one of {SCHEDULES}, got {name!r}")


@flax.struct.dataclass
class Schedule:
  """betas[t] and alphas_cumprod[t] = prod_{s<=t} (1 - betas[s]) for t in [0, num_timesteps)."""
  betas: jax.Array
  alphas_cumprod: jax.Array
  prediction_type: str = flax.struct.field(pytree_node=False, default="epsilon")

  @property
  def num_timesteps(self) -> int:
    return self.betas.shape[0]


def schedule_from_betas(betas: np.ndarray, prediction_type: str = "epsilon") -> Schedule:
  """A Schedule from float64 betas (cumulative product in float64, stored as float32)."""
  if prediction_type not in PREDICTION_TYPES:
    raise ValueError(f"diffusion.prediction_type must be one of {PREDICTION_TYPES}, "
                     f"got {prediction_type!r}")
  betas = np.asarray(betas, np.float64)
  return Schedule(betas=jnp.asarray(betas, jnp.float32),
                  alphas_cumprod=jnp.asarray(np.cumprod(1.0 - betas), jnp.float32),
                  prediction_type=prediction_type)


def make_schedule(config: ml_collections.ConfigDict) -> Schedule:
  """The Schedule of `config.diffusion` (schedule, num_timesteps, beta range, prediction_type)."""
  betas = make_betas(config.schedule, config.num_timesteps, config.beta_start, config.beta_end)
  return schedule_from_betas(betas, config.prediction_type)
