"""The per-grid steps of the pipeline, as grain transforms.

  index -> SampleEpisode -> Episode (task, K+1 distinct pairs, crop/flip), from (seed, index)
        -> LoadPairs     -> decoded pairs, resized to render_size (augment.TileSpec.render)
        -> AugmentCells  -> the same crop and flip on every cell, and on the query box
                            (TileSpec.crop / box_to_tile; inference tiles with the same TileSpec)
        -> AssembleGrid  -> {grid, mask, box, task_id} (see core/grid.py), and with
                            config.data.cached_latents in training `moments`, the grid of
                            the cells' cached posterior moments (latent_cache.MomentCells)

Evaluation grids of synthetic scenes add QueryCandidates before AssembleGrid: every task's output
on the query's scene, cropped alike, as `candidates` [N, T, T, 3] in task_id order (what task
identification compares the generated I' with).

Everything random is drawn in SampleEpisode from np.random.default_rng([seed, stream, index]), so
a grid depends on nothing but (seed, index): not on the host, worker or thread computing it.
"""
import dataclasses
from typing import Sequence

import grain
import numpy as np

from imagebrush_jax.data import augment
from imagebrush_jax.data import latent_cache
from imagebrush_jax.data import options as options_lib
from imagebrush_jax.data import sources
from imagebrush_jax.data import tasks as tasks_lib
from imagebrush_jax.core import grid as grid_lib

_EPISODE_STREAM = 0  # tags the episode sampler's random stream (scenes use another)


@dataclasses.dataclass(frozen=True)
class Episode:
  """What one grid shows; `pair_indices` are the K examples, then the query."""
  index: int
  task: str
  task_id: int
  pair_indices: tuple[int, ...]
  augmentation: augment.Augmentation
  keep_box: bool


class SampleEpisode(grain.transforms.Map):
  """Index -> Episode. Training draws the task at random; evaluation cycles through `tasks`
  (balanced), with the centred crop, no flip, and the box always kept."""

  def __init__(self, source: sources.PairSource, opts: options_lib.DataOptions, *,
               tasks: Sequence[str], seed: int, train: bool):
    self.source, self.tasks, self.seed, self.train = source, tuple(tasks), seed, train
    self.num_pairs = opts.num_examples + 1
    self.margin, self.flip_prob, self.box_prob = opts.crop_margin, opts.flip_prob, opts.box_prob
    self.task_ids = {name: i for i, name in enumerate(opts.all_tasks)}

  def map(self, index: int) -> Episode:
    index = int(index)
    rng = np.random.default_rng([self.seed, _EPISODE_STREAM, index])
    if self.train:
      task = self.tasks[int(rng.integers(len(self.tasks)))]
    else:
      task = self.tasks[index % len(self.tasks)]
    candidates = self.source.pair_indices(task)
    picks = rng.choice(len(candidates), size=self.num_pairs, replace=False)
    aug = augment.sample(rng, task, margin=self.margin, flip_prob=self.flip_prob,
                         random=self.train)
    keep_box = bool(rng.random() < self.box_prob) if self.train else True
    return Episode(index, task, self.task_ids[task], tuple(int(candidates[p]) for p in picks),
                   aug, keep_box)


class LoadPairs(grain.transforms.Map):
  """Episode -> (episode, images [K+1, 2, S, S, 3], query box): decodes and resizes to S."""

  def __init__(self, source: sources.PairSource, opts: options_lib.DataOptions):
    self.source, self.spec = source, augment.TileSpec.from_options(opts)

  def map(self, episode: Episode) -> tuple[Episode, np.ndarray, np.ndarray | None]:
    pairs = [self.source[index] for index in episode.pair_indices]
    for index, pair in zip(episode.pair_indices, pairs):
      if pair.task != episode.task:
        raise ValueError(f"pair {pair.pair_id!r} (index {index}) is of task {pair.task!r}, "
                         f"not {episode.task!r}: the source's task index is inconsistent")
    images = np.stack([[self.spec.render(p.before), self.spec.render(p.after)] for p in pairs])
    return episode, images, pairs[-1].box  # the box of the query pair


class AugmentCells(grain.transforms.Map):
  """Crops (and maybe flips) every cell alike to tile_size; moves the query box along (the
  whole tile when the box is dropped or falls outside the crop)."""

  def __init__(self, opts: options_lib.DataOptions):
    self.spec = augment.TileSpec.from_options(opts)

  def map(self, element):
    episode, images, box = element
    aug = episode.augmentation
    tiles = np.stack([[self.spec.crop(img, aug) for img in pair] for pair in images])
    box = self.spec.box_to_tile(box, aug) if box is not None and episode.keep_box else None
    return episode, tiles, augment.WHOLE_TILE.copy() if box is None else box


class QueryCandidates(grain.transforms.Map):
  """Adds, for the query pair's scene, the output of every task of `names` (the task_id
  vocabulary), rendered and cropped as the grid's cells: [N, T, T, 3] uint8. The true task's
  candidate is the grid's target cell."""

  def __init__(self, source: sources.SyntheticSource, opts: options_lib.DataOptions,
               names: Sequence[str]):
    self.source, self.names = source, tuple(names)
    self.spec, self.render_size = augment.TileSpec.from_options(opts), opts.render_size

  def map(self, element):
    episode, tiles, box = element
    scene = self.source.scene(episode.pair_indices[-1])
    outputs = [tasks_lib.get_task(name).make_pair(scene, self.render_size)[1]
               for name in self.names]
    candidates = np.stack([self.spec.crop(img, episode.augmentation) for img in outputs])
    return episode, tiles, box, candidates


class AssembleGrid(grain.transforms.Map):
  """-> the batch element {grid, mask, box, task_id[, candidates][, moments]} (core/grid.py has
  the layout); `moments` when built with a MomentCells."""

  def __init__(self, moments: latent_cache.MomentCells | None = None):
    self.moments = moments

  def map(self, element) -> dict[str, np.ndarray]:
    episode, tiles, box = element[:3]
    out = grid_lib.assemble_grid([(b, a) for b, a in tiles[:-1]], tiles[-1, 0], tiles[-1, 1],
                                 box=box)
    out["task_id"] = np.int32(episode.task_id)
    if len(element) > 3:
      out["candidates"] = element[3]
    if self.moments is not None:
      out["moments"] = self.moments(episode)
    return out


def grid_transforms(source: sources.PairSource, opts: options_lib.DataOptions, *,
                    tasks: Sequence[str], seed: int, train: bool,
                    candidates: bool = False) -> list[grain.transforms.Map]:
  """The steps, in order, for `.map`-ing a dataset of indices to grids; with `candidates` (a
  synthetic source) QueryCandidates too; training grids with config.data.cached_latents carry
  their cells' cached moments (the source opened with them)."""
  steps = [SampleEpisode(source, opts, tasks=tasks, seed=seed, train=train),
           LoadPairs(source, opts), AugmentCells(opts)]
  if candidates:
    steps.append(QueryCandidates(source, opts, opts.all_tasks))
  moments = None
  if train and opts.cached_latents:
    moments = latent_cache.MomentCells(source, opts.crop_margin)
  return steps + [AssembleGrid(moments)]
