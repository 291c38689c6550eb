"""The layout of the `image_brush_pairs` TFDS data set, shared by its writer and its reader.

tfds_builder.py writes it; sources.TfdsSource reads it. Records are grouped by task, and the
metadata holds each task's index range and every record's pair id, so a reader finds a task's
pairs (and splits them) without reading any image.
"""
from typing import Any

NAME = "image_brush_pairs"
RANGES_KEY = "task_ranges"
IDS_KEY = "pair_ids"  # every record's pair id, in record order: splits without reading images


def task_ranges(info: Any, split: str, num_examples: int) -> dict[str, range]:
  """Each task's index range in `split`, from the metadata written by ImageBrushPairs."""
  try:
    raw = info.metadata[RANGES_KEY][split]
  except (KeyError, TypeError):
    raise ValueError(f"TFDS data set {info.full_name} has no {RANGES_KEY!r} metadata for "
                     f"split {split!r}; write it with imagebrush_jax.data.tfds_builder") from None
  ranges = {task: range(*bounds) for task, bounds in raw.items()}
  covered = sorted(i for r in ranges.values() for i in (r.start, r.stop))
  if covered[:1] != [0] or covered[-1:] != [num_examples]:
    raise ValueError(f"TFDS data set {info.full_name}: task ranges {raw} do not cover the "
                     f"{num_examples} examples of split {split!r}")
  return ranges


def pair_ids(info: Any, split: str) -> list[str] | None:
  """Every record's pair id in `split`, or None for a data set written without them."""
  try:
    return list(info.metadata[IDS_KEY][split])
  except (KeyError, TypeError):
    return None
