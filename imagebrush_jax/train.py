"""Training ImageBrush: train_and_evaluate(config, workdir) and its command line.

  python -m imagebrush_jax.train --config configs/cpu_demo.py --workdir runs/demo \
      [--config.train.batch_size=64 ...]

One jitted, sharded train step (Mesh ('data', 'fsdp'), params sharded by rules, the batch
split over all devices, donated state); grain input with its iterator state in every
checkpoint, so a resumed run sees exactly the batches an uninterrupted one would. The loop is
training/loop.py; the model and its loss core/objective.py.
"""
from __future__ import annotations

import functools
from typing import Any

import ml_collections

from imagebrush_jax.core import latent
from imagebrush_jax.data import pipeline
from imagebrush_jax.data import task_lists
from imagebrush_jax.infra import cli
from imagebrush_jax.training import config_migration
from imagebrush_jax.training import loop
from imagebrush_jax.training import objectives
from imagebrush_jax.training import periodic_eval


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains ImageBrush per config in workdir, resuming from its latest checkpoint if any.

  In latent space the autoencoder file is read here, once; the saved config records its
  architecture, so the finished run needs no file but its own checkpoints.
  """
  config = config_migration.migrate(config)  # a config written for an earlier version
  config = task_lists.resolve(config)  # empty task lists: the built data set's (saved so)
  autoencoder = latent.load(config)
  if autoencoder is not None:
    config = latent.record_arch(config, autoencoder[0])
  return loop.run_training(
      config, workdir,
      build_trainable=functools.partial(objectives.imagebrush, autoencoder=autoencoder),
      make_train_iterator=pipeline.make_train_iterator,
      make_evaluator=periodic_eval.Evaluator)


if __name__ == "__main__":
  cli.run_training_program(train_and_evaluate)
