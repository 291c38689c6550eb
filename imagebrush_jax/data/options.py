"""`config.data`, checked once and frozen into a small picklable dataclass.

Every error names the config key and the value it got, e.g.
"config.data.num_examples must be in [1, 8], got 9". The rest of the data package reads
DataOptions, never the ConfigDict, so worker processes receive plain values.
"""
import dataclasses
from typing import Any, Sequence

from imagebrush_jax.infra import config_checks as checks
from imagebrush_jax.infra import files
from imagebrush_jax.data import augment
from imagebrush_jax.data import latent_cache
from imagebrush_jax.data import scenes
from imagebrush_jax.data import tasks as tasks_lib
from imagebrush_jax.data import tfds_format

SOURCES = ("synthetic", "folder", "tfds")
RESIZE_METHODS = ("nearest", "bilinear", "bicubic", "lanczos", "box")
MAX_EXAMPLES = 8  # example rows that fit in one grid (paper, appendix)
MAX_OBJECTS = 8


@dataclasses.dataclass(frozen=True)
class DataOptions:
  """Validated `config.data` plus the two top-level values the pipeline needs."""
  seed: int
  batch_size: int  # global, over all hosts
  source: str
  tile_size: int
  num_examples: int
  train_tasks: tuple[str, ...]
  heldout_tasks: tuple[str, ...]
  scene: scenes.SceneParams
  folder_root: str
  folder_check_images: bool
  tfds_dir: str
  mixture: tuple[tuple[str, float], ...]  # (built data set folder, weight); () = one source
  eval_fraction: float
  resize_method: str
  crop_scale: float
  flip_prob: float
  box_prob: float
  num_workers: int
  prefetch_buffer: int
  read_threads: int
  eval_batch_size: int
  # Training reads the cached posterior moments of build_data --autoencoder (latent_cache.py),
  # which `autoencoder` (config.model.autoencoder.params) must have made; "" when off.
  cached_latents: bool = False
  autoencoder: str = ""

  @property
  def all_tasks(self) -> tuple[str, ...]:
    """The task_id vocabulary: train tasks, then held-out ones."""
    return self.train_tasks + self.heldout_tasks

  def choose_tasks(self, tasks: Sequence[str] | None) -> tuple[str, ...]:
    """`tasks` (default: all_tasks), each checked to be in the task_id vocabulary."""
    tasks = self.all_tasks if tasks is None else tuple(tasks)
    for i, task in enumerate(tasks):
      if task not in self.all_tasks:
        raise ValueError(f"tasks[{i}] = {task!r} is in neither config.data.train_tasks nor "
                         f"config.data.heldout_tasks, so it has no task_id")
    return tasks

  @property
  def crop_margin(self) -> int:
    """Pixels added on each side before the random crop (0 when crop_scale is 1)."""
    return augment.crop_margin(self.tile_size, self.crop_scale)

  @property
  def render_size(self) -> int:
    """Side of the square every image is rendered or resized to before cropping a tile."""
    return self.tile_size + 2 * self.crop_margin


def _get(cfg: Any, key: str) -> Any:
  """config.data[key]; a dotted key reads a sub-dict (e.g. 'folder.root')."""
  return checks.get(cfg, key, "config.data")


_int, _float, _choice, _strings, _pair = (checks.integer, checks.number, checks.choice,
                                          checks.strings, checks.pair)


def scene_params(data: Any) -> scenes.SceneParams:
  """config.data.synthetic: how the synthetic scenes are drawn."""
  d = _get(data, "synthetic")
  lo, hi = _pair(_get(d, "num_objects"), "config.data.synthetic.num_objects")
  lo = _int(lo, "config.data.synthetic.num_objects[0]", 1, MAX_OBJECTS)
  hi = _int(hi, "config.data.synthetic.num_objects[1]", lo, MAX_OBJECTS)
  margin = _float(_get(d, "largest_margin"), "config.data.synthetic.largest_margin", 1.0, 4.0)
  size_lo, size_hi = _pair(_get(d, "object_size"), "config.data.synthetic.object_size")
  size_lo = _float(size_lo, "config.data.synthetic.object_size[0]", 0.01, 1.0)
  size_hi = _float(size_hi, "config.data.synthetic.object_size[1]", 0.01, 1.0)
  if size_lo * margin > size_hi:
    raise ValueError(
        f"config.data.synthetic.object_size = {(size_lo, size_hi)} leaves no room for the "
        f"largest object "
        f"to be config.data.synthetic.largest_margin = {margin} times wider than the others: need "
        f"object_size[1] >= object_size[0] * largest_margin")
  return scenes.SceneParams(
      num_objects=(lo, hi),
      object_size=(size_lo, size_hi),
      largest_margin=margin,
      shapes=_strings(_get(d, "shapes"), "config.data.synthetic.shapes", choices=scenes.SHAPES,
                      allow_empty=False),
      backgrounds=_strings(_get(d, "backgrounds"), "config.data.synthetic.backgrounds",
                           choices=scenes.BACKGROUNDS, allow_empty=False),
      hollow_prob=_float(_get(d, "hollow_prob"), "config.data.synthetic.hollow_prob", 0.0, 1.0),
      stroke_width=_float(_get(d, "stroke_width"), "config.data.synthetic.stroke_width", 0.001,
                          0.5),
  )


def _check_local(key: str, path: str) -> None:
  """Training data is read from local disk: a bucket URL is refused, naming the key."""
  if files.is_remote(path):
    raise ValueError(
        f"{key}={path}: training data is read from local disk; array_record "
        f"shards and image folders cannot be read from object storage directly. Copy them "
        f"(gcloud storage cp -r {path} /data/...) or mount the bucket with gcsfuse, and give "
        f"the local path")


def _mixture(value: Any, source: str, tfds_dir: str) -> tuple[tuple[str, float], ...]:
  """config.data.mixture: (built data set folder, weight) pairs, read by the tfds source."""
  key = "config.data.mixture"
  if isinstance(value, str) or not isinstance(value, (tuple, list)):
    raise ValueError(f"{key} must be a tuple of (data set folder, weight), got {value!r}")
  if value and (source != "tfds" or tfds_dir):
    raise ValueError(f"{key} is read by config.data.source=tfds instead of "
                     f"config.data.tfds.dir; set the source to tfds and leave tfds.dir empty")
  entries = []
  for i, entry in enumerate(value):
    if (isinstance(entry, str) or not isinstance(entry, (tuple, list)) or len(entry) != 2
        or not isinstance(entry[0], str)):
      raise ValueError(f"{key}[{i}] must be (data set folder, weight), got {entry!r}")
    _check_local(f"{key}[{i}]", entry[0])
    weight = _float(entry[1], f"{key}[{i}] weight", 0.0, float("inf"))
    if weight <= 0:
      raise ValueError(f"{key}[{i}] weight must be positive, got {weight}")
    if not tfds_format.is_built_dir(entry[0]):
      raise FileNotFoundError(f"{key}[{i}] = {entry[0]!r} is not a data set written by "
                              f"python -m imagebrush_jax.build_data")
    entries.append((entry[0], weight))
  dirs = [e[0] for e in entries]
  if len(set(dirs)) != len(dirs):
    raise ValueError(f"{key} lists {next(d for d in dirs if dirs.count(d) > 1)!r} twice")
  return tuple(entries)


def as_options(config_or_options: Any) -> DataOptions:
  """DataOptions as given, or parsed from a config (tools and tests pass the ConfigDict)."""
  if isinstance(config_or_options, DataOptions):
    return config_or_options
  return from_config(config_or_options)


def from_config(config: Any) -> DataOptions:
  """Checks `config.data` (and config.seed, config.train.batch_size) and freezes it. The task
  lists are the resolved ones (task_lists.resolve, once, where a program starts: an empty
  config.data.train_tasks reads the tasks of a built data set)."""
  d = config.data
  if not tuple(_get(d, "train_tasks")):
    raise ValueError("config.data.train_tasks is empty: only data sets written by python -m "
                     "imagebrush_jax.build_data list their own tasks (the training programs "
                     "read them at start); name the tasks to train on")
  source = _choice(_get(d, "source"), "config.data.source", SOURCES)
  train = _strings(_get(d, "train_tasks"), "config.data.train_tasks", allow_empty=False)
  heldout = _strings(_get(d, "heldout_tasks"), "config.data.heldout_tasks")
  both = sorted(set(train) & set(heldout))
  if both:
    raise ValueError(f"config.data.heldout_tasks repeats train task {both[0]!r}; a held-out "
                     f"task must never be trained on")
  if source == "synthetic":
    for key, names in (("train_tasks", train), ("heldout_tasks", heldout)):
      for i, name in enumerate(names):
        if not tasks_lib.is_known(name):
          raise ValueError(f"config.data.{key}[{i}] = {name!r} is not a registered task or a "
                           f"composition 'a+b' of registered tasks; registered: "
                           f"{', '.join(tasks_lib.task_names())}")
  folder_root = str(_get(d, "folder.root"))
  if source == "folder" and not folder_root:
    raise ValueError("config.data.folder.root must name a folder when config.data.source is "
                     "'folder'")
  for key, path in (("folder.root", folder_root), ("tfds.dir", str(_get(d, "tfds.dir")))):
    _check_local(f"config.data.{key}", path)
  mixture = _mixture(d.mixture, source, str(_get(d, "tfds.dir")))
  if source == "tfds" and not mixture and not str(_get(d, "tfds.dir")):
    raise ValueError("config.data.tfds.dir must name a data set folder written by python -m "
                     "imagebrush_jax.build_data (or config.data.mixture several) when "
                     "config.data.source is 'tfds'")
  tile_size = _int(_get(d, "tile_size"), "config.data.tile_size", 4, 4096)
  crop_scale = _float(_get(d, "crop_scale"), "config.data.crop_scale", 1.0, 2.0)
  flip_prob = _float(_get(d, "flip_prob"), "config.data.flip_prob", 0.0, 1.0)
  cached = checks.boolean(_get(d, "cached_latents"), "config.data.cached_latents")
  autoencoder = ""
  if cached:
    model = config.get("model") or {}
    autoencoder = str(model.get("autoencoder", {}).get("params", "") or "")
    latent_cache.check_config(cached, source=source,
                              latent_factor=int(model.get("latent_factor", 1)),
                              autoencoder=autoencoder, train_tasks=train,
                              crop_margin=augment.crop_margin(tile_size, crop_scale),
                              flip_prob=flip_prob)
  return DataOptions(
      seed=_int(config.seed, "config.seed", 0, 2**32 - 1),
      batch_size=_int(config.train.batch_size, "config.train.batch_size", 1),
      source=source,
      tile_size=tile_size,
      num_examples=_int(_get(d, "num_examples"), "config.data.num_examples", 1, MAX_EXAMPLES),
      train_tasks=train,
      heldout_tasks=heldout,
      scene=scene_params(d),
      folder_root=folder_root,
      folder_check_images=bool(_get(d, "folder.check_images")),
      tfds_dir=str(_get(d, "tfds.dir")),
      mixture=mixture,
      eval_fraction=_float(_get(d, "eval_fraction"), "config.data.eval_fraction", 0.0, 0.9),
      resize_method=_choice(_get(d, "resize_method"), "config.data.resize_method",
                            RESIZE_METHODS),
      crop_scale=crop_scale,
      flip_prob=flip_prob,
      box_prob=_float(_get(d, "box_prob"), "config.data.box_prob", 0.0, 1.0),
      num_workers=_int(_get(d, "num_workers"), "config.data.num_workers", 0),
      prefetch_buffer=_int(_get(d, "prefetch_buffer"), "config.data.prefetch_buffer", 1),
      read_threads=_int(_get(d, "read_threads"), "config.data.read_threads", 1),
      eval_batch_size=_int(_get(d, "eval_batch_size"), "config.data.eval_batch_size", 1),
      cached_latents=cached,
      autoencoder=autoencoder,
  )
