"""The jitted DDIM sampler against the bare model it drives, in the same run.

Times a full N-step guided edit (imagebrush/task.make_sample_fn: prompt encoding once, then N steps
of one UNet call on the [conditional; unconditional] batch) against N times one such batched UNet
forward at the same shapes. overhead_ratio = sample / (N x forward) on medians (also given on
minima, which shared machines disturb less); target <= 1.10.
Also reports the forward's FLOPs (XLA cost analysis) and the achieved GFLOP/s.

  python benchmarks/sampler.py --config configs/default.py --batch 4 --steps 20

Prints a JSON line last.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

# pylint: disable=wrong-import-position
from imagebrush_jax.core import build as build_lib
from imagebrush_jax.core import model as model_lib
from imagebrush_jax.core import objective as objective_lib
from imagebrush_jax.perf import compiled as compiled_lib
from benchmarks import workload


def _timed(fn, *args) -> float:
  t0 = time.perf_counter()
  jax.block_until_ready(fn(*args))
  return time.perf_counter() - t0


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--config", default=os.path.join(os.path.dirname(__file__), "..",
                                                       "configs", "default.py"))
  parser.add_argument("--batch", type=int, default=4)
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--guidance_scale", type=float, default=7.5)
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()

  config = workload.load_config(args.config)
  model = build_lib.build_model(config)
  params = build_lib.init_params(model, config, jax.random.key(0))
  # Perturb the zero-initialised layers so every layer computes on realistic values.
  noise = np.random.default_rng(0)
  params = jax.tree.map(lambda p: p + 0.01 * noise.standard_normal(p.shape, np.float32), params)
  batch = workload.random_batch(config, args.batch)

  sample_fn = objective_lib.make_sample_fn(model, config)
  run_sample = lambda key: sample_fn(params, batch, key, num_steps=args.steps,
                                     guidance_scale=args.guidance_scale)["grid"]

  # The forward the sampler repeats: the UNet on the [cond; uncond] batch of 2B.
  inputs = model_lib.grid_to_model_inputs(batch, num_examples=config.data.num_examples,
                                          tile_size=config.data.tile_size,
                                          conditioning=model.conditioning)
  encode = jax.jit(lambda p: model.apply({"params": p}, inputs.before, inputs.after,
                                         inputs.query, inputs.box,
                                         method=model_lib.ImageBrush.encode_prompt))
  context = encode(params)
  null = model.apply({"params": params}, context, method=model_lib.ImageBrush.null_context)
  double = lambda a, b: jnp.concatenate([a, b])
  cond = dict(cond=double(inputs.cond, inputs.cond), mask=double(inputs.mask, inputs.mask),
              context=double(context, null))
  x2 = jax.random.normal(jax.random.key(1), (2 * args.batch, *inputs.x0.shape[1:]))
  t2 = jnp.full((2 * args.batch,), config.diffusion.num_timesteps // 2, jnp.int32)
  denoise = objective_lib.make_denoise_fn(model)
  forward = jax.jit(denoise).lower(params, x2, t2, cond).compile()
  flops = compiled_lib.xla_flops(forward) or float("nan")

  # Compile and warm up both, then alternate so machine noise hits both alike.
  for _ in range(2):
    _timed(run_sample, jax.random.key(2))
    _timed(forward, params, x2, t2, cond)
    _timed(encode, params)
  sample_s, forward_s, encode_s = [], [], []
  for r in range(args.repeats):
    sample_s.append(_timed(run_sample, jax.random.key(3 + r)))
    forward_s.extend(_timed(forward, params, x2, t2, cond) for _ in range(3))
    encode_s.append(_timed(encode, params))
  sample_med = statistics.median(sample_s)
  forward_med = statistics.median(forward_s)
  encode_med = statistics.median(encode_s)
  ratio = sample_med / (args.steps * forward_med)
  ratio_min = min(sample_s) / (args.steps * min(forward_s))  # robust to load spikes
  print(f"sample ({args.steps} steps, batch {args.batch}, CFG batch {2 * args.batch}): "
        f"{sample_med:.3f} s; forward: {forward_med * 1e3:.1f} ms; prompt encoding: "
        f"{encode_med * 1e3:.1f} ms; forward FLOPs: {flops / 1e9:.2f} G")
  print(json.dumps(dict(
      benchmark="sampler", config=os.path.relpath(args.config), device=jax.devices()[0].device_kind,
      backend=jax.default_backend(), batch=args.batch, cfg_batch=2 * args.batch,
      steps=args.steps, sample_s=round(sample_med, 4), forward_ms=round(forward_med * 1e3, 3),
      prompt_encode_ms=round(encode_med * 1e3, 3),
      overhead_ratio=round(ratio, 4), overhead_ratio_of_minima=round(ratio_min, 4),
      loop_overhead_ratio=round((sample_med - encode_med) / (args.steps * forward_med), 4),
      forward_gflops=round(flops / 1e9, 3),
      achieved_gflop_per_s=round(flops / forward_med / 1e9, 2), target=1.10)))


if __name__ == "__main__":
  main()
