"""The DiT backbone (model.backbone = 'dit'): the UNet's interface, positions against their
formula, a prompt that reaches every patch, its FLOP count against XLA's, and a model that
learns a tiny problem."""
import jax
import numpy as np
import optax
import pytest

import conftest
from configs import tiny_test
from imagebrush_jax.core import build as build_lib
from imagebrush_jax.core import objective as objective_lib
from imagebrush_jax.data import pipeline
from imagebrush_jax.infra import config_checks
from imagebrush_jax.models import dit as dit_lib
from imagebrush_jax.models import layers


def _config(**dit):
  c = tiny_test.get_config()
  c.model.backbone = "dit"
  c.model.dit.width, c.model.dit.depth, c.model.dit.num_heads = 64, 2, 4
  for key, value in dit.items():
    c.model.dit[key] = value
  return c


def test_sincos_matches_the_mae_formula():
  emb = dit_lib.sincos_2d(3, 5, 8)
  omega = 1.0 / 10000 ** (np.arange(2) / 2)
  y, x = 2, 4  # the last token
  want = np.concatenate([np.sin(y * omega), np.cos(y * omega), np.sin(x * omega),
                         np.cos(x * omega)])
  np.testing.assert_allclose(emb[-1], want, rtol=1e-6)
  assert emb.shape == (15, 8) and len({tuple(r) for r in np.round(emb, 6)}) == 15
  with pytest.raises(ValueError, match="divide by 4"):
    dit_lib.sincos_2d(2, 2, 6)


@pytest.mark.parametrize("position_bias", [False, True])
def test_dit_has_the_unet_interface_and_reads_the_prompt(position_bias):
  config = _config(position_bias=position_bias)
  model = build_lib.build_model(config)
  assert isinstance(model.unet, dit_lib.DiT)
  params = build_lib.init_params(model, config, jax.random.key(0))
  inputs = build_lib.dummy_inputs(model, config, batch_size=2)
  out = model.apply({"params": params}, **inputs)
  assert out.shape == inputs["x_t"].shape and not np.any(out)  # the output layer starts at 0
  # Off its init, every output patch depends on the prompt (joint attention, pooled prompt).
  noise = iter(jax.random.split(jax.random.key(1), len(jax.tree.leaves(params))))
  moved = jax.tree.map(lambda x: x + 0.05 * jax.random.normal(next(noise), x.shape), params)
  a = model.apply({"params": moved}, **inputs)
  b = model.apply({"params": moved}, **{**inputs, "query": inputs["query"] + 0.5})
  p = config.model.dit.patch_size
  change = np.abs(np.asarray(a - b)).reshape(2, a.shape[1] // p, p, a.shape[2] // p, p, -1)
  assert (change.max(axis=(2, 4, 5)) > 1e-5).all()
  # Rematerialised blocks compute the same.
  config.model.remat = True
  remat = build_lib.build_model(config)
  np.testing.assert_allclose(remat.apply({"params": moved}, **inputs), a, atol=1e-5)


def test_position_bias_table_can_mirror_the_query_cell():
  """Content-free attention under a table that maps each target place to the mirrored place
  of the query cell copies the query cell flipped left-right: the map is one table entry each."""
  t, rows, heads = 3, 2, 1
  height, width = rows * t, 2 * t
  query_cell, target_cell = (rows - 1) * 2, (rows - 1) * 2 + 1
  mod = dit_lib.PositionPairBias(heads)
  cond = np.zeros((1, 8), np.float32)
  params = mod.init(jax.random.key(0), cond, height, width, 2)["params"]
  axes = np.zeros((heads, 2, 2, t, t), np.float32)
  axes[0, 0, 0] = np.eye(t)  # the key's row is the query's row
  axes[0, 1, 1] = np.eye(t)[::-1]  # the key's column is the query's, mirrored
  cells = np.zeros(params["cells"].shape, np.float32)
  cells[0, target_cell, query_cell] = 1.0
  params = {**params, "axes": axes, "cells": cells}
  bias = mod.apply({"params": params}, cond, height, width, 2)
  assert bias.shape == (1, heads, height * width, height * width + 2)
  np.testing.assert_array_equal(np.asarray(bias[..., -2:]), 0)  # prompt keys: no bias
  rng = np.random.default_rng(0)
  values = rng.normal(size=(1, height * width + 2, heads, 4)).astype(np.float32)
  zeros = np.zeros((1, height * width, heads, 4), np.float32)
  out = np.asarray(layers.dot_product_attention(zeros, np.zeros_like(values), values, "einsum",
                                                bias))
  grid_values = values[0, :height * width, 0].reshape(height, width, 4)
  query = grid_values[(rows - 1) * t:, :t]
  target = out[0, :, 0].reshape(height, width, 4)[(rows - 1) * t:, t:]
  np.testing.assert_allclose(target, query[:, ::-1], atol=1e-3)


def test_config_checks_the_patch_and_the_start():
  config = _config(patch_size=3)
  with pytest.raises(config_checks.ConfigError, match=r"not divisible by "
                     r"config\.model\.dit\.patch_size = 3"):
    build_lib.build_model(config)
  config = _config()
  config.model.unet_init = "unet.safetensors"
  with pytest.raises(config_checks.ConfigError, match=r"starts a UNet, but "
                     r"config\.model\.backbone = 'dit'"):
    build_lib.build_model(config)
  config = _config(depth_of_field=2)
  with pytest.raises(config_checks.ConfigError, match=r"config\.model\.dit\.depth_of_field"):
    build_lib.build_model(config)


@pytest.mark.parametrize("position_bias", [False, True])
def test_analytic_flops_match_xla(position_bias):
  """At widths where matmuls dominate (as at every real size), within 10% of XLA's count."""
  config = _config(width=256, position_bias=position_bias)
  config.model.prompt.vit.width = 64
  config.model.prompt.mixer.width = 64
  ratio, net, _ = conftest.forward_flops_vs_xla(config)
  assert net.first_layer > 0
  assert ratio == pytest.approx(1.0, abs=0.10)


def test_dit_learns_a_tiny_problem():
  """Fitting one batch of grids: the diffusion loss falls well below its start."""
  config = _config()
  objective = objective_lib.build(config)
  params = objective.init_params(jax.random.key(0))
  batch = pipeline.make_eval_batches(config, num_grids=4, seed=3)[0]
  opt = optax.adam(3e-3)
  state = opt.init(params)

  @jax.jit
  def step(params, state, i):
    rng = jax.random.fold_in(jax.random.key(0), i % 4)  # a few fixed noise draws
    (loss, _), grads = jax.value_and_grad(objective.loss_fn, has_aux=True)(params, batch, rng,
                                                                           False)
    updates, state = opt.update(grads, state, params)
    return optax.apply_updates(params, updates), state, loss

  losses = []
  for i in range(80):
    params, state, loss = step(params, state, i)
    losses.append(float(loss))
  assert np.mean(losses[-4:]) < 0.3 * np.mean(losses[:4]), (losses[:4], losses[-4:])
