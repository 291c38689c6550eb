"""The weighted diffusion loss against NumPy and its oracle minimum."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from imagebrush_jax.diffusion import gaussian
from imagebrush_jax.diffusion import losses
from imagebrush_jax.diffusion import schedules


def test_weighted_mse_matches_numpy():
  rng = np.random.default_rng(0)
  pred, target = (rng.standard_normal((2, 6, 4, 3)).astype(np.float32) for _ in range(2))
  mask = np.zeros((2, 6, 4, 1), np.float32)
  mask[:, 3:, 2:] = 1
  w = mask + 0.25 * (1 - mask)
  expected = np.sum(w * (pred - target) ** 2) / (np.sum(w) * 3)
  got = losses.weighted_mse(jnp.asarray(pred), jnp.asarray(target),
                            losses.cell_weights(jnp.asarray(mask), 0.25))
  np.testing.assert_allclose(got, expected, rtol=1e-5)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v"])
def test_oracle_denoiser_has_zero_loss_and_known_cells_weighting(prediction_type):
  schedule = schedules.make_schedule(ml_collections.ConfigDict(dict(
      schedule="cosine", num_timesteps=1000, beta_start=0.0, beta_end=0.0,
      prediction_type=prediction_type)))
  rng = np.random.default_rng(1)
  x0 = jnp.asarray(rng.uniform(-1, 1, (3, 8, 4, 3)), jnp.float32)
  mask = jnp.zeros((3, 8, 4, 1)).at[:, 4:].set(1.0)

  def oracle(x_t, t, known_error=0.0):  # knows x0, hence the noise and v, exactly
    a = gaussian.alpha_at(schedule, t, 4)
    eps = gaussian.eps_from_x0(x0, x_t, a)
    target = eps if prediction_type == "epsilon" else gaussian.prediction_target(
        "v", x0, eps, a)
    return target + known_error * (1.0 - mask)

  bad = lambda x_t, t: oracle(x_t, t, known_error=1.0)

  @jax.jit
  def run(key):
    return (losses.diffusion_loss(oracle, schedule, x0, mask, key, known_cell_weight=0.0),
            losses.diffusion_loss(bad, schedule, x0, mask, key, known_cell_weight=0.0),
            losses.diffusion_loss(bad, schedule, x0, mask, key, known_cell_weight=0.25))

  (loss, metrics), (loss0, m0), (loss1, _) = run(jax.random.key(0))
  assert float(loss) < 1e-6 and set(metrics) == {"loss", "mse_target", "mse_known"}
  # An error of 1 on the known half only: invisible at weight 0; at weight 0.25 the loss is
  # 0.25 * 1 / (1 + 0.25) (equal areas of target and known cells).
  assert float(loss0) < 1e-6 and abs(float(m0["mse_known"]) - 1.0) < 1e-4
  np.testing.assert_allclose(loss1, 0.25 / 1.25, rtol=1e-4)


def test_edit_region_weights_match_numpy_and_weigh_the_loss():
  rng = np.random.default_rng(2)
  x0 = rng.uniform(-1, 1, (2, 8, 8, 3)).astype(np.float32)
  x0[:, 4:, 4:] = x0[:, 4:, :4]  # I' = I ...
  x0[0, 4, 5] += 0.5  # ... but for one pixel in grid 0 and three in grid 1
  x0[1, 6:, 6, 2] -= 0.5
  x0[1, 7, 7] += 0.05  # below the threshold
  x0[1, 5, 4, 1] += 0.3
  mask = np.zeros((2, 8, 8, 1), np.float32)
  mask[:, 4:, 4:] = 1
  reference = np.roll(x0, 4, axis=2)  # the query under the target cell
  got = np.asarray(losses.edit_region_weights(jnp.asarray(x0), jnp.asarray(reference),
                                              jnp.asarray(mask), 3.0, 0.1))
  changed = np.zeros_like(mask)
  changed[0, 4, 5] = changed[1, 6:, 6] = changed[1, 5, 4] = 1
  raw = mask * (1 + 3.0 * changed)
  expected = raw / (raw.sum(axis=(1, 2, 3), keepdims=True) / 16)
  np.testing.assert_allclose(got, expected, rtol=1e-6)
  np.testing.assert_allclose(got.sum(axis=(1, 2, 3)), [16, 16], rtol=1e-6)  # mean 1 on the cell
  assert not got[mask == 0].any()

  # An error of 1 on the edited pixels only: the uniform loss sees 1/16 (grid 0) and 3/16
  # (grid 1) of it; with the region weighted, (1 + 3) / (16 + 3) and 3 * 4 / (16 + 9).
  schedule = schedules.make_schedule(ml_collections.ConfigDict(dict(
      schedule="cosine", num_timesteps=1000, beta_start=0.0, beta_end=0.0,
      prediction_type="epsilon")))
  wrong = lambda x_t, t: jnp.asarray(changed) * jnp.ones_like(x_t) + gaussian.eps_from_x0(
      jnp.asarray(x0), x_t, gaussian.alpha_at(schedule, t, 4))
  args = (wrong, schedule, jnp.asarray(x0), jnp.asarray(mask), jax.random.key(0))
  uniform, _ = losses.diffusion_loss(*args)
  weighted, _ = losses.diffusion_loss(*args, target_weights=jnp.asarray(got))
  np.testing.assert_allclose(uniform, (1 + 3) / 32, rtol=1e-4)
  np.testing.assert_allclose(weighted, (4 / 19 + 12 / 25) / 2, rtol=1e-4)
