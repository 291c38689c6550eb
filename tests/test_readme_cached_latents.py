"""The README's cached-latents commands (tests/readme_plan.py's "cached_latents" chain), run as
written (a subprocess each) at tiny size with a small converted VAE: InstructPix2Pix built with
the moments of the VAE beside its pixels, paper_256 trained from them, resumed, and evaluated.
The refusals (another autoencoder file, a crop or flip the cache cannot reproduce) are
tests/test_cached_latents.py's."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

import readme_plan


def _converted_vae(work: str) -> None:
  """sd_vae.safetensors in `work`: a small diffusers AutoencoderKL (f = 8, 4 channels, as SD's)
  converted by imagebrush_jax.convert, as the README converts SD's."""
  diffusers = pytest.importorskip("diffusers")
  torch = pytest.importorskip("torch")
  from imagebrush_jax import convert  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  vae = diffusers.AutoencoderKL(
      in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8, 8, 8),
      down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
      layers_per_block=1, norm_num_groups=4, sample_size=32)
  vae.save_pretrained(os.path.join(work, "sd-vae-ft-mse"), safe_serialization=True)
  convert.convert_sd_vae(os.path.join(work, "sd-vae-ft-mse"),
                         os.path.join(work, "sd_vae.safetensors"))


def test_cached_latents_commands(tmp_path):
  work = str(tmp_path)
  readme_plan.make_inputs(work, published=True)
  _converted_vae(work)
  readme_plan.run_chain("cached_latents", work)

  meta = json.load(open(os.path.join(work, "data", "ip2p_256_sd_vae", "latents.json")))
  assert meta["autoencoder"] == "sd_vae.safetensors" and meta["dtype"] == "bfloat16"
  assert meta["shape"] == [2, 4, 4, 8] and meta["tile_size"] == 32
  saved = json.load(open(os.path.join(work, "runs", "paper_cached", "config.json")))
  assert saved["data"]["cached_latents"] is True
  steps = [json.loads(line)["step"] for line in
           open(os.path.join(work, "runs", "paper_cached", "train_metrics.jsonl"))]
  assert steps[-1] == 4 and sorted(set(steps)) == steps  # 2 steps, then 2 more resumed
  metrics = json.load(open(os.path.join(work, "runs", "paper_cached", "metrics.json")))
  assert metrics["num_examples"] == 8 and np.isfinite(metrics["psnr"])
