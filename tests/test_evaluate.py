"""Evaluation: the metric pipeline on oracle / random generators, cycle metrics of an exact
editor, and the CLI on a tiny trained checkpoint."""
import json

import numpy as np
import pytest

from configs import tiny_test
from imagebrush_jax import evaluate
from imagebrush_jax.data import pipeline as data_pipeline
from imagebrush_jax.data import tasks as tasks_lib
from imagebrush_jax.core import grid as grid_lib
from imagebrush_jax.metrics import cycle
from imagebrush_jax.metrics import fid as fid_lib
from imagebrush_jax.metrics import image_quality
from imagebrush_jax.metrics import task_accuracy

from _tiny_run import tiny_workdir  # pylint: disable=g-bad-import-order


@pytest.fixture(scope="module")
def batches():
  config = tiny_test.get_config()
  return config, data_pipeline.make_eval_batches(config, num_grids=64, seed=777, batch_size=16)


def _evaluate(config, batches, generate):
  return evaluate.evaluate_batches(
      batches, num_examples=config.data.num_examples,
      task_vocabulary=data_pipeline.task_vocabulary(config), generate=generate, edit=None,
      distance=fid_lib.PixelDistance())


def test_ground_truth_scores_accuracy_one(batches):
  config, bs = batches
  truth = lambda b: grid_lib.split_cells(b["grid"], config.data.num_examples).target
  m = _evaluate(config, bs, truth)
  assert m["accuracy"] == 1.0 and m["num_examples"] == 64
  assert m["psnr"] == 100.0 and m["ssim"] == pytest.approx(1.0)
  assert m["copy_psnr"] < 100.0
  assert set(m["per_task"]) == set(data_pipeline.task_vocabulary(config))
  assert all(t["accuracy"] == 1.0 for t in m["per_task"].values())


def test_train_task_metrics_leave_out_the_heldout_compositions(batches):
  config, bs = batches
  vocab = data_pipeline.task_vocabulary(config)
  train = tuple(config.data.train_tasks)

  def truth_on_trained_tasks(b):  # exact on trained tasks, a copy of I on held-out ones
    parts = grid_lib.split_cells(b["grid"], config.data.num_examples)
    trained = np.array([vocab[i] in train for i in b["task_id"]])[:, None, None, None]
    return np.where(trained, parts.target, parts.query)

  m = evaluate.evaluate_batches(
      bs, num_examples=config.data.num_examples, task_vocabulary=vocab,
      generate=truth_on_trained_tasks, edit=None, distance=fid_lib.PixelDistance(),
      train_tasks=train)
  sub = m["train_tasks_metrics"]
  names = [vocab[i] for b in bs for i in b["task_id"]]
  assert sub["count"] == sum(n in train for n in names) < len(names)
  assert sub["accuracy"] == 1.0 and sub["psnr"] == 100.0 and sub["copy_psnr"] < 100.0
  assert m["accuracy"] < 1.0  # the held-out rows were copies


def test_random_and_copied_outputs_earn_nothing(batches):
  config, bs = batches
  rng = np.random.default_rng(0)
  m = _evaluate(config, bs, lambda b: rng.integers(0, 256, (b["grid"].shape[0], 8, 8, 3),
                                                   dtype=np.uint8))
  assert m["chance_accuracy"] < 0.5
  assert m["accuracy"] == 0.0 and m["edit_success"] == 0.0
  assert m["psnr"] < m["copy_psnr"] + 5
  copy = lambda b: grid_lib.split_cells(b["grid"], config.data.num_examples).query
  m = _evaluate(config, bs, copy)
  assert m["edit_success"] == 0.0 and m["psnr"] == m["copy_psnr"]


def test_tasks_of_any_name_get_quality_metrics_without_accuracy(batches):
  """Real data's tasks are arbitrary strings: PSNR, copy PSNR and edit success, no accuracy."""
  config, bs = batches
  vocab = ["my edit %d" % i for i in range(len(data_pipeline.task_vocabulary(config)))]
  truth = lambda b: grid_lib.split_cells(b["grid"], config.data.num_examples).target
  m = evaluate.evaluate_batches(bs, num_examples=config.data.num_examples, task_vocabulary=vocab,
                                generate=truth, edit=None, distance=fid_lib.PixelDistance(),
                                train_tasks=tuple(vocab))
  assert m["accuracy"] is None and m["accuracy_tasks"] == []
  assert m["psnr"] == 100.0 and m["edit_success"] == 1.0
  assert m["train_tasks_metrics"]["edit_success"] == 1.0
  assert all(t["accuracy"] is None and t["copy_psnr"] < 100.0 for t in m["per_task"].values())


def test_task_identification_ties_count_with_identical_images():
  gen = np.zeros((1, 2, 2, 3), np.uint8)
  cand = np.stack([np.zeros((3, 2, 2, 3), np.uint8)])
  cand[0, 2] = 255
  assert task_accuracy.task_identification_correct(gen, cand, np.array([1]))[0]
  np.testing.assert_allclose(task_accuracy.chance_accuracy(cand, np.array([1])), [2 / 3])


SELF_INVERSE = ("hflip", "vflip", "invert", "swap_red_blue", "hflip+invert")


def _oracle_edit(before, after, query):
  """An exact editor: finds the self-inverse task mapping every example pair, applies it."""
  out = []
  for b, a, q in zip(before, after, query):
    name = next((t for t in SELF_INVERSE if all(
        np.array_equal(tasks_lib.apply_global_task(t, x), y) for x, y in zip(b, a))), None)
    out.append(q if name is None else tasks_lib.apply_global_task(name, q))  # no match: copy
  return np.stack(out)


def test_cycle_metrics_of_an_exact_editor_are_zero():
  rng = np.random.default_rng(1)
  n, k = 10, 2
  names = [SELF_INVERSE[i % len(SELF_INVERSE)] for i in range(n)]
  before = rng.integers(0, 256, (n, k, 8, 8, 3), dtype=np.uint8)
  after = np.stack([[tasks_lib.apply_global_task(t, e) for e in row]
                    for t, row in zip(names, before)])
  query = rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
  generated = _oracle_edit(before, after, query)
  m = cycle.cycle_metrics(_oracle_edit, before, after, query, generated, fid_lib.PixelDistance())
  assert m == {"prompt_fidelity": 0.0, "image_fidelity": 0.0}
  wrong = 255 - generated  # a wrong edit is penalised
  m = cycle.cycle_metrics(_oracle_edit, before, after, query, wrong, fid_lib.PixelDistance())
  assert m["prompt_fidelity"] > 0.01 or m["image_fidelity"] > 0.01


def test_psnr_ssim():
  a = np.zeros((2, 8, 8, 3), np.uint8)
  b = a.copy()
  b[1] = 255
  np.testing.assert_allclose(image_quality.psnr(a, b), [100.0, 0.0])
  s = image_quality.ssim(a, b)
  assert s[0] == pytest.approx(1.0) and s[1] < 0.01


def test_evaluate_cli_on_tiny_checkpoint(tmp_path):
  out = tmp_path / "metrics.json"
  rc = evaluate.main(["--workdir", tiny_workdir(), "--num_examples", "6", "--output", str(out),
                      "--steps", "2", "--batch_size", "4"])
  assert rc == 0
  m = json.loads(out.read_text())
  for key in ("accuracy", "psnr", "ssim", "copy_psnr", "copy_ssim", "prompt_fidelity",
              "image_fidelity", "distance", "num_examples", "per_task", "step"):
    assert key in m
  assert m["num_examples"] == 6 and m["step"] == 2 and m["distance"] == "pixel_mse"
  assert 0.0 <= m["accuracy"] <= 1.0 and m["prompt_fidelity"] >= 0
  # The training seed is refused: evaluation data must be fresh.
  assert evaluate.main(["--workdir", tiny_workdir(), "--num_examples", "2", "--output",
                        str(tmp_path / "x.json"), "--seed", "0"]) == 2
  # The run exported as one file scores exactly the same.
  from imagebrush_jax import export  # pylint: disable=g-import-not-at-top
  exported = str(tmp_path / "m.safetensors")
  assert export.main(["--workdir", tiny_workdir(), "--output", exported]) == 0
  assert evaluate.main(["--params", exported, "--num_examples", "6",
                        "--output", str(tmp_path / "p.json"), "--steps", "2",
                        "--batch_size", "4"]) == 0
  from_file = json.loads((tmp_path / "p.json").read_text())
  for key in ("accuracy", "psnr", "ssim", "copy_psnr", "prompt_fidelity", "step", "workdir"):
    assert from_file[key] == m[key], key
  # Probing the example pairs: the same query cells and truths, other pairs.
  assert evaluate.main(["--workdir", tiny_workdir(), "--num_examples", "6", "--no_cycle",
                        "--output", str(tmp_path / "o.json"), "--steps", "2",
                        "--batch_size", "1", "--example_pairs", "from_other_grid"]) == 0
  other = json.loads((tmp_path / "o.json").read_text())
  assert other["example_pairs"] == "from_other_grid" and other["copy_psnr"] == m["copy_psnr"]
  assert other["psnr"] != m["psnr"]
  assert evaluate.main(["--workdir", tiny_workdir(), "--num_examples", "2", "--output",
                        str(tmp_path / "r.json"), "--example_pairs", "reversed"]) == 2


def test_example_pair_probes_change_only_the_example_rows():
  rng = np.random.default_rng(3)
  grid = rng.integers(0, 256, (4, 4 * 5, 2 * 5, 3), dtype=np.uint8)  # K = 3, 5-pixel tiles
  cells = grid_lib.split_cells(grid, 3)
  for mode, before, after in [
      ("as_drawn", cells.before, cells.after),
      ("repeat_first", np.repeat(cells.before[:, :1], 3, 1), np.repeat(cells.after[:, :1], 3, 1)),
      ("reversed", cells.before[:, ::-1], cells.after[:, ::-1]),
      ("from_other_grid", cells.before[[3, 0, 1, 2]], cells.after[[3, 0, 1, 2]])]:
    got = grid_lib.split_cells(evaluate.alter_example_pairs(grid, 3, mode), 3)
    np.testing.assert_array_equal(got.before, before, err_msg=mode)
    np.testing.assert_array_equal(got.after, after, err_msg=mode)
    np.testing.assert_array_equal(got.query, cells.query)
    np.testing.assert_array_equal(got.target, cells.target)
  with pytest.raises(ValueError, match="needs config.data.num_examples >= 2"):
    evaluate.alter_example_pairs(grid[:, 10:], 1, "repeat_first")
  with pytest.raises(ValueError, match="--example_pairs must be one of"):
    evaluate.check_example_pairs("shuffled", 3)


OBJECT_TASKS = ("recolor", "move", "delete", "scale_up", "keep_largest")


@pytest.fixture(scope="module")
def object_batches():
  """Object-level and global training tasks and a held-out object + global composition, with
  every task's output on each query's scene (`candidates`)."""
  config = tiny_test.get_config()
  config.data.tile_size = 16
  config.data.train_tasks = OBJECT_TASKS + ("hflip", "invert")
  config.data.heldout_tasks = ("recolor+hflip",)
  return config, data_pipeline.make_eval_batches(config, num_grids=48, seed=778, batch_size=16,
                                                 candidates=True)


def test_candidates_are_every_task_on_the_query_scene(object_batches):
  config, bs = object_batches
  vocab = data_pipeline.task_vocabulary(config)
  for b in bs:
    parts = grid_lib.split_cells(b["grid"], config.data.num_examples)
    assert b["candidates"].shape == (len(b["grid"]), len(vocab), 16, 16, 3)
    rows = np.arange(len(b["grid"]))
    np.testing.assert_array_equal(b["candidates"][rows, b["task_id"]], parts.target)
    for j, name in enumerate(vocab):
      if tasks_lib.get_task(name).is_global:  # the same as applying it to the cropped query
        np.testing.assert_array_equal(
            b["candidates"][:, j], task_accuracy.candidate_outputs(parts.query, (name,))[:, 0])


def test_object_tasks_are_measured_strictly(object_batches):
  """Exact outputs identify every task, object-level ones included; a copy of the query, the
  usual failure on object edits, earns no accuracy and no edit success (and keeps everything)."""
  config, bs = object_batches
  vocab = data_pipeline.task_vocabulary(config)
  run = lambda generate: evaluate.evaluate_batches(
      bs, num_examples=config.data.num_examples, task_vocabulary=vocab, generate=generate,
      edit=None, distance=fid_lib.PixelDistance(), train_tasks=tuple(config.data.train_tasks))
  m = run(lambda b: grid_lib.split_cells(b["grid"], config.data.num_examples).target)
  assert m["accuracy_tasks"] == list(vocab)
  assert all(t["accuracy"] == 1.0 and t["edit_success"] == 1.0 for t in m["per_task"].values())
  assert {t["group"] for t in m["per_task"].values()} == {"object_tasks", "global_tasks"}
  train = m["train_tasks_metrics"]
  assert train["object_tasks"]["count"] + train["global_tasks"]["count"] == train["count"]
  assert train["object_tasks"]["accuracy"] == 1.0 and train["object_tasks"]["preservation"] == 100
  assert m["per_task"]["recolor+hflip"]["group"] == "object_tasks"

  m = run(lambda b: grid_lib.split_cells(b["grid"], config.data.num_examples).query)
  obj = m["train_tasks_metrics"]["object_tasks"]
  assert obj["accuracy"] == 0.0 and obj["edit_success"] == 0.0 and obj["preservation"] == 100
  assert 0 < m["chance_accuracy"] < 0.5
