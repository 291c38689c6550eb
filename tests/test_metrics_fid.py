"""The Frechet distance against pytorch-fid's scipy.linalg.sqrtm formula."""
import numpy as np
import pytest
from scipy import linalg

from imagebrush_jax.metrics import fid


def _reference(mu1, sigma1, mu2, sigma2, eps=1e-6):
  """pytorch-fid's calculate_frechet_distance."""
  diff = mu1 - mu2
  covmean, _ = linalg.sqrtm(sigma1.dot(sigma2), disp=False)
  if not np.isfinite(covmean).all():
    offset = np.eye(sigma1.shape[0]) * eps
    covmean = linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
  covmean = covmean.real
  return diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean)


@pytest.mark.parametrize("n,d", [(200, 16), (64, 8)])
def test_matches_scipy_reference(n, d):
  rng = np.random.default_rng(d)
  a = rng.normal(size=(n, d))
  b = rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) * 0.5 + 0.3
  stats = fid.statistics(a) + fid.statistics(b)
  assert fid.frechet_distance(*stats) == pytest.approx(_reference(*stats), rel=1e-6, abs=1e-8)


def test_identical_sets_and_errors():
  a = np.random.default_rng(0).normal(size=(50, 4))
  assert fid.frechet_distance_of(a, a) == pytest.approx(0.0, abs=1e-8)
  with pytest.raises(ValueError):
    fid.statistics(a[:1])
  with pytest.raises(ValueError):
    fid.frechet_distance(np.zeros(3), np.eye(3), np.zeros(2), np.eye(2))


def test_fid_set_distance_uses_activations():
  act = lambda x: x.reshape(x.shape[0], -1)[:, :4].astype(np.float64)
  rng = np.random.default_rng(0)
  x = rng.integers(0, 256, (20, 2, 2, 3), dtype=np.uint8)
  d = fid.FID(act)
  assert d.name == "fid" and d(x, x) == pytest.approx(0.0, abs=1e-6)
  assert fid.PixelDistance()(x, x) == 0.0
