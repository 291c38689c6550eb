"""The layout of a data set folder, shared by its writer (data/build) and reader
(sources.TfdsSource).

DIR holds `image_brush_pairs-{train,heldout}.array_record-*` shards of TFDS records and TFDS's
metadata (so `tfds.builder_from_directory(DIR)` reads it too). Records are grouped by task, and
the metadata holds each task's index range and every record's pair id, so a reader finds a
task's pairs (and splits them) without reading any image.
"""
import json
import os
from typing import Any, Sequence

NAME = "image_brush_pairs"
RANGES_KEY = "task_ranges"
IDS_KEY = "pair_ids"  # every record's pair id, in record order: splits without reading images
BUILT_SPLITS = ("train", "heldout")  # in index order; their tasks are disjoint
INFO_FILE = "dataset_info.json"  # written last: its presence marks a finished data set
METADATA_FILE = "metadata.json"  # TFDS writes DatasetInfo.metadata here


def features(task_names: Sequence[str], image_format: str):
  """The records' features; images stored encoded as `image_format` ('jpeg' or 'png')."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top  (slow import)
  image = tfds.features.Image(shape=(None, None, 3), encoding_format=image_format)
  return tfds.features.FeaturesDict({
      "before": image,
      "after": image,
      "task": tfds.features.ClassLabel(names=list(task_names)),
      "pair_id": tfds.features.Text(),
      "box": tfds.features.Tensor(shape=(4,), dtype=np.float32),
      "has_box": tfds.features.Tensor(shape=(), dtype=np.bool_),
  })


def is_built_dir(path: str | None) -> bool:
  """Whether `path` is a finished data set folder."""
  return bool(path) and os.path.isfile(os.path.join(path, INFO_FILE))


def built_task_counts(path: str) -> dict[str, dict[str, int]]:
  """{split: {task: pairs}} of a data set folder, from its metadata alone (no TFDS import)."""
  meta_path = os.path.join(path, METADATA_FILE)
  try:
    with open(meta_path, encoding="utf-8") as f:
      ranges = json.load(f)[RANGES_KEY]
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise ValueError(f"{meta_path}: not the metadata of a data set written by "
                     f"imagebrush_jax.build_data ({e})") from None
  return {split: {task: stop - start for task, (start, stop) in ranges.get(split, {}).items()}
          for split in BUILT_SPLITS}


def task_ranges(info: Any, split: str, num_examples: int) -> dict[str, range]:
  """Each task's index range in `split`. Ranges are disjoint; records outside every range (a
  task left with too few pairs) are never read."""
  try:
    raw = info.metadata[RANGES_KEY][split]
  except (KeyError, TypeError):
    raise ValueError(f"{info.data_dir}: no {RANGES_KEY!r} metadata for split {split!r}; "
                     f"write the data set with python -m imagebrush_jax.build_data") from None
  ranges = {task: range(*bounds) for task, bounds in raw.items()}
  ordered = sorted(ranges.values(), key=lambda r: r.start)
  for a, b in zip(ordered, ordered[1:]):
    if a.stop > b.start:
      raise ValueError(f"{info.data_dir}: task ranges {raw} overlap")
  if ordered and (ordered[0].start < 0 or ordered[-1].stop > num_examples):
    raise ValueError(f"{info.data_dir}: task ranges {raw} exceed the {num_examples} records "
                     f"of split {split!r}")
  return ranges


def pair_ids(info: Any, split: str, num_examples: int) -> list[str]:
  """Every record's pair id in `split`."""
  try:
    ids = list(info.metadata[IDS_KEY][split])
  except (KeyError, TypeError):
    ids = None
  if ids is None or len(ids) != num_examples:
    raise ValueError(f"{info.data_dir}: the {IDS_KEY!r} metadata of split {split!r} does not "
                     f"list its {num_examples} records")
  return ids
