"""TFDS builder `image_brush_pairs`: edit pairs as array_record shards, without TensorFlow.

Two builder configs: `folder` (a FolderSource as is) and `synthetic` (the first
config.data.tfds.synthetic_pairs synthetic pairs of every train and held-out task). A given
config.data.folder.root writes `folder`; without one, config.data.tfds.name must name
`image_brush_pairs/synthetic`. Images are
stored as raw uint8 tensors (zlib-compressed): tfds.features.Image would need TensorFlow to
encode. Examples are written unshuffled, grouped by task, and the metadata records each task's
index range, so TfdsSource finds a task's pairs without reading every record.

    python -m imagebrush_jax.data.tfds_builder --config configs/default.py \
        --config.data.folder.root=/data/pairs --config.data.tfds.dir=/data/tfds

Its last stdout line is the training flags that read what it wrote.
"""
import inspect
from typing import Sequence

from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from imagebrush_jax.data import options as options_lib
from imagebrush_jax.data import sources
from imagebrush_jax.data import tfds_format

NAME = tfds_format.NAME


class ImageBrushPairs(tfds.core.GeneratorBasedBuilder):
  """ImageBrush edit pairs: before, after, task, optional box."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = [
      tfds.core.BuilderConfig(name="folder", description="Pairs read from a folder source."),
      tfds.core.BuilderConfig(name="synthetic",
                              description="A fixed number of synthetic pairs per task."),
  ]

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    """This file. TFDS 4.9.10's own lookup, for builders defined in a package, needs the
    `importlib_resources` backport even on Python >= 3.9 (tensorflow/datasets#11212)."""
    return epath.Path(inspect.getfile(cls))

  def __init__(self, *, pairs: sources.PairSource | None = None,
               pairs_per_task: int | None = None, **kwargs):
    """`pairs` (and how many per task, None = all) is only needed to write the data set."""
    self._pairs = pairs
    self._pairs_per_task = pairs_per_task
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    # When reading, the task names come back from the data set's own label file.
    names = list(self._pairs.tasks) if self._pairs is not None else None
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__.splitlines()[0],
        features=tfds_format.features(names),
        metadata=tfds.core.MetadataDict(),
        disable_shuffling=True,  # keep tasks in contiguous index ranges
    )

  def _plan(self) -> list[tuple[str, Sequence[int]]]:
    if self._pairs is None:
      raise ValueError(f"{NAME}: writing needs `pairs`; use build(options) or the CLI")
    plan = []
    for task in self._pairs.tasks:
      indices = self._pairs.pair_indices(task)
      if self._pairs_per_task is not None:
        indices = indices[:self._pairs_per_task]
      plan.append((task, indices))
    return plan

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    plan = self._plan()
    ranges, ids, start = {}, [], 0
    for task, indices in plan:
      ranges[task] = [start, start + len(indices)]
      ids += [self._pairs.pair_id(i) for i in indices]
      start += len(indices)
    self.info.metadata[tfds_format.RANGES_KEY] = {"train": ranges}
    self.info.metadata[tfds_format.IDS_KEY] = {"train": ids}
    return {"train": self._generate_examples(plan)}

  def _generate_examples(self, plan):
    for task, indices in plan:
      for index in indices:
        pair = self._pairs[index]
        yield f"{task}/{pair.pair_id}", {
            "before": pair.before,
            "after": pair.after,
            "task": task,
            "pair_id": pair.pair_id,
            "box": pair.box if pair.box is not None else np.array([0, 0, 1, 1], np.float32),
            "has_box": pair.box is not None,
        }


def config_to_write(opts: options_lib.DataOptions) -> str:
  """'folder' when config.data.folder.root is given, else 'synthetic' (named by tfds_name)."""
  if opts.folder_root:
    return "folder"
  if opts.tfds_name == f"{NAME}/synthetic":
    return "synthetic"
  raise ValueError(f"set config.data.folder.root to write your pairs as {NAME}/folder, or "
                   f"config.data.tfds.name={NAME}/synthetic to write synthetic pairs "
                   f"(config.data.tfds.name is {opts.tfds_name!r})")


def make_builder(opts: options_lib.DataOptions) -> ImageBrushPairs:
  """A builder that writes config.data.folder.root, or else the synthetic pairs."""
  config_name = config_to_write(opts)
  if config_name == "folder":
    pairs = sources.FolderSource(opts.folder_root, check_images=True)
    per_task = None
  else:
    pairs = sources.SyntheticSource(opts.all_tasks, opts.scene, opts.render_size, opts.seed)
    per_task = opts.tfds_synthetic_pairs
  return ImageBrushPairs(config=config_name, data_dir=opts.tfds_dir, file_format="array_record",
                         pairs=pairs, pairs_per_task=per_task)


def build(opts: options_lib.DataOptions, *, overwrite: bool = False) -> str:
  """Writes the data set (kept if it exists, unless `overwrite`); returns its directory."""
  builder = make_builder(opts)
  mode = (tfds.download.GenerateMode.FORCE_REDOWNLOAD if overwrite
          else tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(download_mode=mode))
  return str(builder.data_dir)


def main(argv: Sequence[str]) -> None:
  del argv
  opts = options_lib.from_config(_CONFIG.value)
  path = build(opts, overwrite=_OVERWRITE.value)
  name = f"{NAME}/{config_to_write(opts)}"
  print(f"wrote {name} to {path}")
  data_dir = f" --config.data.tfds.dir={opts.tfds_dir}" if opts.tfds_dir else ""
  print(f"--config.data.source=tfds --config.data.tfds.name={name}{data_dir}")


if __name__ == "__main__":
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  from imagebrush_jax import cli  # pylint: disable=g-import-not-at-top

  _CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (.py).",
                                            lock_config=True)
  _OVERWRITE = flags.DEFINE_bool("overwrite", False, "Rewrite the data set if it exists.")
  flags.mark_flags_as_required(["config"])
  cli.run(main)
