"""Device peaks and capacities: dense bfloat16 FLOP/s by device kind, a measured CPU matmul peak,
memory per device (of the devices jax sees, and of the accelerators a memory plan is made for),
and the warning for a large model on the CPU backend (`python -m imagebrush_jax.hardware` prints
them for the devices jax sees)."""
from __future__ import annotations

import functools
import os
import time

import jax
import jax.numpy as jnp

# Dense bfloat16 peak TFLOP/s per device (the vendors' figures without sparsity; V100: float16),
# matched as substrings of jax's device_kind, first match first.
PEAK_TFLOPS = (
    ("B200", 2250.0),
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),
    ("H200", 989.0),
    ("A100", 312.0),
    ("V100", 125.0),
    ("TPU v4", 275.0),
    ("TPU v5 lite", 197.0),
    ("TPU v5e", 197.0),
    ("TPU v5p", 459.0),
    ("TPU v5", 459.0),
    ("TPU v6 lite", 918.0),
)
# Memory per device (GiB) of the accelerators a memory plan (training/memory_plan.py) is made
# for: HBM per GPU or per TPU chip, the vendors' figures.
ACCELERATOR_MEMORY_GIB = {
    "A100-40GB": 40.0,
    "A100-80GB": 80.0,
    "H100-80GB": 80.0,
    "H200": 141.0,
    "TPU v4": 32.0,
    "TPU v5e": 16.0,
    "TPU v5p": 95.0,
}
# Above this many parameters a CPU backend is almost surely a missing accelerator install.
LARGE_MODEL_PARAMS = 100_000_000


def table_peak_flops(device_kind: str) -> float | None:
  """The dense bfloat16 peak FLOP/s of a device kind (PEAK_TFLOPS), None when unknown."""
  for key, tflops in PEAK_TFLOPS:
    if key in device_kind:
      return tflops * 1e12
  return None


@functools.cache
def cpu_matmul_flops(dtype: str = "float32", size: int = 1024, repeats: int = 5) -> float:
  """FLOP/s of the best of `repeats` jitted size x size matmuls in `dtype` on this process's
  first CPU device: the CPU's practical peak, shared by its devices."""
  device = jax.devices("cpu")[0]
  a = jax.device_put(jnp.ones((size, size), dtype), device)
  matmul = jax.jit(lambda x, y: x @ y)
  jax.block_until_ready(matmul(a, a))
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(matmul(a, a))
    best = min(best, time.perf_counter() - start)
  return 2.0 * size**3 / best


def peak_flops(device: jax.Device | None = None, dtype: str = "bfloat16"
               ) -> tuple[float | None, str]:
  """(peak FLOP/s of one device, where the figure comes from).

  Accelerators: the dense bfloat16 table (MFU is quoted against it whatever the compute dtype).
  CPU: a measured matmul in `dtype`, divided among the process's CPU devices.
  """
  device = device or jax.devices()[0]
  if device.platform == "cpu":
    per_device = cpu_matmul_flops(str(dtype)) / max(len(jax.local_devices(backend="cpu")), 1)
    return per_device, f"measured {dtype} matmul"
  peak = table_peak_flops(device.device_kind)
  return peak, ("bfloat16 dense peak table" if peak else f"unknown device {device.device_kind!r}")


def memory_bytes(device: jax.Device | None = None) -> int:
  """Memory one device can use: the allocator's limit on accelerators; on the CPU the machine's
  physical memory shared among the process's CPU devices."""
  device = device or jax.devices()[0]
  stats = device.memory_stats() if device.platform != "cpu" else None
  if stats and stats.get("bytes_limit"):
    return int(stats["bytes_limit"])
  physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
  return physical // max(len(jax.local_devices(backend="cpu")), 1)


def accelerator_name(name: str) -> str:
  """The ACCELERATOR_MEMORY_GIB key `name` means: case, spaces, '-' and '_' ignored, the 'TPU '
  of a TPU optional ('v5e', 'tpu_v5p', 'h100-80gb'). ValueError naming the known ones."""
  norm = lambda s: "".join(ch for ch in s.lower() if ch.isalnum())
  for key in ACCELERATOR_MEMORY_GIB:
    if norm(name) in (norm(key), norm(key.removeprefix("TPU "))):
      return key
  raise ValueError(f"unknown accelerator {name!r}; known: {', '.join(ACCELERATOR_MEMORY_GIB)}")


def memory_limit_bytes(limit_gb: float, device: jax.Device | None = None) -> int:
  """`limit_gb` GiB when positive (to plan for another device), else `memory_bytes(device)`."""
  return int(limit_gb * 2**30) if limit_gb > 0 else memory_bytes(device)


def cpu_backend_warning(num_params: int, backend: str | None = None) -> str | None:
  """A one-line warning when a model this large is about to train on the CPU backend."""
  backend = backend or jax.default_backend()
  if backend != "cpu" or num_params <= LARGE_MODEL_PARAMS:
    return None
  return (f"warning: {num_params / 1e6:.0f}M parameters on the CPU backend: jax sees no GPU or "
          f"TPU. Install the accelerator build into .venv (make venv-gpu or make venv-tpu; "
          f"README: Installing for GPUs and TPUs)")

