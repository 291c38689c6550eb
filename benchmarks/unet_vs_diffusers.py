"""Our UNet in Stable Diffusion's layout against diffusers' FlaxUNet2DConditionModel, same run.

Identical configuration on both sides: block_out_channels (64, 128, 128), layers_per_block 1,
cross_attention_dim 128, 8 heads, down blocks CrossAttn, CrossAttn, plain, up blocks plain,
CrossAttn, CrossAttn (ours: attention ('self+cross', 'self+cross', 'none'), mid 'self+cross'),
a 32x32x4 input, batch 8, 16 context tokens, float32. Timed: the gradient of the mean squared
output w.r.t. the parameters (forward + backward), median of --repeats after a warm-up, the two
models alternating so that machine noise hits both alike. diffusers 0.39 is a benchmark-only
dependency (benchmarks/requirements.txt), installed in its own virtual environment:

  python3 -m venv /tmp/benchvenv && /tmp/benchvenv/bin/pip install -r benchmarks/requirements.txt
  /tmp/benchvenv/bin/python benchmarks/unet_vs_diffusers.py

Prints a JSON line last: time_ratio = ours / theirs (target <= 0.9).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from imagebrush_jax.models import unet as unet_lib  # pylint: disable=wrong-import-position

CHANNELS = (64, 128, 128)
HEADS = 8
CONTEXT_DIM = 128


def ours() -> unet_lib.UNet:
  return unet_lib.UNet(out_channels=4, channels=CHANNELS,
                       attention=("self+cross", "self+cross", "none"),
                       mid_attention="self+cross", num_res_blocks=1, num_heads=HEADS,
                       norm_groups=32)  # float32 compute: the default Runtime


def theirs():
  from diffusers import FlaxUNet2DConditionModel  # pylint: disable=import-outside-toplevel
  return FlaxUNet2DConditionModel(
      sample_size=32, in_channels=4, out_channels=4, block_out_channels=CHANNELS,
      layers_per_block=1, cross_attention_dim=CONTEXT_DIM, attention_head_dim=HEADS,
      down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
      up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
      dtype=jnp.float32)


def _count(tree) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


def _time(fn, *args) -> float:
  t0 = time.perf_counter()
  jax.block_until_ready(fn(*args))
  return time.perf_counter() - t0


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--tokens", type=int, default=16)
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args()
  logging.getLogger("diffusers").setLevel(logging.ERROR)  # deprecation warnings per module

  rng = np.random.default_rng(0)
  x_nhwc = jnp.asarray(rng.standard_normal((args.batch, 32, 32, 4)), jnp.float32)
  x_nchw = jnp.transpose(x_nhwc, (0, 3, 1, 2))  # diffusers takes NCHW (and transposes inside)
  t = jnp.asarray(rng.integers(0, 1000, (args.batch,)), jnp.int32)
  ctx = jnp.asarray(rng.standard_normal((args.batch, args.tokens, CONTEXT_DIM)), jnp.float32)

  our_model, their_model = ours(), theirs()
  our_params = jax.jit(our_model.init)(jax.random.key(0), x_nhwc, t, ctx)["params"]
  their_params = jax.jit(their_model.init)(jax.random.key(0), x_nchw, t, ctx)["params"]

  our_grad = jax.jit(jax.grad(
      lambda p: jnp.mean(jnp.square(our_model.apply({"params": p}, x_nhwc, t, ctx)))))
  their_grad = jax.jit(jax.grad(lambda p: jnp.mean(jnp.square(
      their_model.apply({"params": p}, x_nchw, t, ctx).sample))))

  for fn, p in ((our_grad, our_params), (their_grad, their_params)):  # compile + warm up
    _time(fn, p)
    _time(fn, p)
  ours_s, theirs_s = [], []
  for _ in range(args.repeats):
    ours_s.append(_time(our_grad, our_params))
    theirs_s.append(_time(their_grad, their_params))
  ours_med, theirs_med = statistics.median(ours_s), statistics.median(theirs_s)
  for name, med, runs in (("ours", ours_med, ours_s), ("theirs", theirs_med, theirs_s)):
    print(f"{name:6s} {med * 1e3:8.1f} ms  (runs: {', '.join(f'{s * 1e3:.0f}' for s in runs)})")
  print(json.dumps(dict(
      benchmark="unet_vs_diffusers", device=jax.devices()[0].device_kind,
      backend=jax.default_backend(), batch=args.batch, tokens=args.tokens, repeats=args.repeats,
      params_ours=_count(our_params), params_theirs=_count(their_params),
      ours_ms=round(ours_med * 1e3, 2), theirs_ms=round(theirs_med * 1e3, 2),
      time_ratio=round(ours_med / theirs_med, 4), target=0.9)))


if __name__ == "__main__":
  main()
