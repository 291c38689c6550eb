"""The objectives this project trains, each with config.train's optimizer: a Trainable for the
loop (training/loop.py) and the train step (training/train_state.py)."""
from __future__ import annotations

from typing import Callable

import ml_collections

from imagebrush_jax.core import latent
from imagebrush_jax.core import objective as objective_lib
from imagebrush_jax.core import options as core_options
from imagebrush_jax.perf import flops as flops_lib
from imagebrush_jax.training import train_state
from imagebrush_jax.training.options import LoopOptions


def imagebrush(spec: core_options.ImageBrushSpec, options: LoopOptions,
               autoencoder: tuple[latent.LatentSpace, dict] | None = None, *,
               flops_per_step: Callable[[int], float] | None = None) -> train_state.Trainable:
  """The paper's model (core/objective.py) with the loop's optimizer and seed; `autoencoder` =
  latent.load(spec) in latent space, whose weights the optimizer leaves frozen;
  `flops_per_step` its analytic FLOPs (perf/flops.model_flops_fn), for MFU."""
  objective = objective_lib.build(spec, autoencoder)
  return train_state.make_trainable(objective, options.train, options.seed,
                                    flops_per_step=flops_per_step)


def imagebrush_from_config(config: ml_collections.ConfigDict,
                           autoencoder: tuple[latent.LatentSpace, dict] | None = None
                           ) -> train_state.Trainable:
  """imagebrush() of a config parsed here, with its analytic FLOPs: for benchmarks, tools and
  tests that start from a config (train.py parses its own once, where it starts)."""
  arch = autoencoder[0].model.arch if autoencoder is not None else None
  return imagebrush(core_options.ImageBrushSpec.from_config(config),
                    LoopOptions.from_config(config), autoencoder,
                    flops_per_step=flops_lib.model_flops_fn(config, arch))
