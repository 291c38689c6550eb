"""What XLA says about a compiled program: compile time, FLOPs and memory per device."""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable

GIB = 2**30


@dataclasses.dataclass(frozen=True)
class CompiledStats:
  """One device's share of a compiled program.

  flops: XLA's cost analysis (matmuls, convolutions and elementwise work; the body of a loop is
    counted once). None where the backend gives no analysis.
  peak_bytes: arguments + outputs - donated (aliased) buffers + temporaries + generated code,
    the memory the program needs on the device while it runs.
  """
  compile_s: float
  flops: float | None
  argument_bytes: int
  output_bytes: int
  alias_bytes: int
  temp_bytes: int
  code_bytes: int

  @property
  def peak_bytes(self) -> int:
    return (self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes
            + self.code_bytes)

  def summary(self) -> str:
    """One line for the training log."""
    gib = lambda n: f"{n / GIB:.2f}"
    flops = f"{self.flops / 1e9:.4g} GFLOP per device (XLA)" if self.flops else "FLOPs unknown"
    return (f"compiled in {self.compile_s:.1f} s; {flops}; memory per device {gib(self.peak_bytes)}"
            f" GiB (arguments {gib(self.argument_bytes)}, outputs {gib(self.output_bytes)}, "
            f"donated {gib(self.alias_bytes)}, temporaries {gib(self.temp_bytes)})")


def xla_flops(compiled: Any) -> float | None:
  """FLOPs from a compiled (or lowered) program's cost analysis, None where there is none."""
  try:
    cost = compiled.cost_analysis()
  except (NotImplementedError, RuntimeError):
    return None
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = float(cost.get("flops", 0.0)) if cost else 0.0
  return flops if flops > 0 else None


def memory_stats(compiled: Any) -> dict[str, int]:
  """The compiled program's memory analysis as byte counts (zeros where the backend has none)."""
  try:
    mem = compiled.memory_analysis()
  except (NotImplementedError, RuntimeError):
    mem = None
  get = lambda name: int(getattr(mem, name, 0) or 0) if mem is not None else 0
  return dict(argument_bytes=get("argument_size_in_bytes"),
              output_bytes=get("output_size_in_bytes"),
              alias_bytes=get("alias_size_in_bytes"),
              temp_bytes=get("temp_size_in_bytes"),
              code_bytes=get("generated_code_size_in_bytes"))


def compile_with_stats(lowered: Any, compiler_options: dict | None = None
                       ) -> tuple[Any, CompiledStats]:
  """Compiles a `jax.stages.Lowered` ahead of time: (executable, its statistics)."""
  start = time.perf_counter()
  compiled = lowered.compile(compiler_options) if compiler_options else lowered.compile()
  seconds = time.perf_counter() - start
  return compiled, CompiledStats(compile_s=seconds, flops=xla_flops(compiled),
                                 **memory_stats(compiled))


def largest_fitting(peak_bytes: Callable[[int], int], limit_bytes: int, upper: int,
                    log: Callable[[str], None] = print) -> dict[str, Any]:
  """The largest batch b in [1, upper] with peak_bytes(b) <= limit_bytes: doubling from 1, then
  bisection. peak_bytes compiles (never runs) the program, so nothing runs out of memory.

  Returns max_batch, peak_bytes_at_max, peak_bytes_above_max (of max_batch + 1, when the search
  compiled it), memory_limit_bytes and compiles; raises ValueError if even batch 1 does not fit.
  """
  peaks: dict[int, int] = {}

  def fits(b: int) -> bool:
    peaks[b] = int(peak_bytes(b))
    log(f"batch {b}: {peaks[b] / GIB:.3f} GiB of {limit_bytes / GIB:.3f} GiB")
    return peaks[b] <= limit_bytes

  good, bad, b = 0, None, 1
  while True:
    if not fits(b):
      bad = b
      break
    good = b
    if b >= upper:
      break
    b = min(2 * b, upper)
  while bad is not None and bad - good > 1:
    mid = (good + bad) // 2
    good, bad = (mid, bad) if fits(mid) else (good, mid)
  if good == 0:
    raise ValueError(f"a batch of 1 needs {peaks[1] / GIB:.2f} GiB, over the "
                     f"{limit_bytes / GIB:.2f} GiB limit")
  return dict(max_batch=good, peak_bytes_at_max=peaks[good],
              peak_bytes_above_max=peaks.get(good + 1), memory_limit_bytes=int(limit_bytes),
              compiles=len(peaks))
