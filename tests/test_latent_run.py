"""A latent-space run end to end: train from a VAE converted from diffusers, delete the VAE file,
then edit with `infer` and score with `evaluate` from the run's checkpoint alone."""
import json
import os

import numpy as np
from PIL import Image

from imagebrush_jax import convert
from imagebrush_jax import evaluate
from imagebrush_jax import infer
from imagebrush_jax import run_loading
from imagebrush_jax import train
from imagebrush_jax.converters import autoencoder_params
from tests.test_autoencoder_latent import latent_config
from tests.test_convert_sd_vae import reference  # pylint: disable=unused-import


def test_latent_run_needs_only_its_checkpoint(reference, tmp_path, monkeypatch):  # pylint: disable=redefined-outer-name
  vae_file = tmp_path / "sd_vae.safetensors"
  convert.convert_sd_vae(reference["folder"], str(vae_file))  # f = 2, 4 latent channels
  config = latent_config(str(vae_file))
  config.train.num_steps = 2
  config.train.warmup_steps = 1
  config.checkpoint.every = 2
  config.train.eval_at_end = False  # periodic evaluation has its own tests; here, the CLIs
  config.sampling.num_steps = 2

  reads = []
  real_load = autoencoder_params.load
  monkeypatch.setattr(autoencoder_params, "load", lambda p: reads.append(p) or real_load(p))
  workdir = str(tmp_path / "run")
  train.train_and_evaluate(config, workdir)
  assert reads == [str(vae_file)]  # read once, for the loss, the sampler and the state

  os.remove(vae_file)
  run = run_loading.load_run(workdir)
  assert run.space is not None and run.space.factor == 2
  assert run.space.scaling_factor == 0.5  # the file's, recorded in the run's config
  assert reads == [str(vae_file)]

  rng = np.random.default_rng(0)
  for name, size in (("a.png", (20, 14)), ("b.png", (20, 14)), ("q.png", (23, 31))):
    Image.fromarray(rng.integers(0, 256, size + (3,), dtype=np.uint8)).save(tmp_path / name)
  out = tmp_path / "edited.png"
  rc = infer.main(["--workdir", workdir, "--before", str(tmp_path / "a.png"), "--after",
                   str(tmp_path / "b.png"), "--query", str(tmp_path / "q.png"), "--output",
                   str(out), "--steps", "2"])
  assert rc == 0 and Image.open(out).size == (31, 23)

  metrics_file = tmp_path / "metrics.json"
  rc = evaluate.main(["--workdir", workdir, "--num_examples", "8", "--output", str(metrics_file),
                      "--steps", "2", "--batch_size", "1", "--no_cycle"])
  assert rc == 0
  metrics = json.loads(metrics_file.read_text())
  assert metrics["num_examples"] == 8 and metrics["step"] == 2
  assert 0.0 <= metrics["accuracy"] <= 1.0 and np.isfinite(metrics["psnr"])
  assert reads == [str(vae_file)]
