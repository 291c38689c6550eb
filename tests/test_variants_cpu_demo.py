"""The CPU demo's plug-ins: the query under the target cell, pair statistics, the edit proposal."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import cpu_demo
from configs import tiny_test
from imagebrush_jax.core import build as build_lib
from imagebrush_jax.core import model as model_lib
from imagebrush_jax.core.plugins import cpu_demo as demo_lib
from imagebrush_jax.core.plugins import dihedral
from tests.fake_params import random_params
from tests.test_imagebrush_model import _batch


def demo_config(**options):
  """tiny_test with the demo's plug-ins (options override configs/cpu_demo.py's)."""
  config = tiny_test.get_config()
  config.model.variant = "cpu_demo"
  config.model.variant_options = cpu_demo.get_config().model.variant_options
  for key, value in options.items():
    config.model.variant_options[key] = value
  return config


def test_query_under_target_holds_the_query_and_its_views():
  x0 = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (2, 8, 8, 3)), jnp.float32)
  mask = jnp.zeros((2, 8, 8, 1)).at[:, 4:, 4:].set(1.0)
  query = np.asarray(demo_lib.QueryUnderTarget(dihedral=False)(x0, mask))
  np.testing.assert_array_equal(query[:, 4:, 4:], np.asarray(x0)[:, 4:, :4])  # I under I'
  np.testing.assert_array_equal(query[:, :, :4], np.asarray(x0)[:, :, :4])
  cond = np.asarray(demo_lib.QueryUnderTarget()(x0, mask))
  assert cond.shape == (2, 8, 8, 3 * dihedral.NUM_DIHEDRAL_VIEWS)
  q = np.asarray(x0)[:, 4:, :4]
  np.testing.assert_array_equal(cond[..., :3], query)
  np.testing.assert_array_equal(cond[:, 4:, 4:, 3:6], q[:, :, ::-1])  # hflip
  np.testing.assert_array_equal(cond[:, 4:, 4:, 9:12], np.rot90(q, 1, axes=(1, 2)))  # rot90
  assert not cond[:, :4, :, 3:].any() and not cond[:, :, :4, 3:].any()  # views only under I'
  assert demo_lib.QueryUnderTarget().channels(4) == 32
  assert demo_lib.QueryUnderTarget(dihedral=False).channels(4) == 4


def test_pair_statistics_find_the_view_and_colour_map_of_an_edit():
  rng = np.random.default_rng(1)
  before = rng.uniform(-1, 1, (2, 1, 16, 16, 3)).astype(np.float32)
  # E' = vflip(E) with red and blue swapped, then inverted: view 2 (up-down flip) correlates
  # with E' as minus the red/blue permutation; every other view barely correlates.
  after = -before[:, :, ::-1, :, ::-1]
  stats = np.asarray(demo_lib.pair_statistics(jnp.asarray(before), jnp.asarray(after)))
  assert stats.shape == (2, 1, 8 * 9 + 12)
  corr = stats[..., :72].reshape(2, 1, 8, 3, 3)
  swap = np.eye(3, dtype=bool)[::-1]  # the red/blue permutation
  np.testing.assert_allclose(corr[:, 0, 2][:, swap], -1.0, atol=1e-3)
  assert np.abs(corr[:, 0, 2][:, ~swap]).max() < 0.3  # independent random channels
  others = np.delete(corr, 2, axis=2)
  assert np.abs(others).max() < 0.5
  np.testing.assert_allclose(stats[..., 72:75], before.mean(axis=(2, 3)), atol=1e-6)
  np.testing.assert_allclose(stats[..., 78:81], after.mean(axis=(2, 3)), atol=1e-6)


def test_edit_proposal_applies_the_prompted_linear_map_on_the_target_cell():
  x0 = jnp.asarray(np.random.default_rng(1).uniform(-1, 1, (2, 8, 8, 3)), jnp.float32)
  mask = jnp.zeros((2, 8, 8, 1)).at[:, 4:, 4:].set(1.0)
  cond = demo_lib.QueryUnderTarget()(x0, mask)  # 24 channels
  context = jnp.asarray(np.random.default_rng(2).standard_normal((2, 5, 16)), jnp.float32)
  head = demo_lib.EditProposal(out_channels=3)
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


def test_plugins_fill_the_extension_points_of_the_core_model():
  config = demo_config()
  config.model.unet.attention = ("none",) * len(config.model.unet.channels)
  config.model.unet.mid_attention = "none"
  model = build_lib.build_model(config)
  assert isinstance(model.conditioning, demo_lib.QueryUnderTarget)
  inputs = model_lib.grid_to_model_inputs(_batch(tile=config.data.tile_size), num_examples=1,
                                          tile_size=config.data.tile_size,
                                          conditioning=model.conditioning)
  params = random_params(build_lib.param_shapes(model, config))
  conv_in = params["unet"]["conv_in"]["kernel"]
  assert conv_in.shape[2] == 3 + 24 + 3 + 1  # x_t, conditioning, the draft, the mask
  assert params["prompt_encoder"]["extra_tokens"]["fc1"]["kernel"].shape == (84, 32)
  context = model.apply({"params": params}, inputs.before, inputs.after, inputs.query, inputs.box,
                        method=model_lib.ImageBrush.encode_prompt)
  assert context.shape[1] == 3 * 4 + 1 + 1  # 3 images x 4 patches, a pair token, the box
  # Without attention anywhere in the UNet, the edit proposal alone carries the prompt.
  x_t = jnp.zeros_like(inputs.x0)
  t = jnp.full((2,), 500, jnp.int32)
  denoise = lambda ctx: np.asarray(model.apply({"params": params}, x_t, t, inputs.cond,
                                               inputs.mask, ctx,
                                               method=model_lib.ImageBrush.denoise))
  assert np.abs(denoise(context) - denoise(context + 1.0)).max() > 1e-3


def test_each_option_switches_one_plug_in_off():
  plain = build_lib.build_model(demo_config(target_cell_fill="zeros", pair_stats=False,
                                            edit_proposal=False))
  assert isinstance(plain.conditioning, model_lib.BlankTarget)
  assert plain.extra_inputs is None and plain.prompt_encoder.extra_tokens is None
  query = build_lib.build_model(demo_config(target_cell_fill="query"))
  assert query.conditioning == demo_lib.QueryUnderTarget(dihedral=False)


@pytest.mark.parametrize("variant,options,match", [
    ("cpu_demo", dict(target_cell_fill="noise"), "variant_options.target_cell_fill"),
    ("cpu_demo", dict(target_cell_fill="zeros"), "variant_options.edit_proposal"),
    ("cpu_demo", dict(pooled_prompt=True), "variant_options has \\['pooled_prompt'\\]"),
    ("sepia", {}, "config.model.variant must be"),
    ("", dict(pair_stats=True), "without config.model.variant"),
])
def test_variant_errors_name_the_key(variant, options, match):
  config = demo_config()
  config.model.variant = variant
  if not variant:
    config.model.variant_options = {}
  for key, value in options.items():
    config.model.variant_options[key] = value
  with pytest.raises(ValueError, match=match):
    build_lib.build_model(config)
