"""Ready-made edits for the web editor's gallery: K example pairs and a query per task.

  builtin(config, folder)  renders the built-in synthetic task family (the run's own tasks when
                           it trained on them, else the six global edits) into PNG files
  from_folder(root, K)     a folder in the folder-source layout (<root>/<task>/<id>_before.png,
                           <id>_after.png): per task, its first K pairs and the next pair's before
"""
from __future__ import annotations

import dataclasses
import os

import ml_collections
import numpy as np

from imagebrush_jax.infra import files
from imagebrush_jax.data import augment
from imagebrush_jax.data import options
from imagebrush_jax.data import sources
from imagebrush_jax.data import tasks as tasks_lib

GALLERY_SEED = 2023  # the built-in examples' scenes
DISPLAY_SIZE = 256  # built-in examples are scaled up (nearest) to this, to be seen and boxed


@dataclasses.dataclass(frozen=True)
class Example:
  task: str
  pairs: tuple[tuple[str, str], ...]  # (before, after) image files
  query: str  # image file


def builtin(config: ml_collections.ConfigDict, folder: str, max_tasks: int = 12
            ) -> list[Example]:
  """One Example per task of the built-in family, drawn as the run's data would be and scaled
  up with nearest-neighbour pixels (the editor scales every image to the run's tiles)."""
  data = config.data
  tasks = tuple(data.train_tasks) + tuple(data.heldout_tasks)
  if data.source != "synthetic" or not tasks or not all(map(tasks_lib.is_known, tasks)):
    tasks = tasks_lib.GLOBAL_TASKS
  k = int(data.num_examples)
  source = sources.SyntheticSource(tasks[:max_tasks], options.scene_params(data),
                                   augment.TileSpec.from_config(data).render_size, GALLERY_SEED)
  examples = []
  for task in source.tasks:
    indices = source.pair_indices(task)
    paths = []
    for j in range(k + 1):
      pair = source[indices[j]]
      names = [os.path.join(folder, f"{task}_{j}_{role}.png") for role in ("before", "after")]
      files.save_png_atomic(names[0], _enlarged(pair.before))
      files.save_png_atomic(names[1], _enlarged(pair.after))
      paths.append(tuple(names))
    examples.append(Example(task, tuple(paths[:k]), paths[k][0]))
  return examples


def _enlarged(image: np.ndarray) -> np.ndarray:
  scale = max(1, DISPLAY_SIZE // max(image.shape[:2]))
  return np.repeat(np.repeat(image, scale, axis=0), scale, axis=1)


def from_folder(root: str, num_examples: int) -> list[Example]:
  """Examples from a folder of pairs; tasks with fewer than num_examples + 1 pairs are left out."""
  source = sources.FolderSource(root)
  examples = []
  for task in source.tasks:
    indices = list(source.pair_indices(task))
    if len(indices) <= num_examples:
      continue
    pairs = [source.pair_files(i)[:2] for i in indices[:num_examples + 1]]
    examples.append(Example(task, tuple(pairs[:num_examples]), pairs[num_examples][0]))
  return examples
