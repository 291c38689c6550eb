"""The paper's ImageBrush: model inputs, the combined model, config builds and the summary."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import cpu_demo
from configs import default
from configs import objects
from configs import paper_256
from configs import tiny_test
from imagebrush_jax.data import tasks as tasks_lib
from imagebrush_jax.core import build as build_lib
from imagebrush_jax.core import grid as grid_lib
from imagebrush_jax.core import model as model_lib
from imagebrush_jax.core import summary
from tests import fake_params


def _batch(b=2, k=1, tile=8, seed=0):
  rng = np.random.default_rng(seed)
  grid = rng.integers(0, 256, (b, (k + 1) * tile, 2 * tile, 3), dtype=np.uint8)
  mask = np.zeros((b, (k + 1) * tile, 2 * tile, 1), np.uint8)
  mask[:, -tile:, tile:] = 1
  box = np.tile(np.array([0.0, 0.0, 1.0, 1.0], np.float32), (b, 1))
  return dict(grid=grid, mask=mask, box=box, task_id=np.zeros((b,), np.int32))


random_params = fake_params.random_params


# ---------------------------------------------------------------------------- model inputs


def test_blank_target_conditioning_and_mask_resize():
  batch = _batch(b=2, k=1, tile=4)
  x0 = grid_lib.pixels_to_unit(jnp.asarray(batch["grid"]))
  mask = jnp.asarray(batch["mask"], jnp.float32)
  cond = np.asarray(model_lib.BlankTarget()(x0, mask))
  np.testing.assert_array_equal(cond[:, 4:, 4:], 0.0)
  np.testing.assert_array_equal(cond[:, :4], np.asarray(x0)[:, :4])
  np.testing.assert_array_equal(cond[:, 4:, :4], np.asarray(x0)[:, 4:, :4])
  assert model_lib.BlankTarget().channels(4) == 4
  small = np.asarray(grid_lib.resize_mask(mask, 4, 2))
  np.testing.assert_array_equal(small[0, :, :, 0], [[0, 0], [0, 0], [0, 1], [0, 1]])


def test_query_in_target_conditioning_and_its_config_key():
  batch = _batch(b=2, k=2, tile=4)
  x0 = np.asarray(grid_lib.pixels_to_unit(batch["grid"]))
  cond = np.asarray(model_lib.QueryInTarget()(jnp.asarray(x0), jnp.asarray(batch["mask"],
                                                                          jnp.float32)))
  np.testing.assert_array_equal(cond[:, 8:, 4:], x0[:, 8:, :4])  # I under I'
  np.testing.assert_array_equal(cond[:, :, :4], x0[:, :, :4])
  np.testing.assert_array_equal(cond[:, :8], x0[:, :8])  # the example rows as they are
  config = tiny_test.get_config()
  assert isinstance(build_lib.build_model(config).conditioning, model_lib.BlankTarget)
  config.model.target_cell_fill = "query"
  model = build_lib.build_model(config)
  assert isinstance(model.conditioning, model_lib.QueryInTarget)
  inputs = model_lib.grid_to_model_inputs(_batch(k=1, tile=8), num_examples=1, tile_size=8,
                                          conditioning=model.conditioning)
  np.testing.assert_array_equal(np.asarray(inputs.cond)[:, 8:, 8:], np.asarray(inputs.query))
  config.model.target_cell_fill = "noise"
  with pytest.raises(ValueError, match="config.model.target_cell_fill must be one of"):
    build_lib.build_model(config)
  demo = cpu_demo.get_config()
  demo.model.target_cell_fill = "query"  # the variant conditions the grid itself
  with pytest.raises(ValueError, match="target_cell_fill = 'query' and variant 'cpu_demo'"):
    build_lib.build_model(demo)


def test_grid_to_model_inputs_and_latent_geometry():
  batch = _batch(b=2, k=2, tile=8)
  inputs = model_lib.grid_to_model_inputs(batch, num_examples=2, tile_size=8)
  assert inputs.x0.shape == (2, 24, 16, 3) and inputs.mask.shape == (2, 24, 16, 1)
  assert inputs.before.shape == (2, 2, 8, 8, 3) and inputs.query.shape == (2, 8, 8, 3)
  np.testing.assert_allclose(np.asarray(inputs.query), batch["grid"][:, 16:, :8] / 127.5 - 1,
                             atol=1e-6)
  # A stand-in f=4 "encoder" (average pooling to 4 channels): diffusion cells of 2x2, the mask
  # reduced to that grid, the prompt still in pixels.
  encode = lambda g: jnp.tile(g.reshape(2, 6, 4, 4, 4, 3).mean((2, 4)), (1, 1, 1, 2))[..., :4]
  latent = model_lib.grid_to_model_inputs(batch, num_examples=2, tile_size=8, encode=encode)
  assert latent.x0.shape == (2, 6, 4, 4) and latent.mask.shape == (2, 6, 4, 1)
  np.testing.assert_array_equal(np.asarray(latent.mask)[0, :, :, 0],
                                [[0, 0, 0, 0]] * 4 + [[0, 0, 1, 1]] * 2)
  np.testing.assert_array_equal(np.asarray(latent.cond)[:, 4:, 2:], 0.0)
  np.testing.assert_array_equal(np.asarray(latent.cond)[:, :4], np.asarray(latent.x0)[:, :4])
  assert latent.before.shape == (2, 2, 8, 8, 3)
  with pytest.raises(ValueError, match="batch\\['grid'\\]"):
    model_lib.grid_to_model_inputs(batch, num_examples=1, tile_size=8)
  with pytest.raises(KeyError, match="box"):
    model_lib.grid_to_model_inputs({"grid": batch["grid"], "mask": batch["mask"]}, num_examples=2,
                            tile_size=8)


# ---------------------------------------------------------------------------- the model


@pytest.fixture(scope="module")
def tiny():
  config = tiny_test.get_config()
  model = build_lib.build_model(config)
  params = random_params(build_lib.param_shapes(model, config))
  return config, model, params


def test_call_equals_encode_then_denoise_and_uses_the_prompt(tiny):
  config, model, params = tiny
  inputs = model_lib.grid_to_model_inputs(_batch(b=2, tile=8), num_examples=1, tile_size=8,
                                          conditioning=model.conditioning)
  t = jnp.array([10, 500], jnp.int32)
  x_t = jax.random.normal(jax.random.key(0), inputs.x0.shape)
  v = {"params": params}

  @jax.jit
  def run(before, drop):
    full = model.apply(v, x_t, t, inputs.cond, inputs.mask, before, inputs.after, inputs.query,
                       inputs.box, drop)
    ctx = model.apply(v, before, inputs.after, inputs.query, inputs.box, drop,
                      method=model_lib.ImageBrush.encode_prompt)
    split = model.apply(v, x_t, t, inputs.cond, inputs.mask, ctx,
                        method=model_lib.ImageBrush.denoise)
    null = model.apply(v, ctx, method=model_lib.ImageBrush.null_context)
    return full, split, ctx, null

  keep, drop = jnp.zeros((2,), bool), jnp.ones((2,), bool)
  full, split, ctx, null = run(inputs.before, keep)
  assert full.shape == inputs.x0.shape and full.dtype == jnp.float32
  np.testing.assert_allclose(full, split, rtol=1e-5, atol=1e-5)
  full2 = run(-inputs.before, keep)[0]
  assert float(jnp.abs(full2 - full).max()) > 1e-3, "the prompt images do not reach the output"
  # Dropped prompts: the null tokens, and the output no longer depends on the prompt images.
  d1, _, ctx_d, _ = run(inputs.before, drop)
  d2 = run(-inputs.before, drop)[0]
  np.testing.assert_allclose(d1, d2, rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(np.asarray(ctx_d), np.asarray(null))
  assert null.shape == ctx.shape


@pytest.mark.parametrize("config_module", [tiny_test, default, cpu_demo, objects, paper_256])
def test_configs_build_with_float32_params(config_module):
  config = config_module.get_config()
  model = build_lib.build_model(config)
  shapes = build_lib.param_shapes(model, config)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(shapes))
  counts = summary.param_counts(config)
  assert counts["total"] == counts["unet"] + counts["prompt_encoder"] + counts["extra_inputs"]
  # The paper's model has no plug-ins; the demo's are the only parameters beside it.
  paper = not config.model.variant
  assert set(shapes) == ({"unet", "prompt_encoder"} if paper else
                         {"unet", "prompt_encoder", "extra_inputs"})
  assert ("extra_tokens" in shapes["prompt_encoder"]) == (not paper)
  fill = model_lib.QueryInTarget if config_module is objects else model_lib.BlankTarget
  assert isinstance(model.conditioning, fill) == paper
  if config_module is objects:  # the base model's parameters exactly
    assert counts == summary.param_counts(default.get_config())
  if config_module is paper_256:
    assert counts["total"] == 978_488_132  # SD v1 UNet + ViT-B/16 + a 5-layer mixer
    assert 80e6 < counts["prompt_vit"] < 90e6  # ViT-B/16 size
    assert 800e6 < counts["unet"] < 900e6  # SD v1 UNet size


def test_config_task_lists_match_the_task_registry():
  """The configs name tasks without importing the package; these lists must follow its registry."""
  assert default.GLOBAL_TASKS == tasks_lib.GLOBAL_TASKS
  registered = tasks_lib.task_names()
  assert objects.OBJECT_TASKS == tuple(n for n in registered
                                       if not tasks_lib.get_task(n).is_global)
  config = objects.get_config()
  assert sorted(config.data.train_tasks) == sorted(registered)  # every built-in task
  assert all(tasks_lib.is_known(n) and n not in registered for n in config.data.heldout_tasks)

def test_modules_are_built_from_the_config_with_one_runtime():
  config = tiny_test.get_config()
  config.model.dtype = "bfloat16"
  config.model.remat = True
  config.model.unet.num_heads = 4
  model = build_lib.build_model(config)
  assert model.unet.runtime is model.prompt_encoder.runtime is model.prompt_encoder.vit.runtime
  assert model.unet.runtime.dtype == jnp.bfloat16 and model.unet.runtime.remat
  assert model.unet.num_heads == 4 and tuple(model.unet.channels) == (16, 32)
  config.model.unet.bogus = 1  # refused by name when the config is parsed, before any build
  with pytest.raises(ValueError, match=r"config\.model\.unet\.bogus is not an option here"):
    build_lib.build_model(config)
