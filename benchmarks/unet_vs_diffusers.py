"""Our UNet in Stable Diffusion's layout against diffusers' FlaxUNet2DConditionModel, same weights.

Configurations (--config):
  small  block_out_channels (64, 128, 128), layers_per_block 1, cross_attention_dim 128, 8 heads,
         down blocks CrossAttn, CrossAttn, plain; a 32x32x4 input, 16 context tokens, batch 8
  sd15   Stable Diffusion 1.5's UNet (320/640/1280/1280, 2 layers per block, 8 heads,
         cross_attention_dim 768); a 64x64x4 latent, 77 context tokens; batch 1 on the CPU, 8 on
         an accelerator
Both models hold the same weights: diffusers' Flax initialisation, renamed to diffusers' PyTorch
names and converted by this project's converter (imagebrush_jax/converters/sd_unet.py), so the
comparison also exercises the conversion (their GEGLU uses the tanh GELU, ours the exact one, as
PyTorch's: max_abs_diff is small, not zero). Timed per compute dtype (--dtypes; parameters stay
float32 on both sides): the gradient of the mean squared output w.r.t. the parameters (forward +
backward), median of --repeats after a warm-up, the two models alternating so that machine noise
hits both alike. diffusers 0.39, the last release with Flax models, is a test requirement:

  make test   # or: .venv/bin/pip install -r requirements.txt -r requirements-test.txt
  .venv/bin/python benchmarks/unet_vs_diffusers.py --config sd15

Prints a JSON line last: per dtype ours_ms, theirs_ms and time_ratio = ours / theirs (target
<= 0.9 for small in float32).
"""
from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import re
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

# pylint: disable=wrong-import-position
from imagebrush_jax.converters import params_file
from imagebrush_jax.converters import sd_unet
from imagebrush_jax.models import runtime as runtime_lib
# pylint: enable=wrong-import-position

CONFIGS = {
    "small": dict(block_out_channels=(64, 128, 128), layers_per_block=1,
                  cross_attention_dim=128, attention_head_dim=8,
                  down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                    "DownBlock2D"),
                  up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
                  sample_size=32),
    "sd15": dict(block_out_channels=(320, 640, 1280, 1280), layers_per_block=2,
                 cross_attention_dim=768, attention_head_dim=8,
                 down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                 up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, sample_size=64),
}
TOKENS = {"small": 16, "sd15": 77}
_FLAX_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


def torch_state(flax_params) -> dict[str, np.ndarray]:
  """diffusers Flax UNet params -> the PyTorch state dict of the same weights (numpy)."""
  state = {}
  for path, value in params_file.flatten(flax_params).items():
    *modules, leaf = path.split("/")
    modules = [m if re.fullmatch(r"linear_\d", m) else re.sub(r"_(\d+)$", r".\1", m)
               for m in modules]
    modules = [_FLAX_ATTENTION.get(m, m) for m in modules]
    value = np.asarray(value, np.float32)
    if leaf == "kernel" and value.ndim == 4:
      value = value.transpose(3, 2, 0, 1)  # HWIO -> OIHW
    elif leaf == "kernel":
      value = value.T
    state[".".join(modules + ["weight" if leaf in ("kernel", "scale") else leaf])] = value
  return state


def _time(fn, *args) -> float:
  t0 = time.perf_counter()
  jax.block_until_ready(fn(*args))
  return time.perf_counter() - t0


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
  parser.add_argument("--config", choices=sorted(CONFIGS), default="small")
  parser.add_argument("--dtypes", default="float32,bfloat16")
  parser.add_argument("--batch", type=int, default=0, help="0: 8, or 1 for sd15 on the CPU")
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args()
  logging.getLogger("diffusers").setLevel(logging.ERROR)  # deprecation warnings per module
  from diffusers import FlaxUNet2DConditionModel  # pylint: disable=import-outside-toplevel

  cfg = CONFIGS[args.config]
  on_cpu = jax.default_backend() == "cpu"
  batch = args.batch or (1 if args.config == "sd15" and on_cpu else 8)
  size, tokens = cfg["sample_size"], TOKENS[args.config]
  arch = sd_unet.architecture_from_diffusers(dict(cfg, in_channels=4, out_channels=4), "config")
  rng = np.random.default_rng(0)
  x_nhwc = jnp.asarray(rng.standard_normal((batch, size, size, 4)), jnp.float32)
  x_nchw = jnp.transpose(x_nhwc, (0, 3, 1, 2))  # diffusers takes NCHW (and transposes inside)
  t = jnp.asarray(rng.integers(0, 1000, (batch,)), jnp.int32)
  ctx = jnp.asarray(rng.standard_normal((batch, tokens, arch["cross_attention_dim"])),
                    jnp.float32)

  their_params = jax.jit(FlaxUNet2DConditionModel(**cfg).init)(
      jax.random.key(0), x_nchw, t, ctx)["params"]
  our_params = jax.tree.map(jnp.asarray, sd_unet.convert_state_dict(
      torch_state(their_params), arch, "diffusers Flax UNet"))
  gc.collect()

  results = {}
  for dtype_name in args.dtypes.split(","):
    dtype = jnp.dtype(dtype_name)
    ours = sd_unet.build(arch, runtime=runtime_lib.Runtime(dtype=dtype))
    theirs = FlaxUNet2DConditionModel(**cfg, dtype=dtype)
    out_ours = lambda p: ours.apply({"params": p}, x_nhwc, t, ctx).astype(jnp.float32)
    out_theirs = lambda p: jnp.transpose(theirs.apply({"params": p}, x_nchw, t, ctx).sample,
                                         (0, 2, 3, 1)).astype(jnp.float32)
    diff = float(jnp.abs(jax.jit(out_ours)(our_params) - jax.jit(out_theirs)(their_params)).max())
    our_grad = jax.jit(jax.grad(lambda p: jnp.mean(jnp.square(out_ours(p)))))
    their_grad = jax.jit(jax.grad(lambda p: jnp.mean(jnp.square(out_theirs(p)))))
    compile_s = {}
    for name, fn, p in (("ours", our_grad, our_params), ("theirs", their_grad, their_params)):
      compile_s[name] = _time(fn, p)  # compile + first run
      _time(fn, p)
    ours_s, theirs_s = [], []
    for _ in range(args.repeats):
      ours_s.append(_time(our_grad, our_params))
      theirs_s.append(_time(their_grad, their_params))
    ours_med, theirs_med = statistics.median(ours_s), statistics.median(theirs_s)
    for name, med, runs in (("ours", ours_med, ours_s), ("theirs", theirs_med, theirs_s)):
      print(f"{dtype_name:8s} {name:6s} {med * 1e3:9.1f} ms  (runs: "
            f"{', '.join(f'{s * 1e3:.0f}' for s in runs)}; first call {compile_s[name]:.1f} s)")
    results[dtype_name] = dict(ours_ms=round(ours_med * 1e3, 2),
                               theirs_ms=round(theirs_med * 1e3, 2),
                               time_ratio=round(ours_med / theirs_med, 4),
                               max_abs_diff=round(diff, 6))
    del our_grad, their_grad
    jax.clear_caches()
    gc.collect()

  count = lambda tree: int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))
  print(json.dumps(dict(
      benchmark="unet_vs_diffusers", config=args.config, device=jax.devices()[0].device_kind,
      backend=jax.default_backend(), batch=batch, latent=[size, size, 4], tokens=tokens,
      repeats=args.repeats, params_ours=count(our_params), params_theirs=count(their_params),
      results=results, target=0.9)))


if __name__ == "__main__":
  main()
