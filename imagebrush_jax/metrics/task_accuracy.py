"""Task-identification accuracy and PSNR for exemplar-based editing (pure numpy).

Task identification: a generated I' identifies the task when it lies within half the distance
(root mean squared error) from the true task's output to the nearest candidate output that is a
different image, and is strictly closer to the true output than to every such candidate. Ties
earn credit only against candidates whose images equal the true output: when two tasks give the
same image (e.g. grayscale and swap_red_blue of a gray image) a perfect I' is still identified,
but an I' equally far from different images identifies none of them. The half-distance margin
makes the score strict: a constant I' is exactly as far from hflip(I), vflip(I) and rot90(I) (the
same pixels, permuted), and although it is nearer grayscale(I) than any other output, it is not
near it, so it scores 0 for every task; so do blurred means of several candidates. Distances are
exact under any permutation of the pixels, so such ties are exact ties.

`candidate_outputs` computes candidates from I alone, which only global tasks (hflip, vflip,
rot90, invert, grayscale, swap_red_blue) and their compositions allow; object tasks need the
query's scene (synthetic evaluation grids carry every task's output on it: metrics/edits.py).

    generated [B, T, T, C], candidates [B, N, T, T, C], true_index [B] -> accuracy in [0, 1]
    psnr(a, b) -> mean PSNR in dB of per-image PSNRs (pixel range 255 by default)
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from imagebrush_jax.data import tasks as tasks_lib

MAX_PSNR_DB = 100.0  # PSNR of identical images (MSE 0) is reported as this, not infinity


def _float(x) -> np.ndarray:
  return np.asarray(x, np.float64)


def _is_small_int(a: np.ndarray) -> bool:
  return np.issubdtype(a.dtype, np.integer) and a.dtype.itemsize <= 2


def candidate_distances(generated, candidates) -> np.ndarray:
  """Mean squared error of each generated image to each candidate: [B, N].

  The same for any order of the pixels, so that candidates that are permutations of each other's
  pixels tie exactly: uint8 (and other 8- or 16-bit integer) images are compared in exact integer
  arithmetic; other images sum their squared errors in sorted order.
  """
  g, c = np.asarray(generated), np.asarray(candidates)
  if c.ndim < 2 or c.shape[0] != g.shape[0] or c.shape[2:] != g.shape[1:]:
    raise ValueError(f"candidates {c.shape} do not match generated {g.shape} as [B, N, *image]")
  b, n = c.shape[:2]
  if _is_small_int(g) and _is_small_int(c):
    sq = np.square(c.astype(np.int64) - g.astype(np.int64)[:, None]).reshape(b, n, -1)
    return sq.sum(axis=-1) / sq.shape[-1]
  sq = np.square(_float(c) - _float(g)[:, None]).reshape(b, n, -1)
  return np.mean(np.sort(sq, axis=-1), axis=-1)


def _same_as_true(candidates: np.ndarray, idx: np.ndarray) -> np.ndarray:
  """[B, N] bool: candidate j's image equals the true candidate's."""
  c = np.asarray(candidates)
  n, m = c.shape[:2]
  true = c[np.arange(n), idx].reshape(n, 1, -1)
  return np.all(c.reshape(n, m, -1) == true, axis=-1)


MARGIN = 0.5  # I' must lie within this fraction of the distance to the nearest other output


def task_identification_correct(generated, candidates, true_index) -> np.ndarray:
  """Per-sample bool [B]: every candidate that is a different image from the true output is
  strictly farther from I' than the true output is, and I' lies within MARGIN of the distance
  (RMS) from the true output to the nearest of them."""
  d = candidate_distances(generated, candidates)
  idx = np.asarray(true_index, np.int64).reshape(-1)
  if idx.shape[0] != d.shape[0] or np.any(idx < 0) or np.any(idx >= d.shape[1]):
    raise ValueError(f"true_index {np.asarray(true_index).tolist()} does not index "
                     f"{d.shape[1]} candidates for {d.shape[0]} samples")
  rows = np.arange(d.shape[0])
  c = np.asarray(candidates)
  same = _same_as_true(c, idx)
  d_true = d[rows, idx][:, None]
  between = candidate_distances(c[rows, idx], c)  # true output to each candidate
  nearest = np.where(same, np.inf, between).min(axis=1)
  closer = np.all((d > d_true) | same, axis=1)
  return closer & (d_true[:, 0] <= MARGIN ** 2 * nearest)


def chance_accuracy(candidates, true_index) -> np.ndarray:
  """Per sample, the accuracy of outputting a uniformly random candidate's image: (candidates
  equal to the true one) / (number of candidates). A pick equal to the true output is correct;
  any other pick is at distance 0 from itself, strictly closer than to the true output."""
  c = np.asarray(candidates)
  same = _same_as_true(c, np.asarray(true_index, np.int64).reshape(-1))
  return same.sum(axis=1) / c.shape[1]


def psnr_per_image(a, b, max_val: float = 255.0) -> np.ndarray:
  """PSNR in dB of each image pair [B] (identical images: MAX_PSNR_DB)."""
  a, b = _float(a), _float(b)
  if a.shape != b.shape:
    raise ValueError(f"psnr: shapes differ, {a.shape} vs {b.shape}")
  if a.ndim < 2:
    raise ValueError(f"psnr expects a batch of images [B, ...], got shape {a.shape}")
  mse = np.mean(np.square(a - b), axis=tuple(range(1, a.ndim)))
  with np.errstate(divide="ignore"):
    out = 10.0 * np.log10(max_val ** 2 / mse)
  return np.minimum(out, MAX_PSNR_DB)


def psnr(a, b, max_val: float = 255.0) -> float:
  """Mean over the batch of per-image PSNR (dB) between image batches a and b [B, ...]."""
  return float(np.mean(psnr_per_image(a, b, max_val)))


def applicable_tasks(names: Sequence[str]) -> tuple[str, ...]:
  """The tasks among `names` that apply to an image alone (built-in global tasks and their
  compositions); any other name, e.g. a task of the user's own data, has no candidates."""
  return tuple(n for n in names if tasks_lib.is_known(n) and tasks_lib.get_task(n).is_global)


def candidate_outputs(queries, names: Sequence[str]) -> np.ndarray:
  """Each task of `names` applied to each uint8 query [B, T, T, 3] -> [B, N, T, T, 3] uint8."""
  q = np.asarray(queries)
  return np.stack([np.stack([tasks_lib.apply_global_task(n, img) for n in names]) for img in q])
