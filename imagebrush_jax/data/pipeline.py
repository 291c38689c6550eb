"""Public entry points of the input pipeline: training iterator and evaluation batches.

Training is an epoch-less stream of global grid indices 0, 1, 2, ...; global batch b holds
indices [b*B, (b+1)*B) and host h of P feeds its rows [h*B/P, (h+1)*B/P) (hosts see disjoint
data, and the global batch is the same for any number of hosts, so a run's losses do not
depend on how it is spread over machines). Each index maps to a grid (episodes.py); batches
are computed in config.data.num_workers grain
worker processes. A grid depends only on (config.seed, its index), so the stream is the same
for any number of workers, and the iterator state (a few integers) restores it exactly (with
the same config.data.num_workers: the state records each worker's position):

  it = make_train_iterator(config)
  batch = next(it)                      # core/grid.py documents the batch dict
  state = it.get_state(); ...; it.set_state(state)
  # with orbax: grain.checkpoint.CheckpointSave(it) / grain.checkpoint.CheckpointRestore(it)
"""
import functools
from typing import Any, Sequence

import grain
import numpy as np

from imagebrush_jax.data import episodes
from imagebrush_jax.data import latent_cache
from imagebrush_jax.data import options as options_lib
from imagebrush_jax.data import sources
from imagebrush_jax.data import tfds_format

# Size of the global index space; at a million grids a second it lasts 146,000 years.
NUM_INDICES = 2**62


def host_batch_size(opts: options_lib.DataOptions, process_count: int) -> int:
  """config.train.batch_size split over the hosts (each feeds its own share)."""
  if opts.batch_size % process_count:
    raise ValueError(f"config.train.batch_size = {opts.batch_size} must be divisible by the "
                     f"number of hosts (processes), {process_count}")
  return opts.batch_size // process_count


def host_position(process_index: int | None, process_count: int | None) -> dict[str, int]:
  """{process_index, process_count}, each defaulting to jax's for this process."""
  if process_index is None or process_count is None:
    import jax  # pylint: disable=g-import-not-at-top  (the data package runs without jax)
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  return dict(process_index=process_index, process_count=process_count)


def task_vocabulary(config: Any) -> tuple[str, ...]:
  """The task_id vocabulary: train tasks, then held-out ones (DataOptions or a config)."""
  return options_lib.as_options(config).all_tasks


def _host_index(j: int, *, global_batch: int, host_batch: int, process_index: int) -> int:
  """The global index of this host's j-th grid: row (j % L) of its share of batch j // L."""
  return (j // host_batch) * global_batch + process_index * host_batch + j % host_batch


def _ensure_absl_flags_parsed() -> None:
  """grain 0.2.18 reads an absl flag when it starts worker processes, which fails in programs
  that never parsed flags (google/grain#1355); use the defaults in that case."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def _grids(source: sources.PairSource, opts: options_lib.DataOptions, indices: grain.MapDataset,
           *, tasks: Sequence[str], seed: int, train: bool,
           candidates: bool = False) -> grain.MapDataset:
  for transform in episodes.grid_transforms(source, opts, tasks=tasks, seed=seed, train=train,
                                            candidates=candidates):
    indices = indices.map(transform)
  return indices


class _Take(grain.transforms.Map):
  """Global index -> that element of a random-access dataset."""

  def __init__(self, dataset: grain.MapDataset):
    self.dataset = dataset

  def map(self, index: int):
    return self.dataset[index]


def _mixed_grids(source: sources.PairSource, opts: options_lib.DataOptions) -> grain.MapDataset:
  """Training grids of config.data.mixture: each data set's train tasks in their own stream
  (seeded apart), interleaved by grain in proportion to the weights. Element i depends on i
  alone, so the stream resumes exactly from the iterator's position."""
  parts = []
  for i, (path, weight) in enumerate(opts.mixture):
    counts = tfds_format.built_task_counts(path)
    mine = [t for t in opts.train_tasks if t in counts["train"] or t in counts["heldout"]]
    if not mine:
      raise ValueError(f"config.data.mixture[{i}] = ({path!r}, {weight}) has none of "
                       f"config.data.train_tasks")
    grids = _grids(source, opts, grain.MapDataset.range(NUM_INDICES), tasks=mine,
                   seed=opts.seed + i, train=True)
    parts.append(grids)
  return grain.MapDataset.mix(parts, [w for _, w in opts.mixture])


def make_train_dataset(config: Any, *, process_index: int, process_count: int
                       ) -> grain.IterDataset:
  """The host's infinite stream of batches, as a grain IterDataset (not started yet)."""
  opts = options_lib.as_options(config)
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index must be in [0, {process_count}), got {process_index}")
  batch = host_batch_size(opts, process_count)
  latent_cache.check_opened(opts)  # cached latents: of this autoencoder, for these tiles
  source = sources.make_source(opts, seed=opts.seed, part="train", moments=opts.cached_latents)
  sources.check_tasks(source, opts.train_tasks, opts.num_examples + 1, "config.data.train_tasks")
  indices = grain.MapDataset.range(NUM_INDICES // process_count).map(
      functools.partial(_host_index, global_batch=opts.batch_size, host_batch=batch,
                        process_index=process_index))
  if opts.mixture:
    ds = indices.map(_Take(_mixed_grids(source, opts)))
  else:
    ds = _grids(source, opts, indices, tasks=opts.train_tasks, seed=opts.seed, train=True)
  ds = ds.batch(batch, drop_remainder=True)  # batches do not depend on the number of workers
  it = ds.to_iter_dataset(grain.ReadOptions(num_threads=opts.read_threads,
                                            prefetch_buffer_size=opts.prefetch_buffer))
  if opts.num_workers:
    _ensure_absl_flags_parsed()
    it = it.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=opts.num_workers, per_worker_buffer_size=opts.prefetch_buffer))
  return it


def make_train_iterator(config: Any, *, process_index: int | None = None,
                        process_count: int | None = None) -> grain.DatasetIterator:
  """Infinite iterator of host-local numpy batches; supports get_state() / set_state().

  process_index / process_count default to jax.process_index() / jax.process_count().
  Close it (`it.close()`) when done to stop its worker processes.
  """
  return iter(make_train_dataset(config, **host_position(process_index, process_count)))


def make_eval_batches(config: Any, *, num_grids: int, seed: int,
                      tasks: Sequence[str] | None = None,
                      batch_size: int | None = None,
                      candidates: bool = False) -> list[dict[str, np.ndarray]]:
  """Deterministic evaluation batches of `num_grids` grids in total, on a fresh `seed`.

  Tasks (default: train + held-out) take turns, so each gets the same share; grids use the
  centred crop, no flip, and always keep their box. Batches have `batch_size` grids
  (default config.data.eval_batch_size); the last one holds the remainder. Synthetic scenes are
  drawn from `seed` too, so a seed other than config.seed gives scenes never trained on; stored
  pairs (folder, tfds) come from the held-out part of each task (config.data.eval_fraction).
  With `candidates`, synthetic batches also hold `candidates` [B, N, T, T, 3]: every task of the
  task_id vocabulary applied to the query's scene (episodes.QueryCandidates); stored pairs have
  no scene, so their batches have none.
  """
  opts = options_lib.as_options(config)
  if num_grids < 1:
    raise ValueError(f"num_grids must be positive, got {num_grids}")
  if seed < 0:
    raise ValueError(f"seed must be non-negative, got {seed}")
  tasks = opts.choose_tasks(tasks)
  batch_size = opts.eval_batch_size if batch_size is None else batch_size
  if batch_size < 1:
    raise ValueError(f"batch_size must be positive, got {batch_size}")
  source = sources.make_source(opts, seed=seed, part="heldout")
  sources.check_tasks(source, tasks, opts.num_examples + 1, "tasks")
  candidates = candidates and isinstance(source, sources.SyntheticSource)
  ds = _grids(source, opts, grain.MapDataset.range(num_grids), tasks=tasks, seed=seed,
              train=False, candidates=candidates).batch(batch_size)
  return [ds[i] for i in range(len(ds))]
