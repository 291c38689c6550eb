"""The devices jax sees, their peak and memory: a check that an accelerator build loaded.

    python -m imagebrush_jax.hardware [--expect gpu|tpu]

Prints one line: jax's version, the device count and kind, the backend, the peak FLOP/s per
device (bfloat16 from the vendors' figures, or float32 measured on the CPU) and the memory per
device (perf/hardware.py). With --expect, when that backend is not jax's default, prints one
line saying so instead and exits with status 1 (`make venv-gpu` and `make venv-tpu` end so).
"""
from __future__ import annotations

from absl import flags
import jax

from imagebrush_jax.infra import cli
from imagebrush_jax.perf import hardware


def define_flags(flag_values: flags.FlagValues) -> None:
  """The flags of `python -m imagebrush_jax.hardware` (defined when it runs, never at import)."""
  flags.DEFINE_enum("expect", None, ("cpu", "gpu", "tpu"),
                    "The backend jax must run on (exit status 1 otherwise).",
                    flag_values=flag_values)


def program(args: flags.FlagValues) -> int:
  """Prints the devices (or, with --expect, the backend that did not load); the exit status."""
  backend = jax.default_backend()
  if args.expect and backend != args.expect:
    print(f"jax {jax.__version__} runs on {backend}, not {args.expect}: its {args.expect} build "
          f"did not load (no driver or device here?); jax.devices() = {jax.devices()}")
    return 1
  device = jax.devices()[0]
  peak, source = hardware.peak_flops(device, "bfloat16" if backend != "cpu" else "float32")
  peak_text = f"{peak / 1e12:.1f} TFLOP/s ({source})" if peak else source
  print(f"jax {jax.__version__}: {jax.device_count()} x {device.device_kind} ({backend}); "
        f"peak per device {peak_text}; memory per device "
        f"{hardware.memory_bytes(device) / 2**30:.1f} GiB")
  return 0


if __name__ == "__main__":
  cli.run_program(define_flags, program)
