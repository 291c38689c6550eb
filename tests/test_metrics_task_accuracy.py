"""Task-identification accuracy and PSNR (imagebrush_jax/metrics/task_accuracy.py)."""
import numpy as np
import pytest

from imagebrush_jax.data import tasks as tasks_lib
from imagebrush_jax.metrics import task_accuracy as ta

NAMES = tasks_lib.GLOBAL_TASKS


def _queries(n=24, size=8, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_ground_truth_scores_one():
  q = _queries()
  cands = ta.candidate_outputs(q, NAMES)
  idx = np.arange(len(q)) % len(NAMES)
  truth = cands[np.arange(len(q)), idx]
  assert cands.shape == (len(q), len(NAMES), 8, 8, 3)
  assert ta.task_identification_accuracy(truth, cands, idx) == 1.0
  res = ta.evaluate_edits(truth, q, truth, [NAMES[i] for i in idx], NAMES)
  assert res["accuracy"] == 1.0 and res["psnr"] == ta.MAX_PSNR_DB
  assert res["copy_psnr"] < 20.0


def test_random_images_near_chance():
  q = _queries(n=600, seed=1)
  cands = ta.candidate_outputs(q, NAMES)
  idx = np.arange(len(q)) % len(NAMES)
  generated = _queries(n=600, seed=2)
  acc = ta.task_identification_accuracy(generated, cands, idx)
  assert abs(acc - 1 / len(NAMES)) < 0.07


def test_ties_count_as_correct():
  gray = np.full((2, 4, 4, 3), 100, np.uint8)  # grayscale(gray) == gray == hflip(gray) ...
  cands = ta.candidate_outputs(gray, ("hflip", "grayscale", "invert"))
  assert np.array_equal(cands[:, 0], cands[:, 1])
  assert ta.task_identification_accuracy(gray, cands, np.array([0, 1])) == 1.0
  # Closer to the true one than to a candidate that differs: correct; the other way: wrong.
  assert ta.task_identification_accuracy(255 - gray, cands, np.array([2, 2])) == 1.0
  assert ta.task_identification_accuracy(255 - gray, cands, np.array([0, 1])) == 0.0


def test_psnr_values_and_errors():
  a = np.zeros((2, 4, 4, 3), np.uint8)
  b = np.full((2, 4, 4, 3), 255, np.uint8)
  assert ta.psnr(a, b) == pytest.approx(0.0)
  assert ta.psnr(a, a) == ta.MAX_PSNR_DB
  assert ta.psnr(np.zeros((1, 2, 2)), np.full((1, 2, 2), 0.1), max_val=1.0) == pytest.approx(20.0)
  with pytest.raises(ValueError, match="shapes differ"):
    ta.psnr(a, b[:1])
  with pytest.raises(ValueError, match="true_index"):
    ta.task_identification_accuracy(a, np.stack([a, b], 1), np.array([0, 5]))


def test_applicable_tasks_drops_object_tasks():
  assert ta.applicable_tasks(("hflip", "recolor", "vflip+invert")) == ("hflip", "vflip+invert")
  res = ta.evaluate_edits(_queries(2), _queries(2), _queries(2), ["recolor", "recolor"], NAMES)
  assert np.isnan(res["accuracy"]) and res["num_scored"] == 0
