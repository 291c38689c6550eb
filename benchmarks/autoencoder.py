"""Autoencoder benchmark: encode / decode throughput, and the ImageBrush train step in latent space
against the same step in pixel space at the same output size, side by side in one run.

  python benchmarks/autoencoder.py [--config configs/latent_tiny.py] [--ae_config \
      configs/autoencoder_tiny.py] [--image_size 256] [--batch 8] [--steps 3] [--config.x=y ...]

On 2 CPU cores add --config configs/latent_tiny.py --config.train.batch_size=8 (overrides need
--config given): the pixel twin's self-attention over the 64x64
pixel grid takes tens of seconds a step there.

--config is a latent ImageBrush config; its pixel twin is the same config with latent_factor 1
and 3 channels (same tiles, same UNet widths: the UNet then runs on a grid latent_factor times
wider). The autoencoder is --ae_config's architecture (autoencoder_sd.py: SD's VAE) with random
weights, or the file --config.model.autoencoder.params names if it exists. Encode (posterior
mean) and decode are timed on --batch images of --image_size pixels. Prints one JSON line last:
images/s for encode and decode, seconds per train step for both spaces and their ratio
(pixel / latent; > 1: the latent step is faster), and the share of the latent step spent encoding.
"""
from __future__ import annotations

import copy
import json
import os
import statistics
import sys
import tempfile
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
from ml_collections import config_flags
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from imagebrush_jax.core import latent
from imagebrush_jax.training import autoencoder as autoencoder_training
from imagebrush_jax.training import train_state
from imagebrush_jax.converters import autoencoder_params
from imagebrush_jax.data import pipeline
from imagebrush_jax.training import objectives  # pylint: disable=g-import-not-at-top
from imagebrush_jax.models import autoencoder as ae

_CONFIG = config_flags.DEFINE_config_file("config", "configs/latent_tiny.py",
                                          "Latent ImageBrush config.")
_AE_CONFIG = config_flags.DEFINE_config_file("ae_config", "configs/autoencoder_tiny.py",
                                             "Autoencoder config (its arch block is used).")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 0, "Encode/decode image size; 0 = tile size.")
_BATCH = flags.DEFINE_integer("batch", 8, "Images per encode / decode call.")
_STEPS = flags.DEFINE_integer("steps", 3, "Timed calls per measurement (after warm-up).")
_REPEATS = flags.DEFINE_integer("repeats", 2, "Rounds per measurement; the median is reported.")


def _seconds(fn, *args, n: int) -> float:
  """Mean seconds per call of a compiled fn over n calls (results waited for)."""
  jax.block_until_ready(fn(*args))
  start = time.perf_counter()
  for _ in range(n):
    out = fn(*args)
  jax.block_until_ready(out)
  return (time.perf_counter() - start) / n


def _autoencoder_file(config, ae_config, folder: str) -> str:
  """config's autoencoder file if it exists, else random weights of ae_config's arch."""
  path = config.model.autoencoder.params
  if path and os.path.isfile(path):
    return path
  arch = autoencoder_training.architecture(ae_config)
  model = ae.build(arch)
  params = jax.jit(lambda k: ae.init_params(model, k))(jax.random.key(0))
  path = os.path.join(folder, "autoencoder.safetensors")
  autoencoder_params.save(path, jax.tree.map(np.asarray, params), arch, source="benchmark")
  return path


def _log(text: str) -> None:
  print(text, file=sys.stderr, flush=True)


def _step_time(config, batch, steps: int, repeats: int, name: str) -> list[float]:
  task = objectives.imagebrush_from_config(config, latent.load(config))
  state = jax.jit(task.init_state)(jax.random.key(0))
  step = jax.jit(train_state.make_train_step(task), donate_argnums=(0,))
  start = time.perf_counter()
  state, _ = step(state, batch)
  jax.block_until_ready(state)
  _log(f"{name} step: compiled and ran once in {time.perf_counter() - start:.1f} s")
  times = []
  for _ in range(repeats):
    jax.block_until_ready(state)
    start = time.perf_counter()
    for _ in range(steps):
      state, metrics = step(state, batch)
    jax.block_until_ready((state, metrics))
    times.append((time.perf_counter() - start) / steps)
    _log(f"{name} step: {times[-1]:.4f} s")
  return times


def main(argv):
  del argv
  config = _CONFIG.value
  if not latent.is_latent(config):
    raise app.UsageError("--config must be a latent config (model.latent_factor > 1)")
  with tempfile.TemporaryDirectory() as folder:
    config.unlock()
    config.model.autoencoder.params = _autoencoder_file(config, _AE_CONFIG.value, folder)
    space, ae_params = latent.load(config)
    ae_params = jax.tree.map(jnp.asarray, ae_params)
    size = _IMAGE_SIZE.value or int(config.data.tile_size)
    images = jax.random.uniform(jax.random.key(1), (_BATCH.value, size, size, 3), jnp.float32,
                                -1.0, 1.0)
    encode = jax.jit(space.encode)
    decode = jax.jit(space.decode)
    latents = encode(ae_params, images)
    enc_t, dec_t = [], []
    for _ in range(_REPEATS.value):
      enc_t.append(_seconds(encode, ae_params, images, n=_STEPS.value))
      dec_t.append(_seconds(decode, ae_params, latents, n=_STEPS.value))
      _log(f"encode {enc_t[-1]:.4f} s, decode {dec_t[-1]:.4f} s per {_BATCH.value} images")

    # The same batch of grids for both spaces; the pixel twin differs only in its space.
    pixel = copy.deepcopy(config)
    pixel.model.latent_factor = 1
    pixel.model.in_channels = 3
    pixel.sampling.clip_x0 = True
    batch = pipeline.make_eval_batches(config, num_grids=config.train.batch_size, seed=0,
                                       batch_size=config.train.batch_size)[0]
    batch = {k: jnp.asarray(batch[k]) for k in ("grid", "mask", "box", "task_id")}
    grid_encode = jax.jit(lambda p, g: space.encode_grid(p, g))
    unit_grid = jnp.asarray(batch["grid"], jnp.float32) / 127.5 - 1.0
    enc_grid_t = _seconds(grid_encode, ae_params, unit_grid, n=_STEPS.value)
    latent_t = _step_time(config, batch, _STEPS.value, _REPEATS.value, "latent")
    pixel_t = _step_time(pixel, batch, _STEPS.value, _REPEATS.value, "pixel")

  t_enc, t_dec = statistics.median(enc_t), statistics.median(dec_t)
  t_lat, t_pix = statistics.median(latent_t), statistics.median(pixel_t)
  arch = space.model.arch
  result = {
      "benchmark": "autoencoder",
      "config": os.path.basename(config_flags.get_config_filename(flags.FLAGS["config"])),
      "device": jax.devices()[0].device_kind,
      "autoencoder_channels": list(arch.block_out_channels), "f": arch.downsample_factor,
      "image_size": size, "batch": _BATCH.value,
      "encode_images_per_s": round(_BATCH.value / t_enc, 2),
      "decode_images_per_s": round(_BATCH.value / t_dec, 2),
      "tile_size": int(config.data.tile_size), "train_batch": int(config.train.batch_size),
      "step_s_latent": round(t_lat, 5), "step_s_pixel": round(t_pix, 5),
      "pixel_over_latent_step": round(t_pix / t_lat, 3),
      "encode_share_of_latent_step": round(enc_grid_t / t_lat, 3),
  }
  print(json.dumps(result))


if __name__ == "__main__":
  app.run(main)
