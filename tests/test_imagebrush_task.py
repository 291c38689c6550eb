"""ImageBrush as a task: the loss and the sampler on a data batch (core/objective.py)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import tiny_test
from imagebrush_jax.diffusion import gaussian
from imagebrush_jax.diffusion.schedules import make_schedule
from imagebrush_jax.core import build as build_lib
from imagebrush_jax.core import grid as grid_lib
from imagebrush_jax.core import objective as objective_lib


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
  config.model.unet.channels = (16,)  # one level keeps the compilations short
  config.model.unet.attention = ("self+cross",)
  config.model.unet.mid_attention = "none"
  model = build_lib.build_model(config)
  return config, model, build_lib.init_params(model, config, jax.random.key(0))


def test_init_params_starts_at_zero_output(tiny):
  _, _, params = tiny
  # LDM initialisation: zero output conv and zero second convs; the model starts at eps = 0.
  np.testing.assert_array_equal(np.asarray(params["unet"]["conv_out"]["kernel"]), 0.0)
  np.testing.assert_array_equal(np.asarray(params["unet"]["up0_res1"]["conv2"]["kernel"]), 0.0)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))


def test_loss_fn_gradients(tiny):
  config, model, params = tiny
  loss_fn = objective_lib.make_loss_fn(model, config)
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
  sample_fn = objective_lib.make_sample_fn(model, config)
  batch = _batch(config)
  out = sample_fn(params, batch, jax.random.key(0), guidance_scale=3.0)
  tile = config.data.tile_size
  assert out["grid"].shape == batch["grid"].shape and out["target"].shape == (2, tile, tile, 3)
  grid = np.asarray(grid_lib.pixels_to_unit(batch["grid"]))
  known = 1 - batch["mask"].astype(np.float32)
  np.testing.assert_allclose(np.asarray(out["grid"]) * known, grid * known, atol=1e-6)
  np.testing.assert_array_equal(np.asarray(out["target"]),
                                np.asarray(out["grid"])[:, tile:, tile:])
  assert np.isfinite(np.asarray(out["target"])).all()
  assert np.abs(np.asarray(out["target"])).max() <= 1.0  # clip_x0 in pixel space
  again = sample_fn(params, batch, jax.random.key(1), guidance_scale=5.0, eta=0.5)
  assert again["grid"].shape == out["grid"].shape
  assert sample_fn.jitted._cache_size() == 1  # new key, scale and eta: no recompilation


@pytest.mark.parametrize("residual", [False, True])
def test_residual_target_is_diffused_and_added_back(tiny, monkeypatch, residual):
  """An exact denoiser of the known grid with the target cell zeroed: in pixels that is an I' of
  zeros; as a residual to the query, I' = I."""
  config, model, params = tiny
  config = config.copy_and_resolve_references()
  config.diffusion.residual_target = residual
  schedule = make_schedule(config.diffusion)

  def oracle_fn(unused_model):
    def denoise_fn(unused_params, x_t, t, cond):
      x0 = cond["cond"]  # BlankTarget: the grid with the target cell zeroed
      a = gaussian.alpha_at(schedule, t, 4)
      return (x_t - jnp.sqrt(a) * x0) / jnp.sqrt(1.0 - a)  # epsilon
    return denoise_fn

  monkeypatch.setattr(objective_lib, "make_denoise_fn", oracle_fn)
  batch = _batch(config)
  out = objective_lib.make_sample_fn(model, config)(params, batch, jax.random.key(0),
                                                      num_steps=5, guidance_scale=1.0)
  query = grid_lib.split_cells(grid_lib.pixels_to_unit(batch["grid"]), 1).query
  np.testing.assert_allclose(np.asarray(out["target"]), query if residual else 0.0, atol=1e-4)
  loss_fn = objective_lib.make_loss_fn(model, config)
  _, metrics = loss_fn(params, batch, jax.random.key(1), False)
  assert np.isfinite(float(metrics["loss"]))
