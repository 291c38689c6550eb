"""The weighted loss against NumPy, its oracle minimum, and the model-level loss and sampler."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import tiny_test
from imagebrush_jax.diffusion import gaussian
from imagebrush_jax.diffusion import losses
from imagebrush_jax.diffusion import pipeline
from imagebrush_jax.diffusion import schedules
from imagebrush_jax.models import imagebrush as ib


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


# ---------------------------------------------------------------------------- model level


def _batch(config, b=2, seed=0):
  k, tile = config.data.num_examples, config.data.tile_size
  rng = np.random.default_rng(seed)
  grid = rng.integers(0, 256, (b, (k + 1) * tile, 2 * tile, 3), dtype=np.uint8)
  mask = np.zeros((b, (k + 1) * tile, 2 * tile, 1), np.uint8)
  mask[:, -tile:, tile:] = 1
  return dict(grid=grid, mask=mask, box=np.tile(np.float32([0, 0, 1, 1]), (b, 1)),
              task_id=np.zeros((b,), np.int32))


@pytest.fixture(scope="module")
def tiny():
  config = tiny_test.get_config()
  config.model.target_cell_fill = "query"
  config.model.unet.channels = (16,)  # one level keeps the compilations short
  config.model.unet.attention = ("self+cross",)
  config.model.unet.mid_attention = "none"
  model = ib.build_model(config)
  return config, model, ib.init_params(model, config, jax.random.key(0))


def test_init_params_starts_at_zero_output(tiny):
  _, _, params = tiny
  # LDM initialisation: zero output conv and zero second convs; the model starts at eps = 0.
  np.testing.assert_array_equal(np.asarray(params["unet"]["conv_out"]["kernel"]), 0.0)
  np.testing.assert_array_equal(np.asarray(params["unet"]["up0_res1"]["conv2"]["kernel"]), 0.0)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))


def test_loss_fn_gradients(tiny):
  config, model, params = tiny
  loss_fn = pipeline.make_loss_fn(model, config)
  grad_fn = jax.jit(jax.value_and_grad(loss_fn, has_aux=True), static_argnums=3)
  batch = _batch(config)
  (loss, metrics), grads = grad_fn(params, batch, jax.random.key(1), True)
  # A zero prediction: a loss of ~1 for epsilon (unit-variance noise); for v (alpha * eps -
  # sigma * x0, pixels in [-1, 1]) between E[x0^2] and 1.
  low = 0.5 if config.diffusion.prediction_type == "epsilon" else 0.2
  assert low < float(loss) < 1.5
  assert set(metrics) == {"loss", "mse_target", "mse_known"}
  assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))
  # At a zero-initialised output only the output conv gets a gradient; it must get one.
  assert float(jnp.abs(grads["unet"]["conv_out"]["kernel"]).max()) > 0


def test_sample_fn_keeps_context_and_reuses_compilation(tiny):
  config, model, params = tiny
  sample_fn = pipeline.make_sample_fn(model, config)
  batch = _batch(config)
  out = sample_fn(params, batch, jax.random.key(0), guidance_scale=3.0)
  tile = config.data.tile_size
  assert out["grid"].shape == batch["grid"].shape and out["target"].shape == (2, tile, tile, 3)
  grid = np.asarray(ib.pixels_to_unit(batch["grid"]))
  known = 1 - batch["mask"].astype(np.float32)
  np.testing.assert_allclose(np.asarray(out["grid"]) * known, grid * known, atol=1e-6)
  np.testing.assert_array_equal(np.asarray(out["target"]),
                                np.asarray(out["grid"])[:, tile:, tile:])
  assert np.isfinite(np.asarray(out["target"])).all()
  assert np.abs(np.asarray(out["target"])).max() <= 1.0  # clip_x0 in pixel space
  again = sample_fn(params, batch, jax.random.key(1), guidance_scale=5.0, eta=0.5)
  assert again["grid"].shape == out["grid"].shape
  assert sample_fn.jitted._cache_size() == 1  # new key, scale and eta: no recompilation
