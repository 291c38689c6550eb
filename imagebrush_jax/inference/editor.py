"""A trained run as a batched image editor: uint8 cells in, uint8 edited target cells out.

Every call is padded to `batch_size` grids (a multiple of the local device count) and sharded
over a Mesh of this host's devices along the batch, with the parameters replicated. One sampler
is compiled per (DDIM steps, guided or not), the `max_samplers` most recently used kept.
Inference is per host: each host edits its own rows (`python -m imagebrush_jax.infer --manifest`
in several processes gives each its own manifest lines), with no collective between hosts.

A batch is sampled from one key (its grids' noise drawn together), or from one key per grid
(`edit_grids` with a [B] array of keys): then each grid's cell depends on its own key alone, not
on the other grids of the batch, their number or their order, so a row keyed by its manifest
line is edited the same by one process or by many.
"""
from __future__ import annotations

import collections
import math
import operator
from typing import Any, Callable

import jax
import numpy as np

from imagebrush_jax.inference import run_loading
from imagebrush_jax.infra import parallel
from imagebrush_jax.core import grid as grid_lib
from imagebrush_jax.core import objective as objective_lib
from imagebrush_jax.diffusion import schedules

INFERENCE_MESH = parallel.MeshOptions(data=-1, fsdp=1)
SEED_LIMIT = 2**63  # seeds are in [0, SEED_LIMIT): jax.random.key takes a signed 64-bit int
DEFAULT_MAX_SAMPLERS = 4


def check_seed(seed: Any) -> int:
  """`seed` as an int in [0, 2**63) (what jax.random.key takes), else a one-line ValueError."""
  try:
    value = operator.index(seed)
  except TypeError:
    raise ValueError(f"seed must be an integer in [0, 2**63), got {seed!r}") from None
  if not 0 <= value < SEED_LIMIT:
    raise ValueError(f"seed must be in [0, 2**63), got {value}")
  return value


def rng_key(seed: Any) -> jax.Array:
  """The sampling key of a checked seed (check_seed)."""
  return jax.random.key(check_seed(seed))


def _is_key_batch(rng: Any) -> bool:
  """Whether `rng` holds one key per grid ([B] typed keys, or [B, 2] raw uint32 ones)."""
  dtype = getattr(rng, "dtype", None)
  if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
    return rng.ndim == 1
  return np.ndim(rng) == 2


_fold_in_each = jax.jit(jax.vmap(jax.random.fold_in, in_axes=(None, 0)))


def row_keys(rng: jax.Array, ids: Any) -> jax.Array:
  """One key per id: fold_in(rng, id) for each of `ids` (ints in [0, 2**32)), shape [len(ids)].
  Batch inference keys each row by its manifest line number."""
  return _fold_in_each(rng, np.asarray(ids, np.uint32))


class Editor:
  """Edits grids with the EMA parameters of a run (see run_loading.load_run)."""

  def __init__(self, run: run_loading.Run, *, batch_size: int | None = None,
               num_steps: int | None = None, guidance_scale: float | None = None,
               eta: float | None = None, devices: list[Any] | None = None,
               max_samplers: int = DEFAULT_MAX_SAMPLERS):
    self.run = run
    self.config = run.config
    self.num_examples = run.spec.grid.num_examples
    self.tile_size = run.spec.grid.tile_size
    self.num_timesteps = run.spec.diffusion.num_timesteps
    self._schedule = schedules.make_schedule(run.spec.diffusion)  # shared by every sampler
    devices = list(jax.local_devices() if devices is None else devices)
    # The training mesh helper, every device on the batch ('data') axis: parameters replicated.
    self.mesh = parallel.make_mesh(INFERENCE_MESH, devices)
    n = len(devices)
    batch_size = 8 * n if batch_size is None else int(batch_size)
    if batch_size < 1:
      raise ValueError(f"batch_size must be positive, got {batch_size}")
    if max_samplers < 1:
      raise ValueError(f"max_samplers must be positive, got {max_samplers}")
    self.batch_size = -(-batch_size // n) * n  # a multiple of the device count
    self.max_samplers = int(max_samplers)
    self._data_sharding = parallel.batch_sharding(self.mesh)
    self.params = jax.device_put(run.params, parallel.replicated(self.mesh))
    sampling = run.spec.sampling
    self._settings = dict(num_steps=sampling.num_steps, guidance_scale=sampling.guidance_scale,
                          eta=sampling.eta)
    self._settings.update(self.check_settings(num_steps=num_steps, guidance_scale=guidance_scale,
                                              eta=eta))
    # (num_steps, guided) -> sample function, least recently used first.
    self._samplers: collections.OrderedDict[tuple[int, bool], Callable[..., dict]] = (
        collections.OrderedDict())
    # (num_steps, guided) -> that sampler vmapped over grids with a key each (made on first use,
    # dropped with the sampler).
    self._row_samplers: dict[tuple[int, bool], Callable[..., jax.Array]] = {}
    self._sampler(self._settings)  # a config the sampler cannot take fails here

  @property
  def compilations(self) -> int:
    """How many sampler compilations this editor holds (one per batch shape and settings)."""
    return (sum(sample.jitted._cache_size()  # pylint: disable=protected-access
                for sample in self._samplers.values())
            + sum(per_row._cache_size()  # pylint: disable=protected-access
                  for per_row in self._row_samplers.values()))

  @property
  def sampler_settings(self) -> list[tuple[int, bool]]:
    """(num_steps, guided) of the samplers held, least recently used first."""
    return list(self._samplers)

  def check_settings(self, *, num_steps: Any = None, guidance_scale: Any = None,
                     eta: Any = None) -> dict[str, int | float]:
    """The given sampler settings (None: not given), checked: steps a whole number in
    [1, diffusion.num_timesteps], guidance and eta finite; else a one-line ValueError."""
    settings = {}
    if num_steps is not None:
      try:
        steps = operator.index(num_steps)
      except TypeError:
        raise ValueError(f"steps must be an integer, got {num_steps!r}") from None
      if not 1 <= steps <= self.num_timesteps:
        raise ValueError(f"steps must be between 1 and {self.num_timesteps} (the run's "
                         f"diffusion.num_timesteps), got {steps}")
      settings["num_steps"] = steps
    for key, name, value in (("guidance_scale", "guidance", guidance_scale), ("eta", "eta", eta)):
      if value is None:
        continue
      try:
        number = float(value)
      except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
      if not math.isfinite(number):
        raise ValueError(f"{name} must be a finite number, got {number}")
      settings[key] = number
    return settings

  def _sampler(self, settings: dict[str, Any]) -> Callable[..., dict]:
    """The sample function of these settings' (num_steps, guided): reused while held, else made
    anew (compiled on its first call), dropping the least recently used beyond max_samplers."""
    key = (int(settings["num_steps"]), float(settings["guidance_scale"]) != 1.0)
    sample = self._samplers.get(key)
    if sample is not None:
      self._samplers.move_to_end(key)
      return sample
    sample = objective_lib.make_sample_fn(self.run.model, self.run.spec, self.run.space,
                                          self._schedule)
    self._samplers[key] = sample
    while len(self._samplers) > self.max_samplers:
      dropped, _ = self._samplers.popitem(last=False)  # its compilation goes with the function
      self._row_samplers.pop(dropped, None)
    return sample

  def _row_sampler(self, settings: dict[str, Any]) -> Callable[..., jax.Array]:
    """The sampler of these settings vmapped over the batch, one key per grid: (params, batch,
    keys, *, num_steps, guidance_scale, eta) -> target cells [B, T, T, 3] in [-1, 1]. Each grid
    is sampled as a batch of one from its own key; the settings are static (one compilation per
    distinct settings and batch shape: batch inference uses one)."""
    sample = self._sampler(settings)
    key = (int(settings["num_steps"]), float(settings["guidance_scale"]) != 1.0)
    per_row = self._row_samplers.get(key)
    if per_row is None:
      def sample_rows(params, batch, keys, *, num_steps, guidance_scale, eta):
        def one(grid, rng):
          out = sample(params, {k: v[None] for k, v in grid.items()}, rng, num_steps=num_steps,
                       guidance_scale=guidance_scale, eta=eta)
          return out["target"][0]
        return jax.vmap(one)(batch, keys)

      per_row = jax.jit(sample_rows, static_argnames=("num_steps", "guidance_scale", "eta"))
      self._row_samplers[key] = per_row
    return per_row

  def edit_grids(self, batch: dict[str, np.ndarray], rng: jax.Array,
                 **overrides: int | float | None) -> np.ndarray:
    """{grid, mask, box} with B <= batch_size grids -> uint8 target cells [B, T, T, 3].

    `rng`: one key, the whole batch sampled from it (a grid's noise depends on its place in the
    batch); or B keys (shape [B], e.g. row_keys), each grid sampled from its own key alone, so
    that a grid and its key give the same cell whatever else the batch holds (bit for bit at the
    same per-device batch shape on the same kind of device).
    `overrides` (num_steps, guidance_scale, eta; None = the editor's) apply to this call only
    and are checked as check_settings does; each distinct num_steps (and guided or not) has its
    own compiled sampler, kept while among the max_samplers most recently used.
    """
    b = int(batch["grid"].shape[0])
    if not 1 <= b <= self.batch_size:
      raise ValueError(f"edit_grids takes 1 to {self.batch_size} grids, got {b}")
    per_grid = _is_key_batch(rng)
    if per_grid and rng.shape[0] != b:
      raise ValueError(f"edit_grids: {rng.shape[0]} keys for {b} grids (one key, or one per "
                       f"grid)")
    unknown = sorted(set(overrides) - set(self._settings))
    if unknown:
      raise TypeError(f"edit_grids got unknown sampling settings {unknown}")
    settings = {**self._settings, **self.check_settings(**overrides)}
    padded = {}
    oracle = self.run.spec.model.task_oracle_vocab
    keys = ("grid", "mask", "box") + (("task_id",) if oracle else ())
    for key in keys:
      if key not in batch:
        raise ValueError(f"edit_grids: the batch lacks {key!r} (a task-oracle model, a "
                         f"diagnostic, needs each grid's task_id)")
      x = np.asarray(batch[key])
      if b < self.batch_size:  # repeat the last grid: same shapes, so no recompilation
        x = np.concatenate([x, np.repeat(x[-1:], self.batch_size - b, axis=0)], axis=0)
      padded[key] = jax.device_put(x, self._data_sharding)
    if per_grid:
      keys = rng
      if b < self.batch_size:
        keys = jax.numpy.concatenate([keys, jax.numpy.repeat(keys[-1:], self.batch_size - b,
                                                             axis=0)])
      keys = jax.device_put(keys, self._data_sharding)
      target = self._row_sampler(settings)(self.params, padded, keys, **settings)
    else:
      target = self._sampler(settings)(self.params, padded, rng, **settings)["target"]
    return grid_lib.unit_to_pixels(np.asarray(jax.device_get(target)))[:b]

  def edit_cells(self, before: np.ndarray, after: np.ndarray, query: np.ndarray,
                 box: np.ndarray | None, rng: jax.Array) -> np.ndarray:
    """Examples [N, K, T, T, 3], query [N, T, T, 3] (uint8), box [N, 4] or None -> [N, T, T, 3].

    Any N: edited in chunks of batch_size, each with its own fold of `rng`.
    """
    n = query.shape[0]
    outputs = []
    for start in range(0, n, self.batch_size):
      stop = min(n, start + self.batch_size)
      grids = [grid_lib.assemble_grid(list(zip(before[i], after[i])), query[i],
                                      box=None if box is None else box[i])
               for i in range(start, stop)]
      batch = {k: np.stack([g[k] for g in grids]) for k in ("grid", "mask", "box")}
      outputs.append(self.edit_grids(batch, jax.random.fold_in(rng, start)))
    return np.concatenate(outputs, axis=0)
