"""ImageBrush: grid geometry, model inputs, the combined model, config builds and the summary."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from configs import paper_256
from configs import tiny_test
from imagebrush_jax.models import imagebrush as ib
from imagebrush_jax.models import summary


def _batch(b=2, k=1, tile=8, seed=0):
  rng = np.random.default_rng(seed)
  grid = rng.integers(0, 256, (b, (k + 1) * tile, 2 * tile, 3), dtype=np.uint8)
  mask = np.zeros((b, (k + 1) * tile, 2 * tile, 1), np.uint8)
  mask[:, -tile:, tile:] = 1
  box = np.tile(np.array([0.0, 0.0, 1.0, 1.0], np.float32), (b, 1))
  return dict(grid=grid, mask=mask, box=box, task_id=np.zeros((b,), np.int32))


def random_params(shapes, seed=0):
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    n = rng.standard_normal(leaf.shape).astype(np.float32)
    if path[-1].key == "scale":
      return jnp.asarray(1.0 + 0.1 * n)
    if path[-1].key == "kernel":
      return jnp.asarray(n / np.sqrt(max(np.prod(leaf.shape[:-1]), 1)))
    return jnp.asarray(0.5 * n)

  return jax.tree_util.tree_map_with_path(fill, shapes)


# ---------------------------------------------------------------------------- grid geometry


def test_split_cells_matches_slicing():
  k, t = 2, 4
  grid = np.arange(2 * (k + 1) * t * 2 * t * 3).reshape(2, (k + 1) * t, 2 * t, 3)
  before, after, query, target = (np.asarray(a) for a in ib.split_cells(jnp.asarray(grid), k, t))
  for i in range(k):
    np.testing.assert_array_equal(before[:, i], grid[:, i * t:(i + 1) * t, :t])
    np.testing.assert_array_equal(after[:, i], grid[:, i * t:(i + 1) * t, t:])
  np.testing.assert_array_equal(query, grid[:, k * t:, :t])
  np.testing.assert_array_equal(target, grid[:, k * t:, t:])
  np.testing.assert_array_equal(np.asarray(ib.target_cell(jnp.asarray(grid), k)), target)
  with pytest.raises(ValueError, match="K=1"):
    ib.split_cells(jnp.asarray(grid), 1, t)


def test_conditioning_fills_and_mask_resize():
  batch = _batch(b=2, k=1, tile=4)
  x0 = ib.pixels_to_unit(batch["grid"])
  mask = jnp.asarray(batch["mask"], jnp.float32)
  zeros = np.asarray(ib.make_conditioning(x0, mask, "zeros"))
  np.testing.assert_array_equal(zeros[:, 4:, 4:], 0.0)
  np.testing.assert_array_equal(zeros[:, :4], np.asarray(x0)[:, :4])
  query = np.asarray(ib.make_conditioning(x0, mask, "query"))
  np.testing.assert_array_equal(query[:, 4:, 4:], np.asarray(x0)[:, 4:, :4])  # I under I'
  np.testing.assert_array_equal(query[:, :, :4], np.asarray(x0)[:, :, :4])
  with pytest.raises(ValueError, match="target_cell_fill"):
    ib.make_conditioning(x0, mask, "noise")
  small = np.asarray(ib.resize_mask(mask, 4, 2))
  np.testing.assert_array_equal(small[0, :, :, 0], [[0, 0], [0, 0], [0, 1], [0, 1]])
  np.testing.assert_array_equal(np.asarray(ib.unit_to_pixels(x0)), batch["grid"])


def test_grid_to_model_inputs_and_latent_geometry():
  batch = _batch(b=2, k=2, tile=8)
  inputs = ib.grid_to_model_inputs(batch, num_examples=2, tile_size=8, target_cell_fill="zeros")
  assert inputs.x0.shape == (2, 24, 16, 3) and inputs.mask.shape == (2, 24, 16, 1)
  assert inputs.before.shape == (2, 2, 8, 8, 3) and inputs.query.shape == (2, 8, 8, 3)
  np.testing.assert_allclose(np.asarray(inputs.query), batch["grid"][:, 16:, :8] / 127.5 - 1,
                             atol=1e-6)
  # A stand-in f=4 "encoder" (average pooling to 4 channels): diffusion cells of 2x2, the mask
  # reduced to that grid, the prompt still in pixels.
  encode = lambda g: jnp.tile(g.reshape(2, 6, 4, 4, 4, 3).mean((2, 4)), (1, 1, 1, 2))[..., :4]
  latent = ib.grid_to_model_inputs(batch, num_examples=2, tile_size=8, encode=encode,
                                   target_cell_fill="query")
  assert latent.x0.shape == (2, 6, 4, 4) and latent.mask.shape == (2, 6, 4, 1)
  np.testing.assert_array_equal(np.asarray(latent.mask)[0, :, :, 0],
                                [[0, 0, 0, 0]] * 4 + [[0, 0, 1, 1]] * 2)
  np.testing.assert_array_equal(np.asarray(latent.cond)[:, 4:, 2:],
                                np.asarray(latent.x0)[:, 4:, :2])
  assert latent.before.shape == (2, 2, 8, 8, 3)
  with pytest.raises(ValueError, match="batch\\['grid'\\]"):
    ib.grid_to_model_inputs(batch, num_examples=1, tile_size=8)
  with pytest.raises(KeyError, match="box"):
    ib.grid_to_model_inputs({"grid": batch["grid"], "mask": batch["mask"]}, num_examples=2,
                            tile_size=8)


# ---------------------------------------------------------------------------- the model


@pytest.fixture(scope="module")
def tiny():
  config = tiny_test.get_config()
  model = ib.build_model(config)
  params = random_params(ib.param_shapes(model, config))
  return config, model, params


def test_call_equals_encode_then_denoise_and_uses_the_prompt(tiny):
  config, model, params = tiny
  inputs = ib.grid_to_model_inputs(_batch(b=2, tile=8), num_examples=1, tile_size=8,
                                  target_cell_fill=config.model.target_cell_fill)
  t = jnp.array([10, 500], jnp.int32)
  x_t = jax.random.normal(jax.random.key(0), inputs.x0.shape)
  v = {"params": params}

  @jax.jit
  def run(before, drop):
    full = model.apply(v, x_t, t, inputs.cond, inputs.mask, before, inputs.after, inputs.query,
                       inputs.box, drop)
    ctx = model.apply(v, before, inputs.after, inputs.query, inputs.box, drop,
                      method=ib.ImageBrush.encode_prompt)
    split = model.apply(v, x_t, t, inputs.cond, inputs.mask, ctx, method=ib.ImageBrush.denoise)
    null = model.apply(v, ctx, method=ib.ImageBrush.null_context)
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


@pytest.mark.parametrize("config_module", [tiny_test, default, paper_256])
def test_configs_build_with_float32_params(config_module):
  config = config_module.get_config()
  shapes = ib.param_shapes(ib.build_model(config), config)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(shapes))
  counts = summary.param_counts(config)
  assert counts["total"] == counts["unet"] + counts["prompt_encoder"] + counts["edit_proposal"]
  assert (counts["edit_proposal"] > 0) == bool(config.model.edit_proposal)
  if config_module is paper_256:
    assert 80e6 < counts["prompt_vit"] < 90e6  # ViT-B/16 size
    assert 800e6 < counts["unet"] < 900e6  # SD v1 UNet size


def test_build_model_rejects_unknown_fill():
  config = tiny_test.get_config()
  config.model.target_cell_fill = "noise"
  with pytest.raises(ValueError, match="target_cell_fill"):
    ib.build_model(config)
  config = tiny_test.get_config()
  config.model.target_cell_fill = "zeros"
  config.model.edit_proposal = True
  with pytest.raises(ValueError, match="model.edit_proposal"):
    ib.build_model(config)


def test_make_conditioning_query_dihedral_stacks_the_query_views():
  x0 = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (2, 8, 8, 3)), jnp.float32)
  mask = jnp.zeros((2, 8, 8, 1)).at[:, 4:, 4:].set(1.0)
  cond = np.asarray(ib.make_conditioning(x0, mask, "query_dihedral"))
  assert cond.shape == (2, 8, 8, 3 * ib.NUM_DIHEDRAL_VIEWS)
  q = np.asarray(x0)[:, 4:, :4]
  np.testing.assert_array_equal(cond[..., :3], np.asarray(ib.make_conditioning(x0, mask, "query")))
  np.testing.assert_array_equal(cond[:, 4:, 4:, 3:6], q[:, :, ::-1])  # hflip
  np.testing.assert_array_equal(cond[:, 4:, 4:, 9:12], np.rot90(q, 1, axes=(1, 2)))  # rot90
  assert not cond[:, :4, :, 3:].any() and not cond[:, :, :4, 3:].any()  # views only under I'
  assert ib.conditioning_channels("query_dihedral", 4) == 32
  assert ib.conditioning_channels("query", 4) == 4


def test_edit_proposal_applies_the_prompted_linear_map_on_the_target_cell():
  x0 = jnp.asarray(np.random.default_rng(1).uniform(-1, 1, (2, 8, 8, 3)), jnp.float32)
  mask = jnp.zeros((2, 8, 8, 1)).at[:, 4:, 4:].set(1.0)
  cond = ib.make_conditioning(x0, mask, "query_dihedral")  # 24 channels
  context = jnp.asarray(np.random.default_rng(2).standard_normal((2, 5, 16)), jnp.float32)
  head = ib.EditProposal(out_channels=3)
  params = jax.eval_shape(lambda: head.init(jax.random.key(0), cond, mask, context))["params"]
  assert params["weights"]["kernel"].shape == (16, 25 * 3)
  # Weights that ignore the prompt and pick view 1 (hflip) with red and blue swapped, plus 0.5.
  bias = np.zeros((25, 3), np.float32)
  bias[3 + np.arange(3), [2, 1, 0]] = 1.0
  bias[24] = 0.5
  params = {"weights": {"kernel": jnp.zeros((16, 75)), "bias": jnp.asarray(bias.reshape(-1))}}
  draft = np.asarray(head.apply({"params": params}, cond, mask, context))
  q = np.asarray(x0)[:, 4:, :4]
  np.testing.assert_allclose(draft[:, 4:, 4:], q[:, :, ::-1, ::-1] + 0.5, atol=1e-6)
  assert not draft[:, :4].any() and not draft[:, :, :4].any()  # zero off the target cell


def test_edit_proposal_carries_the_prompt_into_an_attention_free_unet():
  config = tiny_test.get_config()
  config.model.target_cell_fill = "query_dihedral"
  config.model.edit_proposal = True
  config.model.unet.attention = ("none",) * len(config.model.unet.channels)
  config.model.unet.mid_attention = "none"
  model = ib.build_model(config)
  inputs = ib.grid_to_model_inputs(_batch(tile=config.data.tile_size), num_examples=1,
                                   tile_size=config.data.tile_size,
                                   target_cell_fill="query_dihedral")
  params = random_params(ib.param_shapes(model, config))
  conv_in = params["unet"]["conv_in"]["kernel"]
  assert conv_in.shape[2] == 3 + 24 + 3 + 1  # x_t, conditioning, the draft, the mask
  context = model.apply({"params": params}, inputs.before, inputs.after, inputs.query, inputs.box,
                        method=ib.ImageBrush.encode_prompt)
  x_t = jnp.zeros_like(inputs.x0)
  t = jnp.full((2,), 500, jnp.int32)
  denoise = lambda ctx: np.asarray(model.apply({"params": params}, x_t, t, inputs.cond,
                                               inputs.mask, ctx, method=ib.ImageBrush.denoise))
  assert np.abs(denoise(context) - denoise(context + 1.0)).max() > 1e-3
