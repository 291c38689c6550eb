"""The layout of the `image_brush_pairs` TFDS data sets, shared by their writers and reader.

Two writers: tfds_builder.py (a TFDS builder, under TFDS's data_dir/name/config/version) and
data/build (a data set folder of its own: `DIR/dataset_info.json` next to the shards, with a
`train` and a `heldout` split of disjoint tasks). sources.TfdsSource reads both. Records are
grouped by task, and the metadata holds each task's index range and every record's pair id, so a
reader finds a task's pairs (and splits them) without reading any image.
"""
import json
import os
from typing import Any, Sequence

NAME = "image_brush_pairs"
RANGES_KEY = "task_ranges"
IDS_KEY = "pair_ids"  # every record's pair id, in record order: splits without reading images
BUILT_SPLITS = ("train", "heldout")  # the splits of a data/build folder, in index order
INFO_FILE = "dataset_info.json"
METADATA_FILE = "metadata.json"  # TFDS writes DatasetInfo.metadata here


def features(task_names: Sequence[str] | None, image_format: str | None = None):
  """The records' features. `image_format` 'jpeg' / 'png': images stored encoded (data/build);
  None: raw zlib-compressed uint8 tensors (tfds_builder, which encodes without TensorFlow)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top  (slow import)
  import numpy as np  # pylint: disable=g-import-not-at-top
  if image_format is None:
    image = tfds.features.Tensor(shape=(None, None, 3), dtype=np.uint8,
                                 encoding=tfds.features.Encoding.ZLIB)
  else:
    image = tfds.features.Image(shape=(None, None, 3), encoding_format=image_format)
  return tfds.features.FeaturesDict({
      "before": image,
      "after": image,
      "task": tfds.features.ClassLabel(names=None if task_names is None else list(task_names)),
      "pair_id": tfds.features.Text(),
      "box": tfds.features.Tensor(shape=(4,), dtype=np.float32),
      "has_box": tfds.features.Tensor(shape=(), dtype=np.bool_),
  })


def is_built_dir(path: str | None) -> bool:
  """Whether `path` is a finished data/build folder (its dataset_info.json is written last)."""
  return bool(path) and os.path.isfile(os.path.join(path, INFO_FILE))


def built_task_counts(path: str) -> dict[str, dict[str, int]]:
  """{split: {task: pairs}} of a data/build folder, from its metadata alone (no TFDS import)."""
  meta_path = os.path.join(path, METADATA_FILE)
  try:
    with open(meta_path, encoding="utf-8") as f:
      ranges = json.load(f)[RANGES_KEY]
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise ValueError(f"{meta_path}: not the metadata of a data set written by "
                     f"imagebrush_jax.data.build ({e})") from None
  return {split: {task: stop - start for task, (start, stop) in ranges.get(split, {}).items()}
          for split in BUILT_SPLITS}


def task_ranges(info: Any, split: str, num_examples: int) -> dict[str, range]:
  """Each task's index range in `split`, from the metadata its writer recorded. Ranges are
  disjoint; records outside every range (a task left with too few pairs) are never read."""
  try:
    raw = info.metadata[RANGES_KEY][split]
  except (KeyError, TypeError):
    raise ValueError(f"TFDS data set {info.full_name} has no {RANGES_KEY!r} metadata for "
                     f"split {split!r}; write it with imagebrush_jax.data.build") from None
  ranges = {task: range(*bounds) for task, bounds in raw.items()}
  ordered = sorted(ranges.values(), key=lambda r: r.start)
  for a, b in zip(ordered, ordered[1:]):
    if a.stop > b.start:
      raise ValueError(f"TFDS data set {info.full_name}: task ranges {raw} overlap")
  if ordered and (ordered[0].start < 0 or ordered[-1].stop > num_examples):
    raise ValueError(f"TFDS data set {info.full_name}: task ranges {raw} exceed the "
                     f"{num_examples} examples of split {split!r}")
  return ranges


def pair_ids(info: Any, split: str) -> list[str] | None:
  """Every record's pair id in `split`, or None for a data set written without them."""
  try:
    return list(info.metadata[IDS_KEY][split])
  except (KeyError, TypeError):
    return None
