"""Task-identification accuracy and PSNR for exemplar-based editing (pure numpy).

Task identification: a generated I' identifies the task when it is at least as close (mean squared
error) to the true task's output as to every other candidate task's output for the same query I.
Ties count as correct: when two tasks give the same image (e.g. grayscale of a gray image), the
true output and that candidate are equally close, and the sample is scored as identified.

Candidates must be computable from I alone, so only global tasks (hflip, vflip, rot90, invert,
grayscale, swap_red_blue) and their compositions can be candidates (`candidate_outputs`); object
tasks of synthetic scenes need the scene, not just I, and are left out of accuracy.

    generated [B, T, T, C], candidates [B, N, T, T, C], true_index [B] -> accuracy in [0, 1]
    psnr(a, b) -> mean PSNR in dB of per-image PSNRs (pixel range 255 by default)
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from imagebrush_jax.data import tasks as tasks_lib

MAX_PSNR_DB = 100.0  # PSNR of identical images (MSE 0) is reported as this, not infinity


def _float(x) -> np.ndarray:
  return np.asarray(x, np.float64)


def candidate_distances(generated, candidates) -> np.ndarray:
  """Mean squared error of each generated image to each candidate: [B, N]."""
  g, c = _float(generated), _float(candidates)
  if c.shape[0] != g.shape[0] or c.shape[2:] != g.shape[1:]:
    raise ValueError(f"candidates {c.shape} do not match generated {g.shape} as [B, N, *image]")
  return np.mean(np.square(c - g[:, None]), axis=tuple(range(2, c.ndim)))


def task_identification_correct(generated, candidates, true_index) -> np.ndarray:
  """Per-sample bool [B]: distance to the true candidate <= distance to every other candidate."""
  d = candidate_distances(generated, candidates)
  idx = np.asarray(true_index, np.int64).reshape(-1)
  if idx.shape[0] != d.shape[0] or np.any(idx < 0) or np.any(idx >= d.shape[1]):
    raise ValueError(f"true_index {np.asarray(true_index).tolist()} does not index "
                     f"{d.shape[1]} candidates for {d.shape[0]} samples")
  return d[np.arange(d.shape[0]), idx] <= d.min(axis=1)


def task_identification_accuracy(generated, candidates, true_index) -> float:
  """Fraction of samples whose generated image is closest to the true task's output (ties count).

  Args:
    generated: [B, *image] generated outputs I' (any numeric range, the same as candidates).
    candidates: [B, N, *image] each candidate task's output for the same query I.
    true_index: [B] index of the true task among the N candidates.
  """
  return float(np.mean(task_identification_correct(generated, candidates, true_index)))


def chance_accuracy(candidates, true_index) -> np.ndarray:
  """Per sample, the accuracy of a uniformly random pick among the candidates: (candidates equal
  to the true one) / (number of candidates), since equal images tie with the true one."""
  c = np.asarray(candidates)
  n, m = c.shape[:2]
  true = c[np.arange(n), np.asarray(true_index)][:, None]
  same = np.all(c.reshape(n, m, -1) == true.reshape(n, 1, -1), axis=-1)
  return same.sum(axis=1) / m


def psnr_per_image(a, b, max_val: float = 255.0) -> np.ndarray:
  """PSNR in dB of each image pair [B] (identical images: MAX_PSNR_DB)."""
  a, b = _float(a), _float(b)
  if a.shape != b.shape:
    raise ValueError(f"psnr: shapes differ, {a.shape} vs {b.shape}")
  if a.ndim < 2:
    raise ValueError(f"psnr expects a batch of images [B, ...], got shape {a.shape}")
  mse = np.mean(np.square(a - b), axis=tuple(range(1, a.ndim)))
  with np.errstate(divide="ignore"):
    out = 10.0 * np.log10(max_val ** 2 / mse)
  return np.minimum(out, MAX_PSNR_DB)


def psnr(a, b, max_val: float = 255.0) -> float:
  """Mean over the batch of per-image PSNR (dB) between image batches a and b [B, ...]."""
  return float(np.mean(psnr_per_image(a, b, max_val)))


def applicable_tasks(names: Sequence[str]) -> tuple[str, ...]:
  """The tasks among `names` that apply to an image alone (global tasks and compositions)."""
  return tuple(n for n in names if tasks_lib.get_task(n).is_global)


def candidate_outputs(queries, names: Sequence[str]) -> np.ndarray:
  """Each task of `names` applied to each uint8 query [B, T, T, 3] -> [B, N, T, T, 3] uint8."""
  q = np.asarray(queries)
  return np.stack([np.stack([tasks_lib.apply_global_task(n, img) for n in names]) for img in q])


def evaluate_edits(generated, queries, truths, task_names: Sequence[str],
                   candidate_names: Sequence[str]) -> dict[str, float]:
  """Accuracy and PSNR of uint8 edits, given each sample's task name.

  Samples whose task is not among `candidate_names` (e.g. object tasks) are left out of accuracy
  but kept in PSNR. PSNR compares generated and `truths` (the grid's true I'); copy_psnr is the
  copy-the-query baseline (output = I).
  Returns dict(accuracy, psnr, copy_psnr, num_scored, num_samples); accuracy is NaN if none scored.
  """
  generated, queries, truths = (np.asarray(x) for x in (generated, queries, truths))
  cands = tuple(candidate_names)
  scored = np.array([n in cands for n in task_names], bool)
  acc = float("nan")
  if scored.any():
    idx = np.array([cands.index(n) for n, s in zip(task_names, scored) if s])
    acc = task_identification_accuracy(generated[scored], candidate_outputs(queries[scored], cands),
                                       idx)
  return dict(accuracy=acc, psnr=psnr(generated, truths), copy_psnr=psnr(queries, truths),
              num_scored=int(scored.sum()), num_samples=int(generated.shape[0]))
