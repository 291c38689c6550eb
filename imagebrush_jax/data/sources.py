"""Edit-pair sources behind one random-access interface.

A source maps an index to a Pair (before, after, task, optional box) and lists, per task, the
indices of that task's pairs, so that an episode can draw several distinct pairs of one task:

  * SyntheticSource: procedural scenes, an effectively infinite index space;
  * FolderSource: ROOT/<task>/<pair_id>_before.<ext> and <pair_id>_after.<ext> (png, jpg, jpeg,
    webp), plus optional ROOT/<task>/boxes.json {"<pair_id>": [x0, y0, x1, y1]} in [0, 1];
  * TfdsSource: a data set folder written by `python -m imagebrush_jax.build_data` (array_record
    shards of TFDS records, read with TFDS's data source: no TensorFlow needed);
  * MixtureSource: several of those as one (config.data.mixture).

A TfdsSource opened with `moments=True` (config.data.cached_latents) also gives each pair's
cached posterior moments, `moments(index)` [2, t, t, 2C] (data/latent_cache.py).

Sources are picklable, so grain can hand them to worker processes.
"""
import bisect
import dataclasses
import logging
import os
import re
from typing import Protocol, Sequence

import numpy as np
from PIL import Image

from imagebrush_jax.infra import files
from imagebrush_jax.data import image_decode
from imagebrush_jax.data import latent_cache
from imagebrush_jax.data import scenes
from imagebrush_jax.data import splits
from imagebrush_jax.data import tasks as tasks_lib
from imagebrush_jax.data import tfds_format

IMAGE_EXTENSIONS = ("png", "jpg", "jpeg", "webp")
BOXES_FILE = "boxes.json"
# Synthetic index space: effectively infinite (an epoch-less stream never wraps around).
SYNTHETIC_INDICES = 2**62
# Scenes tried per synthetic pair before giving up on a task that leaves them unchanged.
MAX_SCENE_ATTEMPTS = 64
_SCENE_STREAM = 1  # tags the synthetic scenes' random stream, apart from episode sampling's
_PAIR_FILE = re.compile(r"^(?P<pair_id>.+)_(?P<role>before|after)\.(?P<ext>[A-Za-z]+)$")


@dataclasses.dataclass(frozen=True)
class Pair:
  """One edit example. `box` is float32 [x0, y0, x1, y1] in [0, 1] of `before`, or None."""
  before: np.ndarray  # uint8 [H, W, 3]
  after: np.ndarray  # uint8 [H', W', 3] (a rot90 of a non-square image swaps H and W)
  task: str
  pair_id: str
  box: np.ndarray | None = None


class PairSource(Protocol):
  """Random access to pairs, grouped by task."""
  tasks: tuple[str, ...]

  def __len__(self) -> int:
    ...

  def __getitem__(self, index: int) -> Pair:
    ...

  def pair_indices(self, task: str) -> Sequence[int]:
    """Indices (into this source) of the pairs of `task`."""
    ...

  def pair_id(self, index: int) -> str:
    """The id of pair `index` within its task, without decoding its images."""
    ...


def _task_error(task: str, source: str, tasks: Sequence[str]) -> KeyError:
  return KeyError(f"task {task!r} is not in {source}; it has: {', '.join(tasks)}")


# ---------------------------------------------------------------- synthetic


class SyntheticSource:
  """Pair i shows task tasks[i % len(tasks)] on a scene drawn from (seed, i)."""

  def __init__(self, tasks: Sequence[str], params: scenes.SceneParams, tile_size: int,
               seed: int):
    self.tasks = tuple(tasks)
    if not self.tasks:
      raise ValueError("SyntheticSource needs at least one task")
    self._resolved = {name: tasks_lib.get_task(name) for name in self.tasks}
    self.params, self.tile_size, self.seed = params, tile_size, seed
    self._len = SYNTHETIC_INDICES - SYNTHETIC_INDICES % len(self.tasks)

  def __getstate__(self):  # compositions are closures: resolve them again after unpickling
    state = dict(self.__dict__)
    del state["_resolved"]
    return state

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._resolved = {name: tasks_lib.get_task(name) for name in self.tasks}

  def __len__(self) -> int:
    return self._len

  def pair_indices(self, task: str) -> Sequence[int]:
    if task not in self._resolved:
      raise _task_error(task, "the synthetic source", self.tasks)
    return range(self.tasks.index(task), self._len, len(self.tasks))

  def pair_id(self, index: int) -> str:
    return str(int(index))

  def __getitem__(self, index: int) -> Pair:
    index = int(index)
    _, (before, after, box) = self._draw(index)
    return Pair(before, after, self.tasks[index % len(self.tasks)], str(index), box)

  def scene(self, index: int) -> scenes.Scene:
    """The scene pair `index` shows (its before image), so that any other task's output on the
    same scene can be rendered (evaluation's candidate outputs)."""
    return self._draw(int(index))[0]

  def _draw(self, index: int):
    """(scene, (before, after, box)) of pair `index`: the first scene drawn from (seed, index)
    that its task changes."""
    name = self.tasks[index % len(self.tasks)]
    task = self._resolved[name]
    for attempt in range(MAX_SCENE_ATTEMPTS):
      rng = np.random.default_rng([self.seed, _SCENE_STREAM, index, attempt])
      scene = scenes.sample_scene(rng, self.params)
      before, after, box = task.make_pair(scene, self.tile_size)
      if not np.array_equal(before, after):
        return scene, (before, after, box)
    raise ValueError(
        f"task {name!r} left {MAX_SCENE_ATTEMPTS} scenes in a row unchanged (pair {index}); it "
        f"is the identity on scenes drawn with config.data.synthetic.num_objects = "
        f"{self.params.num_objects}, hollow_prob = {self.params.hollow_prob}")


# ---------------------------------------------------------------- folder


def _check_header(path: str) -> None:
  try:
    with Image.open(path) as image:
      image.size  # pylint: disable=pointless-statement
  except Exception as e:
    raise ValueError(f"cannot read image {path}: {e}") from e


def _read_boxes(path: str, pair_ids: Sequence[str]) -> dict[str, np.ndarray]:
  raw = files.read_json_object(path)  # {"<pair_id>": [x0, y0, x1, y1]}
  boxes = {}
  for pair_id, box in raw.items():
    if pair_id not in pair_ids:
      raise ValueError(f"{path}: box for pair {pair_id!r}, which has no "
                       f"{pair_id}_before / {pair_id}_after images")
    ok = (isinstance(box, list) and len(box) == 4 and
          all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in box))
    if not ok or not (0 <= box[0] < box[2] <= 1 and 0 <= box[1] < box[3] <= 1):
      raise ValueError(f"{path}: box of pair {pair_id!r} must be [x0, y0, x1, y1] with "
                       f"0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1, got {box!r}")
    boxes[pair_id] = np.array(box, np.float32)
  return boxes


def _index_task(task_dir: str, task: str, check_images: bool) -> list[tuple]:
  """[(pair_id, before_path, after_path, box)] of one task folder, sorted by pair id."""
  found: dict[str, dict[str, str]] = {}
  for name in sorted(os.listdir(task_dir)):
    path = os.path.join(task_dir, name)
    if name.startswith(".") or name == BOXES_FILE:
      continue
    match = _PAIR_FILE.match(name)
    if os.path.isdir(path) or not match or match["ext"].lower() not in IMAGE_EXTENSIONS:
      raise ValueError(f"{path}: not a pair image; expected <pair_id>_before.<ext> or "
                       f"<pair_id>_after.<ext> with ext one of {', '.join(IMAGE_EXTENSIONS)}")
    roles = found.setdefault(match["pair_id"], {})
    if match["role"] in roles:
      raise ValueError(f"{path}: pair {match['pair_id']!r} already has a {match['role']} image "
                       f"({roles[match['role']]})")
    roles[match["role"]] = path
  pairs = []
  for pair_id, roles in found.items():
    for have, missing in (("before", "after"), ("after", "before")):
      if missing not in roles:
        raise ValueError(f"{roles[have]}: unpaired; no {pair_id}_{missing}.<ext> next to it")
    if check_images:
      _check_header(roles["before"])
      _check_header(roles["after"])
    pairs.append((pair_id, roles["before"], roles["after"]))
  if len(pairs) < 2:
    raise ValueError(f"task {task!r} ({task_dir}) has {len(pairs)} pair(s); a task needs at "
                     f"least two, one to show and one to ask about")
  boxes_path = os.path.join(task_dir, BOXES_FILE)
  boxes = _read_boxes(boxes_path, found) if os.path.exists(boxes_path) else {}
  return [(pair_id, b, a, boxes.get(pair_id)) for pair_id, b, a in pairs]


class FolderSource:
  """Pairs stored as image files, one sub-folder per task (see the module docstring)."""

  def __init__(self, root: str, *, check_images: bool = True):
    if not os.path.isdir(root):
      raise FileNotFoundError(f"folder source root {root!r} is not a directory")
    self.root = root
    task_dirs = sorted(n for n in os.listdir(root)
                       if not n.startswith(".") and os.path.isdir(os.path.join(root, n)))
    if not task_dirs:
      raise ValueError(f"folder source root {root!r} has no task sub-folders "
                       f"(<root>/<task>/<pair_id>_before.<ext>)")
    self.tasks = tuple(task_dirs)
    self._pairs: list[tuple] = []  # (task, pair_id, before_path, after_path, box)
    self._by_task: dict[str, range] = {}
    for task in self.tasks:
      start = len(self._pairs)
      self._pairs += [(task,) + p for p in _index_task(os.path.join(root, task), task,
                                                        check_images)]
      self._by_task[task] = range(start, len(self._pairs))

  def __len__(self) -> int:
    return len(self._pairs)

  def pair_indices(self, task: str) -> Sequence[int]:
    if task not in self._by_task:
      raise _task_error(task, f"folder {self.root}", self.tasks)
    return self._by_task[task]

  def pair_id(self, index: int) -> str:
    return self._pairs[index][1]

  def pair_files(self, index: int) -> tuple[str, str, np.ndarray | None]:
    """(before file, after file, box) of pair `index`, without reading the images."""
    return self._pairs[index][2:]

  def __getitem__(self, index: int) -> Pair:
    task, pair_id, before, after, box = self._pairs[index]
    return Pair(image_decode.load_rgb(before), image_decode.load_rgb(after), task, pair_id, box)


# ---------------------------------------------------------------- TFDS


class _NoDecoderNotice(logging.Filter):
  """Drops TFDS's advice to install OpenCV for decoding images (PIL decodes them here)."""

  def filter(self, record: logging.LogRecord) -> bool:
    return "OpenCV is not installed" not in record.getMessage()


def _quiet_decoder_notice() -> None:
  absl_logger = logging.getLogger("absl")
  if not any(isinstance(f, _NoDecoderNotice) for f in absl_logger.filters):
    absl_logger.addFilter(_NoDecoderNotice())


class TfdsSource:
  """Pairs of a data set folder written by `python -m imagebrush_jax.build_data` (array_record
  shards of TFDS records, read with TFDS's data source: no TensorFlow). Both its splits are
  held, the train split's records first; a task's pairs are in one split only. With `moments`,
  `moments(index)` reads the pair's cached posterior moments (build_data --autoencoder)."""

  def __init__(self, data_dir: str, *, moments: bool = False):
    self.data_dir = data_dir
    builder = self._builder()
    self.tasks = tuple(builder.info.features["task"].names)
    self._splits = tuple(s for s in tfds_format.BUILT_SPLITS if s in builder.info.splits)
    self._by_task: dict[str, range] = {}
    self._starts: list[int] = []  # first index of each split
    self._pair_ids: list[str] = []
    for split in self._splits:
      start, num = len(self._pair_ids), builder.info.splits[split].num_examples
      self._starts.append(start)
      for task, r in tfds_format.task_ranges(builder.info, split, num).items():
        self._by_task[task] = range(start + r.start, start + r.stop)
      self._pair_ids += tfds_format.pair_ids(builder.info, split, num)
    self._data = None
    self._moments = None
    if moments:
      self._moments = latent_cache.MomentReader(data_dir, self._splits)
      self._moments.check_lengths([builder.info.splits[s].num_examples for s in self._splits])

  def _builder(self):
    # Imported here: TFDS is slow to import and only this source needs it.
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    if not tfds_format.is_built_dir(self.data_dir):
      raise FileNotFoundError(
          f"config.data.tfds.dir={self.data_dir!r} is not a data set folder; write it first: "
          f"python -m imagebrush_jax.build_data --output DIR ... (docs/data.md)")
    try:
      return tfds.builder_from_directory(self.data_dir)
    except Exception as e:
      raise ValueError(f"cannot open the data set in {self.data_dir}: {e}") from e

  def _records(self):
    if self._data is None:
      _quiet_decoder_notice()
      builder = self._builder()
      self._data = [builder.as_data_source(split=s) for s in self._splits]
    return self._data

  def __getstate__(self):  # reopen the shards in each worker process
    state = dict(self.__dict__)
    state["_data"] = None
    return state

  def __len__(self) -> int:
    return len(self._pair_ids)

  def pair_indices(self, task: str) -> Sequence[int]:
    if task not in self._by_task:
      raise _task_error(task, f"the data set in {self.data_dir}", self.tasks)
    return self._by_task[task]

  def pair_id(self, index: int) -> str:
    return self._pair_ids[int(index)]

  def moments(self, index: int) -> np.ndarray:
    """The cached moments of pair `index`: [2 (before, after), t, t, 2C]."""
    if self._moments is None:
      raise ValueError(f"the data set in {self.data_dir} was opened without its cached latents")
    return self._moments.read(*self._locate(index))

  def _locate(self, index: int) -> tuple[int, int]:
    """(split part, index within it) of a global pair index."""
    index = int(index)
    part = bisect.bisect_right(self._starts, index) - 1
    return part, index - self._starts[part]

  def __getitem__(self, index: int) -> Pair:
    part, local = self._locate(index)
    record = self._records()[part][local]
    box = np.asarray(record["box"], np.float32) if record["has_box"] else None
    pair_id = record["pair_id"]
    return Pair(np.asarray(record["before"]), np.asarray(record["after"]),
                self.tasks[int(record["task"])],
                pair_id.decode() if isinstance(pair_id, bytes) else str(pair_id), box)


# ---------------------------------------------------------------- mixture


class MixtureSource:
  """Several sources as one: their index spaces end to end, their task names pooled (each
  name in one source only)."""

  def __init__(self, parts: Sequence[PairSource], names: Sequence[str]):
    self.sources, self.names = tuple(parts), tuple(names)
    self.starts, owner, start = [], {}, 0
    for source, name in zip(self.sources, self.names):
      self.starts.append(start)
      for task in source.tasks:
        if task in owner:
          raise ValueError(f"task {task!r} is in both {owner[task]} and {name}; tasks of a "
                           f"mixture must have distinct names")
        owner[task] = name
      start += len(source)
    self.tasks = tuple(owner)
    self._owner = {task: self.names.index(n) for task, n in owner.items()}

  def __len__(self) -> int:
    return sum(len(s) for s in self.sources)

  def _locate(self, index: int) -> tuple[int, int]:
    part = bisect.bisect_right(self.starts, int(index)) - 1
    return part, int(index) - self.starts[part]

  def pair_indices(self, task: str) -> Sequence[int]:
    if task not in self._owner:
      raise _task_error(task, f"the mixture of {', '.join(self.names)}", self.tasks)
    part = self._owner[task]
    local, start = self.sources[part].pair_indices(task), self.starts[part]
    if isinstance(local, range):
      return range(local.start + start, local.stop + start, local.step)
    return [start + i for i in local]

  def pair_id(self, index: int) -> str:
    part, local = self._locate(index)
    return self.sources[part].pair_id(local)

  def __getitem__(self, index: int) -> Pair:
    part, local = self._locate(index)
    return self.sources[part][local]

  def moments(self, index: int) -> np.ndarray:
    part, local = self._locate(index)
    return self.sources[part].moments(local)


# ---------------------------------------------------------------- from the config


def make_source(opts, *, seed: int, part: str = "all", moments: bool = False) -> PairSource:
  """The source named by config.data.source; `seed` seeds synthetic scenes; `moments` opens a
  tfds source's cached latents too (config.data.cached_latents, for training).

  part: 'train' | 'heldout' | 'all'. Stored pairs (folder, tfds) are split per task by
  config.data.eval_fraction (see splits.py): training reads 'train', evaluation 'heldout'.
  Synthetic evaluation draws fresh scenes from another seed instead, so every part is the same.
  """
  if opts.source == "synthetic":
    return SyntheticSource(opts.all_tasks, opts.scene, opts.render_size, seed)
  if opts.source == "folder":
    source = FolderSource(opts.folder_root, check_images=opts.folder_check_images)
  elif opts.source == "tfds" and opts.mixture:
    dirs = [path for path, _ in opts.mixture]
    source = MixtureSource([TfdsSource(path, moments=moments) for path in dirs], dirs)
  elif opts.source == "tfds":
    source = TfdsSource(opts.tfds_dir, moments=moments)
  else:
    raise ValueError(f"config.data.source must be synthetic, folder or tfds; got "
                     f"{opts.source!r}")
  if part == "all" or not opts.eval_fraction:
    return source
  return splits.SplitSource(source, fraction=opts.eval_fraction, part=part,
                            min_pairs=opts.num_examples + 1)


def check_tasks(source: PairSource, tasks: Sequence[str], num_pairs: int, key: str) -> None:
  """Every task in `tasks` exists in `source` with at least `num_pairs` pairs."""
  for i, task in enumerate(tasks):
    if task not in source.tasks:
      raise ValueError(f"{key}[{i}] = {task!r} is not in the data source; it has "
                       f"{', '.join(source.tasks)}")
    have = len(source.pair_indices(task))
    if have < num_pairs:
      raise ValueError(f"task {task!r} has {have} pairs, fewer than the {num_pairs} distinct "
                       f"pairs a grid needs (config.data.num_examples + 1)")
