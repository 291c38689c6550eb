"""Checks of the training config's values, with errors that name the offending key.

Data and model keys are checked where they are used (the data pipeline and the model
builders); this module covers train / checkpoint / mesh / sharding, so a bad value
fails before any compilation or data loading starts.
"""
from __future__ import annotations

import ml_collections


class ConfigError(ValueError):
  """A config value is missing or out of range; the message names the key."""


def _require(config: ml_collections.ConfigDict, path: str):
  node = config
  for part in path.split("."):
    if part not in node:
      raise ConfigError(f"config.{path} is missing")
    node = node[part]
  return node


def _positive_int(config, path: str, allow_zero: bool = False) -> int:
  value = _require(config, path)
  if isinstance(value, bool) or not isinstance(value, int):
    raise ConfigError(f"config.{path} must be an integer, got {value!r}")
  if value < 0 or (value == 0 and not allow_zero):
    raise ConfigError(f"config.{path} must be {'>= 0' if allow_zero else '> 0'}, got {value}")
  return value


def _in_range(config, path: str, low: float, high: float) -> float:
  value = _require(config, path)
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
    raise ConfigError(f"config.{path} must be a number in [{low}, {high}], got {value!r}")
  return float(value)


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError naming the first bad train / checkpoint / mesh key."""
  batch = _positive_int(config, "train.batch_size")
  steps = _positive_int(config, "train.num_steps")
  accum = _positive_int(config, "train.grad_accum_steps")
  if batch % accum:
    raise ConfigError(f"config.train.batch_size={batch} must divide by "
                      f"config.train.grad_accum_steps={accum}")
  stop = _require(config, "train.stop_at_step")
  if not isinstance(stop, int) or (stop != -1 and not 0 < stop <= steps):
    raise ConfigError(f"config.train.stop_at_step must be -1 or in (0, num_steps={steps}], "
                      f"got {stop!r}")
  _in_range(config, "train.learning_rate", 0.0, 10.0)
  if _require(config, "train.lr_schedule") not in ("cosine", "constant"):
    raise ConfigError(f"config.train.lr_schedule must be 'cosine' or 'constant', got "
                      f"{config.train.lr_schedule!r}")
  _positive_int(config, "train.warmup_steps", allow_zero=True)
  _in_range(config, "train.end_lr_fraction", 0.0, 1.0)
  _in_range(config, "train.weight_decay", 0.0, 10.0)
  _in_range(config, "train.b1", 0.0, 1.0)
  _in_range(config, "train.b2", 0.0, 1.0)
  _in_range(config, "train.grad_clip_norm", 0.0, float("inf"))
  _in_range(config, "train.ema_decay", 0.0, 1.0)
  for key in ("log_every", "stop_check_every", "eval_every", "eval_num_grids",
              "sample_num_grids"):
    _positive_int(config, f"train.{key}", allow_zero=key.endswith("grids"))
  _positive_int(config, "checkpoint.every")
  _positive_int(config, "checkpoint.keep")
  _positive_int(config, "checkpoint.keep_every", allow_zero=True)
  restore = _require(config, "checkpoint.restore_step")
  if isinstance(restore, bool) or not isinstance(restore, int) or restore < -1:
    raise ConfigError(f"config.checkpoint.restore_step must be -1 (the latest checkpoint) or a "
                      f"saved step >= 0, got {restore!r}")
  for axis in ("data", "fsdp"):
    value = _require(config, f"mesh.{axis}")
    if not isinstance(value, int) or (value != -1 and value < 1):
      raise ConfigError(f"config.mesh.{axis} must be a positive integer or -1, got {value!r}")
  for i, rule in enumerate(_require(config, "sharding.rules")):
    if len(rule) != 2 or rule[1] not in ("fsdp", "replicate"):
      raise ConfigError(f"config.sharding.rules[{i}] must be (regex, 'fsdp' | 'replicate'), "
                        f"got {rule!r}")
