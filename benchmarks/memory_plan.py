"""Memory plan: which fsdp size, remat policy and batch per device fit an accelerator.

  python benchmarks/memory_plan.py --config configs/paper_256.py --device all --num_devices 8 \
      --fsdp 1,8 --remat nothing_saveable,dots_saveable --batch_per_device 1,2,4 \
      [--grad_accum_steps auto] [--jsonl runs/plan/paper_256.jsonl] [--config.key=value ...]

For every (fsdp, remat, batch per device) the config's train step is compiled ahead of time for
a mesh of --num_devices simulated CPU devices (data = num_devices / fsdp), on abstract inputs
(nothing of the model's size is allocated), and its compiled memory per device is set against
each accelerator's (imagebrush_jax/perf/hardware.py: A100-40GB, A100-80GB, H100-80GB, H200,
TPU v4, v5e, v5p), beside the analytic FLOPs. The figures are the CPU compiler's per-device
estimate of the same program: a setting fits when it is at most --headroom (0.9) x the device's
memory. --grad_accum_steps auto makes each setting train the config's train.batch_size per step
(micro-batches of batch_per_device grids per device), as the shipped configs do.
Prints one JSON line per setting and a summary line last (per accelerator, the setting with the
fewest micro-batches, then the least recomputation, then the smallest fsdp); --jsonl writes the
same lines to a file as they come.
"""
from __future__ import annotations

import json
import os
import sys
import time


def _simulated_devices(argv: list[str]) -> int:
  """--num_devices from the command line (the last one given; 8 if none), read before jax
  starts."""
  found = 8
  for i, arg in enumerate(argv):
    if arg.startswith("--num_devices="):
      found = int(arg.split("=", 1)[1])
    elif arg == "--num_devices" and i + 1 < len(argv):
      found = int(argv[i + 1])
  return found


# The plan compiles for simulated CPU devices, whatever accelerator this machine has, with
# LLVM at optimisation level 0 unless XLA_FLAGS says otherwise (buffer assignment comes before
# code generation: the memory analysis is the same, the compile faster).
os.environ.setdefault("JAX_PLATFORMS", "cpu")
for _flag, _value in (("xla_force_host_platform_device_count", _simulated_devices(sys.argv)),
                      ("xla_backend_optimization_level", 0)):
  if _flag not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --{_flag}={_value}".strip()

from absl import app  # pylint: disable=g-import-not-at-top,wrong-import-position
from absl import flags  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
from ml_collections import config_flags  # pylint: disable=g-import-not-at-top,wrong-import-position

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=g-import-not-at-top,wrong-import-position
from imagebrush_jax.perf import hardware
from imagebrush_jax.training import memory_plan
from benchmarks import workload

_CONFIG = config_flags.DEFINE_config_file("config", "configs/paper_256.py", "Config file.")
_DEVICE = flags.DEFINE_string("device", "all",
                              "Accelerators to plan for, comma-separated, or 'all': "
                              + ", ".join(hardware.ACCELERATOR_MEMORY_GIB) + ".")
_NUM_DEVICES = flags.DEFINE_integer("num_devices", 8, "Devices of the simulated mesh.",
                                    lower_bound=1)
_FSDP = flags.DEFINE_list("fsdp", ["1", "8"], "fsdp sizes (each divides --num_devices).")
_REMAT = flags.DEFINE_list("remat", ["nothing_saveable", "dots_saveable"],
                           "Remat policies: 'none' or jax.checkpoint_policies names.")
_BATCH = flags.DEFINE_list("batch_per_device", ["1", "2", "4"],
                           "Grids per device in a micro-batch.")
_ACCUM = flags.DEFINE_string("grad_accum_steps", "auto",
                             "Micro-batches per step; 'auto': train.batch_size / num_devices / "
                             "batch_per_device.")
_HEADROOM = flags.DEFINE_float("headroom", memory_plan.HEADROOM,
                               "Fits: estimate <= headroom x the device's memory.")
_JSONL = flags.DEFINE_string("jsonl", "", "Also write the JSON lines to this file.")


def _ints(values: list[str], name: str) -> list[int]:
  try:
    out = [int(v) for v in values]
  except ValueError:
    raise app.UsageError(f"--{name} takes integers, got {','.join(values)}") from None
  if any(v < 1 for v in out):
    raise app.UsageError(f"--{name} takes positive integers, got {','.join(values)}")
  return out


def main(argv):
  del argv
  start = time.perf_counter()
  config = _CONFIG.value
  n = _NUM_DEVICES.value
  if jax.device_count() < n:
    raise app.UsageError(f"--num_devices {n}, but jax sees {jax.device_count()} devices: set "
                         f"XLA_FLAGS=--xla_force_host_platform_device_count={n} or leave it unset")
  try:
    accelerators = (list(hardware.ACCELERATOR_MEMORY_GIB) if _DEVICE.value == "all" else
                    [hardware.accelerator_name(d) for d in _DEVICE.value.split(",")])
  except ValueError as e:
    raise app.UsageError(f"--device: {e}") from None
  fsdps, batches = _ints(_FSDP.value, "fsdp"), _ints(_BATCH.value, "batch_per_device")
  for f in fsdps:
    if n % f:
      raise app.UsageError(f"--fsdp {f} does not divide --num_devices {n}")
  global_batch = int(config.train.batch_size)
  settings = []
  for f in fsdps:
    for r in _REMAT.value:
      for b in batches:
        if _ACCUM.value == "auto":
          try:
            accum = memory_plan.auto_accum(global_batch, n, b)
          except ValueError as e:
            raise app.UsageError(f"--batch_per_device {b}: {e}; give --grad_accum_steps") from None
        else:
          accum = _ints([_ACCUM.value], "grad_accum_steps")[0]
        settings.append(memory_plan.Setting(f, r, b, accum))

  name = os.path.basename(config_flags.get_config_filename(flags.FLAGS["config"]) or "")
  out = open(_JSONL.value, "w") if _JSONL.value else None  # pylint: disable=consider-using-with

  def emit(line: dict) -> None:
    text = json.dumps(line)
    print(text, flush=True)
    if out:
      out.write(text + "\n")
      out.flush()

  example = workload.random_batch(config, 1)
  rows = []
  log = lambda s: print(s, file=sys.stderr, flush=True)
  for r in memory_plan.plan(config, jax.devices()[:n], example, settings, accelerators,
                            _HEADROOM.value, log=log):
    rows.append(r)
    emit({"benchmark": "memory_plan", "config": name, **r})
  emit({"benchmark": "memory_plan", "summary": True, "config": name, "num_devices": n,
        "config_global_batch": global_batch, "headroom": _HEADROOM.value,
        "estimate": memory_plan.ESTIMATE_NOTE, "backend": jax.default_backend(),
        "jax": jax.__version__, "settings": len(rows),
        "compile_s": round(sum(r["compile_s"] for r in rows), 1),
        "wall_s": round(time.perf_counter() - start, 1),
        "accelerators": memory_plan.summary(rows, accelerators, global_batch, _HEADROOM.value)})
  if out:
    out.close()


if __name__ == "__main__":
  app.run(main)
