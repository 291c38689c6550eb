"""Work units of a build: the input split into pieces one worker encodes, and how each is read.

A unit is one input file's worth of pairs (a parquet shard, a clip, a task folder, ...), planned
once from the input (`plan_units`) and stored in the build's plan, so a resumed build reads the
same units. `read_unit` turns a unit into a stream of Pair (encoded bytes or decoded arrays) and
Skip events; a Skip with `drop_task` also withdraws that unit's pairs of the task (a clip that
breaks half way).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Iterator, Sequence

import numpy as np

from imagebrush_jax.infra import files
from imagebrush_jax.data.prepare import ip2p
from imagebrush_jax.data.prepare import video

SOURCES = ("ip2p", "video", "folder", "synthetic")
PROMPT_PAIRS_PER_UNIT = 256  # prompt-folder pairs encoded by one worker task
SYNTHETIC_PAIRS_PER_UNIT = 256


@dataclasses.dataclass(frozen=True)
class Unit:
  """One worker's share of the input. `items` is kind-specific and JSON-serialisable."""
  kind: str  # parquet | prompt | video | folder | synthetic
  name: str  # the file, folder or sequence, as errors name it
  items: Any
  expected_pairs: int  # for the progress bar (a clip's is estimated from its header)

  def to_json(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_json(cls, d: dict) -> "Unit":
    return cls(**d)


@dataclasses.dataclass(frozen=True)
class Pair:
  """One pair read from a unit; images as encoded bytes or uint8 arrays."""
  task: str
  pair_id: str
  before: bytes | np.ndarray
  after: bytes | np.ndarray
  box: Sequence[float] | None = None


@dataclasses.dataclass(frozen=True)
class Skip:
  """An input that gives no pair, and why; `drop_task` withdraws the unit's pairs of it."""
  where: str
  reason: str
  drop_task: str | None = None


@dataclasses.dataclass(frozen=True)
class SourceOptions:
  """What the readers need besides the units: column names, frame gap, synthetic scenes."""
  columns: ip2p.Columns = ip2p.Columns()
  frame_gap: int = 4
  davis_resolution: str | None = None
  synthetic_scene: Any = None  # scenes.SceneParams
  synthetic_size: int = 64
  seed: int = 0


# ---------------------------------------------------------------------------- planning


def plan_units(source: str, input_path: str, opts: SourceOptions, *,
               synthetic_tasks: Sequence[str] = (), pairs_per_task: int = 0
               ) -> tuple[list[str], list[Unit], list[Skip]]:
  """(task vocabulary, units, inputs skipped while indexing) of the input."""
  if source == "ip2p":
    return _plan_ip2p(input_path, opts.columns)
  if source == "video":
    return _plan_video(input_path, opts)
  if source == "folder":
    return _plan_folder(input_path)
  if source == "synthetic":
    return _plan_synthetic(synthetic_tasks, pairs_per_task)
  raise ValueError(f"--source must be one of {', '.join(SOURCES)}, got {source!r}")


def _plan_ip2p(path: str, columns: ip2p.Columns):
  refs, skips = ip2p.index(path, columns)
  tasks, singles = ip2p.group_by_task(refs)
  skips = [Skip(s.where, s.reason) for s in skips + singles]
  kept = sorted((r for pairs in tasks.values() for r in pairs), key=lambda r: (r.file, r.item))
  units: list[Unit] = []
  if kept and isinstance(kept[0].item, int):  # parquet: one unit per shard
    by_file: dict[str, list] = {}
    for r in kept:
      by_file.setdefault(r.file, []).append([r.item, r.task, r.pair_id])
    units = [Unit("parquet", f, rows, len(rows)) for f, rows in by_file.items()]
  else:  # prompt folders: runs of PROMPT_PAIRS_PER_UNIT pairs
    items = [[r.file, r.item, r.task, r.pair_id] for r in kept]
    for i in range(0, len(items), PROMPT_PAIRS_PER_UNIT):
      chunk = items[i:i + PROMPT_PAIRS_PER_UNIT]
      units.append(Unit("prompt", chunk[0][0], chunk, len(chunk)))
  return sorted(tasks), units, skips


def _clip_frames(path: str) -> int:
  """The frame count a clip's header states (0 when it states none or cannot be read)."""
  import av  # pylint: disable=g-import-not-at-top
  try:
    with files.open_read(path) as f, av.open(f) as container:
      return int(container.streams.video[0].frames) if container.streams.video else 0
  except Exception:  # pylint: disable=broad-except  # the read reports it, with the reason
    return 0


def _plan_video(path: str, opts: SourceOptions):
  units = []
  for seq in video.find_sequences(path, opts.davis_resolution):
    frames = len(seq.frames) or _clip_frames(seq.path)
    units.append(Unit("video", seq.name, [seq.path, list(seq.frames)],
                      len(video.pair_windows(frames, opts.frame_gap))))
  return [u.name for u in units], units, []


def _plan_folder(path: str):
  from imagebrush_jax.data import sources  # pylint: disable=g-import-not-at-top
  folder = sources.FolderSource(path, check_images=False)
  units = []
  for task in folder.tasks:
    items = []
    for i in folder.pair_indices(task):
      before, after, box = folder.pair_files(i)
      items.append([folder.pair_id(i), before, after,
                    None if box is None else [float(v) for v in box]])
    units.append(Unit("folder", task, items, len(items)))
  return list(folder.tasks), units, []


def _plan_synthetic(tasks: Sequence[str], pairs_per_task: int):
  if pairs_per_task < 2:
    raise ValueError(f"--pairs_per_task must be at least 2, got {pairs_per_task}")
  units = []
  for task in tasks:
    for start in range(0, pairs_per_task, SYNTHETIC_PAIRS_PER_UNIT):
      count = min(SYNTHETIC_PAIRS_PER_UNIT, pairs_per_task - start)
      units.append(Unit("synthetic", task, [start, count], count))
  return list(tasks), units, []


# ---------------------------------------------------------------------------- reading


def read_unit(unit: Unit, opts: SourceOptions) -> Iterator[Pair | Skip]:
  """The unit's pairs in a fixed order, with a Skip for each input that gives none."""
  yield from _READERS[unit.kind](unit, opts)


def _read_parquet(unit: Unit, opts: SourceOptions):
  rows = {int(row): (task, pair_id) for row, task, pair_id in unit.items}
  try:
    for row, before, after in ip2p.read_parquet(unit.name, list(rows), opts.columns):
      if before is None or after is None:
        yield Skip(f"{unit.name} row {row}", "no image bytes in "
                   f"{opts.columns.before if before is None else opts.columns.after!r}")
      else:
        yield Pair(*rows[row], before, after)
  except (ValueError, OSError) as e:  # the shard itself is unreadable: its rows are lost
    yield Skip(unit.name, " ".join(str(e).split()))


def _read_prompt(unit: Unit, opts: SourceOptions):
  del opts
  for folder, seed, task, pair_id in unit.items:
    try:
      before, after = ip2p.read_prompt_folder(folder, seed)
    except OSError as e:
      yield Skip(f"{folder} seed {seed}", " ".join(str(e).split()))
      continue
    yield Pair(task, pair_id, before, after)


def _read_video(unit: Unit, opts: SourceOptions):
  path, frames = unit.items
  seq = video.VideoSequence(unit.name, path, tuple(frames))
  try:
    for t, u, before, after in video.read_pairs(seq, opts.frame_gap):
      yield Pair(unit.name, f"{t:06d}-{u:06d}", before, after)
  except video.VideoError as e:
    yield Skip(path, str(e), drop_task=unit.name)


def _read_folder(unit: Unit, opts: SourceOptions):
  del opts
  for pair_id, before, after, box in unit.items:
    try:
      yield Pair(unit.name, pair_id, files.read_bytes(before), files.read_bytes(after), box)
    except OSError as e:
      yield Skip(f"{before} / {after}", " ".join(str(e).split()))


def _read_synthetic(unit: Unit, opts: SourceOptions):
  from imagebrush_jax.data import sources  # pylint: disable=g-import-not-at-top
  start, count = unit.items
  source = sources.SyntheticSource([unit.name], opts.synthetic_scene, opts.synthetic_size,
                                   opts.seed)
  for index in range(start, start + count):
    pair = source[index]
    yield Pair(unit.name, pair.pair_id, pair.before, pair.after,
               None if pair.box is None else [float(v) for v in pair.box])


_READERS = {"parquet": _read_parquet, "prompt": _read_prompt, "video": _read_video,
            "folder": _read_folder, "synthetic": _read_synthetic}
