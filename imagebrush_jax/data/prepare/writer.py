"""Writes a data set folder that `config.data.source = 'tfds'` trains from, in three resumable
passes over the planned work units (units.py):

  1. encode: each unit, in a worker process, is read, every image resized to the training render
     size and re-encoded (JPEG or PNG), and written as finished TFDS records to its own file in
     DIR/.build; a marker file next to it lists its (task, pair id)s and what it skipped;
  2. assemble: tasks are split into `train` and `heldout` by a hash of their name, and each output
     shard copies its records (grouped by task, in a fixed order) from the unit files;
  3. finish: errors.jsonl, build.json (the summary) and TFDS's metadata (dataset_info.json last:
     its presence marks a finished data set), then DIR/.build is removed.

A rerun after an interruption skips the units and shards already written; the output depends only
on the input and the options, not on the number of workers or on interruptions.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import io
import json
import multiprocessing
import os
import shutil
import time
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image

from imagebrush_jax.infra import files
from imagebrush_jax.data import augment
from imagebrush_jax.data import image_decode
from imagebrush_jax.data import tfds_format
from imagebrush_jax.data.prepare import units as units_lib

WORK_DIR = ".build"
PLAN_FILE = "plan.json"
SUMMARY_FILE = "build.json"
ERRORS_FILE = "errors.jsonl"
IMAGE_FORMATS = ("jpeg", "png")
TEMPLATE = "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}"
_RECORD_OPTIONS = "group_size:1"  # random access to single records, as TFDS data sources use


@dataclasses.dataclass(frozen=True)
class BuildOptions:
  """What to build: the input, the output folder and how images are stored."""
  source: str
  input: str
  output: str
  tile_size: int = 256
  crop_scale: float = 1.125
  resize_method: str = "bilinear"
  image_format: str = "jpeg"
  jpeg_quality: int = 95
  heldout_fraction: float = 0.0
  shard_pairs: int = 1024
  workers: int = 1
  read: units_lib.SourceOptions = units_lib.SourceOptions()
  synthetic_tasks: tuple[str, ...] = ()
  pairs_per_task: int = 0

  @property
  def image_size(self) -> int:
    """Side of the stored images: what the pipeline renders before cropping a tile."""
    return self.tile_size + 2 * augment.crop_margin(self.tile_size, self.crop_scale)

  def check(self) -> None:
    """One-line errors naming the flag."""
    if self.source not in units_lib.SOURCES:
      raise ValueError(f"--source must be one of {', '.join(units_lib.SOURCES)}, got "
                       f"{self.source!r}")
    if self.source != "synthetic" and not self.input:
      raise ValueError(f"--input is required for --source {self.source}")
    if not self.output:
      raise ValueError("--output is required")
    if files.is_remote(self.output):
      raise ValueError(f"--output {self.output}: write the data set to local disk (training "
                       f"reads it from there), then copy it where you like")
    checks = [("--tile_size", self.tile_size, 4, 4096), ("--shard_pairs", self.shard_pairs, 1,
               None), ("--workers", self.workers, 1, None), ("--jpeg_quality",
               self.jpeg_quality, 1, 100), ("--frame_gap", self.read.frame_gap, 1, None)]
    for flag, value, lo, hi in checks:
      if value < lo or (hi is not None and value > hi):
        raise ValueError(f"{flag} must be in [{lo}, {hi or 'inf'}], got {value}")
    if not 1.0 <= self.crop_scale <= 2.0:
      raise ValueError(f"--crop_scale must be in [1, 2], got {self.crop_scale}")
    if not 0.0 <= self.heldout_fraction < 1.0:
      raise ValueError(f"--heldout_fraction must be in [0, 1), got {self.heldout_fraction}")
    if self.image_format not in IMAGE_FORMATS:
      raise ValueError(f"--image_format must be one of {', '.join(IMAGE_FORMATS)}, got "
                       f"{self.image_format!r}")
    if self.resize_method not in augment.RESAMPLE:
      raise ValueError(f"--resize_method must be one of {', '.join(augment.RESAMPLE)}, got "
                       f"{self.resize_method!r}")

  def fingerprint(self) -> dict[str, Any]:
    """Everything the output depends on; a resumed build must match it."""
    d = dataclasses.asdict(self)
    for key in ("output", "workers"):
      del d[key]
    d["input"] = files.absolute(self.input) if self.input else ""
    return json.loads(json.dumps(d, default=str))


def usable_cpus() -> int:
  """The CPUs this process may run on (its affinity mask: a container's share, not the
  host's count), the default number of build workers."""
  try:
    return max(1, len(os.sched_getaffinity(0)))
  except (AttributeError, OSError):  # no affinity call on this platform
    return os.cpu_count() or 1


# ---------------------------------------------------------------------------- pass 1: encode

_WORKER: dict[str, Any] = {}  # per process: what encode_unit uses (set by _init_worker)


def _init_worker(vocabulary: Sequence[str], opts: BuildOptions) -> None:
  from tensorflow_datasets.core import example_serializer  # pylint: disable=g-import-not-at-top
  features = tfds_format.features(vocabulary, opts.image_format)
  _WORKER["features"] = features
  _WORKER["serializer"] = example_serializer.ExampleSerializer(features.get_serialized_info())
  _WORKER["opts"] = opts


def _encode_image(image: bytes | np.ndarray, opts: BuildOptions, name: str) -> bytes:
  """The stored encoding of one image: decoded as inference decodes it, resized to the stored
  size; `name` is what a decoding error names."""
  if isinstance(image, bytes):
    image = image_decode.decode_rgb(image, name)
  image = augment.resize(image, opts.image_size, opts.resize_method)
  if opts.image_format == "png":
    return files.png_bytes(image)
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, format="JPEG", quality=opts.jpeg_quality)
  return buf.getvalue()


def _serialize(example: dict) -> bytes:
  """features.serialize_example, with the proto's map fields in a fixed order (protobuf's
  default order follows the process's string hashing, so identical input would give different
  bytes in different worker processes)."""
  encoded = _WORKER["features"].encode_example(example)
  return _WORKER["serializer"].get_tf_example(encoded).SerializeToString(deterministic=True)


def unit_paths(work: str, index: int) -> tuple[str, str]:
  """(records file, marker file) of unit `index`."""
  stem = os.path.join(work, f"unit-{index:06d}")
  return stem + ".array_record", stem + ".json"


def encode_unit(index: int, unit: units_lib.Unit, work: str) -> dict:
  """Pass 1 for one unit: its records file, then its marker {records, skips}; returns the
  marker. Runs in a worker process set up by _init_worker."""
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
  opts: BuildOptions = _WORKER["opts"]
  records_path, marker_path = unit_paths(work, index)
  records: list[list[str] | None] = []
  skips: list[list[str]] = []
  tmp = records_path + ".tmp"
  writer = array_record_module.ArrayRecordWriter(tmp, _RECORD_OPTIONS)
  try:
    for event in units_lib.read_unit(unit, opts.read):
      if isinstance(event, units_lib.Skip):
        skips.append([event.where, event.reason])
        if event.drop_task is not None:
          records = [None if r is not None and r[0] == event.drop_task else r for r in records]
        continue
      try:
        where = f"{unit.name} pair {event.pair_id}"
        before = _encode_image(event.before, opts, f"{where} (before)")
        after = _encode_image(event.after, opts, f"{where} (after)")
      except Exception as e:  # pylint: disable=broad-except  # PIL raises many types
        skips.append([where, " ".join(str(e).split())])
        continue
      box = event.box
      writer.write(_serialize({
          "before": before, "after": after, "task": event.task, "pair_id": event.pair_id,
          "box": np.asarray(box if box is not None else (0, 0, 1, 1), np.float32),
          "has_box": box is not None}))
      records.append([event.task, event.pair_id])
  finally:
    writer.close()
  os.replace(tmp, records_path)
  marker = {"name": unit.name, "records": records, "skips": skips}
  files.write_text_atomic(marker_path, json.dumps(marker))
  return marker


# ---------------------------------------------------------------------------- pass 2: assemble


def task_hash(task: str) -> float:
  """A uniform number in [0, 1) fixed by the task name: picks the held-out tasks."""
  digest = hashlib.blake2b(task.encode(), digest_size=8, person=b"heldout").digest()
  return int.from_bytes(digest, "big") / 2.0**64


def heldout_tasks(tasks: Sequence[str], fraction: float) -> set[str]:
  """The tasks whose name hashes below `fraction` (about that share of them): a task's split
  depends on its name alone, so adding tasks to the input never moves an existing one."""
  return {t for t in tasks if task_hash(t) < fraction}


@dataclasses.dataclass(frozen=True)
class Layout:
  """Where every record goes: per split, its tasks' ranges and ids, and its shards' records."""
  ranges: dict[str, dict[str, list[int]]]
  pair_ids: dict[str, list[str]]
  shards: dict[str, list[list[tuple[int, int]]]]  # split -> shards -> (unit, record)
  skips: list[list[str]]


def lay_out(markers: Sequence[dict], opts: BuildOptions) -> Layout:
  """Groups the encoded records by task, drops tasks left with fewer than two pairs, splits the
  tasks into train and held-out, and cuts each split into shards of opts.shard_pairs."""
  by_task: dict[str, list[tuple[int, int, str]]] = {}
  for u, marker in enumerate(markers):
    for r, entry in enumerate(marker["records"]):
      if entry is not None:
        by_task.setdefault(entry[0], []).append((u, r, entry[1]))
  skips = []
  for task in sorted(by_task):
    if len(by_task[task]) < 2:
      skips += [[f"{task!r} pair {pid}", "its task has no other pair left"]
                for _, _, pid in by_task.pop(task)]
  held = heldout_tasks(sorted(by_task), opts.heldout_fraction)
  ranges, ids, shards = {}, {}, {}
  for split in tfds_format.BUILT_SPLITS:
    order = [t for t in sorted(by_task) if (t in held) == (split == "heldout")]
    ranges[split], ids[split], entries = {}, [], []
    for task in order:
      ranges[split][task] = [len(entries), len(entries) + len(by_task[task])]
      entries += [(u, r) for u, r, _ in by_task[task]]
      ids[split] += [pid for _, _, pid in by_task[task]]
    shards[split] = [entries[i:i + opts.shard_pairs]
                     for i in range(0, len(entries), opts.shard_pairs)]
  return Layout(ranges, ids, shards, skips)


def shard_path(output: str, split: str, index: int, count: int) -> str:
  return os.path.join(output, f"{tfds_format.NAME}-{split}.array_record-{index:05d}-of-"
                              f"{count:05d}")


def assemble_shard(path: str, entries: Sequence[tuple[int, int]], work: str) -> None:
  """Pass 2 for one output shard: copies its records, in order, from the unit files, one
  record at a time (memory does not grow with the shard)."""
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
  readers: dict[int, Any] = {}
  tmp = path + ".tmp"
  writer = array_record_module.ArrayRecordWriter(tmp, _RECORD_OPTIONS)
  try:
    for u, r in entries:
      if u not in readers:
        readers[u] = array_record_module.ArrayRecordReader(unit_paths(work, u)[0],
                                                           "readahead_buffer_size:0")
      writer.write(readers[u].read([r])[0])
  finally:
    writer.close()
    for reader in readers.values():
      reader.close()
  os.replace(tmp, path)


# ---------------------------------------------------------------------------- driver


def _run(calls: Sequence[tuple[Callable, tuple]], opts: BuildOptions, vocabulary: Sequence[str],
         on_done: Callable[[Any, Any], None]) -> None:
  """Runs fn(*args) for each call, in opts.workers processes (in this one for 1), calling
  on_done(args, result) as each finishes."""
  if opts.workers == 1 or len(calls) <= 1:
    _init_worker(vocabulary, opts)
    for fn, args in calls:
      on_done(args, fn(*args))
    return
  context = multiprocessing.get_context("spawn")  # no fork of a threaded parent
  with concurrent.futures.ProcessPoolExecutor(opts.workers, mp_context=context,
                                              initializer=_init_worker,
                                              initargs=(vocabulary, opts)) as pool:
    futures = {pool.submit(fn, *args): args for fn, args in calls}
    try:
      for future in concurrent.futures.as_completed(futures):
        on_done(futures[future], future.result())
    except BaseException:
      pool.shutdown(cancel_futures=True)
      raise


def _progress(total: int, unit: str, desc: str, enabled: bool):
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  return tqdm(total=total, unit=unit, desc=desc, disable=not enabled, smoothing=0.1,
              dynamic_ncols=True)


def _load_plan(opts: BuildOptions, work: str) -> tuple[list, list, list]:
  """(vocabulary, units, skips): the stored plan of an interrupted build, else a new one."""
  path = os.path.join(work, PLAN_FILE)
  if os.path.exists(path):
    stored = files.read_json_object(path)
    mine = opts.fingerprint()
    for key in sorted(set(mine) | set(stored["options"])):
      if mine.get(key) != stored["options"].get(key):
        raise ValueError(
            f"{opts.output} holds an interrupted build with {key} = "
            f"{stored['options'].get(key)!r}, not {mine.get(key)!r}; rerun it with the same "
            f"flags, or delete the folder")
    return (stored["vocabulary"], [units_lib.Unit.from_json(u) for u in stored["units"]],
            stored["skips"])
  if os.path.isdir(opts.output) and set(os.listdir(opts.output)) - {WORK_DIR}:
    raise ValueError(f"--output {opts.output} is not empty and holds no build; give a new or "
                     f"empty folder")
  vocabulary, units, skips = units_lib.plan_units(
      opts.source, opts.input, opts.read, synthetic_tasks=opts.synthetic_tasks,
      pairs_per_task=opts.pairs_per_task)
  if not units:
    raise ValueError(f"--input {opts.input}: no pairs found")
  os.makedirs(work, exist_ok=True)
  files.write_text_atomic(path, json.dumps({
      "options": opts.fingerprint(), "vocabulary": list(vocabulary),
      "units": [u.to_json() for u in units], "skips": [[s.where, s.reason] for s in skips]}))
  return list(vocabulary), units, [[s.where, s.reason] for s in skips]


def _write_metadata(opts: BuildOptions, vocabulary: Sequence[str], layout: Layout,
                    summary: dict) -> None:
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  split_infos = []
  for split, shards in layout.shards.items():
    if not shards:
      continue
    paths = [shard_path(opts.output, split, i, len(shards)) for i in range(len(shards))]
    split_infos.append(tfds.core.SplitInfo(
        name=split, shard_lengths=[len(s) for s in shards],
        num_bytes=sum(os.path.getsize(p) for p in paths),
        filename_template=tfds.core.ShardedFileTemplate(
            data_dir=tfds.core.Path(opts.output), template=TEMPLATE, dataset_name=tfds_format.NAME,
            split=split, filetype_suffix="array_record")))
  tfds.folder_dataset.write_metadata(
      data_dir=opts.output, features=tfds_format.features(vocabulary, opts.image_format),
      split_infos=split_infos, filename_template=TEMPLATE, version="1.0.0", check_data=False,
      description=f"ImageBrush edit pairs built from --source {opts.source}",
      metadata=tfds.core.MetadataDict({
          tfds_format.RANGES_KEY: layout.ranges, tfds_format.IDS_KEY: layout.pair_ids,
          "build": summary}))


def _write_errors(path: str, skips: Sequence[Sequence[str]]) -> None:
  files.write_text_atomic(path, "".join(json.dumps({"where": w, "reason": r}) + "\n"
                                        for w, r in skips))


def build(opts: BuildOptions, *, progress: bool = False) -> dict:
  """Builds (or finishes building) opts.output; returns the summary (build.json)."""
  opts.check()
  start = time.time()
  summary_path = os.path.join(opts.output, SUMMARY_FILE)
  work = os.path.join(opts.output, WORK_DIR)
  if tfds_format.is_built_dir(opts.output) and os.path.exists(summary_path):
    summary = files.read_json_object(summary_path)
    if summary.get("options") != opts.fingerprint():
      raise ValueError(f"--output {opts.output} already holds a data set built with other "
                       f"flags ({summary_path}); give a new folder")
    shutil.rmtree(work, ignore_errors=True)
    return dict(summary, seconds=round(time.time() - start, 3))
  vocabulary, units, skips = _load_plan(opts, work)

  # pass 1: encode the units not encoded yet
  markers: dict[int, dict] = {}
  pending = []
  for i, unit in enumerate(units):
    if os.path.exists(unit_paths(work, i)[1]):
      markers[i] = files.read_json_object(unit_paths(work, i)[1])
    else:
      pending.append((encode_unit, (i, unit, work)))
  bar = _progress(sum(units[args[0]].expected_pairs for _, args in pending), "pair", "encode",
                  progress)

  def encoded(args, marker):
    markers[args[0]] = marker
    bar.update(sum(r is not None for r in marker["records"]))

  with bar:
    _run(pending, opts, vocabulary, encoded)

  # pass 2: lay the records out by split and task, and write the shards not written yet
  ordered = [markers[i] for i in range(len(units))]
  layout = lay_out(ordered, opts)
  skips = skips + [s for m in ordered for s in m["skips"]] + layout.skips
  errors_path = os.path.join(opts.output, ERRORS_FILE)
  if not layout.ranges["train"]:
    _write_errors(errors_path, skips)
    if layout.ranges["heldout"]:
      raise ValueError(f"--heldout_fraction {opts.heldout_fraction}: all "
                       f"{len(layout.ranges['heldout'])} tasks fall in the held-out split; give "
                       f"a smaller fraction or more tasks")
    raise ValueError(f"--input {opts.input}: no task has two readable pairs; what was "
                     f"skipped, and why, is listed in {errors_path}")
  calls = []
  for split, shards in layout.shards.items():
    for i, entries in enumerate(shards):
      path = shard_path(opts.output, split, i, len(shards))
      if not os.path.exists(path):
        calls.append((assemble_shard, (path, entries, work)))
  with _progress(len(calls), "shard", "assemble", progress) as bar:
    _run(calls, opts, vocabulary, lambda args, result: bar.update(1))

  # finish: the error list, the summary, then TFDS's metadata (dataset_info.json marks it done)
  _write_errors(errors_path, skips)
  summary = {
      "dir": opts.output,
      "tasks": sum(len(r) for r in layout.ranges.values()),
      "pairs": sum(len(i) for i in layout.pair_ids.values()),
      "skipped": len(skips),
      "heldout_tasks": len(layout.ranges["heldout"]),
      "train_pairs": len(layout.pair_ids["train"]),
      "heldout_pairs": len(layout.pair_ids["heldout"]),
      "shards": sum(len(s) for s in layout.shards.values()),
      "image_size": opts.image_size,
      "image_format": opts.image_format,
      "options": opts.fingerprint(),
  }
  files.write_text_atomic(summary_path, json.dumps(summary, indent=1))
  _write_metadata(opts, vocabulary, layout,
                  {k: v for k, v in summary.items() if k not in ("options", "dir")})
  shutil.rmtree(work)
  return dict(summary, seconds=round(time.time() - start, 3))


def summary_line(summary: dict) -> str:
  """The CLI's last stdout line: the summary without the options."""
  return json.dumps({k: v for k, v in summary.items() if k != "options"})
