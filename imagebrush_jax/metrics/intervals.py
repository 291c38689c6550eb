"""Confidence intervals of rates measured on a finite number of grids.

A per-grid binary metric (edit success) averaged over n grids is a binomial proportion; its
Wilson score interval stays inside [0, 1] and is sound at 0 or n successes, where the normal
approximation collapses to a point.
"""
from __future__ import annotations

import math
import statistics


def z_value(confidence: float) -> float:
  """The two-sided standard normal quantile of `confidence` (1.96 at 0.95)."""
  if not 0.0 < confidence < 1.0:
    raise ValueError(f"confidence must be in (0, 1), got {confidence}")
  return statistics.NormalDist().inv_cdf(0.5 + confidence / 2.0)


def wilson(mean: float, n: int, confidence: float = 0.95) -> tuple[float, float]:
  """(low, high): the Wilson score interval of a proportion `mean` observed on `n` trials
  (`mean * n` successes); (0, 1) when n = 0, as nothing was measured."""
  if n < 0 or not 0.0 <= mean <= 1.0:
    raise ValueError(f"need 0 <= mean <= 1 and n >= 0, got mean={mean}, n={n}")
  if n == 0:
    return 0.0, 1.0
  z = z_value(confidence)
  z2n = z * z / n
  center = (mean + z2n / 2.0) / (1.0 + z2n)
  half = z * math.sqrt(mean * (1.0 - mean) / n + z2n / (4.0 * n)) / (1.0 + z2n)
  return max(0.0, center - half), min(1.0, center + half)
