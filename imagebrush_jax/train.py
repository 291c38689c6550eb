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
from imagebrush_jax.core import options as core_options
from imagebrush_jax.data import options as data_options
from imagebrush_jax.data import pipeline
from imagebrush_jax.data import task_lists
from imagebrush_jax.infra import cli
from imagebrush_jax.training import config_migration
from imagebrush_jax.training import loop
from imagebrush_jax.training import objectives
from imagebrush_jax.training import periodic_eval
from imagebrush_jax.training.options import LoopOptions
from imagebrush_jax.perf import flops as flops_lib


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains ImageBrush per config in workdir, resuming from its latest checkpoint if any.

  The config is checked here, once, into typed options (every error before the workdir is
  made). In latent space the autoencoder file is read here, once; the saved config records its
  architecture, so the finished run needs no file but its own checkpoints.
  """
  config = config_migration.migrate(config)  # a config written for an earlier version
  config = task_lists.resolve(config)  # empty task lists: the built data set's (saved so)
  spec = core_options.ImageBrushSpec.from_config(config)
  data = data_options.from_config(config)
  options = LoopOptions.from_config(config)
  autoencoder = latent.load(spec)
  arch = None
  if autoencoder is not None:
    config = latent.record_arch(config, autoencoder[0])
    arch = autoencoder[0].model.arch
  flops = flops_lib.model_flops_fn(config, arch)
  return loop.run_training(
      config, workdir, options=options,
      build_trainable=functools.partial(objectives.imagebrush, spec, options, autoencoder,
                                        flops_per_step=flops),
      make_train_iterator=functools.partial(pipeline.make_train_iterator, data),
      make_evaluator=functools.partial(periodic_eval.Evaluator, data, options.train))


if __name__ == "__main__":
  cli.run_training_program(train_and_evaluate)
