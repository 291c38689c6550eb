"""Building and reading a data set at the paper's tile size, against what paper training needs.

    python benchmarks/build_data.py [--pairs 96] [--hosts 3] [--host_cores N]
        [--autoencoder random|FILE]

Writes `--pairs` 512-pixel JPEG pairs (rendered scenes: photo-like JPEG sizes, not noise) as an
InstructPix2Pix parquet shard, builds it with one worker at 256-pixel tiles (pairs built per
second per worker), then reads it with the training pipeline at 256-pixel tiles, in the main
process (grids per second per worker). Memory: the same shard and one with 4x the pairs are
built with --workers 2, each in a fresh process, and the peak resident memory of the largest
process doing the work is reported for both (`worker_rss_ratio_4x_pairs` near 1: a worker's memory
does not grow with the input). A paper-config step (batch 288 over `--hosts` hosts) at
1 s per step needs 288 / hosts grids per second per host; `read_headroom` = grids/s per worker x
the host's cores / that need, target >= 5. With --autoencoder (a converted file, or `random`:
random weights of SD's VAE), the built data set's moments are cached too (build_data
--autoencoder): seconds and bytes per pair with and without them, side by side. The last line
printed is one JSON object.
"""
import io
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from typing import Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=g-import-not-at-top,wrong-import-position
from absl import app
from absl import flags
import numpy as np
from PIL import Image

from configs import default
from configs import paper_256
from imagebrush_jax.data import options as options_lib
from imagebrush_jax.data import pipeline
from imagebrush_jax.data import scenes
from imagebrush_jax.data import task_lists
from imagebrush_jax.data import tasks as tasks_lib
from imagebrush_jax.data.prepare import moments
from imagebrush_jax.data.prepare import writer
# pylint: enable=g-import-not-at-top,wrong-import-position

TARGET_HEADROOM = 5.0
PAPER_BATCH = 288
SOURCE_SIZE = 512
TILE = 256

_PAIRS = flags.DEFINE_integer("pairs", 96, "Pairs built (12 per instruction).")
_BATCHES = flags.DEFINE_integer("batches", 12, "Training batches of 8 grids timed.")
_HOSTS = flags.DEFINE_integer("hosts", 3, "Hosts sharing batch 288 (the paper: 24 GPUs, 3x8).")
_CORES = flags.DEFINE_integer("host_cores", os.cpu_count() or 1, "Cores of a training host.")
_AUTOENCODER = flags.DEFINE_string("autoencoder", "", "Also cache the moments of this "
                                   "autoencoder file ('random': SD's VAE, random weights).")


def _jpeg(image: np.ndarray) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, format="JPEG", quality=95)
  return buf.getvalue()


def write_source(path: str, num_pairs: int) -> None:
  """num_pairs 512-pixel scene pairs (the 'invert' edit), 12 per instruction, as one shard."""
  import pyarrow as pa  # pylint: disable=g-import-not-at-top
  import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
  params = options_lib.from_config(default.get_config()).scene
  task = tasks_lib.get_task("invert")
  rng = np.random.default_rng(0)
  rows = []
  for i in range(num_pairs):
    before, after, _ = task.make_pair(scenes.sample_scene(rng, params), SOURCE_SIZE)
    rows.append((f"edit number {i // 12}", _jpeg(before), _jpeg(after)))
  image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
  pq.write_table(pa.table({
      "original_image": pa.array([{"bytes": b, "path": ""} for _, b, _ in rows], image),
      "edited_image": pa.array([{"bytes": a, "path": ""} for _, _, a in rows], image),
      "edit_prompt": [t for t, _, _ in rows]}), path, row_group_size=32)


def read_grids_per_s(data_dir: str, batches: int) -> float:
  """Grids/s of the training iterator over the built data set, in the main process."""
  config = paper_256.get_config()
  config.data.mixture = ()
  config.data.tfds.dir = data_dir
  config.data.num_workers = 0
  config.train.batch_size = 8
  config = task_lists.resolve(config)  # paper_256 trains on every task of the data set
  it = pipeline.make_train_iterator(config, process_index=0, process_count=1)
  next(it)  # opens the shards
  start = time.perf_counter()
  grids = sum(len(next(it)["grid"]) for _ in range(batches))
  return grids / (time.perf_counter() - start)


_MEASURE_WORKERS = """
import json, resource, sys
from imagebrush_jax.data.prepare import writer
writer.build(writer.BuildOptions(source="ip2p", input=sys.argv[1], output=sys.argv[2],
                                 tile_size=int(sys.argv[3]), workers=2))
print(max(resource.getrusage(who).ru_maxrss
          for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)))
"""


def peak_worker_rss_mib(input_dir: str, output: str) -> float:
  """Peak resident memory (MiB) of the largest process encoding or assembling `input_dir` with
  --workers 2 (a single unit or shard is done in the build's own process), measured in a fresh
  process so that no earlier build counts."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  proc = subprocess.run([sys.executable, "-c", _MEASURE_WORKERS, input_dir, output, str(TILE)],
                        cwd=root, capture_output=True, text=True, check=True)
  return int(proc.stdout.strip().splitlines()[-1]) / 1024.0  # ru_maxrss is in KiB on Linux


def _autoencoder_file(value: str, tmp: str) -> str:
  """--autoencoder as a file: `random` writes SD's VAE architecture with random weights."""
  if value != "random":
    return value
  import jax  # pylint: disable=g-import-not-at-top
  from imagebrush_jax.converters import autoencoder_params  # pylint: disable=g-import-not-at-top
  from imagebrush_jax.models import autoencoder as ae  # pylint: disable=g-import-not-at-top
  arch = ae.AutoencoderConfig()
  path = os.path.join(tmp, "sd_vae_random.safetensors")
  autoencoder_params.save(path, ae.init_params(ae.build(arch), jax.random.key(0)), arch,
                          source="random weights")
  return path


def cache_moments(data_dir: str, autoencoder: str, pairs: int, build_s: float) -> dict:
  """The moments pass over the built data set, against the build: seconds and bytes per pair."""
  pixel_bytes = sum(os.path.getsize(os.path.join(data_dir, n)) for n in os.listdir(data_dir)
                    if n.startswith("image_brush_pairs-"))
  start = time.perf_counter()
  summary = moments.write(data_dir, autoencoder)
  moments_s = time.perf_counter() - start
  print(f"moments: {pairs / moments_s:.2f} pairs/s ({summary['moments_bytes']} bytes)",
        flush=True)
  return {
      "build_s_per_pair": round(build_s / pairs, 5),
      "moments_s_per_pair": round(moments_s / pairs, 5),
      "moments_time_ratio": round(moments_s / build_s, 3),
      "bytes_per_pair": round(pixel_bytes / pairs, 1),
      "moments_bytes_per_pair": round(summary["moments_bytes"] / pairs, 1),
      "bytes_ratio_with_moments": round((pixel_bytes + summary["moments_bytes"]) / pixel_bytes, 3),
      "moments_dtype": summary["moments_dtype"], "moments_shape": summary["moments_shape"],
  }


def main(argv: Sequence[str]) -> None:
  del argv
  with tempfile.TemporaryDirectory() as tmp:
    os.makedirs(os.path.join(tmp, "in"))
    os.makedirs(os.path.join(tmp, "in_4x"))
    write_source(os.path.join(tmp, "in", "train-00000.parquet"), _PAIRS.value)
    out = os.path.join(tmp, "built")
    start = time.perf_counter()
    summary = writer.build(writer.BuildOptions(
        source="ip2p", input=os.path.join(tmp, "in"), output=out, tile_size=TILE, workers=1))
    build_s = time.perf_counter() - start
    build_rate = summary["pairs"] / build_s
    print(f"build: {build_rate:.1f} pairs/s with 1 worker ({summary['pairs']} pairs)", flush=True)
    read_rate = read_grids_per_s(out, _BATCHES.value)
    write_source(os.path.join(tmp, "in_4x", "train-00000.parquet"), 4 * _PAIRS.value)
    rss = peak_worker_rss_mib(os.path.join(tmp, "in"), os.path.join(tmp, "mem"))
    rss_4x = peak_worker_rss_mib(os.path.join(tmp, "in_4x"), os.path.join(tmp, "mem_4x"))
    cached = {}  # after the memory measurements: a child process starts with this one's peak
    if _AUTOENCODER.value:
      cached = cache_moments(out, _autoencoder_file(_AUTOENCODER.value, tmp), summary["pairs"],
                             build_s)
  print(f"read: {read_rate:.1f} grids/s per worker at {TILE}-pixel tiles", flush=True)
  print(f"peak worker memory: {rss:.0f} MiB ({_PAIRS.value} pairs), {rss_4x:.0f} MiB "
        f"({4 * _PAIRS.value} pairs)", flush=True)
  need = PAPER_BATCH / _HOSTS.value  # grids/s per host at 1 s per step
  headroom = read_rate * _CORES.value / need
  print(json.dumps({
      "benchmark": "build_data",
      "build_pairs_per_s_per_worker": round(build_rate, 2),
      "read_grids_per_s_per_worker": round(read_rate, 2),
      "need_grids_per_s_per_host": round(need, 1),
      "workers_needed_per_host": math.ceil(need / read_rate),
      "host_cores": _CORES.value,
      "read_headroom": round(headroom, 2),
      "target_headroom": TARGET_HEADROOM,
      "meets_target": headroom >= TARGET_HEADROOM,
      "tile_size": TILE,
      "source_size": SOURCE_SIZE,
      "stored_size": summary["image_size"],
      "peak_worker_rss_mib": round(rss, 1),
      "peak_worker_rss_mib_4x_pairs": round(rss_4x, 1),
      "worker_rss_ratio_4x_pairs": round(rss_4x / rss, 3),
      **({"cached_latents": cached} if cached else {}),
  }))


if __name__ == "__main__":
  app.run(main)
