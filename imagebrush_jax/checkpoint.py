"""Orbax checkpoints of one run: train state (params, EMA, optimizer, step), the grain
iterator state (so resume is data-exact) and the config, saved asynchronously.

Layout: WORKDIR/checkpoints/<step>/{state, data, config}. Orbax writes each step to a
temporary folder and renames it when complete, so an interrupted save never leaves a
half-written checkpoint behind.
"""
from __future__ import annotations

import json
import math
import os
from typing import Any

from absl import logging

from etils import epath
import grain
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from imagebrush_jax import parallel
from imagebrush_jax import shape_diff

STATE, DATA, CONFIG = "state", "data", "config"


class CheckpointMismatchError(ValueError):
  """The checkpoint holds a different model or optimizer than the config builds."""


class CheckpointCorruptError(RuntimeError):
  """A checkpoint folder exists but cannot be read."""


def _flat_shapes(tree: Any) -> dict[str, tuple]:
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {parallel.path_name(path): tuple(getattr(leaf, "shape", ())) for path, leaf in flat}


def describe_mismatch(saved: dict[str, tuple], wanted: dict[str, tuple], limit: int = 12) -> str:
  """Human-readable list of missing / unexpected / reshaped arrays between two trees."""
  return shape_diff.describe(saved, wanted, ("in the config but not the checkpoint",
                                             "in the checkpoint but not the config",
                                             "different shape (checkpoint vs config)"), limit)


def checkpoint_dir(workdir: str) -> epath.Path:
  """WORKDIR/checkpoints, made absolute for local paths (orbax refuses relative ones)."""
  path = epath.Path(workdir)
  if "://" not in str(workdir):
    path = epath.Path(os.path.abspath(workdir))
  return path / "checkpoints"


class Checkpointer:
  """Saves and restores (state, data iterator, config) under WORKDIR/checkpoints."""

  def __init__(self, workdir: str, ckpt_config: ml_collections.ConfigDict):
    self.directory = checkpoint_dir(workdir)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=int(ckpt_config.keep),
        keep_period=int(ckpt_config.keep_every) or None,
        enable_async_checkpointing=bool(ckpt_config.get("async_save", True)),
        create=True,
    )
    self.manager = ocp.CheckpointManager(
        self.directory,
        item_names=(STATE, DATA, CONFIG),
        item_handlers={
            STATE: ocp.StandardCheckpointHandler(),
            DATA: grain.checkpoint.CheckpointHandler(),
            CONFIG: ocp.JsonCheckpointHandler(),
        },
        options=options,
    )

  # ---------------------------------------------------------------- queries
  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  # ---------------------------------------------------------------- save
  def save(self, step: int, state: Any, data_iterator: Any | None,
           config: ml_collections.ConfigDict, *, force: bool = False) -> bool:
    """Starts an asynchronous save; the data iterator state is captured now."""
    items = {
        STATE: ocp.args.StandardSave(state),
        CONFIG: ocp.args.JsonSave(json.loads(config.to_json())),
    }
    if data_iterator is not None:
      items[DATA] = grain.checkpoint.CheckpointSave(data_iterator)
    saved = self.manager.save(step, args=ocp.args.Composite(**items), force=force)
    if saved:
      logging.info("checkpoint: saving step %d to %s", step, self.directory)
    return saved

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()

  # ---------------------------------------------------------------- restore
  def saved_config(self, step: int) -> dict:
    path = self.directory / str(step) / CONFIG
    try:
      return self.manager.restore(step, args=ocp.args.Composite(
          **{CONFIG: ocp.args.JsonRestore()}))[CONFIG]
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointCorruptError(f"cannot read the config of checkpoint {path}: {e}") from e

  def check_compatible(self, step: int, abstract_state: Any) -> None:
    """Refuses a checkpoint whose arrays differ in name or shape from the config's."""
    path = self.directory / str(step)
    try:
      meta = self.manager.item_metadata(step)[STATE]
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointCorruptError(f"cannot read checkpoint metadata in {path}: {e}") from e
    if meta is None:
      raise CheckpointCorruptError(f"checkpoint {path} has no '{STATE}' item")
    tree = getattr(meta, "tree", meta)
    saved = _flat_shapes(tree)
    wanted = _flat_shapes(abstract_state)
    if saved != wanted:
      raise CheckpointMismatchError(
          f"checkpoint {path} does not fit the config (another model or optimizer shape):\n"
          + describe_mismatch(saved, wanted))

  def restore(self, step: int, abstract_state: Any, data_iterator: Any | None) -> Any:
    """Restores state onto the shardings in abstract_state and the iterator in place.

    abstract_state is a tree of jax.ShapeDtypeStruct with .sharding set, so restoring
    onto another device count or mesh reshards on the fly.
    """
    self.check_compatible(step, abstract_state)
    items = {STATE: ocp.args.StandardRestore(abstract_state)}
    if data_iterator is not None:
      items[DATA] = grain.checkpoint.CheckpointRestore(data_iterator)
    path = self.directory / str(step)
    try:
      restored = self.manager.restore(step, args=ocp.args.Composite(**items))
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointCorruptError(f"cannot restore checkpoint {path}: {e}") from e
    _check_finite(restored[STATE], path)
    logging.info("checkpoint: restored step %d from %s", step, path)
    return restored[STATE]


def _check_finite(state: Any, path) -> None:
  """A damaged checkpoint can decode to NaN/inf; refuse it instead of training on it."""
  floats = {parallel.path_name(k): v for k, v in jax.tree_util.tree_flatten_with_path(state)[0]
            if hasattr(v, "dtype") and jax.numpy.issubdtype(v.dtype, jax.numpy.floating)}
  finite = jax.jit(lambda t: {k: jax.numpy.all(jax.numpy.isfinite(v)) for k, v in t.items()})(floats)
  bad = [k for k, ok in finite.items() if not bool(ok)]
  if bad:
    raise CheckpointCorruptError(
        f"checkpoint {path}: NaN or inf values in {', '.join(bad[:8])}")


def abstract_with_shardings(tree: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs carrying the target shardings, the restore target."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      tree, shardings)


def param_count(tree: Any) -> int:
  return int(sum(math.prod(x.shape) for x in jax.tree.leaves(tree)))


def load_arrays(workdir: str, step: int | None = None) -> tuple[int, dict]:
  """The saved train state of a run as host numpy arrays (latest step by default).

  For tools that read a finished run (inference, evaluation, tests) without building
  the optimizer; the trainer itself restores onto its mesh with Checkpointer.restore.
  """
  directory = checkpoint_dir(workdir)
  if not directory.exists():
    raise FileNotFoundError(f"no checkpoints in {directory}")
  manager = ocp.CheckpointManager(directory, item_names=(STATE,),
                                  item_handlers={STATE: ocp.StandardCheckpointHandler()})
  try:
    step = manager.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoints in {directory}")
    path = directory / str(step)
    try:
      # The target comes from the checkpoint's own metadata, placed on one local device, so
      # a checkpoint written by any mesh or number of hosts reads back here.
      meta = manager.item_metadata(step)[STATE]
      device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
      target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                            getattr(meta, "tree", meta))
      restored = manager.restore(step, args=ocp.args.Composite(
          **{STATE: ocp.args.StandardRestore(target)}))
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointCorruptError(f"cannot restore checkpoint {path}: {e}") from e
    return step, jax.tree.map(np.asarray, restored[STATE])
  finally:
    manager.close()
