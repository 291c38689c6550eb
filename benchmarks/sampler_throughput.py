"""Editing throughput: edits per second of the jitted guided DDIM sampler at a batch that fits.

  python benchmarks/sampler_throughput.py --config configs/paper_256.py [--batch 8]
      [--find_max_batch] [--steps 50] [--guidance_scale 7.5] [--config.key=value ...]

One edit is the whole of core/objective.make_sample_fn on one grid: the prompt encoded once,
`steps` DDIM steps of the UNet on the [conditional; unconditional] batch, and in latent space the
grid's encoding and the edited cell's decoding. Random weights and grids (latent configs without
an autoencoder file get random weights of SD's VAE); compiled ahead of time, so the compile time
and the compiled memory analysis are reported; --find_max_batch bisects the batch on that memory
analysis. The sampler runs on one device. Prints one JSON line last (edits_per_s, s_per_edit,
TFLOP/s from the analytic count, peak_memory_bytes, compile_s).
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=g-import-not-at-top,wrong-import-position
from imagebrush_jax.perf import compiled as compiled_lib
from imagebrush_jax.perf import flops as flops_lib
from imagebrush_jax.perf import hardware
from benchmarks import workload

_CONFIG = config_flags.DEFINE_config_file("config", "configs/default.py", "Config file.")
_BATCH = flags.DEFINE_integer("batch", 8, "Grids edited per call.", lower_bound=1)
_FIND_MAX = flags.DEFINE_boolean("find_max_batch", False,
                                 "Edit at the largest batch whose compiled sampler fits.")
_MAX_BATCH = flags.DEFINE_integer("max_batch", 256, "Upper end of the --find_max_batch search.",
                                  lower_bound=1)
_MEMORY_GB = flags.DEFINE_float("memory_limit_gb", 0.0,
                                "Device memory for --find_max_batch; 0: the device's.")
_STEPS = flags.DEFINE_integer("steps", 50, "DDIM steps per edit.", lower_bound=1)
_GUIDANCE = flags.DEFINE_float("guidance_scale", 7.5, "Classifier-free guidance scale.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed calls (after one warm-up call).",
                                lower_bound=1)
GIB = compiled_lib.GIB


def main(argv):
  del argv
  config = _CONFIG.value
  device = jax.devices()[0]
  task, autoencoder_arch = workload.build_task(config)
  params = jax.jit(task.objective.init_params)(jax.random.key(0))
  sample = task.objective.sample_fn.jitted
  guided = _GUIDANCE.value != 1.0
  scalars = (jnp.float32(_GUIDANCE.value), jnp.float32(config.sampling.eta))
  statics = dict(num_steps=_STEPS.value, spacing=config.sampling.spacing, guided=guided)

  compiled_by_batch = {}

  def compile_for(b):
    if b not in compiled_by_batch:
      batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype)
               for k, v in workload.random_batch(config, b).items()}
      compiled_by_batch[b] = compiled_lib.compile_with_stats(
          sample.lower(params, batch, jax.random.key(0), *scalars, **statics))
    return compiled_by_batch[b]

  search = None
  batch_size = _BATCH.value
  if _FIND_MAX.value:
    limit = hardware.memory_limit_bytes(_MEMORY_GB.value, device)
    try:
      search = compiled_lib.largest_fitting(lambda b: compile_for(b)[1].peak_bytes, limit,
                                            _MAX_BATCH.value, log=lambda s: print(s, flush=True))
    except ValueError as e:
      raise SystemExit(f"--find_max_batch: {e}") from None
    batch_size = search["max_batch"]

  compiled, stats = compile_for(batch_size)
  print(f"sampler, batch {batch_size}: {stats.summary()}", flush=True)
  batch = jax.device_put(workload.random_batch(config, batch_size))
  run = lambda seed: jax.block_until_ready(
      compiled(params, batch, jax.random.key(seed), *scalars))
  run(0)  # warm-up
  times = []
  for r in range(_REPEATS.value):
    start = time.perf_counter()
    run(1 + r)
    times.append(time.perf_counter() - start)
  call_s = statistics.median(times)
  analytic = flops_lib.sample(config, batch_size, _STEPS.value, guided, autoencoder_arch)
  peak, peak_source = hardware.peak_flops(device, str(config.model.dtype))
  tflops = analytic.model / call_s / 1e12
  print(json.dumps({
      "benchmark": "sampler_throughput",
      "config": os.path.basename(config_flags.get_config_filename(flags.FLAGS["config"]) or ""),
      "device": device.device_kind, "backend": jax.default_backend(),
      "dtype": str(config.model.dtype), "tile_size": int(config.data.tile_size),
      "num_examples": int(config.data.num_examples), "latent": autoencoder_arch is not None,
      "batch": batch_size, "steps": _STEPS.value, "guidance_scale": _GUIDANCE.value,
      "compile_s": round(stats.compile_s, 2),
      "peak_memory_bytes": stats.peak_bytes, "peak_memory_gib": round(stats.peak_bytes / GIB, 3),
      "call_s": round(call_s, 4), "s_per_edit": round(call_s / batch_size, 5),
      "edits_per_s": round(batch_size / call_s, 4),
      "flops_per_edit": analytic.model / batch_size, "flops_parts": analytic.parts,
      "tflops_per_s": round(tflops, 6),
      "mfu": round(tflops * 1e12 / peak, 5) if peak else None, "peak_source": peak_source,
      **({"find_max_batch": search} if search else {}),
  }))


if __name__ == "__main__":
  app.run(main)
