"""Folder and built (TFDS) sources: round trips on a tiny data set made here, and a clear error, naming
the file or task, for each way a folder can be wrong."""
import json
import os

import numpy as np
from PIL import Image
import pytest

from configs import tiny_test
from imagebrush_jax.data import augment
from imagebrush_jax.data import options
from imagebrush_jax.data import pipeline
from imagebrush_jax.data import sources
from imagebrush_jax.data.prepare import units
from imagebrush_jax.data.prepare import writer

BOXES = {"p0": [0.1, 0.2, 0.6, 0.9]}


def save(path, array, **kwargs):
  Image.fromarray(array).save(path, **kwargs)


def make_folder(root, size=8):
  """Two tasks of three pairs: 'brighten' (not a registered task) and 'invert'."""
  rng = np.random.default_rng(0)
  written = {}
  for task, fn in (("brighten", lambda x: np.minimum(x.astype(int) + 40, 255).astype(np.uint8)),
                   ("invert", lambda x: 255 - x)):
    os.makedirs(os.path.join(root, task))
    for i in range(3):
      before = rng.integers(0, 256, (size, size + i, 3), dtype=np.uint8)
      after = fn(before)
      ext = ("png", "webp", "png")[i]
      options_ = {"lossless": True} if ext == "webp" else {}
      save(os.path.join(root, task, f"p{i}_before.{ext}"), before, **options_)
      save(os.path.join(root, task, f"p{i}_after.{ext}"), after, **options_)
      written[(task, f"p{i}")] = (before, after)
  with open(os.path.join(root, "brighten", "boxes.json"), "w") as f:
    json.dump(BOXES, f)
  with open(os.path.join(root, "README.txt"), "w") as f:
    f.write("files at the root are not tasks")
  return written


def folder_config(root, **data):
  c = tiny_test.get_config()
  c.data.source = "folder"
  c.data.folder.root = str(root)
  c.data.train_tasks = ("brighten", "invert")
  c.data.heldout_tasks = ()
  c.data.eval_fraction = 0.0  # three pairs a task: too few to hold any out (tests below split)
  for k, v in data.items():  # folder_root -> c.data.folder.root
    section, key = k.split("_", 1)
    if section in ("tfds", "folder"):
      c.data[section][key] = v
    else:
      c.data[k] = v
  return c


def test_folder_round_trip(tmp_path):
  written = make_folder(tmp_path)
  src = sources.FolderSource(str(tmp_path))
  assert src.tasks == ("brighten", "invert")
  assert list(src.pair_indices("brighten")) == [0, 1, 2]
  assert list(src.pair_indices("invert")) == [3, 4, 5]
  for i in range(len(src)):
    pair = src[i]
    before, after = written[(pair.task, pair.pair_id)]
    np.testing.assert_array_equal(pair.before, before)
    np.testing.assert_array_equal(pair.after, after)
    if (pair.task, pair.pair_id) == ("brighten", "p0"):
      np.testing.assert_array_equal(pair.box, np.float32(BOXES["p0"]))
    else:
      assert pair.box is None
  with pytest.raises(KeyError, match="task 'hflip' is not in folder"):
    src.pair_indices("hflip")


def test_folder_grids_hold_the_stored_pairs(tmp_path):
  written = make_folder(tmp_path, size=8)
  config = folder_config(tmp_path, crop_scale=1.0, box_prob=1.0, resize_method="nearest")
  it = pipeline.make_train_iterator(config, process_index=0, process_count=1)
  batches = [next(it) for _ in range(4)]
  batch = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
  names = pipeline.task_vocabulary(config)
  p0_before, p0_after = written[("brighten", "p0")]
  queries_of_p0 = 0
  for grid, task_id, box in zip(batch["grid"], batch["task_id"], batch["box"]):
    task = names[task_id]
    rows = [(grid[:8, :8], grid[:8, 8:]), (grid[8:, :8], grid[8:, 8:])]
    assert not np.array_equal(rows[0][0], rows[1][0])  # two distinct pairs
    for before, after in rows:  # every row shows the grid's task
      if task == "invert":
        np.testing.assert_array_equal(after, 255 - before)
      else:
        np.testing.assert_array_equal(after, np.minimum(before.astype(int) + 40, 255))
    # p0 is stored at 8 x 8 (the others are squashed to it): it must come back untouched, with
    # its box ('brighten' is not a registered task, so it is never flipped).
    if task == "brighten" and np.array_equal(rows[1][0], p0_before):
      np.testing.assert_array_equal(rows[1][1], p0_after)
      np.testing.assert_allclose(box, BOXES["p0"], atol=1e-6)
      queries_of_p0 += 1
    else:
      np.testing.assert_array_equal(box, [0, 0, 1, 1])
  assert queries_of_p0 > 0


def test_pipeline_names_missing_tasks_and_too_few_pairs(tmp_path):
  make_folder(tmp_path)
  config = folder_config(tmp_path, train_tasks=("brighten", "hflip"))
  with pytest.raises(ValueError, match=r"config.data.train_tasks\[1\] = 'hflip' is not in the "
                                       r"data source; it has brighten, invert"):
    pipeline.make_train_iterator(config, process_index=0, process_count=1)
  config = folder_config(tmp_path, num_examples=3)
  with pytest.raises(ValueError, match="task 'brighten' has 3 pairs, fewer than the 4"):
    pipeline.make_train_iterator(config, process_index=0, process_count=1)


# ---------------------------------------------------------------- bad folders


def write_pair(folder, pair_id, ext="png", size=4):
  os.makedirs(folder, exist_ok=True)
  image = np.zeros((size, size, 3), np.uint8)
  save(os.path.join(folder, f"{pair_id}_before.{ext}"), image)
  save(os.path.join(folder, f"{pair_id}_after.{ext}"), 255 - image)


def two_pair_task(root, task="t"):
  write_pair(os.path.join(root, task), "a")
  write_pair(os.path.join(root, task), "b")
  return os.path.join(root, task)


def test_missing_root(tmp_path):
  with pytest.raises(FileNotFoundError, match=f"{tmp_path}/nope.* is not a directory"):
    sources.FolderSource(str(tmp_path / "nope"))


def test_root_without_tasks(tmp_path):
  (tmp_path / "notes.txt").write_text("x")
  with pytest.raises(ValueError, match="has no task sub-folders"):
    sources.FolderSource(str(tmp_path))


@pytest.mark.parametrize("remove", ["before", "after"])
def test_unpaired_file(tmp_path, remove):
  folder = two_pair_task(tmp_path)
  write_pair(folder, "c")
  os.remove(os.path.join(folder, f"c_{remove}.png"))
  other = "after" if remove == "before" else "before"
  with pytest.raises(ValueError, match=f"{folder}/c_{other}.png: unpaired; no c_{remove}"):
    sources.FolderSource(str(tmp_path))


def test_file_that_is_not_a_pair_image(tmp_path):
  folder = two_pair_task(tmp_path)
  (tmp_path / "t" / "c_before.gif").write_bytes(b"GIF89a")
  with pytest.raises(ValueError, match=f"{folder}/c_before.gif: not a pair image"):
    sources.FolderSource(str(tmp_path))


def test_two_images_for_one_role(tmp_path):
  folder = two_pair_task(tmp_path)
  save(os.path.join(folder, "a_before.webp"), np.zeros((4, 4, 3), np.uint8))
  with pytest.raises(ValueError, match="pair 'a' already has a before image"):
    sources.FolderSource(str(tmp_path))


def test_unreadable_image_is_named_when_indexed(tmp_path):
  folder = two_pair_task(tmp_path)
  (tmp_path / "t" / "b_after.png").write_bytes(b"not a png at all")
  with pytest.raises(ValueError, match=f"cannot read image {folder}/b_after.png"):
    sources.FolderSource(str(tmp_path))


def test_truncated_image_is_named_when_decoded(tmp_path):
  folder = two_pair_task(tmp_path)
  path = os.path.join(folder, "b_after.png")
  save(path, np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
  data = open(path, "rb").read()
  open(path, "wb").write(data[:len(data) // 2])
  src = sources.FolderSource(str(tmp_path))  # the header is fine
  with pytest.raises(ValueError, match=f"cannot read image {path}"):
    src[1]


def test_task_with_fewer_than_two_pairs(tmp_path):
  two_pair_task(tmp_path, "good")
  write_pair(tmp_path / "lonely", "only")
  with pytest.raises(ValueError, match="task 'lonely' .* has 1 pair\\(s\\); a task needs at "
                                       "least two"):
    sources.FolderSource(str(tmp_path))


@pytest.mark.parametrize("content,message", [
    ("{not json", "not valid JSON"),
    ('[[0, 0, 1, 1]]', "expected a JSON object"),
    ('{"zz": [0, 0, 1, 1]}', "box for pair 'zz', which has no zz_before"),
    ('{"a": [0.5, 0, 0.2, 1]}', "box of pair 'a' must be \\[x0, y0, x1, y1\\]"),
    ('{"a": [0, 0, 1]}', "box of pair 'a' must be"),
])
def test_bad_boxes_file(tmp_path, content, message):
  folder = two_pair_task(tmp_path)
  (tmp_path / "t" / "boxes.json").write_text(content)
  with pytest.raises(ValueError, match=f"{folder}/boxes.json: {message}"):
    sources.FolderSource(str(tmp_path))


# ---------------------------------------------------------------- TFDS


def _build(source: str, input_path, output, **kw) -> str:
  """python -m imagebrush_jax.build_data at tiny_test's sizes (tile 8, 10-pixel renders), PNG."""
  writer.build(writer.BuildOptions(source=source, input=str(input_path), output=str(output),
                                   tile_size=8, crop_scale=1.25, image_format="png", **kw))
  return str(output)


def test_a_built_folder_gives_the_grids_of_the_folder(tmp_path):
  make_folder(tmp_path / "pairs")
  built = sources.TfdsSource(_build("folder", tmp_path / "pairs", tmp_path / "built"))
  folder = sources.FolderSource(str(tmp_path / "pairs"))
  assert set(built.tasks) == set(folder.tasks) and len(built) == len(folder)
  for task in folder.tasks:
    assert list(built.pair_indices(task)) == list(folder.pair_indices(task))
  for i in range(len(folder)):
    a, b = folder[i], built[i]
    assert (a.task, a.pair_id) == (b.task, b.pair_id)
    # Stored as the pipeline renders it: resized to the 10-pixel render, losslessly.
    np.testing.assert_array_equal(augment.resize(a.before, 10, "bilinear"), b.before)
    np.testing.assert_array_equal(augment.resize(a.after, 10, "bilinear"), b.after)
    assert (a.box is None) == (b.box is None)
    if a.box is not None:
      np.testing.assert_array_equal(a.box, b.box)
  # Same pairs at the same indices: the pipeline gives the same grids from either source.
  config = folder_config(tmp_path / "pairs")
  from_folder = pipeline.make_eval_batches(config, num_grids=6, seed=3)
  with config.unlocked():
    config.data.source, config.data.tfds.dir = "tfds", str(tmp_path / "built")
  from_built = pipeline.make_eval_batches(config, num_grids=6, seed=3)
  for x, y in zip(from_built, from_folder):
    for key in x:
      np.testing.assert_array_equal(x[key], y[key])


def test_built_synthetic_pairs_are_the_synthetic_source_s(tmp_path):
  config = tiny_test.get_config()
  opts = options.from_config(config)
  built = sources.TfdsSource(_build(
      "synthetic", "", tmp_path / "built", synthetic_tasks=("invert", "recolor"),
      pairs_per_task=3, read=units.SourceOptions(synthetic_scene=opts.scene, synthetic_size=10)))
  assert built.tasks == ("invert", "recolor") and len(built) == 6
  for task in built.tasks:
    rendered = sources.SyntheticSource([task], opts.scene, 10, 0)
    for j, index in enumerate(built.pair_indices(task)):
      a, b = built[index], rendered[j]
      assert (a.task, a.pair_id) == (b.task, b.pair_id)
      np.testing.assert_array_equal(a.before, b.before)
      np.testing.assert_array_equal(a.after, b.after)
      if b.box is None:
        assert a.box is None
      else:
        np.testing.assert_array_equal(a.box, b.box)


def test_a_data_set_that_was_never_written(tmp_path):
  with pytest.raises(FileNotFoundError, match="is not a data set folder; write it first"):
    sources.TfdsSource(str(tmp_path))
  config = tiny_test.get_config()
  config.data.source = "tfds"
  with pytest.raises(ValueError, match="config.data.tfds.dir must name a data set folder"):
    options.from_config(config)


# ---------------------------------------------------------------- train / held-out split


def _cells(batches, tile):
  """Every before-cell of every grid, as bytes (pairs are told apart by their random images)."""
  out = set()
  for batch in batches:
    for grid in batch["grid"]:
      for row in range(grid.shape[0] // tile):
        out.add(grid[row * tile:(row + 1) * tile, :tile].tobytes())
  return out


def _many_pairs(root, num_tasks=2, pairs=10, size=8):
  rng = np.random.default_rng(1)
  for t in range(num_tasks):
    os.makedirs(os.path.join(root, f"task{t}"))
    for i in range(pairs):
      before = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
      save(os.path.join(root, f"task{t}", f"id{i:02d}_before.png"), before)
      save(os.path.join(root, f"task{t}", f"id{i:02d}_after.png"), 255 - before)


def test_eval_fraction_holds_out_pairs_that_training_never_shows(tmp_path):
  _many_pairs(tmp_path / "pairs")
  config = folder_config(tmp_path / "pairs", train_tasks=("task0", "task1"), eval_fraction=0.3,
                         crop_scale=1.0, flip_prob=0.0, resize_method="nearest")
  opts = options.from_config(config)
  split = sources.make_source(opts, seed=0, part="heldout")
  for task in split.tasks:
    train, heldout = split.parts(task)
    assert not set(train) & set(heldout) and len(train) + len(heldout) == 10
    assert len(heldout) >= 2  # at least num_examples + 1
    # A pure function of the ids: the same split again, and from the TFDS copy of the folder.
    assert sources.make_source(opts, seed=5, part="heldout").parts(task) == (train, heldout)
  it = pipeline.make_train_iterator(config, process_index=0, process_count=1)
  trained = _cells([next(it) for _ in range(12)], 8)
  evaluated = _cells(pipeline.make_eval_batches(config, num_grids=16, seed=3), 8)
  held = {split[i].before.tobytes() for t in split.tasks for i in split.parts(t)[1]}
  assert evaluated <= held and evaluated  # every evaluation cell is a held-out pair ...
  assert not trained & held  # ... and no held-out pair is ever trained on
  assert len(trained) == 20 - len(held)  # 96 grids show every training pair

  with config.unlocked():
    config.data.source = "tfds"
    config.data.tfds.dir = _build("folder", tmp_path / "pairs", tmp_path / "built")
  stored = sources.make_source(options.from_config(config), seed=0, part="heldout")
  for task in split.tasks:
    assert stored.parts(task) == split.parts(task)


def test_eval_fraction_refuses_a_task_too_small_to_split(tmp_path):
  make_folder(tmp_path)
  config = folder_config(tmp_path, eval_fraction=0.1)
  with pytest.raises(ValueError, match="task 'brighten' has 3 pairs: config.data.eval_fraction = "
                                       "0.1 holds out 2 .* leaves 1 for training"):
    pipeline.make_train_iterator(config, process_index=0, process_count=1)
