"""Single image tiles from the pair sources, for training and evaluating an autoencoder.

  index -> task, one pair of it, its before or after image (from (seed, index) alone)
        -> resized to render_size -> a tile_size crop (random crop and flip in training,
           centred in evaluation), as grid cells are made
        -> {"image": uint8 [T, T, 3]}

The stream mirrors pipeline.py: epoch-less global indices, global batch b holds indices
[b*B, (b+1)*B) and host h feeds its share, grain workers, and an iterator whose state restores it
exactly. Tiles come from config.data.train_tasks (held-out tasks stay unseen).
"""
import functools
from typing import Any, Sequence

import grain
import numpy as np

from imagebrush_jax.data import augment
from imagebrush_jax.data import options as options_lib
from imagebrush_jax.data import pipeline
from imagebrush_jax.data import sources

_TILE_STREAM = 2  # tags this sampler's random stream, apart from episodes (0) and scenes (1)


class SampleTile(grain.transforms.Map):
  """Index -> {"image": uint8 [T, T, 3]}. Training draws task, pair, side, crop and flip at
  random; evaluation cycles through the tasks with the centred crop and no flip."""

  def __init__(self, source: sources.PairSource, opts: options_lib.DataOptions, *,
               tasks: Sequence[str], seed: int, train: bool):
    self.source, self.tasks, self.seed, self.train = source, tuple(tasks), seed, train
    self.tile, self.size, self.method = opts.tile_size, opts.render_size, opts.resize_method
    self.margin, self.flip_prob = opts.crop_margin, opts.flip_prob

  def map(self, index: int) -> dict[str, np.ndarray]:
    index = int(index)
    rng = np.random.default_rng([self.seed, _TILE_STREAM, index])
    if self.train:
      task = self.tasks[int(rng.integers(len(self.tasks)))]
    else:
      task = self.tasks[index % len(self.tasks)]
    candidates = self.source.pair_indices(task)
    pair = self.source[int(candidates[int(rng.integers(len(candidates)))])]
    image = pair.after if rng.random() < 0.5 else pair.before
    image = augment.resize(image, self.size, self.method)
    if self.train:
      # A lone tile has no edit whose meaning a flip could change: any crop, any flip.
      offset = tuple(int(v) for v in rng.integers(0, 2 * self.margin, size=2, endpoint=True))
      flip = bool(rng.random() < self.flip_prob)
    else:
      offset, flip = (self.margin, self.margin), False
    tile = augment.apply(image, augment.Augmentation(offset, flip), self.tile)
    return {"image": tile}


def _host_index(j: int, *, global_batch: int, host_batch: int, process_index: int) -> int:
  """As pipeline.py: the global index of this host's j-th tile."""
  return (j // host_batch) * global_batch + process_index * host_batch + j % host_batch


def make_train_dataset(config: Any, *, process_index: int, process_count: int
                       ) -> grain.IterDataset:
  """The host's infinite stream of {"image": uint8 [B/hosts, T, T, 3]} batches (not started)."""
  opts = options_lib.as_options(config)
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index must be in [0, {process_count}), got {process_index}")
  batch = pipeline.host_batch_size(opts, process_count)
  source = sources.make_source(opts, seed=opts.seed, part="train")
  sources.check_tasks(source, opts.train_tasks, 1, "config.data.train_tasks")
  ds = grain.MapDataset.range(pipeline.NUM_INDICES // process_count).map(
      functools.partial(_host_index, global_batch=opts.batch_size, host_batch=batch,
                        process_index=process_index))
  ds = ds.map(SampleTile(source, opts, tasks=opts.train_tasks, seed=opts.seed, train=True))
  ds = ds.batch(batch, drop_remainder=True)
  it = ds.to_iter_dataset(grain.ReadOptions(num_threads=opts.read_threads,
                                            prefetch_buffer_size=opts.prefetch_buffer))
  if opts.num_workers:
    pipeline._ensure_absl_flags_parsed()  # pylint: disable=protected-access
    it = it.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=opts.num_workers, per_worker_buffer_size=opts.prefetch_buffer))
  return it


def make_train_iterator(config: Any, *, process_index: int | None = None,
                        process_count: int | None = None) -> grain.DatasetIterator:
  """Infinite iterator of host-local tile batches with get_state() / set_state()."""
  return iter(make_train_dataset(config, **pipeline.host_position(process_index,
                                                                  process_count)))


def make_eval_tiles(config: Any, *, num_tiles: int, seed: int,
                    tasks: Sequence[str] | None = None) -> np.ndarray:
  """uint8 [num_tiles, T, T, 3]: centred tiles, tasks in turn, scenes drawn from `seed`."""
  opts = options_lib.as_options(config)
  if num_tiles < 1:
    raise ValueError(f"num_tiles must be positive, got {num_tiles}")
  tasks = opts.choose_tasks(tasks)
  source = sources.make_source(opts, seed=seed, part="heldout")
  sources.check_tasks(source, tasks, 1, "tasks")
  sampler = SampleTile(source, opts, tasks=tasks, seed=seed, train=False)
  return np.stack([sampler.map(i)["image"] for i in range(num_tiles)])
