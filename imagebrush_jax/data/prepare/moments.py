"""Caches a built data set's latents: one pass of the frozen encoder over every stored pair.

    summary = write(data_dir, "sd_vae.safetensors")  # build_data --autoencoder FILE runs this

Each pair's before and after tile, read as training reads it (sources.TfdsSource, then the
centred, unflipped crop: latent_cache.py says why only that one), is encoded in float32, and the
posterior's moments are stored in `dtype` beside the pixel shards, shard by shard (each written
to a temporary name, then renamed), then latents.json last. An interrupted pass is finished by
running it again (its finished shards are kept); moments of another autoencoder file are
refused, naming both files.
"""
from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

from imagebrush_jax.converters import autoencoder_params
from imagebrush_jax.core import grid as grid_lib
from imagebrush_jax.core import latent
from imagebrush_jax.data import augment
from imagebrush_jax.data import latent_cache
from imagebrush_jax.data import sources
from imagebrush_jax.data import tfds_format
from imagebrush_jax.infra import files
from imagebrush_jax.models import autoencoder as ae
from imagebrush_jax.models import runtime as runtime_lib

PARTIAL_FILE = "latents.partial.json"  # an unfinished pass: which file and dtype it writes
_RECORD_OPTIONS = "group_size:1"


def _summary(data_dir: str, meta: dict[str, Any], seconds: float) -> dict[str, Any]:
  pairs = sum(sum(v) for v in meta["splits"].values())
  nbytes = sum(os.path.getsize(os.path.join(data_dir, n)) for n in os.listdir(data_dir)
               if n.startswith(latent_cache.NAME + "-"))
  return {"autoencoder": meta["autoencoder"], "autoencoder_sha256": meta["sha256"],
          "moments_dtype": meta["dtype"], "moments_shape": meta["shape"], "moments_pairs": pairs,
          "moments_bytes": nbytes, "moments_seconds": round(seconds, 3)}


def _encoder(autoencoder: str):
  """(jitted uint8 tiles [N, T, T, 3] -> float32 moments [N, t, t, 2C], latent channels, f)."""
  import jax  # pylint: disable=g-import-not-at-top
  params, arch = autoencoder_params.load(autoencoder)
  space = latent.LatentSpace(model=ae.build(arch, runtime_lib.Runtime(dtype="float32")),
                             params_path=autoencoder, scaling_factor=1.0, shift_factor=0.0,
                             sample_posterior=False)
  params = jax.device_put(params)
  fn = jax.jit(lambda p, x: space.moments(p, grid_lib.pixels_to_unit(x)))
  return (lambda tiles: np.asarray(fn(params, tiles))), arch.latent_channels, \
      arch.downsample_factor


def _check_partial(data_dir: str, autoencoder: str, sha: str, dtype: str) -> None:
  """Keeps the shards of an interrupted pass of the same file and dtype; removes another's."""
  path = os.path.join(data_dir, PARTIAL_FILE)
  mine = {"autoencoder": autoencoder, "sha256": sha, "dtype": dtype}
  if os.path.exists(path):
    stored = files.read_json_object(path)
    if (stored.get("sha256"), stored.get("dtype")) == (sha, dtype):
      return
    for name in os.listdir(data_dir):  # never finished, so nothing trains from them
      if name.startswith(latent_cache.NAME + "-"):
        os.remove(os.path.join(data_dir, name))
  files.write_text_atomic(path, latent_cache.meta_json(mine))


def write(data_dir: str, autoencoder: str, *, dtype: str = "bfloat16", batch_pairs: int = 8,
          progress: bool = False) -> dict[str, Any]:
  """Caches the moments of `autoencoder` (a converted or trained autoencoder file) for the data
  set in `data_dir`; returns the summary (moments_* keys). A no-op where they are cached."""
  start = time.time()
  if dtype not in latent_cache.DTYPES:
    raise ValueError(f"--moments_dtype must be one of {', '.join(latent_cache.DTYPES)}, got "
                     f"{dtype!r}")
  if not tfds_format.is_built_dir(data_dir):
    raise FileNotFoundError(f"{data_dir} is not a data set written by imagebrush_jax.build_data")
  if not os.path.isfile(autoencoder):
    raise FileNotFoundError(f"--autoencoder {autoencoder}: no such file")
  sha = latent_cache.sha256_file(autoencoder)
  meta = latent_cache.read_meta(data_dir)
  if meta is not None:
    if (meta["sha256"], meta["dtype"]) != (sha, dtype):
      raise ValueError(f"{data_dir} already caches the {meta['dtype']} moments of "
                       f"{meta['autoencoder']} (sha256 {meta['sha256'][:12]}), not the {dtype} "
                       f"moments of --autoencoder {autoencoder} (sha256 {sha[:12]}); build "
                       f"another data set folder for it")
    return _summary(data_dir, meta, time.time() - start)

  build = files.read_json_object(os.path.join(data_dir, "build.json"))
  tile, image_size = int(build["options"]["tile_size"]), int(build["image_size"])
  spec = augment.TileSpec(tile, image_size, build["options"]["resize_method"])
  encode, channels, factor = _encoder(autoencoder)
  if tile % factor:
    raise ValueError(f"{data_dir} holds {tile}-pixel tiles, not divisible by the downsample "
                     f"factor {factor} of --autoencoder {autoencoder}")
  _check_partial(data_dir, autoencoder, sha, dtype)
  source = sources.TfdsSource(data_dir)
  lengths = _shard_lengths(source)
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  out_dtype = latent_cache.numpy_dtype(dtype)
  total = sum(sum(v) for v in lengths.values())
  with tqdm(total=total, unit="pair", desc="moments", disable=not progress) as bar:
    index = 0  # the source's index: the train split's records, then the held-out split's
    for split, shard_lengths in lengths.items():
      for i, count in enumerate(shard_lengths):
        path = latent_cache.shard_path(data_dir, split, i, len(shard_lengths))
        if os.path.exists(path):
          index += count
          bar.update(count)
          continue
        writer = array_record_module.ArrayRecordWriter(path + ".tmp", _RECORD_OPTIONS)
        try:
          for first in range(index, index + count, batch_pairs):
            ids = range(first, min(first + batch_pairs, index + count))
            tiles = np.stack([spec.crop(spec.render(img)) for k in ids
                              for img in (source[k].before, source[k].after)])
            padded = np.concatenate([tiles, np.repeat(tiles[-1:], 2 * batch_pairs - len(tiles),
                                                      axis=0)])  # one compiled shape
            moments = encode(padded)[:len(tiles)].astype(out_dtype)
            for j in range(len(ids)):
              writer.write(np.ascontiguousarray(moments[2 * j:2 * j + 2]).tobytes())
            bar.update(len(ids))
        finally:
          writer.close()
        os.replace(path + ".tmp", path)
        index += count
  t = tile // factor
  meta = {"autoencoder": autoencoder, "sha256": sha, "dtype": dtype,
          "shape": [2, t, t, 2 * channels], "tile_size": tile, "image_size": image_size,
          "crop": "centred, unflipped", "compute_dtype": "float32", "splits": lengths}
  files.write_text_atomic(os.path.join(data_dir, latent_cache.META_FILE),
                          latent_cache.meta_json(meta))
  os.remove(os.path.join(data_dir, PARTIAL_FILE))
  return _summary(data_dir, meta, time.time() - start)


def _shard_lengths(source: sources.TfdsSource) -> dict[str, list[int]]:
  """{split: its pixel shards' lengths}, in the source's index order."""
  info = source._builder().info  # pylint: disable=protected-access
  return {s: [int(n) for n in info.splits[s].shard_lengths]
          for s in tfds_format.BUILT_SPLITS if s in info.splits}
