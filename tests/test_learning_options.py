"""The model's learning options, each checked against a reference computation: grid positions on
the attention tokens, the pooled prompt in the timestep embedding, the pair's change in the
prompt, logit-normal timesteps and Min-SNR weights, and the diagnostic task oracle."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special, stats

import conftest
from configs import tiny_test
from imagebrush_jax.core import build as build_lib
from imagebrush_jax.core import grid as grid_lib
from imagebrush_jax.core import objective as objective_lib
from imagebrush_jax.core import options as core_options
from imagebrush_jax.diffusion import losses
from imagebrush_jax.diffusion import schedules
from imagebrush_jax.models import layers
from imagebrush_jax.data import pipeline


def _config(**changes):
  c = tiny_test.get_config()
  for key, value in changes.items():
    section, name = key.rsplit(".", 1)
    node = c
    for part in section.split("."):
      node = node[part]
    node[name] = value
  return c


def test_grid_position_features_match_the_cells():
  """K=1 grid at 4 tokens per cell side: every cell's token at (i, j) gets the same in-cell
  features; rows count up from the query row; columns tell left from right."""
  t, rows = 4, 2
  feats = np.asarray(layers.grid_position_features(rows * t, 2 * t)).reshape(rows * t, 2 * t, -1)
  freqs = 2 * 2 * layers.GRID_POSITION_FREQS
  inside, row, col = feats[..., :freqs], feats[..., freqs:-2], feats[..., -2:]
  for r in range(rows):
    for c in range(2):
      np.testing.assert_allclose(inside[r * t:(r + 1) * t, c * t:(c + 1) * t], inside[:t, :t])
      assert (row[r * t:(r + 1) * t, c * t:(c + 1) * t].argmax(-1) == rows - 1 - r).all()
      assert (col[r * t:(r + 1) * t, c * t:(c + 1) * t].argmax(-1) == c).all()
  # Distinct places inside a cell are told apart.
  assert len({tuple(np.round(v, 5)) for v in inside[:t, :t].reshape(-1, freqs)}) == t * t
  with pytest.raises(ValueError, match="no grid"):
    layers.grid_position_features(7, 8)


def test_new_projections_start_at_zero_so_outputs_are_unchanged():
  """Grid positions and the pooled prompt add parameters that start at zero: at init the model
  computes exactly what the model without them computes with the shared parameters."""
  plain = _config()
  rich = _config(**{"model.unet.grid_positions": True, "model.unet.pooled_prompt": True})
  model_plain, model_rich = build_lib.build_model(plain), build_lib.build_model(rich)
  params = build_lib.init_params(model_rich, rich, jax.random.key(0))
  # Every other parameter moved off its init (the UNet's output layers start at zero too).
  noise = iter(jax.random.split(jax.random.key(1), len(jax.tree.leaves(params))))
  params = jax.tree_util.tree_map_with_path(
      lambda path, x: x if any(n in jax.tree_util.keystr(path)
                               for n in ("positions", "pooled_prompt"))
      else x + 0.05 * jax.random.normal(next(noise), x.shape, x.dtype), params)
  shared = _without(params, ("positions", "pooled_prompt"))
  assert "pooled_prompt" in params["unet"]
  assert len(jax.tree.leaves(params)) > len(jax.tree.leaves(shared)) + 2  # positions too
  inputs = build_lib.dummy_inputs(model_rich, rich, batch_size=2)
  rng = np.random.default_rng(0)
  inputs = {k: (jnp.asarray(rng.normal(size=v.shape), v.dtype) if v.dtype == jnp.float32 else v)
            for k, v in inputs.items()}
  inputs["box"] = jnp.asarray([[0.0, 0.0, 1.0, 1.0], [0.25, 0.25, 0.75, 0.5]])
  out_rich = model_rich.apply({"params": params}, **inputs)
  out_plain = model_plain.apply({"params": shared}, **inputs)
  np.testing.assert_allclose(out_rich, out_plain, atol=1e-6)
  # ... and the new parameters do change it once trained away from zero.
  moved = jax.tree_util.tree_map_with_path(
      lambda path, x: x + 0.1 if "positions" in jax.tree_util.keystr(path) else x, params)
  assert np.abs(model_rich.apply({"params": moved}, **inputs) - out_rich).max() > 1e-3


def _without(tree, names):
  if not isinstance(tree, dict):
    return tree
  return {k: _without(v, names) for k, v in tree.items() if k not in names}


def test_pair_difference_adds_the_change_tokens():
  config = _config(**{"model.prompt.pair_difference": True})
  model = build_lib.build_model(config)
  params = build_lib.init_params(model, config, jax.random.key(0))
  inputs = build_lib.dummy_inputs(model, config, batch_size=1)
  k, tile, patch = 1, config.data.tile_size, config.model.prompt.vit.patch_size
  patches = (tile // patch) ** 2
  tokens = model.apply({"params": params}, inputs["before"], inputs["after"], inputs["query"],
                       inputs["box"], method=model.encode_prompt)
  assert tokens.shape[1] == (3 * k + 1) * patches + 1
  assert params["prompt_encoder"]["role_embed"]["embedding"].shape[0] == 4
  # The change tokens read E' - E: the same pair, another change, other tokens.
  other = model.apply({"params": params}, inputs["before"], inputs["after"] + 0.5,
                      inputs["query"], inputs["box"], method=model.encode_prompt)
  assert np.abs(np.asarray(other - tokens)).max() > 1e-4


def test_logit_normal_timesteps_follow_their_distribution():
  n, steps = 20000, 1000
  t = np.asarray(losses.sample_timesteps(jax.random.key(0), n, steps, "logit_normal", 1.0, 0.5))
  assert t.min() >= 0 and t.max() < steps and t.dtype == np.int32
  # Quantiles of sigmoid(N(1, 0.5)) * T, binned down to integer steps.
  for q in (0.1, 0.5, 0.9):
    want = special.expit(stats.norm.ppf(q, loc=1.0, scale=0.5)) * steps
    assert abs(np.quantile(t, q) - want) < 6, (q, np.quantile(t, q), want)
  uniform = np.asarray(losses.sample_timesteps(jax.random.key(0), n, steps))
  assert abs(uniform.mean() - (steps - 1) / 2) < 10
  with pytest.raises(ValueError, match="timestep sampling"):
    losses.sample_timesteps(jax.random.key(0), 4, steps, "beta")


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v"])
def test_min_snr_weights_match_their_formula(prediction_type):
  abar = np.array([0.999, 0.9, 0.5, 0.1, 0.001])
  snr = abar / (1 - abar)
  want = {"epsilon": np.minimum(snr, 5.0) / snr, "sample": np.minimum(snr, 5.0),
          "v": np.minimum(snr, 5.0) / (snr + 1)}[prediction_type]
  got = losses.min_snr_weight(prediction_type, jnp.asarray(abar, jnp.float32), 5.0)
  np.testing.assert_allclose(got, want, rtol=1e-4)  # float32 SNR near abar = 1


def test_min_snr_weights_the_loss_per_grid():
  """The weighted loss is the Min-SNR-weighted mean of the grids' errors (recomputed here in
  numpy from the same timesteps and noise); the plain MSE metric stays unweighted."""
  schedule = schedules.make_schedule(core_options.ImageBrushSpec.from_config(
      tiny_test.get_config()).diffusion)
  x0 = jax.random.normal(jax.random.key(1), (64, 8, 8, 3))
  mask = jnp.ones((64, 8, 8, 1))
  denoise = lambda x_t, t: 0.5 * x_t
  rng = jax.random.key(2)
  weighted, metrics = losses.diffusion_loss(denoise, schedule, x0, mask, rng, min_snr_gamma=5.0)
  rng_t, rng_noise = jax.random.split(rng)
  t = np.asarray(losses.sample_timesteps(rng_t, 64, schedule.num_timesteps))
  noise = np.asarray(jax.random.normal(rng_noise, x0.shape, jnp.float32))
  abar = np.asarray(schedule.alphas_cumprod)[t][:, None, None, None]
  x_t = np.sqrt(abar) * np.asarray(x0) + np.sqrt(1 - abar) * noise
  per_grid = ((0.5 * x_t - noise) ** 2).mean(axis=(1, 2, 3))
  snr = abar[:, 0, 0, 0] / (1 - abar[:, 0, 0, 0])
  w = np.minimum(snr, 5.0) / snr
  assert w.min() < 0.5 and w.max() == 1.0  # the batch spans both sides of gamma
  assert float(weighted) == pytest.approx(float((w * per_grid).sum() / w.sum()), rel=1e-4)
  assert float(metrics["mse_target"]) == pytest.approx(float(per_grid.mean()), rel=1e-4)


def test_task_oracle_reads_the_task_id_and_only_it():
  config = _config(**{"model.task_oracle": True})
  spec = core_options.ImageBrushSpec.from_config(config)
  assert spec.model.task_oracle_vocab == len(config.data.train_tasks) + len(
      config.data.heldout_tasks)
  objective = objective_lib.build(spec)
  params = objective.init_params(jax.random.key(0))
  batch = pipeline.make_eval_batches(config, num_grids=2, seed=5)[0]
  loss, _ = objective.loss_fn(params, batch, jax.random.key(0), False)
  assert np.isfinite(loss)
  cells = [jnp.asarray(c, jnp.float32) / 127.5 - 1 for c in grid_lib.split_cells(
      np.asarray(batch["grid"]), config.data.num_examples)[:3]]
  prompt = lambda ids: objective.model.apply(
      {"params": params}, *cells, jnp.asarray(batch["box"]), task_id=jnp.asarray(ids),
      method=objective.model.encode_prompt)
  ids = np.asarray(batch["task_id"])
  assert np.abs(np.asarray(prompt(ids) - prompt((ids + 1) % spec.model.task_oracle_vocab))
                ).max() > 1e-4
  without = {k: v for k, v in batch.items() if k != "task_id"}
  with pytest.raises(ValueError, match="needs the batch's task_id"):
    objective.sample_fn(params, without, jax.random.key(0), num_steps=1)
  assert not core_options.ImageBrushSpec.from_config(tiny_test.get_config()).model.task_oracle_vocab


def test_analytic_flops_count_the_options():
  """The analytic forward FLOPs with every option on stay within 10% of XLA's count."""
  config = _config(**{"model.unet.grid_positions": True, "model.unet.pooled_prompt": True,
                      "model.prompt.pair_difference": True})
  config.model.unet.channels = (64, 64)
  config.model.unet.norm_groups = 32
  config.model.unet.attention = ("cross", "self+cross")
  config.model.prompt.vit.width = 64
  config.model.prompt.mixer.width = 64
  ratio, _, _ = conftest.forward_flops_vs_xla(config)
  assert ratio == pytest.approx(1.0, abs=0.10)
