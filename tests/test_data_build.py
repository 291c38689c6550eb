"""python -m imagebrush_jax.build_data on small files in each published layout: counts, grouping,
what is skipped and listed, held-out disjointness, determinism, resume of an interrupted build,
and the training pipeline reading the result (one data set, and a mixture that resumes exactly).
"""
import dataclasses
import io
import json
import os
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from configs import tiny_test
from imagebrush_jax.data import augment
from imagebrush_jax.data import options as options_lib
from imagebrush_jax.data import pipeline
from imagebrush_jax.data import sources
from imagebrush_jax.data import task_lists
from imagebrush_jax.data.prepare import units
from imagebrush_jax.data.prepare import writer
from imagebrush_jax.metrics import image_quality
from published_data import frame
from published_data import jpeg
from published_data import write_clip
from published_data import write_davis
from published_data import write_parquet
from published_data import write_prompt_folders

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cli(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", "imagebrush_jax.build_data", *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=300)


def _options(source: str, input_path, output, **kw) -> writer.BuildOptions:
  read = kw.pop("read", units.SourceOptions())
  return writer.BuildOptions(source=source, input=str(input_path), output=str(output),
                             tile_size=kw.pop("tile_size", 16), read=read, **kw)


def _synthetic(output, tasks=("hflip", "vflip", "invert", "grayscale", "rot90",
                              "swap_red_blue"), **kw) -> writer.BuildOptions:
  opts = options_lib.from_config(tiny_test.get_config())  # its synthetic scenes
  kw.setdefault("shard_pairs", 7)
  base = _options("synthetic", "", output, tile_size=8, crop_scale=1.25,
                  synthetic_tasks=tuple(tasks), pairs_per_task=kw.pop("pairs_per_task", 5), **kw)
  return dataclasses.replace(base, read=units.SourceOptions(synthetic_scene=opts.scene,
                                                            synthetic_size=base.image_size))


def _shard_bytes(path) -> dict[str, bytes]:
  return {name: open(os.path.join(path, name), "rb").read() for name in sorted(os.listdir(path))
          if ".array_record-" in name or name in ("metadata.json", "errors.jsonl")}


def _errors(output) -> list[dict]:
  """The skipped inputs of a finished build (its errors.jsonl)."""
  with open(os.path.join(output, writer.ERRORS_FILE), encoding="utf-8") as f:
    return [json.loads(line) for line in f]


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
  return float(image_quality.psnr(a[None], b[None])[0])


def test_ip2p_parquet_build_groups_by_instruction_and_lists_what_it_skips(tmp_path):
  big = (24, 32)  # originals larger than the stored size
  (tmp_path / "in").mkdir()
  write_parquet(tmp_path / "in" / "a.parquet", [
      ("Make it snowy", jpeg(0, big), jpeg(1, big)),
      ("make it  snowy.", jpeg(2, big), jpeg(3, big)),
      ("Turn the sky red", jpeg(4, big), jpeg(5, big)),
      ("a lone instruction", jpeg(6, big), jpeg(7, big)),
      ("turn the sky red", b"\xff\xd8 corrupt", jpeg(9, big)),
      ("Add a moon", jpeg(10, big), jpeg(11, big))])
  write_parquet(tmp_path / "in" / "b.parquet", [
      ("add a moon!", jpeg(12, big), jpeg(13, big)),
      ("MAKE IT SNOWY", jpeg(14, big), jpeg(15, big)),
      (None, jpeg(16, big), jpeg(17, big))])
  (tmp_path / "in" / "c.parquet").write_bytes(b"PAR1 a damaged download")
  out = tmp_path / "ip2p_16"
  proc = _cli("--source", "ip2p", "--input", str(tmp_path / "in"), "--output", str(out),
              "--tile_size", "16", "--workers", "2")
  assert proc.returncode == 0, proc.stderr[-2000:]
  summary = json.loads(proc.stdout.strip().splitlines()[-1])
  assert {k: summary[k] for k in ("tasks", "pairs", "skipped", "heldout_tasks", "shards")} == {
      "tasks": 2, "pairs": 5, "skipped": 5, "heldout_tasks": 0, "shards": 1}
  assert summary["seconds"] > 0 and summary["image_size"] == 18
  errors = [json.loads(line) for line in open(out / "errors.jsonl")]
  where = {e["where"]: e["reason"] for e in errors}
  a, b = tmp_path / "in" / "a.parquet", tmp_path / "in" / "b.parquet"
  assert f"{b} row 2" in where and "no instruction" in where[f"{b} row 2"]
  assert "has no other pair" in where[f"{a} 3"]  # the lone instruction
  assert "cannot read image" in where[f"{a} pair a.parquet:4"]
  assert where["'turn the sky red' pair a.parquet:2"] == "its task has no other pair left"
  assert "not a readable parquet file" in where[str(tmp_path / "in" / "c.parquet")]

  source = sources.TfdsSource(str(out))
  assert {t: len(source.pair_indices(t)) for t in ("add a moon", "make it snowy")} == {
      "add a moon": 2, "make it snowy": 3}
  assert [source.pair_id(i) for i in source.pair_indices("make it snowy")] == [
      "a.parquet:0", "a.parquet:1", "b.parquet:1"]
  pair = source[source.pair_indices("make it snowy")[2]]
  assert pair.task == "make it snowy" and pair.before.shape == (18, 18, 3)
  def stored(seed):  # what the build should store: the original resized, before JPEG coding
    original = np.asarray(Image.open(io.BytesIO(jpeg(seed, big))).convert("RGB"))
    return augment.resize(original, 18, "bilinear")
  assert _psnr(pair.before, stored(14)) > 24 > 20 > _psnr(pair.before, stored(12))
  assert _psnr(pair.after, stored(15)) > 24

  # A rerun of the finished build does nothing and says the same; bad input is one line.
  again = _cli("--source", "ip2p", "--input", str(tmp_path / "in"), "--output", str(out),
               "--tile_size", "16", "--workers", "2")
  assert json.loads(again.stdout.strip().splitlines()[-1])["pairs"] == 5
  bad = _cli("--source", "ip2p", "--input", str(tmp_path / "nowhere"), "--output",
             str(tmp_path / "x"))
  assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].endswith(
      f"--input {tmp_path / 'nowhere'} does not exist")


def test_prompt_folder_build_skips_a_missing_image(tmp_path):
  (tmp_path / "in").mkdir()
  write_prompt_folders(tmp_path / "in", {
      "0001": ("Make it snowy", [11, 12]), "0002": ("make it snowy.", [13]),
      "0003": ("Add a moon", [14, 15])})
  os.remove(tmp_path / "in" / "0003" / "15_1.jpg")
  summary = writer.build(_options("ip2p", tmp_path / "in", tmp_path / "out"))
  assert (summary["tasks"], summary["pairs"], summary["skipped"]) == (1, 3, 2)
  source = sources.TfdsSource(str(tmp_path / "out"))
  assert [source.pair_id(i) for i in source.pair_indices("make it snowy")] == [
      "0001:11", "0001:12", "0002:13"]
  reasons = [e["reason"] for e in _errors(str(tmp_path / "out"))]
  assert any("15_1.jpg" in r for r in reasons) and "its task has no other pair left" in reasons


def test_video_build_pairs_frames_of_each_sequence_and_skips_a_broken_clip(tmp_path):
  (tmp_path / "clips" / "walk").mkdir(parents=True)
  write_clip(tmp_path / "clips" / "walk" / "a.mp4", 9)
  write_clip(tmp_path / "clips" / "b.mp4", 6)
  (tmp_path / "clips" / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 not a video")
  summary = writer.build(_options("video", tmp_path / "clips", tmp_path / "clips_16",
                                  read=units.SourceOptions(frame_gap=2)))
  assert (summary["tasks"], summary["pairs"], summary["skipped"]) == (2, 5, 1)
  (error,) = _errors(str(tmp_path / "clips_16"))
  assert error["where"].endswith("broken.mp4") and "cannot decode" in error["reason"]
  source = sources.TfdsSource(str(tmp_path / "clips_16"))
  assert [source.pair_id(i) for i in source.pair_indices("walk/a.mp4")] == [
      "000000-000002", "000003-000005", "000006-000008"]
  pair = source[source.pair_indices("walk/a.mp4")[1]]
  np.testing.assert_allclose(pair.before.reshape(-1, 3).mean(0), frame(3)[0, 0], atol=8)
  np.testing.assert_allclose(pair.after.reshape(-1, 3).mean(0), frame(5)[0, 0], atol=8)

  (tmp_path / "short").mkdir()
  write_clip(tmp_path / "short" / "c.mp4", 4)  # too short for a pair at gap 4
  with pytest.raises(ValueError, match="no task has two readable pairs; .* listed in .*errors"):
    writer.build(_options("video", tmp_path / "short", tmp_path / "short_16"))

  write_davis(tmp_path / "davis", {"bear": 6, "car": 4, "dog": 4})
  (tmp_path / "davis" / "JPEGImages" / "480p" / "car" / "00002.jpg").write_bytes(b"junk")
  summary = writer.build(_options("video", tmp_path / "davis", tmp_path / "davis_16",
                                  read=units.SourceOptions(frame_gap=1)))
  assert (summary["tasks"], summary["pairs"], summary["skipped"]) == (2, 5, 1)
  source = sources.TfdsSource(str(tmp_path / "davis_16"))
  assert len(source.pair_indices("bear")) == 3 and len(source.pair_indices("dog")) == 2
  with pytest.raises(KeyError, match="'car' is not in"):
    source.pair_indices("car")  # its broken frame withdrew the pairs it had given


def test_heldout_tasks_are_disjoint_and_output_does_not_depend_on_workers(tmp_path):
  one = writer.build(_synthetic(tmp_path / "one", heldout_fraction=0.25))
  writer.build(_synthetic(tmp_path / "two", heldout_fraction=0.25, workers=2))
  assert one["heldout_tasks"] == 2 and one["tasks"] == 6 and one["shards"] == 5
  assert _shard_bytes(tmp_path / "one") == _shard_bytes(tmp_path / "two")
  source = sources.TfdsSource(str(tmp_path / "one"))
  config = tiny_test.get_config()
  config.data.source, config.data.tfds.dir = "tfds", str(tmp_path / "one")
  config.data.train_tasks, config.data.heldout_tasks, config.data.eval_fraction = (), (), 0.0
  resolved = task_lists.resolve(config)
  train, held = resolved.data.train_tasks, resolved.data.heldout_tasks
  assert len(train) == 4 and len(held) == 2 and not set(train) & set(held)
  assert sorted(train + held) == sorted(source.tasks)
  heldout_range = range(one["train_pairs"], one["pairs"])  # the held-out split comes second
  assert all(set(source.pair_indices(t)) <= set(heldout_range) for t in held)
  assert writer.heldout_tasks(list(source.tasks), 0.25) == set(held)
  # Evaluation grids show held-out tasks only, from the held-out split.
  batches = pipeline.make_eval_batches(resolved, num_grids=4, seed=1, tasks=held)
  vocab = pipeline.task_vocabulary(resolved)
  assert {vocab[i] for b in batches for i in b["task_id"]} == set(held)


def test_adding_tasks_to_the_input_never_moves_an_existing_task_between_splits(tmp_path):
  first = ("hflip", "vflip", "rot90", "grayscale")
  added = ("invert", "recolor", "move", "delete")  # names that hash below hflip's
  splits = {}
  for name, tasks in (("first", first), ("more", first + added)):
    writer.build(_synthetic(tmp_path / name, tasks=tasks, heldout_fraction=0.25,
                            pairs_per_task=2))
    source = sources.TfdsSource(str(tmp_path / name))
    train_pairs = json.load(open(tmp_path / name / writer.SUMMARY_FILE))["train_pairs"]
    splits[name] = {t: source.pair_indices(t)[0] >= train_pairs for t in source.tasks}
  assert splits["first"] == {"hflip": True, "vflip": False, "rot90": False, "grayscale": False}
  assert {t: splits["more"][t] for t in first} == splits["first"]
  assert sum(splits["more"].values()) == 5
  with pytest.raises(ValueError, match="all 1 tasks fall in the held-out split"):
    writer.build(_synthetic(tmp_path / "all", tasks=("invert",), heldout_fraction=0.25,
                            pairs_per_task=2))


def test_an_interrupted_build_finishes_without_redoing_its_finished_parts(tmp_path,
                                                                          monkeypatch):
  reference = writer.build(_synthetic(tmp_path / "ref", heldout_fraction=0.25))
  opts = _synthetic(tmp_path / "out", heldout_fraction=0.25)
  encode, assemble, calls = writer.encode_unit, writer.assemble_shard, []

  def stop_at(limit, fn, kind):
    def wrapped(*args):
      calls.append((kind, args[0]))
      if len(calls) == limit:
        raise KeyboardInterrupt
      return fn(*args)
    return wrapped

  monkeypatch.setattr(writer, "encode_unit", stop_at(3, encode, "unit"))
  with pytest.raises(KeyboardInterrupt):
    writer.build(opts)
  assert not os.path.exists(tmp_path / "out" / "dataset_info.json")
  with pytest.raises(ValueError, match="interrupted build with tile_size = 8, not 16"):
    writer.build(dataclasses.replace(opts, tile_size=16))
  calls.clear()
  monkeypatch.setattr(writer, "encode_unit", stop_at(0, encode, "unit"))
  monkeypatch.setattr(writer, "assemble_shard", stop_at(3 + 4, assemble, "shard"))
  with pytest.raises(KeyboardInterrupt):
    writer.build(opts)
  assert [i for kind, i in calls if kind == "unit"] == [2, 3, 4, 5]  # units 0 and 1 were done
  calls.clear()
  monkeypatch.setattr(writer, "assemble_shard", stop_at(0, assemble, "shard"))
  summary = writer.build(opts)
  assert [kind for kind, _ in calls] == ["shard"] * 3  # 2 of the 5 shards were written
  assert summary["pairs"] == reference["pairs"] == 30
  assert _shard_bytes(tmp_path / "out") == _shard_bytes(tmp_path / "ref")
  assert not os.path.exists(tmp_path / "out" / writer.WORK_DIR)


def _mixture_config(dirs_weights):
  config = tiny_test.get_config()
  config.data.source = "tfds"
  config.data.mixture = tuple(dirs_weights)
  config.data.train_tasks, config.data.heldout_tasks, config.data.eval_fraction = (), (), 0.0
  config.data.num_workers = 0
  return config


def test_training_mixes_built_data_sets_by_weight_and_resumes_exactly(tmp_path):
  writer.build(_synthetic(tmp_path / "a", tasks=("hflip", "vflip"), pairs_per_task=4))
  writer.build(_synthetic(tmp_path / "b", tasks=("invert", "grayscale", "rot90"),
                          pairs_per_task=4))
  config = task_lists.resolve(_mixture_config([(str(tmp_path / "a"), 3.0),
                                               (str(tmp_path / "b"), 1.0)]))
  assert config.data.train_tasks == ("hflip", "vflip", "grayscale", "invert", "rot90")
  vocab = pipeline.task_vocabulary(config)
  it = pipeline.make_train_iterator(config, process_index=0, process_count=1)
  names = [vocab[i] for _ in range(8) for i in next(it)["task_id"]]
  share_a = np.mean([n in ("hflip", "vflip") for n in names])
  assert 0.65 <= share_a <= 0.85, share_a  # weights 3 : 1
  state = it.get_state()
  expected = [next(it) for _ in range(2)]
  resumed = pipeline.make_train_iterator(config, process_index=0, process_count=1)
  resumed.set_state(state)
  for want in expected:
    got = next(resumed)
    for key in want:
      np.testing.assert_array_equal(got[key], want[key])
  # The same task in two data sets of a mixture is refused, naming both.
  writer.build(_synthetic(tmp_path / "c", tasks=("hflip", "rot90"), pairs_per_task=4))
  clash = _mixture_config([(str(tmp_path / "a"), 1.0), (str(tmp_path / "c"), 1.0)])
  with pytest.raises(ValueError, match="'hflip' is in both .*/a and .*/c"):
    pipeline.make_train_iterator(task_lists.resolve(clash), process_index=0, process_count=1)
  with pytest.raises(ValueError, match=r"config.data.mixture\[0\] weight must be positive"):
    zero_weight = _mixture_config([(str(tmp_path / "a"), 0.0)])
    pipeline.make_train_iterator(task_lists.resolve(zero_weight), process_index=0,
                                 process_count=1)


def test_workers_default_to_the_cpus_this_process_may_use(monkeypatch):
  monkeypatch.setattr(os, "cpu_count", lambda: 64)  # the host's count, in a container
  monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 3})
  assert writer.usable_cpus() == 2
  pinned = ("import os, runpy, sys; os.sched_setaffinity(0, {0}); "
            "sys.argv = ['build', '--helpfull']; "
            "runpy.run_module('imagebrush_jax.build_data', run_name='__main__')")
  proc = subprocess.run([sys.executable, "-c", pinned], cwd=ROOT, capture_output=True,
                        text=True, timeout=120)
  flag_help = proc.stdout.split("--workers:", 1)[1].split("--", 1)[0]
  assert "(default: '1')" in flag_help


def test_a_resumed_build_of_a_bucket_input_keeps_its_url_in_the_fingerprint(tmp_path,
                                                                             monkeypatch):
  opts = _options("ip2p", "gs://bucket/ip2p", tmp_path / "out")
  monkeypatch.chdir(tmp_path)
  here = opts.fingerprint()
  monkeypatch.chdir(ROOT)
  assert opts.fingerprint() == here and here["input"] == "gs://bucket/ip2p"
  local = _options("ip2p", "rel/in", tmp_path / "out")
  monkeypatch.chdir(tmp_path)
  assert local.fingerprint()["input"] == str(tmp_path / "rel" / "in")


def test_shards_are_copied_one_record_at_a_time(tmp_path, monkeypatch):
  """assemble_shard never holds more than one record: the array_record reader is asked for one
  record per call."""
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
  asked = []
  real = array_record_module.ArrayRecordReader

  class CountingReader:
    def __init__(self, *args):
      self._reader = real(*args)

    def read(self, indices):
      asked.append(len(indices))
      return self._reader.read(indices)

    def close(self):
      self._reader.close()

  monkeypatch.setattr(array_record_module, "ArrayRecordReader", CountingReader)
  reference = writer.build(_synthetic(tmp_path / "out", shard_pairs=100))
  assert reference["shards"] == 1 and asked and set(asked) == {1}
  assert len(asked) == reference["pairs"] == 30
