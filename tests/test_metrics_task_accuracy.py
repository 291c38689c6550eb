"""Task-identification accuracy and PSNR (imagebrush_jax/metrics/task_accuracy.py)."""
import numpy as np
import pytest

from imagebrush_jax.data import tasks as tasks_lib
from imagebrush_jax.metrics import edits
from imagebrush_jax.metrics import task_accuracy as ta

NAMES = tasks_lib.GLOBAL_TASKS


def _accuracy(generated, candidates, true_index) -> float:
  return float(np.mean(ta.task_identification_correct(generated, candidates, true_index)))


def _queries(n=24, size=8, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_ground_truth_scores_one():
  q = _queries()
  cands = ta.candidate_outputs(q, NAMES)
  idx = np.arange(len(q)) % len(NAMES)
  truth = cands[np.arange(len(q)), idx]
  assert cands.shape == (len(q), len(NAMES), 8, 8, 3)
  assert _accuracy(truth, cands, idx) == 1.0
  per_grid = edits.score(truth, q, truth, [NAMES[i] for i in idx], NAMES)
  res = edits.summarize(per_grid)
  assert res["accuracy"] == 1.0 and res["psnr"] == ta.MAX_PSNR_DB
  assert res["copy_psnr"] < 20.0


def test_random_and_blurred_outputs_score_zero_and_near_ones_count():
  q = _queries(n=600, seed=1)
  cands = ta.candidate_outputs(q, NAMES)
  idx = np.arange(len(q)) % len(NAMES)
  truth = cands[np.arange(len(q)), idx]
  assert _accuracy(_queries(n=600, seed=2), cands, idx) == 0.0
  blurred = cands.mean(axis=1)  # the mean of every candidate: near none of them
  assert _accuracy(blurred, cands, idx) == 0.0
  # A noisy rendering of the true output (PSNR ~26 dB) is identified; a random candidate is
  # identified exactly when it equals the true output (chance_accuracy).
  noisy = np.clip(truth + np.random.default_rng(3).normal(0, 12, truth.shape), 0, 255)
  assert _accuracy(noisy.astype(np.uint8), cands, idx) == 1.0
  pick = cands[np.arange(len(q)), (idx + 1) % len(NAMES)]
  expected = np.all(pick == truth, axis=(1, 2, 3)).mean()
  assert _accuracy(pick, cands, idx) == expected


def test_ties_count_only_with_identical_images():
  gray = np.full((2, 4, 4, 3), 100, np.uint8)  # grayscale(gray) == gray == hflip(gray) ...
  cands = ta.candidate_outputs(gray, ("hflip", "grayscale", "invert"))
  assert np.array_equal(cands[:, 0], cands[:, 1])
  assert _accuracy(gray, cands, np.array([0, 1])) == 1.0
  # Closer to the true one than to a candidate that differs: correct; the other way: wrong.
  assert _accuracy(255 - gray, cands, np.array([2, 2])) == 1.0
  assert _accuracy(255 - gray, cands, np.array([0, 1])) == 0.0
  # Equally far from two different images: wrong for both.
  two = np.stack([np.zeros((4, 4, 3)), np.full((4, 4, 3), 2.0)])[None]
  assert not ta.task_identification_correct(np.ones((1, 4, 4, 3)), two, [0])[0]
  assert not ta.task_identification_correct(np.ones((1, 4, 4, 3)), two, [1])[0]


def test_constant_output_earns_no_tie_credit():
  """hflip, vflip, rot90 (and, about mid-grey, invert and swap_red_blue) outputs hold the same
  pixel values, so a constant grey is exactly as far from each; grayscale's output is strictly
  nearer (its channels vary less), but not within the margin, so it scores 0 there too."""
  q = _queries(n=60, seed=3)
  idx = np.arange(len(q)) % len(NAMES)
  cands = ta.candidate_outputs(q, NAMES)
  for grey in (np.full(q.shape, 127.5), np.full(q.shape, 128, np.uint8)):
    assert not ta.task_identification_correct(grey, cands, idx).any()
    d = ta.candidate_distances(grey, cands)
    assert np.all(d.argmin(axis=1) == NAMES.index("grayscale"))  # nearest, yet not near
  others = [i for i, n in enumerate(NAMES) if n != "grayscale"]  # five tasks, one exact tie
  d = ta.candidate_distances(np.full(q.shape, 127.5), cands[:, others])
  assert np.all(d == d[:, :1])
  assert _accuracy(np.full(q.shape, 127.5), cands[:, others],
                                         idx % len(others)) == 0.0
  # Float pixels in [0, 1], whose sums are not exact in every order, against the tasks that only
  # move pixels (invert's (255 - x) / 255 is not bit-exactly 1 - x / 255, a true near-tie).
  moves = [NAMES.index(n) for n in ("hflip", "vflip", "rot90", "swap_red_blue")]
  assert _accuracy(np.full(q.shape, 0.5), cands[:, moves] / 255.0,
                                         idx % len(moves)) == 0.0
  # Unless every candidate is the same image.
  same = np.repeat(cands[:, :1], len(NAMES), axis=1)
  assert _accuracy(np.full(q.shape, 127.5), same, idx) == 1.0
  np.testing.assert_array_equal(ta.chance_accuracy(same, idx), 1.0)


def test_perfect_output_scores_one_when_another_task_gives_the_same_image():
  rng = np.random.default_rng(4)
  gray = np.repeat(rng.integers(0, 256, (2, 8, 8, 1), dtype=np.uint8), 3, axis=-1)  # R = G = B
  cands = ta.candidate_outputs(gray, NAMES)
  g, s = NAMES.index("grayscale"), NAMES.index("swap_red_blue")
  assert np.array_equal(cands[:, g], cands[:, s])
  assert _accuracy(cands[:, g], cands, np.array([g, s])) == 1.0
  np.testing.assert_allclose(ta.chance_accuracy(cands, np.array([g, s])), 2 / len(NAMES))

  half = rng.integers(0, 256, (2, 8, 4, 3), dtype=np.uint8)
  symmetric = np.concatenate([half, half[:, :, ::-1]], axis=2)  # hflip(I) == I
  names = NAMES + ("hflip+vflip",)
  cands = ta.candidate_outputs(symmetric, names)
  v = names.index("vflip")
  assert np.array_equal(cands[:, v], cands[:, -1])
  assert _accuracy(cands[:, v], cands, np.array([v, len(names) - 1])) == 1.0


def test_margin_is_half_the_distance_to_the_nearest_other_output():
  q = _queries(n=1, seed=5)
  cands = ta.candidate_outputs(q, ("hflip", "vflip"))
  h, v = cands[0, 0].astype(np.float64), cands[0, 1].astype(np.float64)
  for t, winner in ((0.49, 0), (0.51, 1), (0.5 + 1e-9, 1), (0.25, 0)):
    out = (h + t * (v - h))[None]  # on the segment from hflip's output to vflip's
    correct = [ta.task_identification_correct(out, cands, [i])[0] for i in (0, 1)]
    assert correct == [i == winner for i in (0, 1)], t
  out = (h + 0.5 * (v - h))[None]  # the midpoint: a tie, identified as neither
  assert not any(ta.task_identification_correct(out, cands, [i])[0] for i in (0, 1))


def test_psnr_values_and_errors():
  a = np.zeros((2, 4, 4, 3), np.uint8)
  b = np.full((2, 4, 4, 3), 255, np.uint8)
  assert ta.psnr(a, b) == pytest.approx(0.0)
  assert ta.psnr(a, a) == ta.MAX_PSNR_DB
  assert ta.psnr(np.zeros((1, 2, 2)), np.full((1, 2, 2), 0.1), max_val=1.0) == pytest.approx(20.0)
  with pytest.raises(ValueError, match="shapes differ"):
    ta.psnr(a, b[:1])
  with pytest.raises(ValueError, match="true_index"):
    _accuracy(a, np.stack([a, b], 1), np.array([0, 5]))


def test_applicable_tasks_drops_object_tasks():
  assert ta.applicable_tasks(("hflip", "recolor", "vflip+invert")) == ("hflip", "vflip+invert")
  res = edits.summarize(edits.score(_queries(2), _queries(2), _queries(2),
                                    ["recolor", "recolor"], NAMES))
  assert res["accuracy"] is None and res["count"] == 2
