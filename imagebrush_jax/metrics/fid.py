"""Frechet distance between two sets of activations, and set distances for evaluation.

A set distance maps two uint8 image sets [N, H, W, 3] to one float (lower = closer):
pixel_distance (mean squared error in [0, 1], pairwise) or, with InceptionV3 weights, FID.
"""
from __future__ import annotations

from typing import Callable, Protocol

import numpy as np


class SetDistance(Protocol):
  name: str

  def __call__(self, a: np.ndarray, b: np.ndarray) -> float:
    ...


def statistics(activations: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Mean [D] and covariance [D, D] (unbiased, as pytorch-fid) of activations [N, D]."""
  act = np.asarray(activations, np.float64)
  if act.ndim != 2 or act.shape[0] < 2:
    raise ValueError(f"need activations [N >= 2, D], got shape {list(act.shape)}")
  return act.mean(axis=0), np.cov(act, rowvar=False)


def _sqrt_psd(m: np.ndarray) -> np.ndarray:
  w, v = np.linalg.eigh((m + m.T) / 2)
  return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray,
                     sigma2: np.ndarray) -> float:
  """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)).

  Tr((S1 S2)^(1/2)) = Tr((S1^(1/2) S2 S1^(1/2))^(1/2)), the latter symmetric positive
  semi-definite, so it comes from an eigendecomposition: real and stable even for the
  singular covariances of small sets (where scipy.linalg.sqrtm needs an epsilon).
  """
  mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
  s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
  if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != mu1.shape * 2:
    raise ValueError(f"mismatched statistics: mu {mu1.shape} / {mu2.shape}, "
                     f"sigma {s1.shape} / {s2.shape}")
  root1 = _sqrt_psd(s1)
  middle = root1 @ s2 @ root1
  tr_covmean = float(np.sum(np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0,
                                            None))))
  diff = mu1 - mu2
  return float(max(0.0, diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean))


def frechet_distance_of(act1: np.ndarray, act2: np.ndarray) -> float:
  return frechet_distance(*statistics(act1), *statistics(act2))


class PixelDistance:
  """Mean over pairs of the per-pixel squared error in [0, 1]; zero iff the sets are equal."""
  name = "pixel_mse"

  def __call__(self, a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
      raise ValueError(f"pixel distance needs paired sets of one shape: {a.shape} vs {b.shape}")
    return float(np.mean((a.astype(np.float64) / 255 - b.astype(np.float64) / 255) ** 2))


class FID:
  """Frechet Inception distance with `activations(images uint8 [N,H,W,3]) -> [N, D]`."""
  name = "fid"

  def __init__(self, activations: Callable[[np.ndarray], np.ndarray]):
    self.activations = activations

  def __call__(self, a: np.ndarray, b: np.ndarray) -> float:
    return frechet_distance_of(self.activations(a), self.activations(b))
