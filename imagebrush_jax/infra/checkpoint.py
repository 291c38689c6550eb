"""Orbax checkpoints of one run: train state (params, EMA, optimizer, step), the grain
iterator state (so resume is data-exact) and the config, saved asynchronously.

Layout: WORKDIR/checkpoints/<step>/{state, data, config}. Orbax writes each step to a
temporary folder and renames it when complete (in a gs:// bucket, where renames are not
atomic, it writes the step in place and adds a commit_success.txt marker last), so an
interrupted save is never taken for a checkpoint: the next start resumes from the last
complete one, and the trainer removes the leftover. A checkpoint that cannot be read is
refused with its step and the config.checkpoint.restore_step that resumes from the one
before it.
"""
from __future__ import annotations

import json
import math
from typing import Any, Sequence

from absl import logging

from etils import epath
import grain
import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from imagebrush_jax.infra import files
from imagebrush_jax.infra import parallel
from imagebrush_jax.infra import shape_diff

STATE, DATA, CONFIG = "state", "data", "config"


class CheckpointMismatchError(ValueError):
  """The checkpoint holds a different model or optimizer than the config builds."""


class CheckpointCorruptError(RuntimeError):
  """A checkpoint folder exists but cannot be read."""


def flat_shapes(tree: Any) -> dict[str, tuple]:
  """{'/'-joined path: shape} of every array of a tree (or of its metadata)."""
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {parallel.path_name(path): tuple(getattr(leaf, "shape", ())) for path, leaf in flat}


def describe_mismatch(saved: dict[str, tuple], wanted: dict[str, tuple], limit: int = 12) -> str:
  """Human-readable list of missing / unexpected / reshaped arrays between two trees."""
  return shape_diff.describe(saved, wanted, ("in the config but not the checkpoint",
                                             "in the checkpoint but not the config",
                                             "different shape (checkpoint vs config)"), limit)


def checkpoint_dir(workdir: str) -> epath.Path:
  """WORKDIR/checkpoints, made absolute for local paths (orbax refuses relative ones)."""
  return files.as_path(workdir) / "checkpoints"


class Checkpointer:
  """Saves and restores (state, data iterator, config) under WORKDIR/checkpoints.

  ckpt_config: what to keep and how to save (keep, keep_every, async_save: the training
  loop's CheckpointOptions, or config.checkpoint itself).
  remove_partial_saves: delete the temporary folders of saves that never completed (a
  killed run's); only the trainer may, since a reader could race a running trainer's save.
  """

  def __init__(self, workdir: str, ckpt_config: Any, *, remove_partial_saves: bool = False):
    self.directory = checkpoint_dir(workdir)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=int(ckpt_config.keep),
        keep_period=int(ckpt_config.keep_every) or None,
        enable_async_checkpointing=bool(ckpt_config.async_save),
        create=True,
        cleanup_tmp_directories=remove_partial_saves,
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
    return sorted(self.manager.all_steps())

  @property
  def set_aside_directory(self) -> epath.Path:
    return self.directory.parent / "checkpoints_set_aside"

  def set_aside_after(self, step: int) -> list[int]:
    """Moves the checkpoints newer than `step` to WORKDIR/checkpoints_set_aside/<step>.

    Used when a run resumes from an earlier step on purpose: the newer ones would block
    the saves of the steps trained again and be resumed from by the next start. They are
    moved, not deleted, in case they are wanted back.
    """
    newer = [s for s in self.all_steps() if s > step]
    if newer and jax.process_index() == 0:
      self.set_aside_directory.mkdir(parents=True, exist_ok=True)
      for s in newer:
        dest, n = self.set_aside_directory / str(s), 1
        while dest.exists():  # set aside before: keep both
          dest, n = self.set_aside_directory / f"{s}.{n}", n + 1
        (self.directory / str(s)).rename(dest)
        logging.info("checkpoint: moved step %d to %s", s, dest)
    if newer:
      if jax.process_count() > 1:
        multihost_utils.sync_global_devices("imagebrush_checkpoint_set_aside")
      self.manager.reload()
    return newer

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
  def _corrupt(self, step: int, what: str, cause: Exception | None = None
               ) -> CheckpointCorruptError:
    """The error for an unreadable checkpoint: its step, path, and how to resume before it."""
    earlier = [s for s in self.all_steps() if s < step]
    if earlier:
      hint = (f"To resume from the checkpoint before it, pass "
              f"--config.checkpoint.restore_step={earlier[-1]} (newer checkpoints are set "
              f"aside in {self.set_aside_directory}).")
    else:
      hint = (f"There is no earlier checkpoint: move {self.directory / str(step)} away to "
              f"start from scratch.")
    reason = ""
    if cause is not None:  # the first line, without tensorstore's long spec dumps
      text = str(cause).splitlines()[0] if str(cause) else ""
      reason = f" ({type(cause).__name__}: {text[:300]}{'...' if len(text) > 300 else ''})"
    return CheckpointCorruptError(
        f"checkpoint step {step} in {self.directory / str(step)} is damaged or unreadable: "
        f"{what}{reason}\n"
        f"{hint}")

  def saved_config(self, step: int) -> dict:
    try:
      return self.manager.restore(step, args=ocp.args.Composite(
          **{CONFIG: ocp.args.JsonRestore()}))[CONFIG]
    except Exception as e:  # pylint: disable=broad-except
      raise self._corrupt(step, "its config cannot be read", e) from e

  def check_compatible(self, step: int, abstract_state: Any) -> None:
    """Refuses a checkpoint whose arrays differ in name or shape from the config's."""
    path = self.directory / str(step)
    try:
      meta = self.manager.item_metadata(step)[STATE]
    except Exception as e:  # pylint: disable=broad-except
      raise self._corrupt(step, "its metadata cannot be read", e) from e
    if meta is None:
      raise self._corrupt(step, f"it has no '{STATE}' item")
    tree = getattr(meta, "tree", meta)
    saved = flat_shapes(tree)
    wanted = flat_shapes(abstract_state)
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
      raise self._corrupt(step, "its arrays cannot be read", e) from e
    bad = _non_finite(restored[STATE])
    if bad:
      raise self._corrupt(step, f"it holds NaN or inf values in {', '.join(bad[:8])}")
    logging.info("checkpoint: restored step %d from %s", step, path)
    return restored[STATE]


def _non_finite(state: Any) -> list[str]:
  """Names of the float arrays holding NaN or inf: a damaged checkpoint can decode to them."""
  floats = {parallel.path_name(k): v for k, v in jax.tree_util.tree_flatten_with_path(state)[0]
            if hasattr(v, "dtype") and jax.numpy.issubdtype(v.dtype, jax.numpy.floating)}
  finite = jax.jit(lambda t: {k: jax.numpy.all(jax.numpy.isfinite(v))
                              for k, v in t.items()})(floats)
  return [k for k, ok in finite.items() if not bool(ok)]


def abstract_with_shardings(tree: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs carrying the target shardings, the restore target."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      tree, shardings)


def param_count(tree: Any) -> int:
  return int(sum(math.prod(x.shape) for x in jax.tree.leaves(tree)))


class CheckpointReader:
  """Read-only access to a run's checkpoints, for the tools that use a finished (or running)
  run: its steps, each step's saved config, and chosen arrays as host numpy, without building
  the optimizer or writing anything. One manager for all of it; close() when done (or `with`).
  The trainer itself restores onto its mesh with Checkpointer.restore."""

  def __init__(self, workdir: str):
    self.directory = checkpoint_dir(workdir)
    if not self.directory.exists():
      raise FileNotFoundError(f"no checkpoints in {self.directory}")
    self._manager = ocp.CheckpointManager(
        self.directory, item_names=(STATE, CONFIG),
        item_handlers={STATE: ocp.StandardCheckpointHandler(),
                       CONFIG: ocp.JsonCheckpointHandler()},
        options=ocp.CheckpointManagerOptions(read_only=True, create=False,
                                             enable_async_checkpointing=False))

  def __enter__(self) -> "CheckpointReader":
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def close(self) -> None:
    self._manager.close()

  def steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def resolve_step(self, step: int | None = None) -> int:
    """`step` if it was saved, else the latest (None); FileNotFoundError naming the folder."""
    steps = self.steps()
    if step is None:
      if not steps:
        raise FileNotFoundError(f"no checkpoints in {self.directory}")
      return steps[-1]
    if int(step) not in steps:
      raise FileNotFoundError(f"no checkpoint of step {step} in {self.directory} (it has "
                              f"steps {steps})")
    return int(step)

  def config(self, step: int) -> dict:
    """The config saved with `step` (CheckpointCorruptError when it cannot be read)."""
    try:
      return self._manager.restore(step, args=ocp.args.Composite(
          **{CONFIG: ocp.args.JsonRestore()}))[CONFIG]
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointCorruptError(f"checkpoint step {step} in {self.directory / str(step)}: "
                                   f"its config cannot be read ({type(e).__name__})") from e

  def arrays(self, step: int, paths: Sequence[str] | None = None) -> dict:
    """The saved train state of `step` as host numpy arrays.

    `paths` ('/'-joined, e.g. "ema_params" or "params/autoencoder") limits the read to those
    subtrees (a partial restore: nothing else, such as the optimizer state, is read); the tree
    returned holds only them.
    """
    path = self.directory / str(step)
    handler = ocp.PyTreeCheckpointHandler()
    try:
      tree = handler.metadata(path / STATE)
      tree = getattr(tree, "tree", tree)
      wanted = tree if paths is None else _select(tree, paths,
                                                  f"checkpoint step {step} in {path}")
      # The target comes from the checkpoint's own metadata, placed on one local device, so
      # a checkpoint written by any mesh or number of hosts reads back here.
      device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
      target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                            wanted)
      restore_args = jax.tree.map(lambda _: ocp.ArrayRestoreArgs(sharding=device), wanted)
      restored = handler.restore(path / STATE, args=ocp.args.PyTreeRestore(
          item=target, restore_args=restore_args, partial_restore=paths is not None))
    except KeyError:
      raise
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointCorruptError(f"cannot restore checkpoint {path}: {e}") from e
    finally:
      handler.close()
    return jax.tree.map(np.asarray, restored)


def load_arrays(workdir: str, step: int | None = None,
                paths: Sequence[str] | None = None) -> tuple[int, dict]:
  """(step, CheckpointReader.arrays) of a run's checkpoint (the latest by default)."""
  with CheckpointReader(workdir) as reader:
    step = reader.resolve_step(step)
    return step, reader.arrays(step, paths)


def _select(tree: dict, paths: Sequence[str], where: str) -> dict:
  """The subtrees of `tree` at '/'-joined `paths`, nested as in `tree`."""
  out: dict = {}
  for joined in paths:
    parts, node, src = joined.split("/"), out, tree
    for i, part in enumerate(parts):
      try:
        src = src[part]
      except (KeyError, TypeError):
        raise KeyError(f"{where} has no {joined!r} (its state has {sorted(tree)})") from None
      if i < len(parts) - 1:
        node = node.setdefault(part, {})
    node[parts[-1]] = src
  return out
