"""Train-step benchmark: FLOPs, MFU, memory and compile time of the jitted, sharded train step.

  python benchmarks/train_mfu.py --config configs/paper_256.py [--batch_per_device 8]
      [--steps 10] [--remat_policy nothing_saveable|dots_saveable|none]
      [--attention_impl auto|cudnn|xla|einsum] [--find_max_batch] [--pipeline]
      [--cached_latents] [--compile_only] [--config.key=value ...]

The step is compiled ahead of time (jit(...).lower(...).compile()) on random weights and a
random batch, so it needs no data set or weight files (latent configs without an autoencoder
file get random weights of SD's VAE). Reported: compile seconds; FLOPs per step from XLA's cost
analysis (which counts the micro-batch loop's body once: times config.train.grad_accum_steps),
cross-checked against the analytic count of imagebrush_jax/perf/flops.py (within 10%,
rematerialisation's recomputation included); peak device memory from the compiled memory
analysis; the median step time; TFLOP/s per device and MFU (the analytic model FLOPs, or XLA's
for a config with a variant's plug-ins, against the device's dense bfloat16 peak, or on the CPU
against a measured matmul). XLA gives custom calls no FLOPs: with cuDNN's fused attention
(attention_impl auto or cudnn on a GPU) its count leaves the attention products out and the
check reads low by their share (about 9% at paper_256). --find_max_batch bisects the batch per
device on the compiled memory analysis alone (nothing is run, so nothing runs out of memory).
--pipeline also times the step fed by the config's grain pipeline against the constant batch
(pipeline_ratio; target <= 1.05). --cached_latents (a latent config) also compiles the step fed
cached posterior moments (config.data.cached_latents: no encoder in the step) and reports both
steps' FLOPs side by side (`cached_latents`: XLA's and the analytic count, and their ratios).
--compile_only stops after compiling: FLOPs and memory, no state allocated, nothing timed.
Prints one JSON line last.
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
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=g-import-not-at-top,wrong-import-position
from imagebrush_jax.infra import parallel
from imagebrush_jax.training import train_state
from imagebrush_jax.data import pipeline
from imagebrush_jax.data import task_lists
from imagebrush_jax.perf import compiled as compiled_lib
from imagebrush_jax.perf import flops as flops_lib
from imagebrush_jax.perf import hardware
from benchmarks import workload

_CONFIG = config_flags.DEFINE_config_file("config", "configs/default.py", "Config file.")
_BATCH = flags.DEFINE_integer("batch_per_device", 0,
                              "Grids per device; 0: config.train.batch_size / devices.",
                              lower_bound=0)
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps (after two warm-up steps).",
                              lower_bound=1)
_REMAT = flags.DEFINE_string(
    "remat_policy", None, "Rematerialise the blocks with this jax.checkpoint_policies name "
    "('nothing_saveable', 'dots_saveable', ...), or 'none' for no remat; unset: the config's.")
_ATTENTION = flags.DEFINE_enum("attention_impl", None, ["auto", "cudnn", "xla", "einsum"],
                               "Attention kernel; unset: the config's.")
_FIND_MAX = flags.DEFINE_boolean("find_max_batch", False,
                                 "Find the largest batch per device that fits, then time it.")
_MAX_BATCH = flags.DEFINE_integer("max_batch_per_device", 1024,
                                  "Upper end of the --find_max_batch search.", lower_bound=1)
_MEMORY_GB = flags.DEFINE_float("memory_limit_gb", 0.0,
                                "Memory per device for --find_max_batch; 0: the device's.")
_PIPELINE = flags.DEFINE_boolean("pipeline", False,
                                 "Also time the step fed by the config's data pipeline.")
_CACHED = flags.DEFINE_boolean("cached_latents", False,
                               "Also compile the step on cached moments; FLOPs side by side.")
_COMPILE_ONLY = flags.DEFINE_boolean("compile_only", False,
                                     "Compile and report FLOPs and memory; run no step.")
_FLOPS_TOLERANCE = 0.10
GIB = compiled_lib.GIB


def _apply_flags(config):
  if _REMAT.value is not None:
    config.model.remat = _REMAT.value != "none"
    config.model.remat_policy = "" if _REMAT.value == "none" else _REMAT.value
  if _ATTENTION.value is not None:
    config.model.attention_impl = _ATTENTION.value
  return config


class StepCompiler:
  """Compiles the train step for a batch per device without allocating the state."""

  def __init__(self, config):
    self.config = config
    self.space = workload.autoencoder(config)
    self.task, self.autoencoder_arch = workload.build_task(config, self.space)
    mesh_options = parallel.MeshOptions.from_config(config)
    self.mesh = parallel.make_mesh(mesh_options)
    self.abstract, self.shardings = train_state.state_shapes_and_shardings(
        self.task, self.mesh, mesh_options, jax.random.key(0))
    self.step = train_state.jit_train_step(self.task, self.mesh, self.shardings)
    self._compiled = {}

  def host_batch(self, batch_size: int, cached: bool = False):
    """A random batch; with `cached`, its cells' moments too (config.data.cached_latents)."""
    host = workload.random_batch(self.config, batch_size)
    if cached:
      host["moments"] = workload.random_moments(self.config, self.space[0], batch_size)
    return host

  def global_batch(self, batch_per_device: int, cached: bool = False):
    host = self.host_batch(batch_per_device * jax.device_count(), cached)
    return parallel.host_batch_to_global(host, self.mesh)

  def abstract_batch(self, batch_per_device: int, cached: bool = False):
    b = batch_per_device * jax.device_count()
    host = self.host_batch(1, cached)
    sharding = parallel.batch_sharding(self.mesh)
    return {k: jax.ShapeDtypeStruct((b,) + v.shape[1:], v.dtype, sharding=sharding)
            for k, v in host.items()}

  def compile(self, batch_per_device: int, cached: bool = False):
    """(executable, CompiledStats) of the step at this batch per device, compiled once."""
    if (batch_per_device, cached) not in self._compiled:
      state = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                           self.abstract, self.shardings)
      self._compiled[batch_per_device, cached] = compiled_lib.compile_with_stats(
          self.step.lower(state, self.abstract_batch(batch_per_device, cached)))
    return self._compiled[batch_per_device, cached]


def _timed_steps(step, state, batch, num_steps):
  """(state, per-step seconds), each step waited for."""
  times = []
  for _ in range(num_steps):
    start = time.perf_counter()
    state, metrics = step(state, batch())
    jax.block_until_ready((state, metrics))
    times.append(time.perf_counter() - start)
  return state, times


def main(argv):
  del argv
  config = _apply_flags(_CONFIG.value)
  device = jax.devices()[0]
  compiler = StepCompiler(config)
  if _CACHED.value and compiler.space is None:
    raise SystemExit("--cached_latents: the config is in pixel space (config.model."
                     "latent_factor = 1); there is no encoder to skip")
  search = None
  if _FIND_MAX.value:
    limit = hardware.memory_limit_bytes(_MEMORY_GB.value, device)
    try:
      search = compiled_lib.largest_fitting(lambda b: compiler.compile(b)[1].peak_bytes, limit,
                                            _MAX_BATCH.value, log=lambda s: print(s, flush=True))
    except ValueError as e:
      raise SystemExit(f"--find_max_batch: per device, {e}") from None
    batch_per_device = search["max_batch"]
  else:
    batch_per_device = _BATCH.value or max(config.train.batch_size // jax.device_count(), 1)
  global_batch = batch_per_device * jax.device_count()

  compiled, stats = compiler.compile(batch_per_device)
  print(f"train step, {batch_per_device} per device: {stats.summary()}", flush=True)
  analytic = flops_lib.train_step(config, global_batch, compiler.autoencoder_arch)
  # XLA's count has the micro-batch loop's body once; a step runs it grad_accum_steps times
  # (imagebrush_jax/training/loop.py scales its count the same way).
  accum = int(config.train.grad_accum_steps)
  xla_flops = stats.flops * jax.device_count() * accum if stats.flops else None
  flops_ratio = xla_flops / analytic.hardware if (xla_flops and analytic.hardware) else None
  if config.model.variant:  # plug-in layers are not in the analytic count
    model_flops, flops_ratio = xla_flops, None
    flops_source = "xla (plug-ins are not in the analytic count)"
  else:
    model_flops, flops_source = analytic.model, "analytic"
  cached = {}
  if _CACHED.value:
    cached_compiled, cached_stats = compiler.compile(batch_per_device, cached=True)
    print(f"train step on cached moments: {cached_stats.summary()}", flush=True)
    cached_analytic = flops_lib.train_step(config, global_batch, compiler.autoencoder_arch,
                                           cached_latents=True)
    cached_xla = (cached_stats.flops * jax.device_count() * accum if cached_stats.flops
                  else None)
    cached = {
        "xla_flops_per_step": cached_xla, "xla_flops_per_step_encoding": xla_flops,
        "xla_flops_ratio": round(cached_xla / xla_flops, 4) if cached_xla and xla_flops
                           else None,
        "analytic_flops_per_step": cached_analytic.model,
        "analytic_flops_per_step_encoding": analytic.model,
        "analytic_flops_ratio": round(cached_analytic.model / analytic.model, 4),
        "peak_memory_gib": round(cached_stats.peak_bytes / GIB, 3),
        "peak_memory_gib_encoding": round(stats.peak_bytes / GIB, 3),
        "compile_s": round(cached_stats.compile_s, 2),
    }
  if _COMPILE_ONLY.value:
    print(json.dumps({
        "benchmark": "train_mfu", "compile_only": True,
        "config": os.path.basename(config_flags.get_config_filename(flags.FLAGS["config"]) or ""),
        "device": device.device_kind, "backend": jax.default_backend(),
        "num_devices": jax.device_count(), "dtype": str(config.model.dtype),
        "remat": bool(config.model.remat), "remat_policy": config.model.remat_policy,
        "batch_per_device": batch_per_device, "global_batch": global_batch,
        "compile_s": round(stats.compile_s, 2),
        "analytic_flops_per_step": analytic.model, "xla_flops_per_step": xla_flops,
        "xla_to_analytic_ratio": round(flops_ratio, 4) if flops_ratio else None,
        "flops_parts_forward": analytic.parts,
        "peak_memory_gib": round(stats.peak_bytes / GIB, 3),
        **({"cached_latents": cached} if cached else {})}))
    return

  state = train_state.init_sharded_state(compiler.task, compiler.shardings, jax.random.key(0))
  batch = compiler.global_batch(batch_per_device)
  state, _ = _timed_steps(compiled, state, lambda: batch, 2)  # warm-up
  state, times = _timed_steps(compiled, state, lambda: batch, _STEPS.value)
  step_s = statistics.median(times)
  if _CACHED.value:
    cached_batch = compiler.global_batch(batch_per_device, cached=True)
    state, _ = _timed_steps(cached_compiled, state, lambda: cached_batch, 1)  # warm-up
    state, cached_times = _timed_steps(cached_compiled, state, lambda: cached_batch,
                                       _STEPS.value)
    cached["step_s"] = round(statistics.median(cached_times), 5)
    cached["step_s_encoding"] = round(step_s, 5)
    cached["step_time_ratio"] = round(cached["step_s"] / step_s, 4)

  pipeline_result = {}
  if _PIPELINE.value:
    config.train.batch_size = global_batch
    it = pipeline.make_train_iterator(task_lists.resolve(config))
    keys = ("grid", "mask", "box")  # the compiled step's inputs (the pipeline adds task ids)
    fed = lambda: parallel.host_batch_to_global({k: v for k, v in next(it).items() if k in keys},
                                                compiler.mesh)
    state, _ = _timed_steps(compiled, state, fed, 2)
    state, fed_times = _timed_steps(compiled, state, fed, _STEPS.value)
    if hasattr(it, "close"):
      it.close()
    fed_s = statistics.median(fed_times)
    pipeline_result = dict(step_s_pipeline=round(fed_s, 5),
                           pipeline_ratio=round(fed_s / step_s, 4), target_pipeline_ratio=1.05)

  dtype = str(config.model.dtype)
  peak, peak_source = hardware.peak_flops(device, dtype)
  tflops_per_device = model_flops / jax.device_count() / step_s / 1e12
  result = {
      "benchmark": "train_mfu",
      "config": os.path.basename(config_flags.get_config_filename(flags.FLAGS["config"]) or ""),
      "device": device.device_kind, "backend": jax.default_backend(),
      "num_devices": jax.device_count(), "dtype": dtype,
      "remat": bool(config.model.remat), "remat_policy": config.model.remat_policy,
      "attention_impl": config.model.attention_impl,
      "batch_per_device": batch_per_device, "global_batch": global_batch,
      "grad_accum_steps": accum,
      "compile_s": round(stats.compile_s, 2),
      "flops_per_step": model_flops, "flops_source": flops_source,
      "analytic_flops_per_step": analytic.model,
      "xla_flops_per_step": xla_flops,
      "expected_xla_flops_per_step": analytic.hardware,
      "xla_to_analytic_ratio": round(flops_ratio, 4) if flops_ratio else None,
      "flops_check_ok": (abs(flops_ratio - 1.0) <= _FLOPS_TOLERANCE) if flops_ratio else None,
      "flops_parts_forward": analytic.parts,
      "peak_memory_bytes": stats.peak_bytes,
      "peak_memory_gib": round(stats.peak_bytes / GIB, 3),
      "memory_analysis": {k: getattr(stats, k) for k in (
          "argument_bytes", "output_bytes", "alias_bytes", "temp_bytes", "code_bytes")},
      "step_s": round(step_s, 5), "step_s_min": round(min(times), 5),
      "examples_per_s": round(global_batch / step_s, 3),
      "tflops_per_device": round(tflops_per_device, 6),
      "peak_tflops_per_device": round(peak / 1e12, 4) if peak else None,
      "peak_source": peak_source,
      "mfu": round(tflops_per_device * 1e12 / peak, 5) if peak else None,
      **pipeline_result,
      **({"find_max_batch": search} if search else {}),
      **({"cached_latents": cached} if cached else {}),
  }
  print(json.dumps(result))


if __name__ == "__main__":
  app.run(main)
