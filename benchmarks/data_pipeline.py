"""Input pipeline throughput, side by side with what a training step consumes.

    python benchmarks/data_pipeline.py [--config configs/default.py] [--workers 1,2]

Measures grids/s of the training iterator (host 0 of 1) with each worker count, then the grids/s
of a training step on the same batch shape (`consumer_grids_per_s`), and reports the ratio:
the pipeline should deliver at least TARGET_RATIO times what training consumes. The last line
printed is one JSON object with `grids_per_s` (at config.data.num_workers, or the first worker
count measured if that is not among them) and `ratio_to_train`.
"""
import json
import os
import sys
import time
from typing import Any, Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=g-import-not-at-top,wrong-import-position
from absl import app
from absl import flags
from ml_collections import config_flags

from imagebrush_jax.data import pipeline
# pylint: enable=g-import-not-at-top,wrong-import-position

TARGET_RATIO = 5.0

_CONFIG = config_flags.DEFINE_config_file(
    "config", os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           "configs", "default.py"), "Config file (.py).")
_WORKERS = flags.DEFINE_list("workers", ["1", "2"], "Worker-process counts to measure.")
_WARMUP = flags.DEFINE_integer("warmup_batches", 10, "Batches discarded (worker start-up).")
_BATCHES = flags.DEFINE_integer("batches", 60, "Batches timed per worker count.")
_STEPS = flags.DEFINE_integer("consumer_steps", 10, "Training steps timed.")


def pipeline_grids_per_s(config: Any, num_workers: int, *, warmup: int, batches: int) -> float:
  """Grids/s delivered by make_train_iterator with `num_workers` worker processes."""
  config = config.copy_and_resolve_references()
  config.data.num_workers = num_workers
  it = pipeline.make_train_iterator(config, process_index=0, process_count=1)
  try:
    for _ in range(warmup):
      next(it)
    start = time.perf_counter()
    grids = sum(len(next(it)["grid"]) for _ in range(batches))
    return grids / (time.perf_counter() - start)
  finally:
    it.close()


# What consumer_grids_per_s measures; reported as "train_consumer". Update both together.
TRAIN_CONSUMER = "the real jitted ImageBrush train step on a constant on-device batch"


def consumer_grids_per_s(config: Any, *, steps: int = 10) -> float:
  """Grids/s that the real train step (train_state.jit_train_step) consumes on config's batch."""
  import jax  # pylint: disable=g-import-not-at-top
  from imagebrush_jax.training import objectives  # pylint: disable=g-import-not-at-top
  from imagebrush_jax.core import latent  # pylint: disable=g-import-not-at-top
  from imagebrush_jax.infra import parallel  # pylint: disable=g-import-not-at-top
  from imagebrush_jax.training import train_state  # pylint: disable=g-import-not-at-top

  task = objectives.imagebrush_from_config(config, latent.load(config))
  mesh_options = parallel.MeshOptions.from_config(config)
  mesh, state, step = train_state.fresh_sharded_state(task, mesh_options, jax.random.key(0))
  batch = pipeline.make_eval_batches(config, num_grids=config.train.batch_size, seed=0,
                                     batch_size=config.train.batch_size)[0]
  batch = parallel.host_batch_to_global(batch, mesh)
  state, metrics = step(state, batch)  # compile
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for _ in range(steps):
    state, metrics = step(state, batch)
  jax.block_until_ready(metrics)
  return steps * config.train.batch_size / (time.perf_counter() - start)


def main(argv: Sequence[str]) -> None:
  del argv
  config = _CONFIG.value
  workers = [int(w) for w in _WORKERS.value]
  rates = {}
  for w in workers:
    rates[w] = pipeline_grids_per_s(config, w, warmup=_WARMUP.value, batches=_BATCHES.value)
    print(f"pipeline, {w} worker(s): {rates[w]:.0f} grids/s", flush=True)
  import jax  # pylint: disable=g-import-not-at-top
  consumer = consumer_grids_per_s(config, steps=_STEPS.value)
  print(f"training consumes {consumer:.0f} grids/s ({TRAIN_CONSUMER})", flush=True)
  default_workers = config.data.num_workers if config.data.num_workers in rates else workers[0]
  result = {
      "benchmark": "data_pipeline",
      "grids_per_s": round(rates[default_workers], 1),
      "num_workers": default_workers,
      "grids_per_s_by_workers": {str(w): round(r, 1) for w, r in rates.items()},
      "consumer_grids_per_s": round(consumer, 1),
      "train_consumer": TRAIN_CONSUMER,
      "consumer_device": jax.devices()[0].platform,
      "ratio_to_train": round(rates[default_workers] / consumer, 2),
      "ratio_to_train_by_workers": {str(w): round(r / consumer, 2) for w, r in rates.items()},
      "target_ratio": TARGET_RATIO,
      "meets_target": rates[default_workers] / consumer >= TARGET_RATIO,
      "batch_size": config.train.batch_size,
      "tile_size": config.data.tile_size,
      "num_examples": config.data.num_examples,
      "cpu_count": os.cpu_count(),
  }
  print(json.dumps(result))


if __name__ == "__main__":
  app.run(main)
