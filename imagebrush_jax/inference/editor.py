"""A trained run as a batched image editor: uint8 cells in, uint8 edited target cells out.

One compiled sampler per editor: every call is padded to `batch_size` grids (a multiple of the
local device count) and sharded over a Mesh of this host's devices along the batch, with the
parameters replicated. Inference is per host: each host edits its own rows.
"""
from __future__ import annotations

from typing import Any

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np

from imagebrush_jax import run_loading
from imagebrush_jax.imagebrush import grid as grid_lib
from imagebrush_jax.imagebrush import task as task_lib


class Editor:
  """Edits grids with the EMA parameters of a run (see run_loading.load_run)."""

  def __init__(self, run: run_loading.Run, *, batch_size: int | None = None,
               num_steps: int | None = None, guidance_scale: float | None = None,
               eta: float | None = None, devices: list[Any] | None = None):
    self.run = run
    self.config = run.config
    self.num_examples = int(run.config.data.num_examples)
    self.tile_size = int(run.config.data.tile_size)
    devices = list(jax.local_devices() if devices is None else devices)
    self.mesh = Mesh(np.asarray(devices), ("data",))
    n = len(devices)
    batch_size = 8 * n if batch_size is None else int(batch_size)
    if batch_size < 1:
      raise ValueError(f"batch_size must be positive, got {batch_size}")
    self.batch_size = -(-batch_size // n) * n  # a multiple of the device count
    self._data_sharding = NamedSharding(self.mesh, P("data"))
    self.params = jax.device_put(run.params, NamedSharding(self.mesh, P()))
    self._sample = task_lib.make_sample_fn(run.model, run.config, run.space)
    self._overrides = dict(num_steps=num_steps, guidance_scale=guidance_scale, eta=eta)

  @property
  def compilations(self) -> int:
    """How many sampler compilations this process holds (one per batch shape and settings)."""
    return self._sample.jitted._cache_size()  # pylint: disable=protected-access

  def edit_grids(self, batch: dict[str, np.ndarray], rng: jax.Array,
                 **overrides: int | float | None) -> np.ndarray:
    """{grid, mask, box} with B <= batch_size grids -> uint8 target cells [B, T, T, 3].

    `overrides` (num_steps, guidance_scale, eta; None = the editor's) apply to this call only;
    each distinct num_steps (and guided or not) compiles the sampler once.
    """
    b = int(batch["grid"].shape[0])
    if not 1 <= b <= self.batch_size:
      raise ValueError(f"edit_grids takes 1 to {self.batch_size} grids, got {b}")
    padded = {}
    for key in ("grid", "mask", "box"):
      x = np.asarray(batch[key])
      if b < self.batch_size:  # repeat the last grid: same shapes, so no recompilation
        x = np.concatenate([x, np.repeat(x[-1:], self.batch_size - b, axis=0)], axis=0)
      padded[key] = jax.device_put(x, self._data_sharding)
    unknown = sorted(set(overrides) - set(self._overrides))
    if unknown:
      raise TypeError(f"edit_grids got unknown sampling settings {unknown}")
    settings = {k: v if overrides.get(k) is None else overrides[k]
                for k, v in self._overrides.items()}
    out = self._sample(self.params, padded, rng, **settings)
    return grid_lib.unit_to_pixels(np.asarray(jax.device_get(out["target"])))[:b]

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
