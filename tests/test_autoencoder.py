"""KL autoencoder: module shapes and checks, the tile stream, training (PSNR rises), the CLI."""
import json
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest

from configs import autoencoder_tiny
from imagebrush_jax import train_autoencoder
from imagebrush_jax.converters import autoencoder_params
from imagebrush_jax.data import tiles
from imagebrush_jax.models import autoencoder as ae

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = ae.AutoencoderConfig(block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
                             scaling_factor=0.5)


def random_params(arch, seed=0):
  """Non-degenerate parameters from shapes alone (no init compilation)."""
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    n = rng.standard_normal(leaf.shape).astype(np.float32)
    if path[-1].key == "scale":
      return 1.0 + 0.1 * n
    if path[-1].key == "kernel":
      return n / np.sqrt(max(np.prod(leaf.shape[:-1]), 1))
    return 0.1 * n

  return jax.tree_util.tree_map_with_path(fill, ae.param_shapes(ae.build(arch)))


def tiny_config(workdir_steps=60):
  c = autoencoder_tiny.get_config()
  c.data.tile_size = 16
  c.data.crop_scale = 1.25
  c.data.num_workers = 0
  c.data.prefetch_buffer = 2
  c.autoencoder.arch.block_out_channels = (16, 32)
  c.autoencoder.arch.norm_num_groups = 8
  c.train.batch_size = 16
  c.train.num_steps = workdir_steps
  c.train.warmup_steps = 5
  c.train.learning_rate = 2e-3
  c.train.log_every = 10
  c.train.eval_every = 1000
  c.train.eval_num_grids = 16
  c.train.sample_num_grids = 4
  c.checkpoint.every = 1000
  c.sharding.min_fsdp_size = 256
  return c


# ---------------------------------------------------------------------------- module


def test_sd_layout_parameter_count_and_factor():
  shapes = ae.param_shapes(ae.build(ae.AutoencoderConfig()))
  assert sum(x.size for x in jax.tree.leaves(shapes)) == 83_653_863  # diffusers' SD VAE
  assert ae.AutoencoderConfig().downsample_factor == 8
  assert shapes["encoder"]["down_blocks_1"]["resnets_0"]["conv_shortcut"]["kernel"].shape == (
      1, 1, 128, 256)
  assert "downsamplers_0" not in shapes["encoder"]["down_blocks_3"]
  assert shapes["decoder"]["up_blocks_0"]["upsamplers_0"]["conv"]["kernel"].shape == (
      3, 3, 512, 512)


def test_encode_decode_shapes_and_posterior():
  model = ae.build(SMALL)
  params = random_params(SMALL)
  x = jnp.zeros((3, 8, 12, 3))
  encode = jax.jit(lambda p, x: model.apply({"params": p}, x, method=ae.AutoencoderKL.encode))
  posterior = encode(params, x)
  assert posterior.mean.shape == posterior.logvar.shape == (3, 4, 6, 4)
  assert jax.eval_shape(lambda p, z: model.apply({"params": p}, z, method=ae.AutoencoderKL.decode),
                        params, posterior.mean).shape == (3, 8, 12, 3)
  sample = posterior.sample(jax.random.key(1))
  assert sample.shape == posterior.mean.shape and not np.allclose(sample, posterior.mean)
  standard = ae.DiagonalGaussian(jnp.zeros((2, 2, 2, 4)), jnp.zeros((2, 2, 2, 4)))
  np.testing.assert_allclose(standard.kl(), 0.0, atol=1e-7)
  shifted = ae.DiagonalGaussian(jnp.ones((2, 2, 2, 4)), jnp.zeros((2, 2, 2, 4)))
  np.testing.assert_allclose(shifted.kl(), 0.5 * 16)
  with pytest.raises(ValueError, match="not divisible by its downsample factor 2"):
    model.apply({"params": params}, jnp.zeros((1, 7, 8, 3)), method=ae.AutoencoderKL.encode)


@pytest.mark.parametrize("change, message", [
    (dict(block_out_channels=(8, 10)), r"autoencoder.block_out_channels\[1\] = 10 is not "
                                       r"divisible by autoencoder.norm_num_groups = 4"),
    (dict(latent_channels=0), "autoencoder.latent_channels must be a positive integer"),
    (dict(scaling_factor=0.0), "autoencoder.scaling_factor must be a positive number"),
    (dict(colour=1), "unknown key"),
])
def test_bad_architecture_names_the_key(change, message):
  with pytest.raises(ValueError, match=message):
    ae.AutoencoderConfig.from_dict({**SMALL.to_dict(), **change})


# ---------------------------------------------------------------------------- tiles


def test_tile_stream_is_deterministic_and_restorable():
  config = tiny_config()
  first = tiles.make_train_iterator(config, process_index=0, process_count=1)
  a = next(first)["image"]
  state = first.get_state()
  b = next(first)["image"]
  assert a.shape == (16, 16, 16, 3) and a.dtype == np.uint8
  assert not np.array_equal(a, b)
  again = tiles.make_train_iterator(config, process_index=0, process_count=1)
  np.testing.assert_array_equal(next(again)["image"], a)
  again.set_state(state)
  np.testing.assert_array_equal(next(again)["image"], b)
  # Two hosts feed the two halves of the same global batch.
  halves = [next(tiles.make_train_iterator(config, process_index=i, process_count=2))["image"]
            for i in range(2)]
  np.testing.assert_array_equal(np.concatenate(halves), a)
  held = tiles.make_eval_tiles(config, num_tiles=6, seed=123)
  assert held.shape == (6, 16, 16, 3)
  np.testing.assert_array_equal(held, tiles.make_eval_tiles(config, num_tiles=6, seed=123))


# ---------------------------------------------------------------------------- training


def test_tiny_autoencoder_trains_and_psnr_rises(tmp_path, capsys):
  config = tiny_config(workdir_steps=60)
  config.data.synthetic.backgrounds = ("plain", "gradient")  # learnable in 60 steps
  config.autoencoder.arch.mid_block_attention = False  # fewer ops to compile
  config.train.learning_rate = 3e-3
  config.train.ema_decay = 0.9  # the evaluated EMA follows the short run closely
  config.train.eval_every = 20
  workdir = tmp_path / "run"
  train_autoencoder.train_and_evaluate(config, str(workdir))

  history = [json.loads(line) for line in (workdir / "train_metrics.jsonl").read_text().split("\n")
             if line]
  assert [h["step"] for h in history] == [10, 20, 30, 40, 50, 60]
  assert history[-1]["psnr"] > history[0]["psnr"] + 3.0
  assert history[-1]["reconstruction"] < history[0]["reconstruction"]
  # Held-out PSNR of the EMA parameters, from the evaluator's console lines.
  evals = dict(re.findall(r"eval at step (\d+): eval/psnr ([\d.]+)", capsys.readouterr().out))
  assert sorted(evals, key=int) == ["20", "40", "60"]
  assert float(evals["60"]) > float(evals["20"]) + 0.5, evals
  for step in (20, 40, 60):
    sheet = np.asarray(Image.open(workdir / "reconstructions" / f"step_{step:07d}.png"))
    assert sheet.shape == (2 * 16 + 2, 4 * 18 - 2, 3)
  # The export holds the EMA parameters and the measured latent scale.
  _, arch = autoencoder_params.load(workdir / "autoencoder.safetensors")
  assert arch.block_out_channels == (16, 32) and arch.scaling_factor != 1.0


def test_autoencode_cli_round_trips_an_image(tmp_path):
  params = random_params(SMALL)
  params_path = tmp_path / "ae.safetensors"
  autoencoder_params.save(params_path, params, SMALL, source="test")
  image = np.random.default_rng(0).integers(0, 256, (13, 10, 3), dtype=np.uint8)  # odd sizes
  Image.fromarray(image).save(tmp_path / "x.png")
  run = subprocess.run(
      [sys.executable, "-m", "imagebrush_jax.autoencode", "--params", str(params_path),
       "--input", str(tmp_path / "x.png"), "--output", str(tmp_path / "y.png")],
      cwd=REPO, capture_output=True, text=True, timeout=120,
      env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert run.returncode == 0, run.stderr
  assert "latent 5x7x4 (f=2)" in run.stdout and "PSNR" in run.stdout
  out = np.asarray(Image.open(tmp_path / "y.png"))
  assert out.shape == image.shape and out.dtype == np.uint8
  bad = subprocess.run(
      [sys.executable, "-m", "imagebrush_jax.autoencode", "--params", str(tmp_path / "x.png"),
       "--input", str(tmp_path / "x.png"), "--output", str(tmp_path / "z.png")],
      cwd=REPO, capture_output=True, text=True, timeout=120,
      env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert bad.returncode == 1 and "x.png" in bad.stderr and not (tmp_path / "z.png").exists()
