"""Cached latents: a built data set's posterior moments, stored beside its pixels.

`build_data --autoencoder FILE` (data/prepare/moments.py) encodes every pair's before and after
tile once with the frozen autoencoder and stores the posterior's moments (mean, then
log-variance, unscaled) per pair; training with config.data.cached_latents reads them instead of
running the encoder in every step (core/latent.py samples the latent from them).

  DIR/image_brush_moments-{split}.array_record-XXXXX-of-YYYYY  one record per pair, in the order
      of the pixel shards (same shard lengths): [2 (before, after), t, t, 2C] raw, little-endian
  DIR/latents.json  what made them: the autoencoder file and its sha256, the dtype, the shape,
      the tile geometry (written last: its presence marks finished moments)

What is cached is the tile evaluation uses: the centred, unflipped tile_size crop of the stored
image. A training grid is exact from the cache only when it uses that tile, so a config whose
crop or flip would move a training task's tiles is refused where it is parsed (check_config),
and a data set of another tile geometry or autoencoder where it is opened (check_data_set).
The pixels stay: the prompt encoder reads them, and evaluation encodes them.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Sequence

import numpy as np

from imagebrush_jax.data import augment
from imagebrush_jax.data import tasks as tasks_lib
from imagebrush_jax.data import tfds_format

NAME = "image_brush_moments"
META_FILE = "latents.json"
DTYPES = ("bfloat16", "float32")


def shard_path(data_dir: str, split: str, index: int, count: int) -> str:
  return os.path.join(data_dir, f"{NAME}-{split}.array_record-{index:05d}-of-{count:05d}")


def numpy_dtype(name: str) -> np.dtype:
  if name == "bfloat16":
    import ml_dtypes  # pylint: disable=g-import-not-at-top
    return np.dtype(ml_dtypes.bfloat16)
  return np.dtype(name)


def sha256_file(path: str) -> str:
  """The sha256 of a file's bytes (what names the autoencoder that made a cache)."""
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 22), b""):
      digest.update(block)
  return digest.hexdigest()


def read_meta(data_dir: str) -> dict[str, Any] | None:
  """latents.json of a data set folder; None where it has no finished moments."""
  path = os.path.join(data_dir, META_FILE)
  if not os.path.isfile(path):
    return None
  try:
    with open(path, encoding="utf-8") as f:
      meta = json.load(f)
    for key in ("autoencoder", "sha256", "dtype", "shape", "tile_size", "image_size", "splits"):
      meta[key]  # pylint: disable=pointless-statement
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise ValueError(f"{path}: not the cached latents of build_data --autoencoder "
                     f"({type(e).__name__}: {e})") from None
  return meta


# ---------------------------------------------------------------------------- checks


def check_config(cached: bool, *, source: str, latent_factor: int, autoencoder: str,
                 train_tasks: Sequence[str], crop_margin: int, flip_prob: float) -> None:
  """Refuses, naming the keys, a config that cannot train from cached moments exactly: not a
  built data set, a pixel-space model, no autoencoder file, or a crop or flip that would move
  some training task's tiles away from the cached (centred, unflipped) one."""
  if not cached:
    return
  key = "config.data.cached_latents"
  if source != "tfds":
    raise ValueError(f"{key} = True reads moments stored by build_data --autoencoder: it needs "
                     f"config.data.source = 'tfds', not {source!r}")
  if latent_factor <= 1:
    raise ValueError(f"{key} = True needs a latent-space model; config.model.latent_factor = "
                     f"{latent_factor}")
  if not autoencoder:
    raise ValueError(f"{key} = True needs config.model.autoencoder.params: the file that made "
                     f"the data set's moments")
  for task in train_tasks:
    flip_safe, crop = augment.policy(task)
    if crop == tasks_lib.CROP_ANY and crop_margin > 0:
      raise ValueError(f"{key} = True caches the centred tile, but task {task!r} is cropped at "
                       f"random with config.data.crop_scale > 1; set config.data.crop_scale=1.0")
    if flip_safe and flip_prob > 0:
      raise ValueError(f"{key} = True caches the unflipped tile, but task {task!r} is flipped "
                       f"with config.data.flip_prob = {flip_prob}; set "
                       f"config.data.flip_prob=0.0")


def check_data_set(data_dir: str, *, autoencoder: str, sha256: str, tile_size: int,
                   render_size: int) -> dict[str, Any]:
  """latents.json of `data_dir`, checked against the run: made by the same autoencoder file
  (by sha256) for the same tile geometry; each refusal is one line naming both sides."""
  meta = read_meta(data_dir)
  if meta is None:
    raise ValueError(f"config.data.cached_latents = True, but {data_dir} has no cached "
                     f"latents ({META_FILE}); build it with python -m imagebrush_jax.build_data "
                     f"... --autoencoder {autoencoder}")
  if meta["sha256"] != sha256:
    raise ValueError(f"config.model.autoencoder.params = {autoencoder} (sha256 {sha256[:12]}) "
                     f"is not the autoencoder whose moments {data_dir} caches: "
                     f"{meta['autoencoder']} (sha256 {meta['sha256'][:12]})")
  if (meta["tile_size"], meta["image_size"]) != (tile_size, render_size):
    raise ValueError(f"{data_dir} caches the centred {meta['tile_size']}-pixel tile of its "
                     f"{meta['image_size']}-pixel images; config.data.tile_size and "
                     f"config.data.crop_scale give {tile_size}-pixel tiles of {render_size}-pixel "
                     f"images: set them as the data set was built")
  return meta


# ---------------------------------------------------------------------------- reading


class MomentReader:
  """Random access to one data set's moments: (split index, record) -> [2, t, t, 2C]."""

  def __init__(self, data_dir: str, splits: Sequence[str]):
    meta = read_meta(data_dir)
    if meta is None:
      raise FileNotFoundError(f"{data_dir} has no cached latents ({META_FILE})")
    self.data_dir, self.splits = data_dir, tuple(splits)
    self.dtype, self.shape = meta["dtype"], tuple(meta["shape"])
    self._lengths = [sum(meta["splits"].get(s, [])) for s in self.splits]
    self._counts = [len(meta["splits"].get(s, [])) for s in self.splits]
    self._sources = None

  def __getstate__(self):  # reopen the shards in each worker process
    state = dict(self.__dict__)
    state["_sources"] = None
    return state

  def _open(self):
    from array_record.python import array_record_data_source  # pylint: disable=g-import-not-at-top
    self._sources = [
        array_record_data_source.ArrayRecordDataSource(
            [shard_path(self.data_dir, s, i, n) for i in range(n)]) if n else None
        for s, n in zip(self.splits, self._counts)]
    return self._sources

  def check_lengths(self, lengths: Sequence[int]) -> None:
    """The moments list as many pairs per split as the pixel shards."""
    for split, have, want in zip(self.splits, self._lengths, lengths):
      if have != want:
        raise ValueError(f"{os.path.join(self.data_dir, META_FILE)}: {have} moments in split "
                         f"{split!r}, but its pixel shards hold {want} pairs")

  def read(self, part: int, index: int) -> np.ndarray:
    sources = self._sources if self._sources is not None else self._open()
    raw = sources[part][index]
    return np.frombuffer(raw, numpy_dtype(self.dtype)).reshape(self.shape)


class MomentCells:
  """Episode -> its grid of moments [(K+1)t, 2t, 2C] (the pixel grid's layout, the query's true
  after in the target cell), read from `source.moments(index)`; refuses an episode whose tiles
  are not the cached ones (check_config keeps training from making one)."""

  def __init__(self, source: Any, margin: int):
    self.source, self.centred = source, augment.Augmentation((margin, margin), False)

  def __call__(self, episode: Any) -> np.ndarray:
    if episode.augmentation != self.centred:
      raise ValueError(f"grid {episode.index} of task {episode.task!r} is cropped at "
                       f"{episode.augmentation.offset} (flip {episode.augmentation.flip}); "
                       f"config.data.cached_latents holds the centred, unflipped tile only")
    rows = [np.concatenate(self.source.moments(i), axis=1) for i in episode.pair_indices]
    return np.concatenate(rows, axis=0)


def data_dirs(opts: Any) -> list[str]:
  """The built data set folders a tfds config reads (config.data.tfds.dir or the mixture)."""
  return [path for path, _ in opts.mixture] if opts.mixture else [opts.tfds_dir]


def check_opened(opts: Any) -> None:
  """At data open: every data set the run reads caches the moments of the run's autoencoder
  file for its tile geometry (the file hashed once here)."""
  if not opts.cached_latents:
    return
  if not os.path.isfile(opts.autoencoder):
    raise FileNotFoundError(f"config.model.autoencoder.params = {opts.autoencoder}: no such "
                            f"file (config.data.cached_latents checks it against the data set's "
                            f"moments)")
  sha = sha256_file(opts.autoencoder)
  for path in data_dirs(opts):
    check_data_set(path, autoencoder=opts.autoencoder, sha256=sha, tile_size=opts.tile_size,
                   render_size=opts.render_size)


def meta_json(meta: dict[str, Any]) -> str:
  return json.dumps(meta, indent=1)
