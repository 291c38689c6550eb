"""PSNR and SSIM of uint8 images [N, H, W, 3] against references, per image (dm-pix)."""
from __future__ import annotations

import dm_pix
import jax
import jax.numpy as jnp
import numpy as np


def _unit(x) -> jax.Array:
  x = np.asarray(x)
  if x.dtype != np.uint8 or x.ndim != 4:
    raise ValueError(f"expected uint8 images [N, H, W, C], got {x.dtype} {list(x.shape)}")
  return jnp.asarray(x, jnp.float32) / 255.0


def _pair(a, b) -> tuple[jax.Array, jax.Array]:
  a, b = _unit(a), _unit(b)
  if a.shape != b.shape:
    raise ValueError(f"images of different shapes: {list(a.shape)} vs {list(b.shape)}")
  return a, b


def psnr(a, b, max_db: float = 100.0) -> np.ndarray:
  """Per-image PSNR in dB; identical images score `max_db` (instead of infinity)."""
  a, b = _pair(a, b)
  mse = jnp.mean((a - b) ** 2, axis=(1, 2, 3))
  value = jnp.where(mse > 0, -10.0 * jnp.log10(jnp.maximum(mse, 1e-30)), max_db)
  return np.asarray(jnp.minimum(value, max_db), np.float64)


def ssim(a, b) -> np.ndarray:
  """Per-image SSIM (Wang et al. 2004, Gaussian window 11 / sigma 1.5, shrunk for tiles
  smaller than 11 pixels)."""
  a, b = _pair(a, b)
  size = min(11, a.shape[1], a.shape[2])
  size = size if size % 2 else size - 1
  return np.asarray(dm_pix.ssim(a, b, max_val=1.0, filter_size=size,
                                filter_sigma=1.5 * size / 11.0), np.float64)


EDIT_THRESHOLD = 24  # uint8 levels: a pixel is edited where I' and I differ by more than this
EDIT_ERROR_RATIO = 0.1  # the output's error there must be <= this fraction of the copy's (10 dB)


def _edit_region(what: str, generated, query, truth, threshold: int):
  """(g, q, t as float64 [N, H, W, C], the edited region [N, H, W, 1]: 1.0 where the true I'
  differs from I in any channel by more than `threshold`)."""
  g, q, t = (np.asarray(x, np.float64) for x in (generated, query, truth))
  if not g.shape == q.shape == t.shape or g.ndim != 4:
    raise ValueError(f"{what} expects three [N, H, W, C] batches of one shape, got "
                     f"{list(g.shape)}, {list(q.shape)}, {list(t.shape)}")
  region = (np.abs(t - q).max(axis=-1, keepdims=True) > threshold).astype(np.float64)
  return g, q, t, region


def edit_success(generated, query, truth, threshold: int = EDIT_THRESHOLD,
                 error_ratio: float = EDIT_ERROR_RATIO) -> np.ndarray:
  """Per image, whether the output made the edit: within the pixels where the true I' differs
  from I (any channel by more than `threshold`), the output is closer (mean squared error) to
  I' than to I, and its error to I' is at most `error_ratio` times the copy-the-query error (so
  a blurred or constant output that happens to lean towards I' earns nothing). 1.0 or 0.0; NaN
  where I' equals I everywhere (nothing to edit)."""
  g, q, t, region = _edit_region("edit_success", generated, query, truth, threshold)
  size = region.sum(axis=(1, 2, 3))
  to_truth = (region * np.square(g - t)).sum(axis=(1, 2, 3))
  to_query = (region * np.square(g - q)).sum(axis=(1, 2, 3))
  copy_error = (region * np.square(q - t)).sum(axis=(1, 2, 3))
  made = (to_truth < to_query) & (to_truth <= error_ratio * copy_error)
  return np.where(size > 0, made.astype(np.float64), np.nan)


def preservation(generated, query, truth, threshold: int = EDIT_THRESHOLD,
                 max_db: float = 100.0) -> np.ndarray:
  """Per image, PSNR (dB) of the output to I outside the edited region (the pixels where the true
  I' differs from I by more than `threshold`): how well the rest of the image is kept. NaN where
  the edit covers every pixel (a global edit leaves nothing to keep)."""
  g, q, _, region = _edit_region("preservation", generated, query, truth, threshold)
  kept = 1.0 - region
  values = kept.sum(axis=(1, 2, 3)) * g.shape[-1]
  mse = (kept * np.square((g - q) / 255.0)).sum(axis=(1, 2, 3)) / np.maximum(values, 1)
  with np.errstate(divide="ignore"):
    db = np.where(mse > 0, -10.0 * np.log10(np.maximum(mse, 1e-30)), max_db)
  return np.where(values > 0, np.minimum(db, max_db), np.nan)
