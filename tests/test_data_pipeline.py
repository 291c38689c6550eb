"""The grain pipeline: batch layout, task-consistent grids, determinism, host sharding, exact
resume (in process and with worker processes), evaluation batches and config validation."""
import json

import grain
import numpy as np
import pytest
from etils import epath

from configs import tiny_test
from imagebrush_jax.data import augment
from imagebrush_jax.data import episodes
from imagebrush_jax.data import options
from imagebrush_jax.data import pipeline
from imagebrush_jax.data import sources
from imagebrush_jax.data import tasks
from imagebrush_jax.core import grid as grid_lib

BOXED_TASKS = ("recolor", "move", "scale_up", "scale_down", "delete", "keep_largest", "hollow",
               "fill", "bbox")


def config(**data):
  c = tiny_test.get_config()
  for k, v in data.items():
    c.data[k] = v
  return c


def iterator(c, index=0, count=1):
  return pipeline.make_train_iterator(c, process_index=index, process_count=count)


def take(it, n):
  return [next(it) for _ in range(n)]


def assert_same(batches_a, batches_b):
  assert len(batches_a) == len(batches_b)
  for a, b in zip(batches_a, batches_b):
    assert a.keys() == b.keys()
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])


@pytest.mark.parametrize("k", [1, 3])
def test_batch_layout(k):
  c = config(num_examples=k)
  batch = next(iterator(c))
  t, b = 8, c.train.batch_size
  assert set(batch) == set(grid_lib.KEYS)
  assert batch["grid"].shape == (b, (k + 1) * t, 2 * t, 3) and batch["grid"].dtype == np.uint8
  assert batch["mask"].shape == (b, (k + 1) * t, 2 * t, 1) and batch["mask"].dtype == np.uint8
  assert batch["box"].shape == (b, 4) and batch["box"].dtype == np.float32
  assert batch["task_id"].shape == (b,) and batch["task_id"].dtype == np.int32
  expected_mask = np.zeros(((k + 1) * t, 2 * t, 1), np.uint8)
  expected_mask[-t:, t:] = 1
  assert (batch["mask"] == expected_mask).all()
  assert ((0 <= batch["task_id"]) & (batch["task_id"] < len(c.data.train_tasks))).all()


def test_every_row_of_a_grid_shows_the_grid_task():
  """Crops and flips are the same for all cells and keep the meaning: after = task(before)."""
  c = config(train_tasks=tasks.GLOBAL_TASKS + ("rot90+swap_red_blue",), num_examples=2)
  names = pipeline.task_vocabulary(c)
  seen = set()
  for batch in take(iterator(c), 4):
    parts = grid_lib.split_cells(batch["grid"], 2)
    for i, task_id in enumerate(batch["task_id"]):
      name = names[task_id]
      seen.add(name)
      for before, after in zip(parts.before[i], parts.after[i]):
        np.testing.assert_array_equal(tasks.apply_global_task(name, before), after)
      np.testing.assert_array_equal(tasks.apply_global_task(name, parts.query[i]),
                                    parts.target[i])
  assert len(seen) >= 5


def test_pairs_in_a_grid_are_distinct():
  c = config(num_examples=3)
  for batch in take(iterator(c), 2):
    parts = grid_lib.split_cells(batch["grid"], 3)
    for i in range(len(batch["grid"])):
      befores = list(parts.before[i]) + [parts.query[i]]
      pairs = {b.tobytes() for b in befores}
      assert len(pairs) == 4


def test_same_seed_same_batches_other_seed_other_batches():
  assert_same(take(iterator(config()), 3), take(iterator(config()), 3))
  other = config()
  other.seed = 1
  a, b = next(iterator(config())), next(iterator(other))
  assert not np.array_equal(a["grid"], b["grid"])


def test_hosts_see_disjoint_shares_of_the_same_stream():
  single = take(iterator(config()), 2)
  grids = []
  for host in range(2):
    batches = take(iterator(config(), host, 2), 2)
    assert all(len(b["grid"]) == 4 for b in batches)  # batch_size 8 over 2 hosts
    # Host h feeds rows [4h, 4h + 4) of each global batch of the single-host stream.
    for mine, whole in zip(batches, single):
      for key in mine:
        np.testing.assert_array_equal(mine[key], whole[key][4 * host:4 * host + 4])
    grids.append({g.tobytes() for b in batches for g in b["grid"]})
  assert not grids[0] & grids[1]


def test_process_defaults_come_from_jax():
  assert_same(take(pipeline.make_train_iterator(config()), 1), take(iterator(config()), 1))


def test_host_batch_must_divide_the_global_batch():
  with pytest.raises(ValueError, match="config.train.batch_size = 8 must be divisible by the "
                                       "number of hosts \\(processes\\), 3"):
    iterator(config(), 0, 3)


def test_restoring_the_iterator_state_continues_exactly(tmp_path):
  it = iterator(config())
  take(it, 2)
  state = it.get_state()
  expected = take(it, 3)
  restored = iterator(config())
  restored.set_state(json.loads(json.dumps(state)))  # as the checkpoint stores it
  assert_same(take(restored, 3), expected)
  # Through grain's orbax checkpoint handler.
  it = iterator(config())
  take(it, 2)
  grain.checkpoint.CheckpointHandler().save(epath.Path(tmp_path), it)
  expected = take(it, 2)
  restored = grain.checkpoint.CheckpointHandler().restore(epath.Path(tmp_path),
                                                         iterator(config()))
  assert_same(take(restored, 2), expected)


def test_worker_processes_give_the_same_stream_and_resume_exactly():
  in_process = take(iterator(config()), 4)
  it = iterator(config(num_workers=2))
  try:
    first = take(it, 2)
    state = it.get_state()
    rest = take(it, 2)
  finally:
    it.close()
  assert_same(first + rest, in_process)
  restored = iterator(config(num_workers=2))
  try:
    restored.set_state(state)
    assert_same(take(restored, 2), in_process[2:])
  finally:
    restored.close()


def test_boxes_cover_the_change_and_can_be_dropped():
  c = config(train_tasks=BOXED_TASKS, tile_size=16, box_prob=1.0)
  t = 16
  centers = (np.arange(t) + 0.5) / t
  for batch in take(iterator(c), 2):
    for grid, box in zip(batch["grid"], batch["box"]):
      assert 0 <= box[0] < box[2] <= 1 and 0 <= box[1] < box[3] <= 1
      assert not np.array_equal(box, [0, 0, 1, 1])
      changed = (grid[-t:, :t] != grid[-t:, t:]).any(-1)
      ys, xs = np.nonzero(changed)
      tol = 1 / t  # a pixel, for shapes whose edge meets the box edge
      assert (centers[xs] >= box[0] - tol).all() and (centers[xs] <= box[2] + tol).all()
      assert (centers[ys] >= box[1] - tol).all() and (centers[ys] <= box[3] + tol).all()
  batch = next(iterator(config(train_tasks=BOXED_TASKS, box_prob=0.0)))
  assert (batch["box"] == [0, 0, 1, 1]).all()


def test_augmentation_follows_each_task_policy_and_grids_match_a_reference():
  c = config(train_tasks=("invert", "hflip", "rot90", "move"), flip_prob=0.5)
  opts = options.from_config(c)
  source = sources.make_source(opts, seed=opts.seed)
  sample = episodes.SampleEpisode(source, opts, tasks=opts.train_tasks, seed=opts.seed,
                                  train=True)
  drawn = [sample.map(i) for i in range(200)]
  by_task = {t: [e.augmentation for e in drawn if e.task == t] for t in opts.train_tasks}
  centred = (opts.crop_margin, opts.crop_margin)
  assert {a.flip for a in by_task["invert"]} == {True, False}
  assert len({a.offset for a in by_task["invert"]}) > 3
  assert {a.flip for a in by_task["hflip"]} == {True, False}
  assert {a.offset for a in by_task["hflip"]} == {centred}
  assert not any(a.flip for a in by_task["rot90"] + by_task["move"])
  assert {a.offset for a in by_task["rot90"]} == {centred}
  # The grid of index 5 equals a reference built from the source and the episode by hand.
  episode = drawn[5]
  pairs = [source[i] for i in episode.pair_indices]
  cells = [[augment.apply(p.before, episode.augmentation, 8),
            augment.apply(p.after, episode.augmentation, 8)] for p in pairs]
  reference = grid_lib.assemble_grid([tuple(r) for r in cells[:-1]], *cells[-1])
  got = next(iterator(c))
  np.testing.assert_array_equal(got["grid"][5], reference["grid"])
  assert got["task_id"][5] == opts.all_tasks.index(episode.task)


def test_eval_batches_are_deterministic_balanced_and_unaugmented():
  c = config()
  names = pipeline.task_vocabulary(c)
  assert names[-2:] == tuple(c.data.heldout_tasks)
  batches = pipeline.make_eval_batches(c, num_grids=16, seed=7)
  assert [len(b["grid"]) for b in batches] == [8, 8]
  assert_same(batches, pipeline.make_eval_batches(c, num_grids=16, seed=7))
  task_ids = np.concatenate([b["task_id"] for b in batches])
  np.testing.assert_array_equal(task_ids, np.arange(16) % len(names))
  for batch in batches:
    parts = grid_lib.split_cells(batch["grid"], 1)
    for i, task_id in enumerate(batch["task_id"]):
      np.testing.assert_array_equal(
          tasks.apply_global_task(names[task_id], parts.query[i]),
          parts.target[i])
  other = pipeline.make_eval_batches(c, num_grids=16, seed=8)
  assert not np.array_equal(other[0]["grid"], batches[0]["grid"])
  sizes = [len(b["grid"]) for b in pipeline.make_eval_batches(c, num_grids=16, seed=7,
                                                               batch_size=5)]
  assert sizes == [5, 5, 5, 1]
  heldout = pipeline.make_eval_batches(c, num_grids=4, seed=7, tasks=c.data.heldout_tasks)
  np.testing.assert_array_equal(heldout[0]["task_id"], [6, 7, 6, 7])


def test_eval_batches_keep_boxes():
  c = config(train_tasks=BOXED_TASKS, box_prob=0.0)
  batch = pipeline.make_eval_batches(c, num_grids=8, seed=1)[0]
  assert not (batch["box"] == [0, 0, 1, 1]).all(axis=1).any()


def test_eval_rejects_tasks_without_an_id():
  with pytest.raises(ValueError, match="tasks\\[1\\] = 'delete' is in neither"):
    pipeline.make_eval_batches(config(), num_grids=4, seed=0, tasks=("hflip", "delete"))


@pytest.mark.parametrize("key,value,message", [
    ("num_examples", 9, "config.data.num_examples must be in \\[1, 8\\], got 9"),
    ("num_examples", 0, "config.data.num_examples must be in \\[1, 8\\], got 0"),
    ("tile_size", 2, "config.data.tile_size must be in \\[4, 4096\\], got 2"),
    ("source", "s3", "config.data.source must be one of synthetic, folder, tfds; got 's3'"),
    ("train_tasks", ("hflip", "sepia"), "config.data.train_tasks\\[1\\] = 'sepia' is not a "
     "registered task"),
    ("train_tasks", ("hflip", 3), "config.data.train_tasks\\[1\\] must be a non-empty string, "
     "got 3"),
    ("train_tasks", (), "config.data.train_tasks is empty: only data sets written by python "),
    ("train_tasks", ("hflip", "hflip"), "config.data.train_tasks lists 'hflip' twice"),
    ("heldout_tasks", ("hflip+invert", "rot90"), "config.data.heldout_tasks repeats train task "
     "'rot90'"),
    ("synthetic.num_objects", (0, 4), "config.data.synthetic.num_objects\\[0\\] must be in \\[1, 8\\], got 0"),
    ("synthetic.num_objects", (3, 2), "config.data.synthetic.num_objects\\[1\\] must be in \\[3, 8\\], got 2"),
    ("synthetic.object_size", (0.3, 0.35), "config.data.synthetic.object_size = \\(0.3, 0.35\\) leaves no room"),
    ("synthetic.shapes", ("circle", "star"), "config.data.synthetic.shapes\\[1\\] = 'star' is not one of"),
    ("synthetic.backgrounds", (), "config.data.synthetic.backgrounds must not be empty"),
    ("crop_scale", 3.0, "config.data.crop_scale must be in \\[1.0, 2.0\\], got 3.0"),
    ("box_prob", -0.1, "config.data.box_prob must be in \\[0.0, 1.0\\], got -0.1"),
    ("num_workers", -1, "config.data.num_workers must be >= 0, got -1"),
    ("synthetic.num_objects", (1,), "config.data.synthetic.num_objects must be a pair \\(low, high\\), got \\(1,\\)"),
    ("resize_method", "area", "config.data.resize_method must be one of nearest"),
    ("source", "folder", "config.data.folder.root must name a folder"),
])
def test_config_errors_name_the_key(key, value, message):
  c = config()
  *parents, last = key.split(".")
  section = c.data
  for name in parents:
    section = section[name]
  section[last] = value
  with pytest.raises(ValueError, match=message):
    options.from_config(c)


def test_missing_config_key_is_named():
  c = config()
  del c.data["box_prob"]
  with pytest.raises(KeyError, match="config.data.box_prob is missing"):
    options.from_config(c)


def test_render_size_adds_the_crop_margin():
  assert options.from_config(config()).render_size == 10
  assert options.from_config(config(crop_scale=1.0)).render_size == 8
  assert options.from_config(config(tile_size=16, crop_scale=1.125)).render_size == 18
