"""Training a KL autoencoder on the data's tiles: reconstruction + KL, with the main trainer's loop.

  python -m imagebrush_jax.train_autoencoder --config configs/autoencoder_tiny.py --workdir DIR \
      [--config.train.batch_size=64 ...]

The loop is training/loop.py (sharded jitted step, orbax checkpoints with the data iterator's
state, resume, SIGTERM, NaN stop, TensorBoard + console + WORKDIR/train_metrics.jsonl); the
model, loss and evaluator are training/autoencoder.py, the tile stream data/tiles.py.
"""
from __future__ import annotations

import functools

import ml_collections

from imagebrush_jax.data import task_lists
from imagebrush_jax.data import options as data_options
from imagebrush_jax.data import tiles
from imagebrush_jax.infra import cli
from imagebrush_jax.training import config_migration
from imagebrush_jax.training import autoencoder
from imagebrush_jax.training import loop
from imagebrush_jax.training.options import LoopOptions


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains the autoencoder per config in workdir, resuming from its latest checkpoint if any."""
  config = config_migration.migrate(config)  # a config written for an earlier version
  config = task_lists.resolve(config)
  options = LoopOptions.from_config(config)  # checked here, before anything is built
  data = data_options.from_config(config)
  return loop.run_training(
      config, workdir, options=options,
      build_trainable=functools.partial(autoencoder.build_trainable, config, options),
      make_train_iterator=functools.partial(tiles.make_train_iterator, data),
      make_evaluator=functools.partial(autoencoder.Evaluator, config))


if __name__ == "__main__":
  cli.run_training_program(train_and_evaluate)
