"""Every edit measured alike, whatever its task: per grid, then as means per task and per group.

Per grid (uint8 I', I, true I'): PSNR and the copy-the-query PSNR, edit success and preservation
(metrics/image_quality.py), and task identification (metrics/task_accuracy.py) among candidate
outputs: every task of the vocabulary on the query's scene where the grids carry them (synthetic
evaluation grids: `candidates`), else the vocabulary's global tasks, which apply to I alone.
Groups: the built-in object-level tasks (any task that edits a scene's objects, compositions
with one included) and the global ones; tasks of other names (one's own data) are in neither.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from imagebrush_jax.data import tasks as tasks_lib
from imagebrush_jax.metrics import image_quality
from imagebrush_jax.metrics import task_accuracy

GLOBAL, OBJECT = "global_tasks", "object_tasks"


def task_group(name: str) -> str | None:
  """GLOBAL or OBJECT for a built-in task (or composition), None for any other name."""
  if not tasks_lib.is_known(name):
    return None
  return GLOBAL if tasks_lib.get_task(name).is_global else OBJECT


def score(generated, query, truth, task_names: Sequence[str], vocabulary: Sequence[str],
          candidates=None) -> dict[str, np.ndarray]:
  """Per-grid metrics [N]: psnr, copy_psnr, edit_success, preservation, correct and chance
  (task identification; NaN where a grid has no candidates, as NaN edit success where I' = I and
  NaN preservation where the edit covers the whole image).

  candidates: [N, len(vocabulary), T, T, 3] outputs of every vocabulary task on each query's
  scene, or None (then the vocabulary's global tasks, computed from the query).
  """
  gen, query, truth = (np.asarray(x) for x in (generated, query, truth))
  n = gen.shape[0]
  correct, chance = np.full(n, np.nan), np.full(n, np.nan)
  if candidates is not None:
    names, scored = list(vocabulary), np.ones(n, bool)
    cands = np.asarray(candidates)
  else:
    names = list(task_accuracy.applicable_tasks(vocabulary))
    scored = np.array([t in names for t in task_names], bool)
    cands = None
  if scored.any() and len(names) > 1:
    idx = np.flatnonzero(scored)
    cand = cands[idx] if cands is not None else task_accuracy.candidate_outputs(query[idx], names)
    true_index = np.array([names.index(task_names[i]) for i in idx])
    correct[idx] = task_accuracy.task_identification_correct(gen[idx], cand, true_index)
    chance[idx] = task_accuracy.chance_accuracy(cand, true_index)
  return dict(psnr=image_quality.psnr(gen, truth), copy_psnr=image_quality.psnr(query, truth),
              edit_success=image_quality.edit_success(gen, query, truth),
              preservation=image_quality.preservation(gen, query, truth),
              correct=correct, chance=chance)


def _mean(x: np.ndarray) -> float | None:
  x = x[~np.isnan(x)]
  return float(x.mean()) if x.size else None


def summarize(per_grid: dict[str, np.ndarray], selection: np.ndarray | None = None) -> dict:
  """Means over the selected grids (all by default): count, accuracy, chance_accuracy, psnr,
  copy_psnr, edit_success, preservation (None where no grid has the value), and
  edit_success_count, the grids edit success is measured on (not those with nothing to edit)."""
  sel = np.ones(len(per_grid["psnr"]), bool) if selection is None else np.asarray(selection)
  return {"count": int(sel.sum()),
          "edit_success_count": int(np.sum(~np.isnan(per_grid["edit_success"][sel]))),
          "accuracy": _mean(per_grid["correct"][sel]),
          "chance_accuracy": _mean(per_grid["chance"][sel]),
          "psnr": _mean(per_grid["psnr"][sel]), "copy_psnr": _mean(per_grid["copy_psnr"][sel]),
          "edit_success": _mean(per_grid["edit_success"][sel]),
          "preservation": _mean(per_grid["preservation"][sel])}


def by_group(per_grid: dict[str, np.ndarray], task_names: Sequence[str],
             selection: np.ndarray | None = None) -> dict:
  """summarize() over the selected grids, plus OBJECT and GLOBAL sub-dicts for the groups that
  have grids."""
  sel = np.ones(len(task_names), bool) if selection is None else np.asarray(selection)
  out = summarize(per_grid, sel)
  groups = np.array([task_group(t) for t in task_names], object)
  for group in (OBJECT, GLOBAL):
    in_group = sel & (groups == group)
    if in_group.any():
      out[group] = summarize(per_grid, in_group)
  return out
