"""`config.train`, `config.checkpoint` and the mesh, checked once and frozen into typed options
that the training loop, the train step and the periodic actions read.

    options = LoopOptions.from_config(config)  # every check of these sections runs here

Each error names the key and the value it got.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from imagebrush_jax.infra import config_checks as checks
from imagebrush_jax.infra import parallel

ConfigError = checks.ConfigError
LR_SCHEDULES = ("cosine", "constant")


@dataclasses.dataclass(frozen=True)
class TrainOptions:
  """config.train: the optimizer and its schedule, the step's batch, and what runs how often."""
  batch_size: int  # global, over all hosts and devices
  num_steps: int  # length of the LR schedule
  stop_at_step: int  # -1: num_steps
  learning_rate: float
  lr_schedule: str
  warmup_steps: int
  end_lr_fraction: float
  weight_decay: float
  b1: float
  b2: float
  eps: float
  grad_clip_norm: float  # 0: no clipping
  grad_accum_steps: int
  ema_decay: float
  ema_warmup: bool
  log_every: int
  stop_check_every: int
  eval_every: int
  eval_at_end: bool
  eval_num_grids: int
  sample_num_grids: int
  accuracy_num_grids: int
  profile_steps: tuple[int, ...]  # () or (start, stop)

  @property
  def last_step(self) -> int:
    """The step the run stops at: stop_at_step if set, else num_steps."""
    return self.num_steps if self.stop_at_step < 0 else self.stop_at_step

  @classmethod
  def from_config(cls, t: Any) -> TrainOptions:
    key = "config.train"
    get = lambda name: checks.get(t, name, key)
    integer = lambda name, lo=1: checks.integer(get(name), f"{key}.{name}", lo)
    number = lambda name, lo, hi: checks.number(get(name), f"{key}.{name}", lo, hi)
    batch, steps, accum = integer("batch_size"), integer("num_steps"), integer("grad_accum_steps")
    if batch % accum:
      raise ConfigError(f"{key}.batch_size={batch} must divide by {key}.grad_accum_steps={accum}")
    stop = get("stop_at_step")
    if isinstance(stop, bool) or not isinstance(stop, int) or (
        stop != -1 and not 0 < stop <= steps):
      raise ConfigError(f"{key}.stop_at_step must be -1 or in (0, num_steps={steps}], got "
                        f"{stop!r}")
    profile = get("profile_steps")
    if isinstance(profile, str) or not isinstance(profile, (tuple, list)) or (
        profile and (len(profile) != 2 or not all(isinstance(s, int) for s in profile)
                     or not 0 <= profile[0] < profile[1])):
      raise ConfigError(f"{key}.profile_steps must be () or (start, stop) with 0 <= start < "
                        f"stop, got {profile!r}")
    return cls(
        batch_size=batch, num_steps=steps, stop_at_step=stop,
        learning_rate=number("learning_rate", 0.0, 10.0),
        lr_schedule=checks.choice(get("lr_schedule"), f"{key}.lr_schedule", LR_SCHEDULES),
        warmup_steps=integer("warmup_steps", 0),
        end_lr_fraction=number("end_lr_fraction", 0.0, 1.0),
        weight_decay=number("weight_decay", 0.0, 10.0),
        b1=number("b1", 0.0, 1.0), b2=number("b2", 0.0, 1.0), eps=number("eps", 0.0, 1.0),
        grad_clip_norm=number("grad_clip_norm", 0.0, float("inf")),
        grad_accum_steps=accum,
        ema_decay=number("ema_decay", 0.0, 1.0),
        ema_warmup=checks.boolean(get("ema_warmup"), f"{key}.ema_warmup"),
        log_every=integer("log_every"), stop_check_every=integer("stop_check_every"),
        eval_every=integer("eval_every"),
        eval_at_end=checks.boolean(get("eval_at_end"), f"{key}.eval_at_end"),
        eval_num_grids=integer("eval_num_grids", 0),
        sample_num_grids=integer("sample_num_grids", 0),
        accuracy_num_grids=integer("accuracy_num_grids", 0),
        profile_steps=tuple(int(s) for s in profile))


@dataclasses.dataclass(frozen=True)
class CheckpointOptions:
  """config.checkpoint: how often to save, what to keep, and the step to resume from."""
  every: int
  keep: int
  keep_every: int  # 0: none
  async_save: bool
  restore_step: int  # -1: the latest

  @classmethod
  def from_config(cls, c: Any) -> CheckpointOptions:
    key = "config.checkpoint"
    get = lambda name: checks.get(c, name, key)
    restore = get("restore_step")
    if isinstance(restore, bool) or not isinstance(restore, int) or restore < -1:
      raise ConfigError(f"{key}.restore_step must be -1 (the latest checkpoint) or a saved step "
                        f">= 0, got {restore!r}")
    return cls(every=checks.integer(get("every"), f"{key}.every", 1),
               keep=checks.integer(get("keep"), f"{key}.keep", 1),
               keep_every=checks.integer(get("keep_every"), f"{key}.keep_every", 0),
               async_save=checks.boolean(get("async_save"), f"{key}.async_save"),
               restore_step=restore)


@dataclasses.dataclass(frozen=True)
class LoopOptions:
  """What the generic training loop reads: the seed of the steps' randomness, config.train,
  config.checkpoint, config.mesh with config.sharding."""
  seed: int
  train: TrainOptions
  checkpoint: CheckpointOptions
  mesh: parallel.MeshOptions

  @classmethod
  def from_config(cls, config: Any) -> LoopOptions:
    return cls(seed=checks.integer(config.seed, "config.seed", 0, 2**32 - 1),
               train=TrainOptions.from_config(config.train),
               checkpoint=CheckpointOptions.from_config(config.checkpoint),
               mesh=parallel.MeshOptions.from_config(config))
