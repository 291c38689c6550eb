"""The objectives this project trains, each with config.train's optimizer: a Trainable for the
loop (training/loop.py) and the train step (training/train_state.py)."""
from __future__ import annotations

import ml_collections

from imagebrush_jax.core import latent
from imagebrush_jax.core import objective as objective_lib
from imagebrush_jax.perf import flops as flops_lib
from imagebrush_jax.training import train_state


def imagebrush(config: ml_collections.ConfigDict,
               autoencoder: tuple[latent.LatentSpace, dict] | None = None
               ) -> train_state.Trainable:
  """The paper's model (core/objective.py) with its analytic FLOPs; `autoencoder` =
  latent.load(config) in latent space, whose weights the optimizer leaves frozen."""
  objective = objective_lib.build(config, autoencoder)
  arch = autoencoder[0].model.arch if autoencoder is not None else None
  return train_state.make_trainable(objective, config.train, config.seed,
                                    flops_per_step=flops_lib.model_flops_fn(config, arch))
