"""Data: synthetic task family, pair sources and the grain input pipeline that assembles grids
(the grid layout and the batch dict it fills: imagebrush_jax/core/grid.py).

  tasks.py        task registry (global and object-level edits, compositions 'a+b')
  scenes.py       procedural scenes: sampling, rendering at any tile size, geometry edits
  imageops.py     pixel ops behind the global tasks
  sources.py      synthetic, folder, built (TFDS) and mixture pair sources (random access)
  tfds_format.py  a built data set's layout (task ranges, pair ids), for writer and reader
  task_lists.py   empty task lists filled from built data sets
  build/          python -m imagebrush_jax.build_data: data sets from published data
  splits.py       training / evaluation pairs of a stored source, by a hash of task/pair_id
  options.py      validated view of config.data
  augment.py      resize, crop and flip applied alike to every cell of a grid
  episodes.py     per-grid grain transforms: sample, load, augment, assemble
  tiles.py        single tiles for autoencoder training
  pipeline.py     make_train_iterator / make_eval_batches: the public entry points
  preview.py      CLI: assembled grids as one labelled PNG
"""
