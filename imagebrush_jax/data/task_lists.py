"""Task lists read from built data sets: an empty config.data.train_tasks trains on every task
of the train split of the data set(s) written by `python -m imagebrush_jax.build_data`, and an
empty config.data.heldout_tasks evaluates every task of their held-out split."""
from typing import Any

import ml_collections

from imagebrush_jax.data import tfds_format


def data_dirs(data: Any) -> list[str]:
  """The built data set folders a config reads: config.data.mixture's, else config.data.tfds.dir."""
  mixture = list(data.mixture or ())
  return [str(entry[0]) for entry in mixture] if mixture else [str(data.tfds.dir)]


def pairs_needed(data: Any) -> int:
  """Pairs a task needs to give one training grid and, with eval_fraction, one evaluation grid."""
  grid = int(data.num_examples) + 1
  return 2 * grid if float(data.eval_fraction) > 0 else grid


def resolve(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`config` with an empty data.train_tasks (and data.heldout_tasks) filled in from the built
  data sets' metadata; tasks with too few pairs for a grid are left out. Other configs as given."""
  data = config.data
  if tuple(data.train_tasks):
    return config
  dirs = data_dirs(data)
  if data.source != "tfds" or not all(tfds_format.is_built_dir(d) for d in dirs):
    raise ValueError(
        "config.data.train_tasks is empty: only data sets written by python -m "
        "imagebrush_jax.build_data (config.data.source=tfds with config.data.tfds.dir or "
        "config.data.mixture naming them) list their own tasks; name the tasks to train on")
  need = pairs_needed(data)
  heldout = tuple(data.heldout_tasks)
  train, found_heldout, owner = [], [], {}
  for path in dirs:
    counts = tfds_format.built_task_counts(path)
    for task in list(counts["train"]) + list(counts["heldout"]):
      if owner.setdefault(task, path) != path:
        raise ValueError(f"task {task!r} is in both {owner[task]} and {path}; tasks of a "
                         f"mixture must have distinct names")
    train += [t for t, n in counts["train"].items() if n >= need and t not in heldout]
    found_heldout += [t for t, n in counts["heldout"].items() if n >= need]
  if not train:
    why = "config.data.num_examples + 1" + (
        ", twice with config.data.eval_fraction > 0" if float(data.eval_fraction) > 0 else "")
    raise ValueError(f"config.data.train_tasks is empty and no task of the train split of "
                     f"{', '.join(dirs)} has the {need} pairs a task needs ({why})")
  resolved = config.copy_and_resolve_references()
  with resolved.unlocked():
    resolved.data.train_tasks = tuple(train)
    if not heldout:
      resolved.data.heldout_tasks = tuple(found_heldout)
  return resolved
