"""UNet: shapes and dtypes across layouts, conditioning on the context, remat, config errors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from imagebrush_jax.models import runtime as runtime_lib
from tests import fake_params
from imagebrush_jax.models import unet as unet_lib


def random_params(module, *args, seed=0):
  return fake_params.module_params(module, *args, seed=seed, bias_scale=0.1)


def _inputs(b=2, hw=16, c=7, tokens=5, width=24, seed=0):
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.standard_normal((b, hw, hw, c)), jnp.float32)
  t = jnp.asarray(rng.integers(0, 1000, (b,)), jnp.int32)
  ctx = jnp.asarray(rng.standard_normal((b, tokens, width)), jnp.float32)
  return x, t, ctx


def test_imagebrush_layout_shapes_and_context_dependence():
  unet = unet_lib.UNet(out_channels=3, channels=(16, 32), attention=("self", "self+cross"),
                       mid_attention="self+cross", num_heads=2, norm_groups=8)
  x, t, ctx = _inputs()
  params = random_params(unet, x, t, ctx)
  apply = jax.jit(lambda p, x, t, c: unet.apply({"params": p}, x, t, c))
  out = apply(params, x, t, ctx)
  assert out.shape == (2, 16, 16, 3) and out.dtype == jnp.float32
  assert np.isfinite(np.asarray(out)).all()
  out2 = apply(params, x, t, ctx.at[:, 0].add(1.0))
  assert np.abs(np.asarray(out2 - out)).max() > 1e-3, "the context does not reach the output"
  out3 = apply(params, x, t + 17, ctx)
  assert np.abs(np.asarray(out3 - out)).max() > 1e-3, "the timestep does not reach the output"
  # Self-attention only in the outer level: the outer level has no cross-attention parameters.
  assert "attn_cross" not in params["down0_attn0"]["block0"]
  assert "attn_cross" in params["down1_attn0"]["block0"]


def test_sd_layout_bfloat16_head_dim_and_res_blocks():
  # SD's layout (cross-attention everywhere but the last level), two ResBlocks per level,
  # heads from head_dim, bfloat16 compute with float32 parameters.
  unet = unet_lib.UNet(out_channels=4, channels=(16, 32), attention=("self+cross", "none"),
                       mid_attention="self+cross", num_res_blocks=2, head_dim=8, norm_groups=8,
                       runtime=runtime_lib.Runtime(dtype=jnp.bfloat16))
  x, t, ctx = _inputs(hw=4, c=4)
  params = random_params(unet, x, t, ctx)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
  assert params["down0_attn1"]["block0"]["attn_self"]["qkv"]["kernel"].shape == (16, 3, 2, 8)
  assert params["mid_attn"]["block0"]["attn_cross"]["q"]["kernel"].shape == (32, 4, 8)
  assert "down1_attn0" not in params and "up1_res2" in params and "up0_attn2" in params
  out = jax.jit(lambda p: unet.apply({"params": p}, x, t, ctx))(params)
  assert out.shape == (2, 4, 4, 4) and out.dtype == jnp.bfloat16
  assert np.isfinite(np.asarray(out, np.float32)).all()


def test_cross_only_levels_and_no_context_layout():
  unet = unet_lib.UNet(out_channels=2, channels=(8,), attention=("cross",), mid_attention="none",
                       num_heads=2, norm_groups=4)
  x, t, ctx = _inputs(hw=4, c=3, width=6)
  params = random_params(unet, x, t, ctx)
  assert "attn_self" not in params["down0_attn0"]["block0"]
  assert jax.jit(unet.apply)({"params": params}, x, t, ctx).shape == (2, 4, 4, 2)
  with pytest.raises(ValueError, match="needs context"):
    jax.eval_shape(unet.apply, {"params": params}, x, t, None)
  plain = unet_lib.UNet(out_channels=2, channels=(8,), attention=("none",), mid_attention="self",
                        num_heads=2, norm_groups=4)
  plain_params = random_params(plain, x, t)
  assert jax.jit(plain.apply)({"params": plain_params}, x, t).shape == (2, 4, 4, 2)


def test_remat_wraps_blocks_and_keeps_outputs():
  kw = dict(out_channels=2, channels=(8,), attention=("self+cross",), mid_attention="none",
            num_heads=2, norm_groups=4)
  plain, remat = unet_lib.UNet(**kw), unet_lib.UNet(**kw, runtime=runtime_lib.Runtime(remat=True))
  x, t, ctx = _inputs(hw=4, c=3, width=8)
  params = random_params(plain, x, t, ctx)

  def jaxpr(module):
    return str(jax.make_jaxpr(lambda p: module.apply({"params": p}, x, t, ctx))(params))

  # Down: ResBlock + SpatialTransformer; middle: 2 ResBlocks; up: 2 x (ResBlock +
  # SpatialTransformer). Each is one rematerialised block.
  assert jaxpr(plain).count("remat") == 0
  assert jaxpr(remat).count("remat2[") == 8
  out = jax.jit(lambda p: (plain.apply({"params": p}, x, t, ctx),
                           remat.apply({"params": p}, x, t, ctx)))(params)
  np.testing.assert_allclose(out[0], out[1], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kw,match", [
    (dict(attention=("self",)), "entries for 2 levels"),
    (dict(attention=("self", "global")), "attention type"),
    (dict(norm_groups=5), "norm_groups"),
])
def test_config_errors(kw, match):
  base = dict(out_channels=3, channels=(8, 16), attention=("self", "cross"), norm_groups=4)
  unet = unet_lib.UNet(**{**base, **kw})
  x, t, ctx = _inputs(hw=4, c=3, width=8)
  with pytest.raises(ValueError, match=match):
    jax.eval_shape(lambda: unet.init(jax.random.key(0), x, t, ctx))
