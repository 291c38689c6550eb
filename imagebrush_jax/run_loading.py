"""A finished (or running) training run as what inference and evaluation need: its config,
its model and its EMA parameters.

    run = load_run(workdir)            # latest checkpoint
    run.config, run.model, run.params, run.step
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any

from etils import epath
import jax
import ml_collections

from imagebrush_jax import checkpoint as ckpt_lib
from imagebrush_jax.models import imagebrush as ib


@dataclasses.dataclass(frozen=True)
class Run:
  config: ml_collections.ConfigDict
  model: ib.ImageBrush
  params: Any  # the 'params' collection (EMA weights unless asked otherwise), host numpy
  step: int
  workdir: str


def _tuples(value: Any) -> Any:
  """JSON lists back to the tuples the config files use (ml_collections keeps lists as lists)."""
  if isinstance(value, dict):
    return {k: _tuples(v) for k, v in value.items()}
  if isinstance(value, list):
    return tuple(_tuples(v) for v in value)
  return value


def config_from_json(data: dict) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(_tuples(data))


def load_config(workdir: str, step: int | None = None) -> ml_collections.ConfigDict:
  """The run's config: the one saved in the checkpoint, else WORKDIR/config.json."""
  path = epath.Path(workdir) / "config.json"
  directory = epath.Path(workdir) / "checkpoints"
  if directory.exists():
    options = ml_collections.ConfigDict({"keep": 1, "keep_every": 0, "async_save": False})
    checkpointer = ckpt_lib.Checkpointer(workdir, options)
    try:
      step = checkpointer.latest_step() if step is None else step
      if step is not None:
        return config_from_json(checkpointer.saved_config(step))
    except ckpt_lib.CheckpointCorruptError:
      if not path.exists():
        raise
    finally:
      checkpointer.manager.close()
  if not path.exists():
    raise FileNotFoundError(f"{workdir} holds neither checkpoints with a config nor config.json")
  try:
    return config_from_json(json.loads(path.read_text()))
  except (ValueError, TypeError) as e:
    raise ValueError(f"cannot read the run config {path}: {e}") from e


def load_run(workdir: str, step: int | None = None, *, use_ema: bool = True) -> Run:
  """Config, model and parameters of the run in `workdir` (latest checkpoint by default)."""
  step, state = ckpt_lib.load_arrays(workdir, step)
  config = load_config(workdir, step)
  key = "ema_params" if use_ema else "params"
  if key not in state:
    raise KeyError(f"checkpoint step {step} in {workdir} has no {key!r} (has {sorted(state)})")
  params = state[key]
  model = ib.build_model(config)
  wanted = ib.param_shapes(model, config)
  saved_shapes = jax.tree.map(lambda x: tuple(x.shape), params)
  wanted_shapes = jax.tree.map(lambda x: tuple(x.shape), wanted)
  if saved_shapes != wanted_shapes:
    raise ckpt_lib.CheckpointMismatchError(
        f"checkpoint step {step} in {workdir} does not fit its own config:\n"
        + ckpt_lib.describe_mismatch(ckpt_lib._flat_shapes(params),  # pylint: disable=protected-access
                                     ckpt_lib._flat_shapes(wanted)))  # pylint: disable=protected-access
  return Run(config=config, model=model, params=params, step=int(step), workdir=str(workdir))
