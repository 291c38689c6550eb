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
hits both alike; only one model's parameters are in memory at a time. diffusers 0.39, the last
release with Flax models, is a test requirement:

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
import shutil
import statistics
import sys
import tempfile
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


def _torch_name(path: str) -> tuple[str, str]:
  """A diffusers Flax parameter path -> (its PyTorch state-dict name, the Flax leaf)."""
  *modules, leaf = path.split("/")
  modules = [m if re.fullmatch(r"linear_\d", m) else re.sub(r"_(\d+)$", r".\1", m)
             for m in modules]
  modules = [_FLAX_ATTENTION.get(m, m) for m in modules]
  return ".".join(modules + ["weight" if leaf in ("kernel", "scale") else leaf]), leaf


def torch_state(flax_params) -> dict[str, np.ndarray]:
  """diffusers Flax UNet params -> the PyTorch state dict of the same weights (numpy)."""
  state = {}
  for path, value in params_file.flatten(flax_params).items():
    name, leaf = _torch_name(path)
    value = np.asarray(value, np.float32)
    if leaf == "kernel":
      value = value.transpose(3, 2, 0, 1) if value.ndim == 4 else value.T  # HWIO -> OIHW
    state[name] = value
  return state


def flax_params(shapes, state: dict[str, np.ndarray]) -> dict:
  """The inverse of torch_state, for a diffusers Flax UNet of parameter shapes `shapes`."""
  flat = {}
  for path, shape in params_file.flatten(shapes).items():
    name, leaf = _torch_name(path)
    value = state[name]
    if leaf == "kernel":
      value = value.transpose(2, 3, 1, 0) if value.ndim == 4 else value.T
    flat[path] = value.reshape(shape.shape)
  return params_file.unflatten(flat)


def spill(state: dict[str, np.ndarray], folder: str) -> dict[str, np.ndarray]:
  """The state dict written to `folder` and memory-mapped back: the weights stay in the page
  cache, not in the process's memory, while one model is timed."""
  mapped = {}
  for i, (name, value) in enumerate(state.items()):
    path = os.path.join(folder, f"{i}.npy")
    np.save(path, np.ascontiguousarray(value))
    mapped[name] = np.load(path, mmap_mode="r")
  return mapped


def _time(fn, *args) -> float:
  t0 = time.perf_counter()
  jax.block_until_ready(fn(*args))
  return time.perf_counter() - t0


class Side:
  """One model of the comparison. Its parameters are made from the shared PyTorch-layout state
  for each call and dropped after it, so that only one model's parameters and gradients are in
  memory at a time (SD 1.5 on a 24 GiB CPU host; the shared state is memory-mapped)."""

  def __init__(self, name, apply, make_params):
    self.name, self.make_params = name, make_params
    self.output = jax.jit(apply)
    self.grad = jax.jit(jax.grad(lambda p: jnp.mean(jnp.square(apply(p)))))
    self.runs: list[float] = []
    self.first_call_s = 0.0

  def timed_grad(self) -> float:
    params = jax.tree.map(jnp.asarray, self.make_params())
    seconds = _time(self.grad, params)
    del params
    gc.collect()
    return seconds


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

  init = FlaxUNet2DConditionModel(**cfg).init
  their_shapes = jax.eval_shape(init, jax.random.key(0), x_nchw, t, ctx)["params"]
  spill_dir = tempfile.mkdtemp(prefix="unet_vs_diffusers_")
  state = spill(torch_state(jax.jit(init)(jax.random.key(0), x_nchw, t, ctx)["params"]),
                spill_dir)
  gc.collect()
  make_ours = lambda: sd_unet.convert_state_dict(state, arch, "diffusers Flax UNet")
  make_theirs = lambda: flax_params(their_shapes, state)
  count = lambda tree: int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))

  results = {}
  for dtype_name in args.dtypes.split(","):
    dtype = jnp.dtype(dtype_name)
    ours = sd_unet.build(arch, runtime=runtime_lib.Runtime(dtype=dtype))
    theirs = FlaxUNet2DConditionModel(**cfg, dtype=dtype)
    sides = [
        Side("ours", lambda p: ours.apply({"params": p}, x_nhwc, t, ctx).astype(jnp.float32),
             make_ours),
        Side("theirs", lambda p: jnp.transpose(theirs.apply({"params": p}, x_nchw, t, ctx).sample,
                                               (0, 2, 3, 1)).astype(jnp.float32), make_theirs)]
    outputs = [np.asarray(side.output(jax.tree.map(jnp.asarray, side.make_params())))
               for side in sides]
    for side in sides:  # compile + warm up
      side.first_call_s = side.timed_grad()
      side.timed_grad()
    for _ in range(args.repeats):  # alternating, so that machine noise hits both alike
      for side in sides:
        side.runs.append(side.timed_grad())
    med = {side.name: statistics.median(side.runs) for side in sides}
    for side in sides:
      print(f"{dtype_name:8s} {side.name:6s} {med[side.name] * 1e3:9.1f} ms  (runs: "
            f"{', '.join(f'{s * 1e3:.0f}' for s in side.runs)}; first call "
            f"{side.first_call_s:.1f} s)", flush=True)
    results[dtype_name] = dict(ours_ms=round(med["ours"] * 1e3, 2),
                               theirs_ms=round(med["theirs"] * 1e3, 2),
                               time_ratio=round(med["ours"] / med["theirs"], 4),
                               max_abs_diff=round(float(np.abs(outputs[0] - outputs[1]).max()), 6))
    print(f"{dtype_name}: {json.dumps(results[dtype_name])}", flush=True)
    del sides
    jax.clear_caches()
    gc.collect()

  shutil.rmtree(spill_dir, ignore_errors=True)
  print(json.dumps(dict(
      benchmark="unet_vs_diffusers", config=args.config, device=jax.devices()[0].device_kind,
      backend=jax.default_backend(), batch=batch, latent=[size, size, 4], tokens=tokens,
      repeats=args.repeats, params_ours=count(sd_unet.param_shapes(arch)),
      params_theirs=count(their_shapes), results=results, target=0.9)))


if __name__ == "__main__":
  main()
