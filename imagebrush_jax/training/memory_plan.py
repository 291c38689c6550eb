"""A memory plan: which mesh, rematerialisation policy and batch per device fit an accelerator.

For each setting (fsdp size, remat policy, grids per device in a micro-batch, micro-batches per
step), a config's train step (train_state.jit_train_step, as training runs it) is compiled ahead
of time for a mesh of simulated CPU devices (XLA_FLAGS=--xla_force_host_platform_device_count=N)
on abstract inputs: the state's shapes come from jax.eval_shape and nothing is allocated, so a
paper-size step is planned on a laptop. Its compiled memory per device (perf/compiled.py's
peak_bytes: arguments + outputs - donated + temporaries + code) is set against each
accelerator's memory (perf/hardware.ACCELERATOR_MEMORY_GIB), beside the analytic FLOPs
(perf/flops.py).

The figures are the CPU compiler's per-device estimate of the same program, not a GPU's or a
TPU's: XLA:CPU fuses and schedules differently, and its attention is the einsum path (the
scores materialised) where a GPU in bfloat16 runs cuDNN's fused attention. A setting therefore
fits when the estimate is at most HEADROOM x the device's memory (launch/gpu_multinode.sh lets
jax use 0.92 of a GPU's).

Only shapes matter here: pretrained-start files (model.unet_init, model.prompt.vit_init) are
not read, and a latent space whose architecture is neither recorded in the config nor readable
from its file's header is SD's VAE (as benchmarks/workload.py does).
"""
from __future__ import annotations

import copy
import dataclasses
import math
import os
import time
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import jax
import ml_collections
import numpy as np

from imagebrush_jax.core import latent
from imagebrush_jax.infra import parallel
from imagebrush_jax.models import autoencoder as ae
from imagebrush_jax.perf import compiled as compiled_lib
from imagebrush_jax.perf import flops as flops_lib
from imagebrush_jax.perf import hardware
from imagebrush_jax.training import objectives
from imagebrush_jax.training import train_state

GIB = compiled_lib.GIB
HEADROOM = 0.9  # fits: estimate <= HEADROOM x the device's memory
# 'none' trains without rematerialisation; the others rematerialise every block saving what the
# jax.checkpoint_policies of that name saves (nothing_saveable is config.model.remat_policy "").
REMAT_POLICIES = ("none", "nothing_saveable", "dots_saveable")
ESTIMATE_NOTE = ("the CPU compiler's per-device estimate of the same program (XLA:CPU fusion, "
                 "einsum attention; a GPU's cuDNN fused attention needs less); fits: estimate "
                 f"<= {HEADROOM} x the device's memory")


@dataclasses.dataclass(frozen=True)
class Setting:
  """One row of a plan: `batch_per_device` grids per device in each of `grad_accum_steps`
  micro-batches of a step, on a (devices / fsdp) x fsdp mesh, rematerialised by `remat`."""
  fsdp: int
  remat: str
  batch_per_device: int
  grad_accum_steps: int = 1


def remat_name(config: ml_collections.ConfigDict) -> str:
  """A config's rematerialisation as one of REMAT_POLICIES' names (or the policy's own)."""
  if not config.model.remat:
    return "none"
  return str(config.model.remat_policy or "") or "nothing_saveable"


def with_setting(config: ml_collections.ConfigDict, *, fsdp: int, remat: str,
                 grad_accum_steps: int = 1, global_batch: int | None = None
                 ) -> ml_collections.ConfigDict:
  """A copy of `config` with the mesh ('data' fills the devices), remat and accumulation of a
  setting, its global batch, and only shapes left to read (see the module's docstring)."""
  c = copy.deepcopy(config)
  c.unlock()  # config_flags locks a config read from the command line
  c.mesh.data, c.mesh.fsdp = -1, int(fsdp)
  c.model.remat = remat != "none"
  c.model.remat_policy = "" if remat == "none" else remat
  c.train.grad_accum_steps = int(grad_accum_steps)
  if global_batch is not None:
    c.train.batch_size = int(global_batch)
  c.model.unet_init = ""
  c.model.prompt.vit_init = ""
  if latent.is_latent(c) and not c.model.autoencoder.get("arch"):
    params = str(c.model.autoencoder.get("params") or "")
    if not (params and os.path.exists(params)):  # else its header gives the architecture
      c.model.autoencoder.params = ""
      c.model.autoencoder.arch = ae.AutoencoderConfig().to_dict()
  return c


def _shard_bytes(abstract: Any, shardings: Any) -> int:
  """Bytes one device holds of a sharded tree (the largest shard of each leaf)."""
  sizes = jax.tree.map(lambda s, sh: math.prod(sh.shard_shape(s.shape)) * np.dtype(s.dtype).itemsize,
                       abstract, shardings)
  return int(sum(jax.tree.leaves(sizes)))


class StepCompiler:
  """The train step of `config` at one (fsdp, remat, grad_accum_steps) on a mesh of `devices`,
  compiled per batch per device on abstract inputs. `example_batch`: one row of the batch the
  step takes ({grid, mask, box} arrays with a leading dimension of 1); only its shapes and
  dtypes are read."""

  def __init__(self, config: ml_collections.ConfigDict, devices: Sequence[jax.Device],
               example_batch: Mapping[str, Any], *, fsdp: int, remat: str,
               grad_accum_steps: int = 1):
    self.devices = list(devices)
    self.accum = int(grad_accum_steps)
    self.config = with_setting(config, fsdp=fsdp, remat=remat, grad_accum_steps=self.accum,
                               global_batch=len(self.devices) * self.accum)
    self.space = latent.from_config(self.config)
    frozen = ae.param_shapes(self.space.model) if self.space is not None else None
    mesh_options = parallel.MeshOptions.from_config(self.config)
    self.mesh = parallel.make_mesh(mesh_options, self.devices)
    self.task = objectives.imagebrush_from_config(self.config, self._autoencoder(frozen))

    def init_state(frozen_params, rng):  # the frozen weights traced, never materialised
      task = objectives.imagebrush_from_config(self.config, self._autoencoder(frozen_params))
      return task.init_state(rng)

    self.abstract = jax.eval_shape(init_state, frozen, jax.random.key(0))
    self.shardings = parallel.tree_shardings(self.abstract, self.mesh, mesh_options)
    self.step = train_state.jit_train_step(self.task, self.mesh, self.shardings)
    self.example = {k: (tuple(np.shape(v))[1:], np.asarray(v).dtype)
                    for k, v in example_batch.items()}
    self._compiled: dict[int, compiled_lib.CompiledStats] = {}

  def _autoencoder(self, frozen):
    return (self.space, frozen) if self.space is not None else None

  @property
  def state_bytes_per_device(self) -> int:
    """Parameters, EMA and optimizer state held by one device (its shards)."""
    return _shard_bytes(self.abstract, self.shardings)

  def global_batch(self, batch_per_device: int) -> int:
    return batch_per_device * len(self.devices) * self.accum

  def lower(self, batch_per_device: int):
    """The step lowered for this many grids per device per micro-batch (abstract inputs)."""
    state = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                         self.abstract, self.shardings)
    sharding = parallel.batch_sharding(self.mesh)
    b = self.global_batch(batch_per_device)
    batch = {k: jax.ShapeDtypeStruct((b,) + shape, dtype, sharding=sharding)
             for k, (shape, dtype) in self.example.items()}
    return self.step.lower(state, batch)

  def compile(self, batch_per_device: int) -> compiled_lib.CompiledStats:
    """The compiled step's statistics per device (compiled once per batch, then dropped)."""
    if batch_per_device not in self._compiled:
      _, stats = compiled_lib.compile_with_stats(self.lower(batch_per_device))
      self._compiled[batch_per_device] = stats
    return self._compiled[batch_per_device]


def fits(peak_bytes: int, accelerator: str, headroom: float = HEADROOM) -> bool:
  """Whether an estimate fits one device of `accelerator` (a hardware.ACCELERATOR_MEMORY_GIB
  name or alias) with the headroom margin."""
  gib = hardware.ACCELERATOR_MEMORY_GIB[hardware.accelerator_name(accelerator)]
  return peak_bytes <= headroom * gib * GIB


def _sig(x: float) -> float:
  return float(f"{x:.4g}")


def row(compiler: StepCompiler, setting: Setting, accelerators: Sequence[str],
        headroom: float = HEADROOM) -> dict[str, Any]:
  """One setting's figures: compiled memory per device against each accelerator, analytic
  FLOPs of the step (model FLOPs over the global batch; hardware FLOPs per device, with the
  remat policy's recomputation)."""
  stats = compiler.compile(setting.batch_per_device)
  global_batch = compiler.global_batch(setting.batch_per_device)
  arch = compiler.space.model.arch if compiler.space is not None else None
  analytic = flops_lib.train_step(compiler.config, global_batch, arch)
  n = len(compiler.devices)
  gib = lambda b: round(b / GIB, 3)
  return {
      "num_devices": n, "data": n // setting.fsdp, "fsdp": setting.fsdp, "remat": setting.remat,
      "batch_per_device": setting.batch_per_device,
      "grad_accum_steps": setting.grad_accum_steps, "global_batch": global_batch,
      "memory_gib": gib(stats.peak_bytes), "state_gib": gib(compiler.state_bytes_per_device),
      "temp_gib": gib(stats.temp_bytes), "peak_bytes": stats.peak_bytes,
      "state_bytes": compiler.state_bytes_per_device,
      "memory_analysis": {k: getattr(stats, k) for k in (
          "argument_bytes", "output_bytes", "alias_bytes", "temp_bytes", "code_bytes")},
      "compile_s": round(stats.compile_s, 1),
      "analytic_tflop_per_step": _sig(analytic.model / 1e12),
      "hardware_tflop_per_device": (_sig(analytic.hardware / n / 1e12)
                                    if analytic.hardware else None),
      "fits": {a: fits(stats.peak_bytes, a, headroom) for a in accelerators},
  }


def plan(config: ml_collections.ConfigDict, devices: Sequence[jax.Device],
         example_batch: Mapping[str, Any], settings: Iterable[Setting],
         accelerators: Sequence[str], headroom: float = HEADROOM,
         log: Callable[[str], None] = print) -> Iterator[dict[str, Any]]:
  """row() of every setting, compiled in order; one StepCompiler per (fsdp, remat, accumulation)
  (kept while consecutive settings share it)."""
  compiler, key = None, None
  for s in settings:
    if (s.fsdp, s.remat, s.grad_accum_steps) != key:
      key = (s.fsdp, s.remat, s.grad_accum_steps)
      compiler = None  # drop the last one's compiled programs first
      compiler = StepCompiler(config, devices, example_batch, fsdp=s.fsdp, remat=s.remat,
                              grad_accum_steps=s.grad_accum_steps)
    start = time.perf_counter()
    result = row(compiler, s, accelerators, headroom)
    log(f"fsdp {s.fsdp}, remat {s.remat}, {s.batch_per_device} per device x "
        f"{s.grad_accum_steps}: {result['memory_gib']:.2f} GiB per device "
        f"(state {result['state_gib']:.2f}); {time.perf_counter() - start:.0f} s")
    yield result


def auto_accum(global_batch: int, num_devices: int, batch_per_device: int) -> int:
  """Micro-batches per step that make `global_batch` from `batch_per_device` grids on each of
  `num_devices` devices; ValueError when they do not."""
  per_device, rest = divmod(global_batch, num_devices)
  if rest or per_device % batch_per_device:
    raise ValueError(f"a global batch of {global_batch} over {num_devices} devices is not a "
                     f"whole number of micro-batches of {batch_per_device} per device")
  return per_device // batch_per_device


def choose(rows: Sequence[Mapping[str, Any]], accelerator: str, global_batch: int
           ) -> dict[str, Any] | None:
  """The setting to train `global_batch` grids per step on `accelerator`, among the rows of that
  global batch that fit it: the fewest micro-batches per step, then the least recomputation
  (hardware FLOPs), then the smallest fsdp. None when none fits."""
  candidates = [r for r in rows if r["global_batch"] == global_batch and r["fits"].get(accelerator)]
  key = lambda r: (r["grad_accum_steps"], r["hardware_tflop_per_device"] or math.inf, r["fsdp"])
  return min(candidates, key=key) if candidates else None


def summary(rows: Sequence[Mapping[str, Any]], accelerators: Sequence[str], global_batch: int,
            headroom: float = HEADROOM) -> dict[str, Any]:
  """Per accelerator: its memory, the limit the plan held it to and choose()'s setting."""
  out = {}
  for a in accelerators:
    gib = hardware.ACCELERATOR_MEMORY_GIB[a]
    chosen = choose(rows, a, global_batch)
    keys = ("fsdp", "remat", "batch_per_device", "grad_accum_steps", "memory_gib",
            "analytic_tflop_per_step", "hardware_tflop_per_device")
    out[a] = {"memory_gib": gib, "limit_gib": round(headroom * gib, 2),
              "fitting_settings": sum(bool(r["fits"].get(a)) for r in rows),
              "chosen": {k: chosen[k] for k in keys} if chosen else None}
  return out
