"""The ceiling of a synthetic task: the edit success a predictor can reach from the pixels alone.

A model sees the rendered before-image, and many scenes render to it (data/lookalikes.py). For
each fresh scene, the best guess is the candidate I' (the target of one lookalike, or their
per-pixel median) that counts as an edit success (metrics/image_quality.py, the metric
evaluate.py reports) against the most lookalike targets; the ceiling is how often that guess is
a success against the true target. Where the target is a function of the pixels it is 1; a
task far below 1 asks for what the image does not show. No training: pure numpy, seeded.

Edit success judges only the pixels the true edit changes, so painting every pixel that some
lookalike changes costs nothing there: `hedged_guess` does that, and its success rate (reported
beside the ceiling) shows how much of an ambiguity the metric forgives (preservation does not).
"""
from __future__ import annotations

import dataclasses
from typing import Iterator, Sequence

import numpy as np

from imagebrush_jax.data import lookalikes as lookalikes_lib
from imagebrush_jax.data import scenes as scenes_lib
from imagebrush_jax.data import tasks as tasks_lib
from imagebrush_jax.metrics import image_quality
from imagebrush_jax.metrics import intervals

MAX_ATTEMPTS = 20  # scenes drawn per index until the task changes one (as the data source does)


def success_matrix(guesses: np.ndarray, query: np.ndarray, truths: np.ndarray) -> np.ndarray:
  """[G, K] edit success of each guess [G, T, T, 3] against each truth [K, T, T, 3] for one
  query [T, T, 3]; 0 where a truth equals the query (nothing to edit)."""
  g, k = len(guesses), len(truths)
  gen = np.repeat(guesses, k, axis=0)
  truth = np.tile(truths, (g, 1, 1, 1))
  query = np.broadcast_to(query, gen.shape)
  return np.nan_to_num(image_quality.edit_success(gen, query, truth)).reshape(g, k)


def best_guess(query: np.ndarray, targets: np.ndarray) -> np.ndarray:
  """The candidate (each target, or the per-pixel median of all) that is an edit success
  against the most targets [K, T, T, 3] (a target is not counted against itself); on ties, the
  most frequent target."""
  targets = np.asarray(targets)
  k = len(targets)
  flat = targets.reshape(k, -1)
  unique, first, counts = np.unique(flat, axis=0, return_index=True, return_counts=True)
  if len(unique) == 1:
    return targets[0]
  order = np.lexsort((first, -counts))  # most frequent first, then first seen
  unique, counts = targets[first[order]], counts[order]
  median = np.median(targets, axis=0).round().astype(np.uint8)[None]
  candidates = np.concatenate([unique, median])
  wins = success_matrix(candidates, query, unique) @ counts  # [U + 1] targets matched
  wins[:-1] -= 1  # not against itself
  score = np.append(wins[:-1] / (k - 1), wins[-1] / k)
  return candidates[int(np.argmax(score))]


def hedged_guess(query: np.ndarray, targets: np.ndarray) -> np.ndarray:
  """The query with every pixel that some target changes (by more than the metric's threshold)
  set as a target sets it; where targets disagree, as the most frequent of them does."""
  targets = np.asarray(targets)
  _, first, counts = np.unique(targets.reshape(len(targets), -1), axis=0,
                               return_index=True, return_counts=True)
  guess = query.copy()
  for k in np.lexsort((-first, counts)):  # least frequent first: the most frequent paints last
    target = targets[first[k]]
    changed = np.abs(target.astype(int) - query).max(-1) > image_quality.EDIT_THRESHOLD
    guess[changed] = target[changed]
  return guess


@dataclasses.dataclass(frozen=True)
class Ceiling:
  """One task's ceiling over `scenes` scored scenes (those whose edit shows in the tile)."""
  task: str
  scenes: int
  successes: int
  determined: int  # scenes where every lookalike's target equals the true one
  lookalikes: float  # mean lookalike scenes found per scene
  unsampled: int = 0  # scenes with no lookalike found, scored as determined (optimistic)
  hedged: int = 0  # scenes where hedged_guess is a success

  @property
  def rate(self) -> float:
    return self.successes / self.scenes if self.scenes else float("nan")

  def as_dict(self) -> dict:
    low, high = intervals.wilson(self.successes / max(self.scenes, 1), self.scenes)
    return {"task": self.task, "ceiling": round(self.rate, 4), "low": round(low, 4),
            "high": round(high, 4), "scenes": self.scenes, "successes": self.successes,
            "determined": round(self.determined / max(self.scenes, 1), 4),
            "hedged": round(self.hedged / max(self.scenes, 1), 4),
            "lookalikes": round(self.lookalikes, 2), "unsampled": self.unsampled}


def _target(task: tasks_lib.Task, scene: scenes_lib.Scene, size: int) -> np.ndarray:
  if task.is_global:
    return task.image_fn(scenes_lib.render(scene, size))
  return scenes_lib.render(task.scene_fn(scene, size)[0], size)


class _Scenes:
  """Scene i, attempt a of a run (from rng([seed, i, a])), its render, and its lookalikes, each
  made once and shared by the tasks."""

  def __init__(self, params: scenes_lib.SceneParams, size: int, seed: int, lookalike_args):
    self.params, self.size, self.seed, self.lookalike_args = params, size, seed, lookalike_args
    self._drawn, self._lookalikes = {}, {}

  def draw(self, index: int, attempt: int) -> tuple[scenes_lib.Scene, np.ndarray]:
    key = (index, attempt)
    if key not in self._drawn:
      scene = scenes_lib.sample_scene(np.random.default_rng([self.seed, *key]), self.params)
      self._drawn[key] = scene, scenes_lib.render(scene, self.size)
    return self._drawn[key]

  def lookalikes(self, index: int, attempt: int) -> list[scenes_lib.Scene]:
    key = (index, attempt)
    if key not in self._lookalikes:
      self._lookalikes[key] = lookalikes_lib.lookalike_scenes(
          self.draw(*key)[0], self.params, self.size,
          rng=np.random.default_rng([self.seed, *key, 1]), **self.lookalike_args)
    return self._lookalikes[key]


def task_ceilings(names: Sequence[str | tasks_lib.Task], params: scenes_lib.SceneParams,
                  tile_size: int, *, num_scenes: int, seed: int, margin: int = 0,
                  num_lookalikes: int = 24, proposals: int = 512,
                  jitter_px: float = 1.0) -> Iterator[Ceiling]:
  """The ceiling of each task of `names` (registered names or Task objects), in turn, on
  `num_scenes` scenes rendered at tile_size + 2 * margin and cropped to the centred tile_size
  window (evaluation's tiles). Scene i of every task is the first of rng([seed, i, attempt])
  that the task changes (as the synthetic source draws them)."""
  size = tile_size + 2 * margin
  crop = np.s_[margin:margin + tile_size, margin:margin + tile_size]
  drawn = _Scenes(params, size, seed, dict(num=num_lookalikes, margin=margin,
                                           proposals=proposals, jitter_px=jitter_px))
  for name in names:
    task = name if isinstance(name, tasks_lib.Task) else tasks_lib.get_task(name)
    scored = successes = hedged = determined = found = unsampled = 0
    for index in range(num_scenes):
      for attempt in range(MAX_ATTEMPTS):
        scene, before = drawn.draw(index, attempt)
        after = _target(task, scene, size)
        if not np.array_equal(before, after):
          break
      query, truth = before[crop], after[crop]
      if np.isnan(image_quality.edit_success(truth[None], query[None], truth[None])[0]):
        continue  # no pixel of the tile changes by more than the metric's threshold: NaN
      others = drawn.lookalikes(index, attempt)
      targets = np.stack([_target(task, s, size)[crop] for s in others] or [truth])
      scored += 1
      found += len(others)
      unsampled += not others
      guesses = np.stack([best_guess(query, targets), hedged_guess(query, targets)])
      success, hedge = success_matrix(guesses, query, truth[None])[:, 0]
      successes += int(success)
      hedged += int(hedge)
      determined += int(all(np.array_equal(t, truth) for t in targets))
    yield Ceiling(task.name, scored, successes, determined, found / max(scored, 1), unsampled,
                  hedged)
