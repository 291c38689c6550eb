"""Train-step benchmark: the step fed by the real grain pipeline against the same step on
a constant batch already on device, side by side in one run.

  python benchmarks/train_step.py [--config configs/default.py] [--steps 30] [--config.x=y ...]

Prints one JSON line last: pipeline_ratio (fed / constant step time; target <= 1.05),
examples/s, the step's FLOPs (XLA cost analysis) and, where the device's peak is known,
the model FLOPs utilisation.
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

from imagebrush_jax import latent
from imagebrush_jax import parallel
from imagebrush_jax import train_state
from imagebrush_jax.data import pipeline
from imagebrush_jax.imagebrush import task as imagebrush_task  # pylint: disable=g-import-not-at-top

_CONFIG = config_flags.DEFINE_config_file("config", "configs/default.py", "Config file.")
_STEPS = flags.DEFINE_integer("steps", 30, "Timed steps per variant (after warm-up).")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Alternating rounds of the two variants.")

# Dense peak FLOP/s per device by jax device_kind (bfloat16 / float32), where known.
PEAK_FLOPS = {
    "NVIDIA H100 80GB HBM3": {"bfloat16": 989e12, "float32": 67e12},
    "NVIDIA H200": {"bfloat16": 989e12, "float32": 67e12},
    "NVIDIA A100-SXM4-80GB": {"bfloat16": 312e12, "float32": 19.5e12},
    "NVIDIA A100-SXM4-40GB": {"bfloat16": 312e12, "float32": 19.5e12},
    "TPU v4": {"bfloat16": 275e12, "float32": 275e12},
    "TPU v5p": {"bfloat16": 459e12, "float32": 459e12},
    "TPU v5 lite": {"bfloat16": 197e12, "float32": 197e12},
}


def _time_steps(step, state, next_batch, num_steps):
  """Mean seconds per step over num_steps, each batch taken from next_batch()."""
  jax.block_until_ready(state)
  start = time.perf_counter()
  for _ in range(num_steps):
    state, metrics = step(state, next_batch())
  jax.block_until_ready((state, metrics))
  return state, (time.perf_counter() - start) / num_steps


def main(argv):
  del argv
  config = _CONFIG.value
  task = imagebrush_task.build(config, latent.load(config))
  mesh, state, step = train_state.fresh_sharded_state(task, config, jax.random.key(0))

  it = pipeline.make_train_iterator(config)
  fed = lambda: parallel.host_batch_to_global(next(it), mesh)
  constant_batch = fed()
  constant = lambda: constant_batch

  compiled = step.lower(state, constant_batch).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = float(cost.get("flops", 0.0)) if cost else 0.0

  state, _ = _time_steps(step, state, fed, 3)  # warm-up: compile, pipeline workers
  fed_times, const_times = [], []
  for _ in range(_REPEATS.value):  # alternate, so drifting machine load hits both alike
    state, t = _time_steps(step, state, constant, _STEPS.value)
    const_times.append(t)
    state, t = _time_steps(step, state, fed, _STEPS.value)
    fed_times.append(t)
  if hasattr(it, "close"):
    it.close()

  t_fed, t_const = statistics.median(fed_times), statistics.median(const_times)
  device = jax.devices()[0]
  peak = PEAK_FLOPS.get(device.device_kind, {}).get(config.model.dtype)
  result = {
      "benchmark": "train_step",
      "config": os.path.basename(config_flags.get_config_filename(flags.FLAGS["config"]) or ""),
      "device": device.device_kind, "num_devices": jax.device_count(),
      "batch_size": config.train.batch_size, "dtype": config.model.dtype,
      "step_s_pipeline": round(t_fed, 5), "step_s_constant": round(t_const, 5),
      "pipeline_ratio": round(t_fed / t_const, 4), "target_pipeline_ratio": 1.05,
      "examples_per_s": round(config.train.batch_size / t_fed, 2),
      "step_gflops": round(flops / 1e9, 3),
      "achieved_tflops_per_s": round(flops / t_fed / 1e12, 4),
      "mfu": round(flops / t_fed / (peak * jax.device_count()), 4) if peak else None,
  }
  print(json.dumps(result))


if __name__ == "__main__":
  app.run(main)
