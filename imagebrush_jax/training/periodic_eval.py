"""Evaluation during training: loss on held-out grids, a few guided samples (EMA params), and
edit quality on fresh grids of the training tasks.

Written to TensorBoard, as PNG files under WORKDIR/samples, and (process 0) one line per eval in
WORKDIR/eval_metrics.jsonl: {step, wall_s, psnr, copy_psnr, edit_success, preservation,
accuracy, object_*, global_*, ...}. Every task, whatever its name, gets PSNR against the true I',
the copy-the-query baseline, edit success and preservation (metrics/image_quality.py);
task-identification accuracy is added where the grids have candidates (every built-in task on
synthetic scenes, the global tasks otherwise; metrics/edits.py). object_* and global_* are the
means over each group of built-in training tasks.
Grids of stored pairs (folder, tfds) come from the held-out pairs (config.data.eval_fraction).
Eval batches of any size run on any device count: each is padded to a multiple of the device
count, and the padding rows count in no metric.
"""
from __future__ import annotations

import time
from typing import Any

from etils import epath
import jax
from jax.experimental import multihost_utils
from jax.sharding import Mesh
import numpy as np

from imagebrush_jax.infra import files
from imagebrush_jax.training import metric_writers
from imagebrush_jax.infra import parallel
from imagebrush_jax.training import train_state
from imagebrush_jax.training.options import TrainOptions
from imagebrush_jax.data import pipeline
from imagebrush_jax.data.options import DataOptions
from imagebrush_jax.core import grid as grid_lib
from imagebrush_jax.metrics import edits
from imagebrush_jax.metrics import intervals

EVAL_SEED_OFFSET = 1_000_003  # eval grids come from seeds no training index uses


def pad_rows(batch: dict, multiple: int) -> dict:
  """Rows repeated from the last one up to a multiple of `multiple`; adds `weight` [B] (1 for
  the real rows, 0 for the padding) so that losses and metrics can leave the padding out."""
  rows = next(iter(batch.values())).shape[0]
  extra = -rows % multiple
  out = {k: np.concatenate([v, np.repeat(v[-1:], extra, axis=0)]) if extra else v
         for k, v in batch.items()}
  out["weight"] = np.concatenate([np.ones(rows, np.float32), np.zeros(extra, np.float32)])
  return out


def host_slice(batch: dict, num_hosts: int, host: int) -> dict:
  """This host's rows of a batch that every host built in full."""
  rows = next(iter(batch.values())).shape[0]
  if rows % num_hosts:
    raise ValueError(f"eval batch of {rows} grids does not split over {num_hosts} hosts")
  per = rows // num_hosts
  return {k: v[host * per:(host + 1) * per] for k, v in batch.items()}


def sample_sheet(grid: np.ndarray, generated: np.ndarray, num_examples: int) -> np.ndarray:
  """One row per grid: E_1, E'_1, ..., I, generated I', true I' (uint8 tiles side by side)."""
  before, after, query, truth = grid_lib.split_cells(np.asarray(grid), num_examples)
  rows = []
  for i in range(grid.shape[0]):
    tiles = []
    for k in range(num_examples):
      tiles += [before[i, k], after[i, k]]
    tiles += [query[i], generated[i], truth[i]]
    gap = np.full((tiles[0].shape[0], 2, 3), 255, np.uint8)
    rows.append(np.concatenate(sum(([t, gap] for t in tiles), [])[:-1], axis=1))
  gap = np.full((2, rows[0].shape[1], 3), 255, np.uint8)
  return np.concatenate(sum(([r, gap] for r in rows), [])[:-1], axis=0)


def _interval(prefix: str, summary: dict) -> dict[str, float]:
  """{prefix}edit_success_low / _high: the 95% Wilson interval of the mean edit success over
  the grids it is measured on, so a curve's noise is on the record."""
  if summary["edit_success"] is None:
    return {}
  low, high = intervals.wilson(summary["edit_success"], summary["edit_success_count"])
  return {f"{prefix}edit_success_low": low, f"{prefix}edit_success_high": high}


class Evaluator:
  """Held-out loss and guided samples at config.train.eval_every steps: `data` the run's data,
  `train` its eval_num_grids, sample_num_grids and accuracy_num_grids."""

  def __init__(self, data: DataOptions, train: TrainOptions, task: train_state.Trainable,
               mesh: Mesh, workdir: epath.Path, writer: metric_writers.MetricWriter):
    self.data, self.task, self.mesh, self.workdir, self.writer = data, task, mesh, workdir, writer
    tasks = data.heldout_tasks or data.train_tasks
    self.split = "heldout" if data.heldout_tasks else "fresh"
    seed = data.seed + EVAL_SEED_OFFSET
    self.loss_batches = []
    if train.eval_num_grids:
      self.loss_batches = [self._global(b) for b in pipeline.make_eval_batches(
          data, num_grids=train.eval_num_grids, seed=seed, tasks=tasks)]
    self.sample_batch = None
    if train.sample_num_grids:
      full = pipeline.make_eval_batches(data, num_grids=train.sample_num_grids, seed=seed + 1,
                                        tasks=tasks)
      self.sample_batch = self._global(full[0])
      self.sample_grid = np.asarray(full[0]["grid"])  # every host built it in full
    # Edit quality on fresh grids of the training tasks (seed + 2: scenes never trained on).
    self.acc_batches, self.acc_tasks, self.acc_candidates = [], (), None
    self.vocabulary = data.all_tasks
    if train.accuracy_num_grids:
      host = pipeline.make_eval_batches(data, num_grids=train.accuracy_num_grids,
                                        seed=seed + 2, tasks=data.train_tasks, candidates=True)
      self.acc_tasks = tuple(self.vocabulary[int(i)] for b in host for i in b["task_id"])
      if "candidates" in host[0]:
        self.acc_candidates = np.concatenate([b["candidates"] for b in host])
      self.acc_batches = [self._global(b) for b in host]
      self.acc_grid = np.concatenate([np.asarray(b["grid"]) for b in host])
    self.history = metric_writers.JsonlHistory(workdir / "eval_metrics.jsonl")
    self._eval_seconds = 0.0
    loss_fn = task.loss_fn
    self._eval_loss = jax.jit(lambda p, b, r: loss_fn(p, b, r, False)[0])

  def _global(self, batch: dict) -> tuple[dict, int]:
    """A host-complete numpy batch -> (global arrays split over all devices, real rows)."""
    batch = {k: batch[k] for k in ("grid", "mask", "box", "task_id")}
    rows = batch["grid"].shape[0]
    padded = pad_rows(batch, jax.device_count())
    local = host_slice(padded, jax.process_count(), jax.process_index())
    return parallel.host_batch_to_global(local, self.mesh), rows

  def _generate(self, params: Any, batch: tuple[dict, int], key: jax.Array) -> np.ndarray:
    """uint8 target cells of a padded global batch, gathered on every host, padding dropped."""
    arrays, rows = batch
    out = self.task.objective.sample_fn(params, arrays, key)
    cells = multihost_utils.process_allgather(grid_lib.unit_to_pixels(out["target"]), tiled=True)
    return np.asarray(cells)[:rows]

  def run(self, step: int, state: dict) -> dict[str, float]:
    start = time.perf_counter()
    params = state["ema_params"]
    key = jax.random.key(self.data.seed + step)
    scalars, record = {}, {}
    if self.loss_batches:
      # Each batch's loss is a mean over its real grids: weight the batches by their sizes.
      losses = [float(self._eval_loss(params, b, jax.random.fold_in(key, i)))
                for i, (b, _) in enumerate(self.loss_batches)]
      sizes = [rows for _, rows in self.loss_batches]
      scalars[f"eval/{self.split}_loss"] = float(np.average(losses, weights=sizes))
    if self.acc_batches:
      record = self._accuracy(params, key)
      scalars.update({f"eval/{k}": v for k, v in record.items()})
    self.writer.write_scalars(step, scalars)
    metric_writers.log_line(f"eval at step {step}: " +
                            ", ".join(f"{k} {v:.4g}" for k, v in scalars.items()))
    if self.sample_batch is not None:
      self._samples(step, params, key)
    self._eval_seconds += time.perf_counter() - start
    # wall_s counts from the evaluator's creation (after the state is initialised), evals included;
    # eval_s is the part of it spent evaluating.
    loss = {f"{self.split}_loss": scalars[f"eval/{self.split}_loss"]} if self.loss_batches else {}
    self.history.append(step, {**record, "eval_s": round(self._eval_seconds, 3), **loss})
    return scalars

  def _accuracy(self, params: Any, key: jax.Array) -> dict[str, float]:
    """Samples the target cell of each grid -> psnr, copy_psnr, edit_success, preservation and
    accuracy (where the grids have candidates), over all training tasks and (object_*,
    global_*) each group of built-in tasks (metrics/edits.py)."""
    tile, k = self.data.tile_size, self.data.num_examples
    generated = np.concatenate([self._generate(params, b, jax.random.fold_in(key, 10_000 + i))
                                for i, b in enumerate(self.acc_batches)])
    _, _, query, truth = grid_lib.split_cells(np.asarray(self.acc_grid), k, tile)
    per_grid = edits.score(generated, query, truth, self.acc_tasks, self.vocabulary,
                           self.acc_candidates)
    summary = edits.by_group(per_grid, self.acc_tasks)
    keys = ("psnr", "copy_psnr", "edit_success", "preservation", "accuracy")
    record = {k: summary[k] for k in keys if summary[k] is not None}
    record.update(_interval("", summary))
    for group, prefix in ((edits.OBJECT, "object_"), (edits.GLOBAL, "global_")):
      if group in summary:
        record.update({prefix + k: summary[group][k] for k in keys
                       if k not in ("copy_psnr",) and summary[group][k] is not None})
        record.update(_interval(prefix, summary[group]))
    return record

  def _samples(self, step: int, params: Any, key: jax.Array) -> None:
    generated = self._generate(params, self.sample_batch, key)
    if jax.process_index() != 0:
      return
    sheet = sample_sheet(self.sample_grid, generated, self.data.num_examples)
    files.save_png_atomic(self.workdir / "samples" / f"step_{step:07d}.png", sheet)
    self.writer.write_images(step, {"samples": sheet})
